// The Product shot tab: a product photo is cut out (POST /api/product-shots with cutout_only), its mask can be
// edited with the mask editor (white = product), then a scene is generated around the exact product
// (POST /api/product-shots), with a shadow, expanded to channels and upscaled. Progress comes from the job's
// events; results from /api/jobs/{id}/results. A result opens in the viewer and can be sent to the Ads tab.

import { addMaterial } from "./ads.js";
import { ApiError, api, dataUrl, fileBlob, fileObjectUrl, followJob } from "./api.js";
import { catalog, findCheckpoint } from "./catalog.js";
import { $, $$, acceptDrops, describeJob, h, setProgress, shortId, toast } from "./dom.js";
import { clearErrors, showError, showFieldError } from "./fields.js";
import { MaskEditor } from "./maskeditor.js";
import { openViewer } from "./viewer.js";

const KIND_GROUPS = [
  { kind: "shot", title: "Shots" },
  { kind: "channel", title: "Channels" },
  { kind: "upscale", title: "Upscaled" },
];
// The API names some fields as the campaign library does; the form shows them on these fields.
const ERROR_ALIASES = {
  scale: "upscale_by",
  units: "shadow",
  color: "shadow",
  contact_opacity: "shadow",
  contact_softness: "shadow",
  contact_height: "shadow",
  size: "width",
  anchor: "channels",
};

const form = $("#product-form");
const maskEditor = new MaskEditor($("#p-mask-editor"));
let selectTab = () => {};
let photo = null; // {dataUrl, url, width, height, name}
let cutout = null; // {maskUrl, cutoutUrl, maskImage, maskDataUrl, segmentation, resend}
let maskEdited = false; // the user painted on the mask since it was last set
// The job each part of the tab follows: {id, controller, photoVersion, sentMask (the job was given a mask)}.
const following = { cutout: null, shots: null };
let listsLoading = null;
let sizeTouched = false;
let photoVersion = 0; // which photo a finished job belongs to: a new photo makes older cut-outs stale
let scenes = [];

// -- lists: models, scenes, channels, segmentation models -----------------------------------------------------

function fillSelect(select, options, keep) {
  const previous = keep ?? select.value;
  select.replaceChildren(...options.map(([value, label]) => h("option", { value }, label)));
  if (options.some(([value]) => value === previous)) select.value = previous;
}

function isSdxlModel(model) {
  return Boolean(model) && (model.family === "sdxl" || String(model.architecture || "").startsWith("sdxl"));
}

function renderModels() {
  const select = $("#p-model");
  const checkpoints = catalog.checkpoints.filter((model) => model.architecture !== "sdxl-refiner");
  fillSelect(
    select,
    checkpoints.map((model) => [model.name, `${model.name} · ${model.architecture}${model.source === "demo" ? " · demo" : ""}`]),
    select.value || catalog.currentModel,
  );
  modelChanged();
}

/** The model's own size (512 for SD 1.5, 1024 for SDXL) until the user types a size of their own. */
function modelChanged() {
  if (sizeTouched) return;
  const side = isSdxlModel(findCheckpoint($("#p-model").value)) ? 1024 : 512;
  $("#p-width").value = side;
  $("#p-height").value = side;
}

function renderScenes() {
  fillSelect($("#p-scene"), scenes.map((scene) => [scene.name, scene.title]), $("#p-scene").value || "studio");
  sceneChanged();
}

function sceneChanged() {
  const scene = scenes.find((item) => item.name === $("#p-scene").value);
  $("#p-scene-hint").textContent = scene ? scene.prompt : "";
  $("#p-prompt").placeholder = scene ? `empty: ${scene.prompt}` : "empty: the preset's prompt";
  $("#p-negative").placeholder = scene && scene.negative ? `empty: ${scene.negative}` : "empty: the preset's negative prompt";
}

function renderChannels(channels) {
  const checked = new Set($$("#p-channels input:checked").map((box) => box.value));
  $("#p-channels").replaceChildren(
    ...channels.map((channel) =>
      h(
        "label",
        { class: "check" },
        h("input", { type: "checkbox", name: "product_channel", value: channel.name, checked: checked.has(channel.name) }),
        ` ${channel.name[0].toUpperCase()}${channel.name.slice(1)} ${channel.width}×${channel.height}`,
      ),
    ),
  );
}

function renderSegmentationModels(models) {
  const select = $("#p-seg");
  fillSelect(select, [["", models.length ? `Automatic (${models[0].name})` : "None installed"], ...models.map((model) => [model.name, model.name])]);
  select.disabled = models.length === 0;
  $("#p-seg-hint").textContent = models.length
    ? "Cuts out photos without transparency. Its licence is shown with the cut-out."
    : "No segmentation model in models/segmentation/: upload a cut-out with transparency, or paint the product's mask after choosing the photo.";
}

/** Load what the tab offers once (again after a failure, e.g. before the API key was given). */
export function refreshProduct() {
  renderModels();
  if (!listsLoading) {
    listsLoading = Promise.all([
      api.get("/api/product/scenes"),
      api.get("/api/product/channels"),
      api.get("/api/product/segmentation-models"),
    ])
      .then(([sceneAnswer, channelAnswer, segmentationAnswer]) => {
        scenes = sceneAnswer.scenes;
        renderScenes();
        renderChannels(channelAnswer.channels);
        renderSegmentationModels(segmentationAnswer.models);
      })
      .catch((error) => {
        listsLoading = null;
        if (error.status !== 401) toast(error.message, "error");
      });
  }
  return listsLoading;
}

// -- the photo and its cut-out ----------------------------------------------------------------------------------

function readImage(file) {
  return new Promise((resolve, reject) => {
    const url = URL.createObjectURL(file);
    const image = new Image();
    image.onload = () => resolve({ url, width: image.naturalWidth, height: image.naturalHeight, name: file.name });
    image.onerror = () => {
      URL.revokeObjectURL(url);
      reject(new Error(`${file.name} is not an image this browser can read (use PNG, WebP or JPEG)`));
    };
    image.src = url;
  });
}

function loadedImage(url) {
  return new Promise((resolve, reject) => {
    const image = new Image();
    image.onload = () => resolve(image);
    image.onerror = () => reject(new Error("the mask could not be read"));
    image.src = url;
  });
}

async function setPhoto(file) {
  clearErrors(form);
  let source;
  try {
    source = await readImage(file);
  } catch (error) {
    dropPhoto();
    showFieldError(form, "photo", error.message);
    return;
  }
  if (photo) URL.revokeObjectURL(photo.url);
  photo = { ...source, dataUrl: await dataUrl(file) };
  photoVersion += 1;
  const zone = $("#p-photo-drop");
  const preview = zone.querySelector("img");
  preview.src = photo.url;
  preview.alt = `The product photo, ${photo.name}`;
  preview.hidden = false;
  zone.classList.add("has-image");
  zone.querySelector(".dropzone-text").replaceChildren(h("strong", {}, photo.name), ` · ${photo.width}×${photo.height} · choose or drop another`);
  resetCutout();
  maskEditor.setImage(photo.url, photo.width, photo.height);
  maskEdited = false;
  $("#p-cutout-card").hidden = false;
  $("#p-cutout").disabled = false;
}

function dropPhoto() {
  if (photo) URL.revokeObjectURL(photo.url);
  photo = null;
  photoVersion += 1;
  const zone = $("#p-photo-drop");
  const preview = zone.querySelector("img");
  preview.removeAttribute("src");
  preview.hidden = true;
  zone.classList.remove("has-image");
  zone.querySelector(".dropzone-text").replaceChildren(h("strong", {}, "Choose a product photo"), " or drop one here");
  maskEditor.removeImage();
  resetCutout();
  $("#p-cutout-card").hidden = true;
  $("#p-cutout").disabled = true;
}

function resetCutout() {
  cutout = null;
  maskEdited = false;
  $("#p-cutout-figure").hidden = true;
  $("#p-cutout-image").removeAttribute("src");
  $("#p-seg-licence").textContent = "";
  $("#p-cutout-status").textContent = "";
  $("#p-reset").disabled = true;
}

function licenceText(model) {
  if (!model) return "";
  const source = model.source ? ` · source: ${model.source}` : "";
  return `Cut out by the segmentation model ${model.name} · licence: ${model.license || "not recorded"}${source}`;
}

/**
 * Show a job's cut-out (on a checkerboard) and put its mask in the editor. ``sentMask``: the job was given a
 * painted mask, which later requests must send again (the photo alone does not say where the product is).
 */
async function showCutout(results, sentMask) {
  const [cutoutUrl, maskUrl] = await Promise.all([fileObjectUrl(results.cutout_url), fileObjectUrl(results.mask_url)]);
  const maskImage = await loadedImage(maskUrl);
  cutout = {
    cutoutUrl,
    maskUrl,
    maskImage,
    maskDataUrl: await dataUrl(await fileBlob(results.mask_url)),
    segmentation: results.segmentation_model,
    resend: sentMask || Boolean(results.segmentation_model),
  };
  $("#p-cutout-image").src = cutoutUrl;
  $("#p-cutout-figure").hidden = false;
  $("#p-seg-licence").textContent = licenceText(results.segmentation_model);
  if (maskEditor.hasImage) {
    maskEditor.remember();
    maskEditor.showMask(maskImage);
  }
  maskEdited = false;
  $("#p-reset").disabled = false;
}

/**
 * The mask to send: the painted one when edited; else the cut-out's when it came from a segmentation model (so
 * the model is not run again) or from a painted mask; else none (the photo's transparency is the product).
 */
function maskToSend() {
  if (maskEdited) return maskEditor.hasMask() ? maskEditor.toDataUrl() : "";
  if (cutout && cutout.resend) return cutout.maskDataUrl;
  return null;
}

function requestBase() {
  const body = { photo: photo.dataUrl };
  const mask = maskToSend();
  if (mask) body.mask = mask;
  const model = $("#p-model").value;
  if (model) body.model = model;
  const segmentation = $("#p-seg").value;
  if (segmentation && !body.mask) body.segmentation_model = segmentation;
  return body;
}

function checkInputs() {
  if (!photo) {
    showFieldError(form, "photo", "Choose a product photo first.");
    return false;
  }
  if (maskToSend() === "") {
    showFieldError(form, "mask", "The mask is empty: paint the product with Add, or reset it to the cut-out.");
    return false;
  }
  return true;
}

async function startCutout() {
  clearErrors(form);
  if (!checkInputs()) return;
  await submit({ ...requestBase(), cutout_only: true }, "cutout");
}

// -- generate ---------------------------------------------------------------------------------------------------

function numberValue(selector) {
  const text = $(selector).value.trim();
  return text === "" ? null : Number(text);
}

function shadowSettings() {
  if (!$("#p-shadow").checked) return null;
  const shadow = {
    distance: Number($("#p-shadow-distance").value) / 100,
    softness: Number($("#p-shadow-softness").value) / 100,
    opacity: Number($("#p-shadow-opacity").value) / 100,
  };
  const direction = $("#p-shadow-direction").value;
  if (direction !== "") shadow.direction = Number(direction);
  return shadow;
}

function selectedChannels() {
  const names = $$("#p-channels input:checked").map((box) => box.value);
  const custom = $("#p-custom").value.split(",").map((part) => part.trim()).filter(Boolean);
  return [...names, ...custom];
}

function shotRequest() {
  const body = {
    ...requestBase(),
    scene: $("#p-scene").value || "studio",
    product: $("#p-product").value.trim(),
    count: numberValue("#p-count") ?? 1,
    seed: numberValue("#p-seed") ?? -1,
    steps: numberValue("#p-steps") ?? 30,
    width: numberValue("#p-width"),
    height: numberValue("#p-height"),
    shadow: shadowSettings(),
    channels: selectedChannels(),
  };
  const prompt = $("#p-prompt").value.trim();
  if (prompt) body.prompt = prompt;
  const negative = $("#p-negative").value.trim();
  if (negative) body.negative_prompt = negative;
  const upscale = $("#p-upscale").value;
  if (upscale) body.upscale_by = Number(upscale);
  return body;
}

function updateSummary() {
  const count = Math.max(1, numberValue("#p-count") || 1);
  const channels = selectedChannels().length;
  const upscale = $("#p-upscale").value ? 1 : 0;
  const total = count * (1 + channels + upscale);
  const plural = (n, word) => `${n} ${word}${n === 1 ? "" : "s"}`;
  const parts = [plural(count, "shot")];
  if (channels) parts.push(plural(count * channels, "channel version"));
  if (upscale) parts.push(`${count} upscaled`);
  $("#p-summary").textContent = `${plural(total, "picture")}: ${parts.join(", ")}`;
}

/** An API error at its field; a refused channel is most often a typed size, so the custom field is marked too. */
function showApiError(error) {
  showError(form, error, ERROR_ALIASES);
  const line = $("[data-field=channels] > .field-error", form);
  if (error.field !== "channels" || !line) return;
  const custom = $("#p-custom");
  custom.setAttribute("aria-invalid", "true");
  const described = (custom.getAttribute("aria-describedby") || "").split(" ").filter(Boolean);
  if (!described.includes(line.id)) custom.setAttribute("aria-describedby", [...described, line.id].join(" "));
}

async function submit(body, kind) {
  const buttons = [$("#p-submit"), $("#p-cutout")];
  for (const button of buttons) button.disabled = true;
  try {
    const job = await api.post("/api/product-shots", body);
    follow(job, kind, Boolean(body.mask));
  } catch (error) {
    if (error.status === 401) return;
    showApiError(error);
  } finally {
    $("#p-submit").disabled = false;
    $("#p-cutout").disabled = !photo;
  }
}

function follow(job, kind, sentMask) {
  following[kind]?.controller.abort();
  const controller = new AbortController();
  following[kind] = { id: job.id, controller, photoVersion, sentMask };
  const status = kind === "cutout" ? $("#p-cutout-status") : $("#p-job-status");
  if (kind === "shots") {
    $("#p-job").hidden = false;
    $("#p-job-cancel").hidden = false;
    $("#p-job-cancel").disabled = false;
    // In one column (phones, tablets) the results are below the form: bring the progress into view.
    if (window.matchMedia("(max-width: 1080px)").matches) $("#p-job").scrollIntoView({ block: "center" });
  }
  const update = (snapshot) => {
    status.textContent = kind === "cutout" ? cutoutStatus(snapshot) : describeJob(snapshot);
    if (kind === "shots") {
      setProgress($("#p-job-bar"), snapshot.progress);
      $("#p-job").dataset.state = snapshot.state;
    }
  };
  update(job);
  followJob(job.id, update, controller.signal)
    .then((final) => finish(final, kind, update))
    .catch((error) => {
      if (error.name !== "AbortError") status.textContent = error.message;
    });
}

function cutoutStatus(snapshot) {
  if (snapshot.state === "succeeded") return "Cut out.";
  if (snapshot.state === "queued" || snapshot.state === "running") return "Cutting out…";
  return describeJob(snapshot);
}

async function finish(final, kind, update) {
  update(final);
  const samePhoto = following[kind]?.photoVersion === photoVersion;
  const sentMask = Boolean(following[kind]?.sentMask);
  if (following[kind]?.id === final.id) following[kind] = null;
  if (kind === "shots") $("#p-job-cancel").hidden = true;
  if (final.state === "succeeded") {
    const results = await api.get(`/api/jobs/${final.id}/results`);
    if (samePhoto && (kind === "cutout" || !cutout)) await showCutout(results, sentMask);
    if (kind === "shots") showResults(final.id, results);
  } else if (final.state === "failed" && final.info?.user_error && final.info?.error_field) {
    // A job the worker refused for a reason the user can fix names its field, like a refused request.
    showApiError(new ApiError(422, final.error, final.info.error_field));
  }
}

async function cancelJob() {
  const job = following.shots;
  if (!job) return;
  $("#p-job-cancel").disabled = true;
  try {
    await api.post(`/api/jobs/${job.id}/cancel`);
  } catch (error) {
    toast(error.message, "error");
    $("#p-job-cancel").disabled = false;
  }
}

// -- results ----------------------------------------------------------------------------------------------------

function imageTitle(image) {
  if (image.kind === "channel") {
    const custom = /^\d+x\d+$/.test(image.channel || "");
    return `${custom ? "custom size" : image.channel} · ${image.width}×${image.height}`;
  }
  if (image.kind === "upscale") return `upscaled · ${image.width}×${image.height}`;
  return `seed ${image.seed} · ${image.width}×${image.height}`;
}

function sendToAds(image) {
  addMaterial(image.key, `Product shot ${imageTitle(image)}`);
  selectTab("ads");
  toast("Added to the ad's materials.");
}

function showResults(jobId, results) {
  const list = KIND_GROUPS.flatMap((group) => results.images.filter((image) => image.kind === group.kind)).map((image) => ({ ...image, jobId }));
  const sections = KIND_GROUPS.map((group) => {
    const images = list.filter((image) => image.kind === group.kind);
    if (!images.length) return null;
    return h(
      "section",
      { class: "product-group", "data-kind": group.kind, "aria-label": group.title },
      h("h3", { class: "small-title" }, group.title),
      h(
        "div",
        { class: "product-grid" },
        images.map((image) => {
          const index = list.indexOf(image);
          const title = imageTitle(image);
          const img = h("img", { alt: `${group.title}: ${title}`, loading: "lazy" });
          fileObjectUrl(image.url).then((url) => (img.src = url)).catch((error) => toast(error.message, "error"));
          return h(
            "figure",
            { class: "product-result", "data-kind": image.kind, "data-key": image.key },
            h("button", { type: "button", class: "tile product-open", title: "Open in the viewer", "aria-label": `Open ${group.title.toLowerCase()} ${title} in the viewer`, onclick: () => openViewer(list, index) }, img),
            h(
              "figcaption",
              {},
              h("span", { class: "product-result-title" }, title),
              image.note ? h("span", { class: "product-note" }, image.note) : null,
            ),
            h("button", { type: "button", class: "btn btn-quiet", "data-action": "ads", "aria-label": `Send ${title} to Ads`, onclick: () => sendToAds(image) }, "Send to Ads"),
          );
        }),
      ),
    );
  }).filter(Boolean);
  const host = $("#p-results");
  if (!sections.length) sections.push(h("p", { class: "muted" }, "The job made no pictures."));
  host.replaceChildren(...sections);
  host.dataset.job = jobId;
  $("#p-results-caption").textContent = `job ${shortId(jobId)} · ${list.length} picture${list.length === 1 ? "" : "s"}`;
}

// -- wiring -----------------------------------------------------------------------------------------------------

export function initProduct(options = {}) {
  selectTab = options.selectTab || selectTab;
  catalog.addEventListener("change", renderModels);
  $("#p-model").addEventListener("change", modelChanged);
  for (const input of [$("#p-width"), $("#p-height")]) input.addEventListener("input", () => (sizeTouched = true));
  $("#p-scene").addEventListener("change", sceneChanged);
  $("#p-photo").addEventListener("change", (event) => {
    const file = event.target.files[0];
    if (file) setPhoto(file);
    event.target.value = "";
  });
  acceptDrops($("#p-photo-drop"), setPhoto);
  $("#p-cutout").addEventListener("click", startCutout);

  for (const radio of $$("input[name=p_mask_tool]")) {
    radio.addEventListener("change", () => (maskEditor.tool = radio.value));
  }
  const brush = $("#p-brush-size");
  maskEditor.brushSize = Number(brush.value);
  brush.addEventListener("input", () => {
    maskEditor.brushSize = Number(brush.value);
    $("#p-brush-size-out").value = brush.value;
  });
  $("#p-undo").addEventListener("click", () => maskEditor.undo());
  $("#p-reset").addEventListener("click", () => {
    if (!cutout) return;
    maskEditor.remember();
    maskEditor.showMask(cutout.maskImage);
    maskEdited = false;
  });
  maskEditor.addEventListener("change", () => {
    if (!maskEditor.hasImage) return;
    maskEdited = true;
    if ($("[data-field=mask]", form).classList.contains("has-error")) clearErrors(form);
  });

  $("#p-shadow").addEventListener("change", () => {
    for (const control of $$("#p-shadow-settings select, #p-shadow-settings input")) control.disabled = !$("#p-shadow").checked;
  });
  for (const range of $$(".range-pair input[type=range]", form)) {
    range.addEventListener("input", () => (range.nextElementSibling.value = range.value));
  }
  form.addEventListener("input", updateSummary);
  form.addEventListener("change", updateSummary);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    clearErrors(form);
    if (!checkInputs()) return;
    await submit(shotRequest(), "shots");
  });
  $("#p-job-cancel").addEventListener("click", cancelJob);
  updateSummary();
}
