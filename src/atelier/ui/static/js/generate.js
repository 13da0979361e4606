// The txt2img, img2img and Inpaint tabs: one form (POST /api/generate), live progress, and the results.

import { ApiError, api, dataUrl, fileObjectUrl, fileUrl, followJob } from "./api.js";
import { catalog, findCheckpoint, isSdxl, refreshStyles } from "./catalog.js";
import { licenseSource, licenseUseText, rightsShort, rightsTitle } from "./licenses.js";
import { controlNetErrorAliases, controlNetUnits, initControlNet } from "./controlnet.js";
import { $, $$, acceptDrops, describeJob, h, pairSlider, progressBar, setProgress, shortId, toast } from "./dom.js";
import { clearErrors, showError, showFieldError } from "./fields.js";
import { MaskEditor } from "./maskeditor.js";
import { configureViewer, openViewer } from "./viewer.js";

const SIZE_PRESETS = [
  { id: "1:1", label: "1:1", sd15: [512, 512], sdxl: [1024, 1024] },
  { id: "4:5", label: "4:5", sd15: [512, 640], sdxl: [896, 1120] },
  { id: "9:16", label: "9:16", sd15: [512, 912], sdxl: [768, 1344] },
  { id: "768x1024", label: "768×1024", fixed: [768, 1024] },
  { id: "864x1536", label: "864×1536", fixed: [864, 1536] },
  { id: "custom", label: "Custom" },
];
// Pixel budget a loaded image is scaled down to when it sets the size: what each family was trained at.
const FAMILY_PIXELS = { sd15: 512 * 512, sdxl: 1024 * 1024 };

const panel = $("#panel-generate");
const form = $("#generate-form");
const field = {
  model: $("#g-model"),
  lora: $("#g-lora"),
  prompt: $("#g-prompt"),
  negative: $("#g-negative"),
  sampler: $("#g-sampler"),
  schedule: $("#g-schedule"),
  steps: $("#g-steps"),
  cfg: $("#g-cfg"),
  seed: $("#g-seed"),
  width: $("#g-width"),
  height: $("#g-height"),
  batchSize: $("#g-batch-size"),
  batchCount: $("#g-batch-count"),
  denoise: $("#g-denoise"),
  maskBlur: $("#i-mask-blur"),
  fill: $("#i-fill"),
  padding: $("#i-padding"),
  onlyMasked: $("#i-only-masked"),
  invert: $("#i-invert"),
  refiner: $("#g-refiner"),
  refinerSwitch: $("#g-refiner-switch"),
  refinerPrompt: $("#g-refiner-prompt"),
  refinerNegative: $("#g-refiner-negative"),
  hires: $("#h-enable"),
  hiresUpscaler: $("#h-upscaler"),
  hiresScale: $("#h-scale"),
  hiresSteps: $("#h-steps"),
  hiresDenoise: $("#h-denoise"),
};

let mode = "txt2img";
let lastSeed = null;
let sizePreset = "1:1";
// The picture each image tab works on: {blob, url, width, height, name}.
const sources = { img2img: null, inpaint: null };
let uploadedMask = null;
// A tab whose last chosen file was not a readable image: Generate stays off there until a good one is chosen.
const rejected = { img2img: false, inpaint: false };
let paintedMask = null;
const maskEditor = new MaskEditor($("#mask-editor"));
const activeJobs = new Map();
let onJobFinished = () => {};

// -- the form's lists ------------------------------------------------------------------------------------------

function fillSelect(select, options, keep) {
  const previous = keep ?? select.value;
  select.replaceChildren(...options.map(([value, label, title]) => h("option", { value, title }, label)));
  if (options.some(([value]) => value === previous)) select.value = previous;
}

function renderCatalog() {
  const checkpoints = catalog.checkpoints.filter((model) => model.architecture !== "sdxl-refiner");
  fillSelect(
    field.model,
    checkpoints.map((model) => [
      model.name,
      `${model.name} · ${model.architecture}${model.source === "demo" ? " · demo" : ""} · ${licenseUseText(model.license)}`,
      `Licence: ${model.license?.name || "none recorded"} (${licenseSource(model.license)})`,
    ]),
    field.model.value || catalog.currentModel,
  );
  // A LoRA shows what its licence allows and whether its training images' rights are on file (issue 17).
  fillSelect(field.lora, [
    ["", catalog.loras.length ? "Insert a LoRA…" : "No LoRAs yet"],
    ...catalog.loras.map((lora) => [
      lora.name,
      `${lora.name} · ${lora.architecture} · ${licenseUseText(lora.license)} · ${rightsShort(lora.rights)}`,
      `Licence: ${lora.license?.name || "none recorded"}\nRights: ${rightsTitle(lora.rights)}`,
    ]),
  ], "");
  fillSelect($("#g-vae"), [["", "The model's own"], ...catalog.vaes.map((vae) => [vae.name, vae.name])]);
  const refiners = catalog.checkpoints.filter((model) => model.architecture === "sdxl-refiner");
  fillSelect(field.refiner, [["", "None"], ...refiners.map((model) => [model.name, model.display_name])]);
  if (catalog.samplers.length) {
    const preferred = field.sampler.value || (catalog.samplers.some((s) => s.name === "DPM++ 2M") ? "DPM++ 2M" : catalog.samplers[0].name);
    fillSelect(field.sampler, catalog.samplers.map((sampler) => [sampler.name, sampler.name]), preferred);
    renderScheduleTypes();
  }
  modelChanged();
}

function renderScheduleTypes() {
  const sampler = catalog.samplers.find((item) => item.name === field.sampler.value);
  const types = sampler?.options?.schedule_types || ["Automatic"];
  fillSelect(field.schedule, types.map((type) => [type, type]));
}

function selectedModel() {
  return findCheckpoint(field.model.value);
}

function modelChanged() {
  const model = selectedModel();
  const note = $("#g-model-note");
  note.textContent = model?.label ? `⚠ ${model.label}: pictures will be noise. Upload a real checkpoint in Models.` : "";
  note.classList.toggle("warning", Boolean(model?.label));
  $("#refiner-card").hidden = !(isSdxl(model) && mode === "txt2img");
  renderSizePresets();
}

// -- size ------------------------------------------------------------------------------------------------------

function presetSize(preset) {
  if (preset.fixed) return preset.fixed;
  if (!preset.sd15) return null;
  return isSdxl(selectedModel()) ? preset.sdxl : preset.sd15;
}

function renderSizePresets() {
  const host = $("#size-presets");
  host.replaceChildren(
    ...SIZE_PRESETS.map((preset) => {
      const size = presetSize(preset);
      return h(
        "button",
        {
          type: "button",
          class: "preset",
          "aria-pressed": String(preset.id === sizePreset),
          onclick: () => choosePreset(preset.id),
        },
        h("span", { class: "preset-label" }, preset.label),
        h("span", { class: "preset-size" }, size ? `${size[0]}×${size[1]}` : "any"),
      );
    }),
  );
  const chosen = SIZE_PRESETS.find((preset) => preset.id === sizePreset);
  const size = chosen && presetSize(chosen);
  if (size) setSize(size[0], size[1], { keepPreset: true });
}

function choosePreset(id) {
  sizePreset = id;
  renderSizePresets();
  if (id === "custom") field.width.focus();
}

function setSize(width, height, { keepPreset = false } = {}) {
  field.width.value = width;
  field.height.value = height;
  if (!keepPreset) matchPreset();
}

function matchPreset() {
  const width = Number(field.width.value);
  const height = Number(field.height.value);
  const match = SIZE_PRESETS.find((preset) => {
    const size = presetSize(preset);
    return size && size[0] === width && size[1] === height;
  });
  sizePreset = match ? match.id : "custom";
  for (const [index, button] of $$("#size-presets .preset").entries()) {
    button.setAttribute("aria-pressed", String(SIZE_PRESETS[index].id === sizePreset));
  }
}

/** Set the size from a loaded image: same aspect, within the model family's pixel budget, multiples of 8. */
function sizeFromImage(width, height) {
  const budget = FAMILY_PIXELS[isSdxl(selectedModel()) ? "sdxl" : "sd15"];
  const scale = Math.min(1, Math.sqrt(budget / (width * height)));
  const round = (value) => Math.max(64, Math.round((value * scale) / 8) * 8);
  setSize(round(width), round(height));
}

// -- images ----------------------------------------------------------------------------------------------------

async function readImage(blob) {
  const url = URL.createObjectURL(blob);
  const image = new Image();
  image.src = url;
  try {
    await image.decode();
  } catch {
    URL.revokeObjectURL(url);
    throw new ApiError(0, `${blob.name || "that file"} is not an image this browser can read`);
  }
  return { blob, url, width: image.naturalWidth, height: image.naturalHeight, name: blob.name || "image.png", element: image };
}

/** Make ``blob`` the picture of the img2img or Inpaint tab. */
export async function setSource(target, blob) {
  const fieldName = target === "inpaint" ? "inpaint_image" : "init_image";
  clearErrors(form);
  let source;
  try {
    source = await readImage(blob);
  } catch (error) {
    // The refused file replaces the previous picture: generating with the old one would surprise the user.
    dropSource(target);
    rejected[target] = true;
    updateSubmit();
    showFieldError(form, fieldName, error.message);
    return;
  }
  if (sources[target]) URL.revokeObjectURL(sources[target].url);
  sources[target] = source;
  rejected[target] = false;
  updateSubmit();
  if (target === "img2img") {
    const zone = $("#g-init-drop");
    const preview = zone.querySelector("img");
    preview.src = source.url;
    preview.hidden = false;
    zone.classList.add("has-image");
    zone.querySelector(".dropzone-text").innerHTML = "";
    zone.querySelector(".dropzone-text").append(
      h("strong", {}, source.name),
      ` · ${source.width}×${source.height} · choose or drop another`,
    );
  } else {
    maskEditor.setImage(source.url, source.width, source.height);
    uploadedMask = null;
    paintedMask = null;
    $("#i-mask-file").value = "";
    setMaskSource("paint");
  }
  if (mode === target) sizeFromImage(source.width, source.height);
}

/** Forget the picture of a tab (and its mask): nothing is shown, nothing is sent. */
function dropSource(target) {
  if (sources[target]) URL.revokeObjectURL(sources[target].url);
  sources[target] = null;
  if (target === "img2img") {
    const zone = $("#g-init-drop");
    const preview = zone.querySelector("img");
    preview.removeAttribute("src");
    preview.hidden = true;
    zone.classList.remove("has-image");
    zone.querySelector(".dropzone-text").replaceChildren(h("strong", {}, "Choose an image"), " or drop one here");
  } else {
    maskEditor.removeImage();
    uploadedMask = null;
    paintedMask = null;
  }
}

/** Generate is off while the tab's chosen file was refused, until a readable picture is chosen. */
function updateSubmit() {
  const submit = $("#g-submit");
  const blocked = (mode === "img2img" || mode === "inpaint") && rejected[mode];
  submit.disabled = blocked;
  submit.title = blocked ? "Choose a picture this browser can read first" : "";
}

function maskSource() {
  return $("input[name=mask_source]:checked").value;
}

/** Switch between painting and an uploaded mask; the painting is kept aside while an upload is shown. */
function setMaskSource(value) {
  const previous = maskEditor.readOnly ? "upload" : "paint";
  for (const radio of $$("input[name=mask_source]")) radio.checked = radio.value === value;
  $("#i-mask-upload-field").hidden = value !== "upload";
  $("#mask-tools").hidden = value !== "paint";
  maskEditor.readOnly = value !== "paint";
  if (value === previous) return;
  if (value === "upload") {
    paintedMask = maskEditor.snapshot();
    maskEditor.restore(null);
    if (uploadedMask && maskEditor.hasImage) maskEditor.showMask(uploadedMask.element);
  } else {
    maskEditor.restore(paintedMask);
  }
}

async function setUploadedMask(file) {
  clearErrors(form);
  try {
    const mask = await readImage(file);
    uploadedMask = mask;
    if (maskEditor.hasImage) maskEditor.showMask(mask.element);
  } catch (error) {
    uploadedMask = null;
    showFieldError(form, "mask_upload", error.message);
  }
}

// -- the request -----------------------------------------------------------------------------------------------

class FieldProblem extends Error {
  constructor(field, message) {
    super(message);
    this.field = field;
  }
}

function number(input, name, { integer = true } = {}) {
  const text = input.value.trim();
  const value = Number(text);
  if (text === "" || !Number.isFinite(value)) throw new FieldProblem(name, `${name} must be a number`);
  if (integer && !Number.isInteger(value)) throw new FieldProblem(name, `${name} must be a whole number`);
  return value;
}

async function buildRequest() {
  const body = {
    prompt: field.prompt.value,
    negative_prompt: field.negative.value,
    model: field.model.value || null,
    sampler: field.sampler.value || null,
    schedule_type: field.schedule.value || null,
    steps: number(field.steps, "steps"),
    cfg_scale: number(field.cfg, "cfg_scale", { integer: false }),
    seed: number(field.seed, "seed"),
    width: number(field.width, "width"),
    height: number(field.height, "height"),
    batch_size: number(field.batchSize, "batch_size"),
    batch_count: number(field.batchCount, "batch_count"),
  };
  if (mode === "img2img" || mode === "inpaint") {
    const source = sources[mode];
    if (!source) throw new FieldProblem(mode === "inpaint" ? "inpaint_image" : "init_image", "Choose an image first.");
    body.init_image = await dataUrl(source.blob);
    body.denoising_strength = number(field.denoise, "denoising_strength", { integer: false });
  }
  if (mode === "inpaint") {
    if (maskSource() === "upload") {
      if (!uploadedMask) throw new FieldProblem("mask_upload", "Choose a mask image: white where the picture should change.");
      body.mask = await dataUrl(uploadedMask.blob);
    } else if (maskEditor.hasMask()) {
      body.mask = maskEditor.toDataUrl();
    } else {
      throw new FieldProblem("mask", "Paint over the area to change, or upload a mask.");
    }
    body.mask_blur = number(field.maskBlur, "mask_blur");
    body.inpainting_fill = field.fill.value;
    body.inpaint_only_masked = field.onlyMasked.checked;
    body.inpaint_padding = number(field.padding, "inpaint_padding");
    body.mask_invert = field.invert.checked;
  }
  if ($("#g-tiling").checked) body.tiling = true;
  if ($("#g-fast").value !== "off") body.fast = $("#g-fast").value;
  if ($("#g-vae").value) body.vae = $("#g-vae").value;
  const styles = [...$$("#g-styles input:checked")].map((box) => box.value);
  if (styles.length) body.styles = styles;
  if (mode === "txt2img" && field.hires.checked) {
    body.enable_hr = true;
    body.hr_upscaler = field.hiresUpscaler.value;
    body.hr_scale = number(field.hiresScale, "hr_scale", { integer: false });
    body.hr_second_pass_steps = number(field.hiresSteps, "hr_second_pass_steps");
    body.denoising_strength = number(field.hiresDenoise, "hr_denoising_strength", { integer: false });
  }
  if (!$("#refiner-card").hidden && field.refiner.value) {
    body.refiner = field.refiner.value;
    body.refiner_switch_at = number(field.refinerSwitch, "refiner_switch_at", { integer: false });
    if (field.refinerPrompt.value.trim()) body.refiner_prompt = field.refinerPrompt.value;
    if (field.refinerNegative.value.trim()) body.refiner_negative_prompt = field.refinerNegative.value;
  }
  const controlnetUnits = await controlNetUnits();
  if (controlnetUnits) body.controlnet_units = controlnetUnits;
  return body;
}

function errorAliases() {
  const aliases = { lora: "prompt", body: null, ...controlNetErrorAliases() };
  // In txt2img the denoising strength is the hires pass's, in its own card.
  if (mode === "txt2img") aliases.denoising_strength = "hr_denoising_strength";
  if (mode === "inpaint") {
    aliases.init_image = "inpaint_image";
    if (maskSource() === "upload") aliases.mask = "mask_upload";
  }
  return aliases;
}

/** The form as a request, or null after showing the problem at its field. */
async function readForm() {
  clearErrors(form);
  try {
    return await buildRequest();
  } catch (problem) {
    if (problem instanceof FieldProblem) showFieldError(form, problem.field, problem.message);
    else showError(form, problem);
    return null;
  }
}

export async function generate() {
  const body = await readForm();
  if (!body) return;
  const submit = $("#g-submit");
  submit.disabled = true;
  try {
    const job = await api.post("/api/generate", body);
    trackJob(job, mode, body.prompt);
  } catch (error) {
    showError(form, error, errorAliases());
  } finally {
    updateSubmit();
  }
}

// -- progress --------------------------------------------------------------------------------------------------

function trackJob(job, jobMode, prompt) {
  const status = h("p", { class: "status-line" }, describeJob(job));
  const bar = progressBar(0, "Generation progress");
  const cancel = h("button", { type: "button", class: "btn btn-quiet btn-danger", "data-action": "cancel" }, "Cancel");
  const entry = h(
    "div",
    { class: "job-entry card", "data-job": job.id, "data-state": job.state },
    h("div", { class: "job-entry-head" },
      h("span", { class: "job-mode" }, jobMode),
      h("span", { class: "job-prompt", title: prompt }, prompt || "(empty prompt)"),
      cancel),
    h("div", { class: "progress-line" }, bar),
    status,
  );
  // The live preview: a cheap decode of the latents every few steps, sent with the progress events.
  const preview = h("img", { class: "live-preview", alt: "Live preview of the image as it forms", hidden: true });
  entry.append(preview);
  const controller = new AbortController();
  activeJobs.set(job.id, { entry, controller });
  cancel.addEventListener("click", async () => {
    cancel.disabled = true;
    try {
      update(await api.post(`/api/jobs/${job.id}/cancel`));
    } catch (error) {
      toast(error.message, "error");
      cancel.disabled = false;
    }
  });
  $("#jobs-strip").prepend(entry);

  function update(snapshot) {
    entry.dataset.state = snapshot.state;
    status.textContent = describeJob(snapshot);
    setProgress(bar, snapshot.progress);
    const picture = snapshot.info?.preview;
    if (picture && snapshot.state === "running" && preview.getAttribute("src") !== picture) {
      preview.src = picture;
      preview.hidden = false;
    } else if (snapshot.state !== "running") {
      preview.hidden = true;
    }
  }

  followJob(job.id, update, controller.signal)
    .then((final) => finish(final, update))
    .catch((error) => {
      if (error.name !== "AbortError") status.textContent = error.message;
    });
}

async function finish(final, update) {
  update(final);
  const record = activeJobs.get(final.id);
  const entry = record.entry;
  entry.querySelector("[data-action=cancel]").remove();
  if (final.state === "succeeded") {
    const results = await api.get(`/api/jobs/${final.id}/results`);
    await showResults(final.id, results.images);
    setTimeout(() => removeJob(final.id), 1500);
  } else if (final.state === "canceled") {
    setTimeout(() => removeJob(final.id), 2500);
  } else {
    // A job the worker refused for a reason the user can fix names its field, like a refused request.
    const fieldName = final.info?.error_field;
    if (final.info?.user_error && fieldName) {
      showError(form, new ApiError(422, final.error, fieldName), errorAliases());
    }
    entry.append(h("button", { type: "button", class: "btn btn-quiet", onclick: () => removeJob(final.id) }, "Dismiss"));
  }
  onJobFinished(final);
}

function removeJob(jobId) {
  const record = activeJobs.get(jobId);
  if (!record) return;
  record.controller.abort();
  record.entry.remove();
  activeJobs.delete(jobId);
}

// -- results ---------------------------------------------------------------------------------------------------

export function imagesOfJob(jobId, images) {
  return images.map((image) => ({ ...image, url: image.url || fileUrl(image.key), jobId }));
}

async function showResults(jobId, images) {
  const list = imagesOfJob(jobId, images);
  if (list.length) lastSeed = list[0].seed;
  const gallery = $("#gallery");
  const tiles = list.map((image, index) => {
    const img = h("img", { alt: `Result ${index + 1}, seed ${image.seed}`, loading: "lazy" });
    fileObjectUrl(image.url).then((url) => {
      img.src = url;
    }).catch((error) => toast(error.message, "error"));
    return h(
      "button",
      { type: "button", class: "tile", "data-seed": String(image.seed), onclick: () => openViewer(list, index) },
      img,
      h("span", { class: "tile-caption" }, `seed ${image.seed}`),
    );
  });
  gallery.replaceChildren(...tiles);
  gallery.dataset.job = jobId;
  gallery.classList.toggle("single", list.length === 1);
  $("#gallery-caption").textContent = `job ${shortId(jobId)} · ${list.length} image${list.length === 1 ? "" : "s"}`;
}

// -- parameters from a PNG -------------------------------------------------------------------------------------

const TEXT_PARAMETERS = [
  ["Prompt", "prompt"],
  ["Negative prompt", "negative"],
  ["Refiner prompt", "refinerPrompt"],
  ["Refiner negative prompt", "refinerNegative"],
];
const NUMBER_PARAMETERS = [
  ["Steps", "steps"],
  ["CFG scale", "cfg"],
  ["Seed", "seed"],
  ["Size-1", "width"],
  ["Size-2", "height"],
  ["Denoising strength", "denoise"],
  ["Mask blur", "maskBlur"],
  ["Masked area padding", "padding"],
  ["Refiner switch at", "refinerSwitch"],
];

function selectIfOffered(select, value) {
  if ([...select.options].some((option) => option.value === value)) {
    select.value = value;
    return true;
  }
  return false;
}

/** Fill the form from A1111 infotext parameters (as /sdapi/v1/png-info parses them). */
export function applyParameters(parameters) {
  const notes = [];
  for (const [key, name] of TEXT_PARAMETERS) {
    if (typeof parameters[key] === "string") field[name].value = parameters[key];
  }
  if (parameters.Model || parameters["Model hash"]) {
    // Infotexts name the model as it was shown (with a label such as the demo's) and by its short hash.
    const hash = String(parameters["Model hash"] || "").toLowerCase();
    const model = catalog.checkpoints.find(
      (item) => item.name === parameters.Model || item.display_name === parameters.Model || (hash && item.sha256.startsWith(hash)),
    );
    if (!model || !selectIfOffered(field.model, model.name)) {
      notes.push(`model ${parameters.Model || hash} is not in this studio`);
    }
  }
  modelChanged();
  if (parameters.Sampler && selectIfOffered(field.sampler, parameters.Sampler)) renderScheduleTypes();
  else if (parameters.Sampler) notes.push(`sampler ${parameters.Sampler} is not available`);
  if (parameters["Schedule type"]) selectIfOffered(field.schedule, parameters["Schedule type"]);
  for (const [key, name] of NUMBER_PARAMETERS) {
    if (parameters[key] !== undefined && parameters[key] !== "" && !Number.isNaN(Number(parameters[key]))) {
      field[name].value = Number(parameters[key]);
      field[name].dispatchEvent(new Event("input"));
    }
  }
  if (parameters["Masked content"]) selectIfOffered(field.fill, parameters["Masked content"]);
  field.onlyMasked.checked = parameters["Inpaint area"] === "Only masked";
  field.invert.checked = parameters["Mask mode"] === "Inpaint not masked";
  matchPreset();
  return notes;
}

export async function loadSettingsFromPng(blob) {
  try {
    const info = await api.post("/sdapi/v1/png-info", { image: await dataUrl(blob) });
    if (!info.info) {
      toast(`${blob.name || "That image"} has no generation parameters.`, "error");
      return;
    }
    const notes = applyParameters(info.parameters);
    const seed = info.parameters.Seed ? ` (seed ${info.parameters.Seed})` : "";
    toast(`Loaded the settings of ${blob.name || "the image"}${seed}${notes.length ? `; ${notes.join("; ")}` : ""}.`);
  } catch (error) {
    toast(error.message, "error");
  }
}

// -- prompt helpers --------------------------------------------------------------------------------------------

/** Insert ``text`` into the prompt at the cursor (or the end), with the spacing a prompt needs. */
export function insertIntoPrompt(text) {
  const prompt = field.prompt;
  const start = prompt.selectionStart ?? prompt.value.length;
  const end = prompt.selectionEnd ?? start;
  const before = prompt.value.slice(0, start);
  const after = prompt.value.slice(end);
  const glueBefore = before && !/[\s,]$/.test(before) ? ", " : "";
  const glueAfter = after && !/^[\s,]/.test(after) ? " " : "";
  prompt.value = `${before}${glueBefore}${text}${glueAfter}${after}`;
  const cursor = (before + glueBefore + text).length;
  prompt.focus();
  prompt.setSelectionRange(cursor, cursor);
}

export function insertLora(name, weight = 0.8) {
  insertIntoPrompt(`<lora:${name}:${weight}>`);
}

/** "Use this LoRA": its tag, and its trigger word when the prompt lacks it, at the end of the prompt. */
export function addLoraToPrompt(name, trigger) {
  const prompt = field.prompt;
  prompt.setSelectionRange(prompt.value.length, prompt.value.length);
  if (trigger && !prompt.value.toLowerCase().includes(trigger.toLowerCase())) insertIntoPrompt(trigger);
  insertLora(name);
}

// -- mode ------------------------------------------------------------------------------------------------------

export function setMode(next) {
  mode = next;
  panel.dataset.mode = next;
  panel.setAttribute("aria-labelledby", `tab-${next}`);
  for (const card of $$(".mode-only", panel)) {
    card.hidden = !card.dataset.modes.split(" ").includes(next);
  }
  clearErrors(form);
  modelChanged();
  updateSubmit();
  const source = sources[next];
  if (source) sizeFromImage(source.width, source.height);
}

// -- X/Y/Z plot ------------------------------------------------------------------------------------------------

/** The form's request in A1111's names, for /sdapi/v1/txt2img (where the X/Y/Z plot script lives). */
function a1111Body(body) {
  const { model, sampler, schedule_type: scheduler, batch_count: _count, hr_sampler: hrSampler, ...rest } = body;
  return {
    ...rest,
    batch_size: 1,
    n_iter: 1,
    sampler_name: sampler || undefined,
    scheduler: scheduler || undefined,
    hr_sampler_name: hrSampler || undefined,
    override_settings: model ? { sd_model_checkpoint: model } : {},
  };
}

async function runXyz() {
  const body = await readForm();
  if (!body) return;
  const yType = $("#xyz-y-type").value;
  const scriptArgs = [
    $("#xyz-x-type").value, $("#xyz-x-values").value, [],
    yType, yType === "Nothing" ? "" : $("#xyz-y-values").value, [],
    "Nothing", "", [],
    true, false, false, false, false, false, false, 0, false,
  ];
  const button = $("#xyz-run");
  button.disabled = true;
  $("#xyz-status").textContent = "Generating every cell…";
  try {
    const answer = await api.post("/sdapi/v1/txt2img", { ...a1111Body(body), script_name: "x/y/z plot", script_args: scriptArgs });
    const info = JSON.parse(answer.info);
    const url = `data:image/png;base64,${answer.images[0]}`;
    const gallery = $("#gallery");
    gallery.replaceChildren(
      h("figure", { class: "xyz-result" },
        h("img", { src: url, alt: `X/Y/Z plot: ${$("#xyz-x-type").value} by ${yType}` }),
        h("figcaption", {}, h("a", { class: "btn btn-quiet", href: url, download: "xyz-grid.png" }, "Download the grid"))),
    );
    gallery.classList.add("single");
    $("#gallery-caption").textContent = `X/Y/Z plot · seed ${info.seed}`;
    $("#xyz-status").textContent = "";
  } catch (error) {
    $("#xyz-status").textContent = "";
    showError(form, error, { sampler_name: "sampler", scheduler: "schedule_type", sd_model_checkpoint: "model", script_args: null });
  } finally {
    button.disabled = false;
  }
}

// -- styles ----------------------------------------------------------------------------------------------------

/** Saved styles as checkboxes; the checked ones are applied, in list order, when generating. */
function renderStyles() {
  const list = $("#g-styles");
  const checked = new Set([...$$("#g-styles input:checked")].map((box) => box.value));
  list.replaceChildren(
    h("legend", { class: "visually-hidden" }, "Styles to apply"),
    ...(catalog.styles.length
      ? catalog.styles.map((style) =>
          h(
            "label",
            { class: "check", title: [style.prompt, style.negative_prompt && `Negative: ${style.negative_prompt}`].filter(Boolean).join("\n") },
            h("input", { type: "checkbox", value: style.name, checked: checked.has(style.name), onchange: countStyles }),
            ` ${style.name}`,
          ),
        )
      : [h("p", { class: "hint" }, "No saved styles yet: write a prompt below and save it as a style.")]),
  );
  countStyles();
}

function countStyles() {
  const count = $$("#g-styles input:checked").length;
  $("#g-styles-count").textContent = count ? `· ${count} on` : "";
}

async function saveStyle() {
  clearErrors(form);
  const name = $("#g-style-name").value.trim();
  if (!name) {
    showFieldError(form, "name", "Give the style a name.");
    return;
  }
  try {
    await api.post("/api/styles", { name, prompt: field.prompt.value, negative_prompt: field.negative.value });
    $("#g-style-name").value = "";
    toast(`Style “${name}” saved.`);
    await refreshStyles();
  } catch (error) {
    showError(form, error);
  }
}

/** A1111's Interrogate: the studio's captioning model describes the source image, and that becomes the prompt. */
async function interrogate() {
  clearErrors(form);
  const source = sources.img2img;
  if (!source) {
    showFieldError(form, "init_image", "Choose an image first.");
    return;
  }
  const button = $("#g-interrogate");
  button.disabled = true;
  try {
    const answer = await api.post("/sdapi/v1/interrogate", { image: await dataUrl(source.blob), model: "clip" });
    field.prompt.value = answer.caption || "";
    toast("The caption is in the prompt.");
  } catch (error) {
    // Its "model" is the captioning model, not the checkpoint picker: say it under the source image.
    showError(form, error, { model: "init_image", image: "init_image" });
  } finally {
    button.disabled = false;
  }
}

/** The final size of a hires-fix generation, as the engine computes it (rounded down to multiples of 8). */
function showHiresSize() {
  const scale = Number(field.hiresScale.value);
  const width = Math.floor((Number(field.width.value) * scale) / 8) * 8;
  const height = Math.floor((Number(field.height.value) * scale) / 8) * 8;
  $("#h-size").textContent = Number.isFinite(width) && Number.isFinite(height) ? `Final size: ${width}×${height}` : "";
}

export function isGenerateMode(name) {
  return name === "txt2img" || name === "img2img" || name === "inpaint";
}

// -- wiring ----------------------------------------------------------------------------------------------------

export function initGenerate({ selectTab, afterJob }) {
  onJobFinished = afterJob;
  catalog.addEventListener("change", renderCatalog);
  pairSlider($("#g-steps-range"), field.steps);
  pairSlider($("#g-cfg-range"), field.cfg);
  pairSlider($("#g-denoise-range"), field.denoise);
  field.model.addEventListener("change", modelChanged);
  catalog.addEventListener("change", renderStyles);
  $("#g-style-save").addEventListener("click", saveStyle);
  $("#xyz-run").addEventListener("click", runXyz);
  for (const input of [field.hiresScale, field.width, field.height]) input.addEventListener("input", showHiresSize);
  showHiresSize();
  field.sampler.addEventListener("change", renderScheduleTypes);
  field.width.addEventListener("input", matchPreset);
  field.height.addEventListener("input", matchPreset);
  $("#g-swap-size").addEventListener("click", () => setSize(field.height.value, field.width.value));
  field.lora.addEventListener("change", () => {
    if (field.lora.value) insertLora(field.lora.value);
    field.lora.value = "";
  });
  $("#g-seed-random").addEventListener("click", () => {
    field.seed.value = -1;
  });
  $("#g-seed-reuse").addEventListener("click", () => {
    if (lastSeed === null) toast("No image yet: generate one first.");
    else field.seed.value = lastSeed;
  });

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    generate();
  });
  document.addEventListener("keydown", (event) => {
    if ((event.ctrlKey || event.metaKey) && event.key === "Enter" && !panel.hidden && !document.querySelector("dialog[open]")) {
      event.preventDefault();
      generate();
    }
  });

  $("#g-init-file").addEventListener("change", (event) => {
    if (event.target.files[0]) setSource("img2img", event.target.files[0]);
  });
  acceptDrops($("#g-init-drop"), (file) => setSource("img2img", file));
  $("#g-interrogate").addEventListener("click", interrogate);
  $("#i-image-file").addEventListener("change", (event) => {
    if (event.target.files[0]) setSource("inpaint", event.target.files[0]);
  });
  acceptDrops($("#mask-editor"), (file) => setSource("inpaint", file));
  $("#i-mask-file").addEventListener("change", (event) => {
    if (event.target.files[0]) setUploadedMask(event.target.files[0]);
  });
  for (const radio of $$("input[name=mask_source]")) {
    radio.addEventListener("change", () => setMaskSource(radio.value));
  }
  for (const radio of $$("input[name=mask_tool]")) {
    radio.addEventListener("change", () => {
      maskEditor.tool = radio.value;
    });
  }
  const brush = $("#i-brush-size");
  brush.addEventListener("input", () => {
    maskEditor.brushSize = Number(brush.value);
    $("#i-brush-size-out").textContent = brush.value;
  });
  $("#i-undo").addEventListener("click", () => maskEditor.undo());
  $("#i-clear").addEventListener("click", () => maskEditor.clear());
  maskEditor.addEventListener("change", () => {
    const fieldElement = form.querySelector("[data-field=mask]");
    if (maskEditor.painted && fieldElement.classList.contains("has-error")) clearErrors(form);
  });

  $("#g-load-png").addEventListener("click", () => $("#g-load-png-file").click());
  $("#g-load-png-file").addEventListener("change", (event) => {
    if (event.target.files[0]) loadSettingsFromPng(event.target.files[0]);
    event.target.value = "";
  });

  // Pasting or dropping a PNG anywhere else on the generate tabs loads the settings written into it.
  document.addEventListener("paste", (event) => {
    if (panel.hidden) return;
    const file = [...(event.clipboardData?.files || [])].find((item) => item.type.startsWith("image/"));
    if (!file) return;
    event.preventDefault();
    if (event.target.closest?.("#g-init-drop")) setSource("img2img", file);
    else if (event.target.closest?.("#mask-editor")) setSource("inpaint", file);
    else loadSettingsFromPng(file);
  });
  const overlay = $("#drop-overlay");
  panel.addEventListener("dragover", (event) => {
    if (![...(event.dataTransfer?.types || [])].includes("Files")) return;
    event.preventDefault();
    overlay.hidden = false;
  });
  panel.addEventListener("dragleave", (event) => {
    if (!panel.contains(event.relatedTarget)) overlay.hidden = true;
  });
  panel.addEventListener("drop", (event) => {
    event.preventDefault();
    overlay.hidden = true;
    const file = [...(event.dataTransfer?.files || [])].find((item) => item.type.startsWith("image/"));
    if (file) loadSettingsFromPng(file);
  });
  for (const zone of [$("#g-init-drop"), $("#mask-editor")]) {
    zone.addEventListener("dragover", () => {
      overlay.hidden = true;
    });
  }

  configureViewer({
    reuseSeed: (image) => {
      field.seed.value = image.seed;
      toast(`Seed ${image.seed} is set.`);
    },
    useSettings: async (image, blob) => {
      await loadSettingsFromPng(new File([blob], image.key.split("/").pop(), { type: "image/png" }));
    },
    sendTo: async (target, image, blob) => {
      selectTab(target);
      await setSource(target, new File([blob], image.key.split("/").pop(), { type: "image/png" }));
    },
  });
  initControlNet();
  setMode("txt2img");
}
