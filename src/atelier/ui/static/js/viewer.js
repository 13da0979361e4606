// The image viewer: one generated image large, with its infotext and what can be done with it.

import { api, dataUrl, fileBlob, fileObjectUrl } from "./api.js";
import { $, formatTime, h, toast } from "./dom.js";
import { consentLines, licenseBadge, rightsSummary } from "./licenses.js";

const dialog = $("#viewer");
const imageElement = $("#viewer-image");
let images = [];
let index = 0;
let actions = {};

/** actions: {reuseSeed(image), useSettings(image, blob), sendTo(mode, image, blob)} from the generate tab. */
export function configureViewer(handlers) {
  actions = handlers;
}

/** Open the viewer on ``list[start]``; entries: {url, key, seed, width, height, infotext, jobId}. */
export function openViewer(list, start = 0) {
  images = list;
  index = start;
  show();
  if (!dialog.open) dialog.showModal();
}

async function show() {
  const image = images[index];
  const name = image.key.split("/").pop();
  $("#viewer-title").textContent = name;
  $("#viewer-infotext").textContent = image.infotext || "(no infotext)";
  const meta = $("#viewer-meta");
  meta.replaceChildren(
    h("dt", {}, "Seed"),
    h("dd", {}, String(image.seed)),
    h("dt", {}, "Size"),
    h("dd", {}, `${image.width} × ${image.height}`),
    h("dt", {}, "Image"),
    h("dd", {}, `${index + 1} of ${images.length}`),
    h("dt", {}, "AI disclosure"),
    h("dd", { id: "viewer-disclosure" }, "…"),
    h("dt", {}, "Content Credentials"),
    h("dd", { id: "viewer-credentials" }, "…"),
  );
  showCredentials(image);
  showProvenance(image);
  $("#viewer-prev").disabled = index === 0;
  $("#viewer-next").disabled = index === images.length - 1;
  imageElement.alt = `Generated image, seed ${image.seed}`;
  const download = $("#viewer-download");
  download.setAttribute("download", name);
  download.removeAttribute("href");
  try {
    const url = await fileObjectUrl(image.url);
    if (images[index] !== image) return;
    imageElement.src = url;
    download.href = url;
  } catch (error) {
    toast(error.message, "error");
  }
}

const SOURCE_TYPES = {
  trainedAlgorithmicMedia: "AI-generated",
  compositeWithTrainedAlgorithmicMedia: "AI composite (a photo kept)",
  composite: "composite",
};

function sourceTypeText(uri) {
  if (!uri) return "none";
  const name = uri.split("/").pop();
  return SOURCE_TYPES[name] ? `${SOURCE_TYPES[name]} (${name})` : name;
}

/** The file's XMP digital source type and its validated Content Credentials (GET /api/credentials/...). */
async function showCredentials(image) {
  let answer;
  try {
    answer = await api.get(`/api/credentials/${image.key.split("/").map(encodeURIComponent).join("/")}`);
  } catch (error) {
    answer = { error: error.message };
  }
  if (images[index] !== image) return;
  const disclosure = $("#viewer-disclosure");
  const credentials = $("#viewer-credentials");
  if (answer.error) {
    disclosure.textContent = credentials.textContent = `unavailable: ${answer.error}`;
    return;
  }
  disclosure.textContent = sourceTypeText(answer.digital_source_type);
  const summary = answer.credentials;
  if (!summary) {
    credentials.textContent = "not signed";
    return;
  }
  const signer = summary.signer.common_name || summary.signer.issuer || "unknown signer";
  const state = summary.trusted ? "valid, trusted signer" : summary.valid ? "valid, signer not on a trust list" : "INVALID";
  credentials.textContent = `${state} · ${signer} · ${summary.actions.join(", ")}`;
  if (!summary.valid) credentials.title = summary.failures.map((item) => item.explanation).join("\n");
}

// -- provenance ------------------------------------------------------------------------------------------------

const MODEL_ROLES = { checkpoint: "Model", refiner: "Refiner", vae: "VAE", embeddings: "Embedding", controlnets: "ControlNet" };
const INPUT_NAMES = { init_image: "Photo", mask: "Mask", controlnet_images: "Control images", ingredients: "Ingredients" };
// Settings the panel leaves out: the prompts are in the infotext just below. The ones that say most about a
// picture come first and show; the rest is in the row's tooltip.
const SKIPPED_SETTINGS = new Set(["prompt", "negative_prompt", "styles", "infotext", "model"]);
const MAIN_SETTINGS = ["sampler", "schedule_type", "steps", "cfg_scale", "seed", "width", "height", "vae", "refiner"];
// Only where they did something: a photo was redrawn, or the hires pass ran.
const REDRAW_SETTINGS = ["denoising_strength"];
const HIRES_SETTINGS = ["hr_scale", "hr_upscaler", "hr_second_pass_steps"];

function shortHash(entry) {
  const hash = entry.sha256 || entry.hash;
  return hash ? h("code", { class: "provenance-hash", title: hash }, String(hash).slice(0, 10)) : null;
}

function modelLine(entry, weight = "") {
  return h(
    "span",
    { class: "provenance-model" },
    h("strong", {}, `${entry.name || "unnamed"}${weight}`),
    shortHash(entry),
    entry.license ? licenseBadge(entry.license) : null,
  );
}

function loraLines(lora) {
  const weight = typeof lora.weight === "number" ? ` ×${lora.weight}` : "";
  const rights = lora.rights;
  const from = lora.rights_from === "file" ? " (as the file carries it)" : "";
  const consent = consentLines(rights);
  return h(
    "div",
    { class: "provenance-lora" },
    modelLine(lora, weight),
    h("div", { class: rights ? "provenance-rights" : "provenance-rights rights-missing" }, `Rights: ${rightsSummary(rights)}${from}`),
    consent.length ? h("ul", { class: "provenance-consent" }, ...consent.map((line) => h("li", {}, line))) : null,
    lora.training?.dataset_sha256 ? h("div", { class: "muted" }, "Dataset ", h("code", { title: lora.training.dataset_sha256 }, lora.training.dataset_sha256.slice(0, 12))) : null,
  );
}

function inputText(value) {
  if (Array.isArray(value)) return value.map(inputText).filter(Boolean).join(", ");
  if (value && typeof value === "object") return [value.title, value.relationship].filter(Boolean).join(" · ");
  return value ? String(value).split("/").pop() : "";
}

function settingsRow(settings, inputs) {
  const entries = Object.entries(settings || {}).filter(
    ([key, value]) => !SKIPPED_SETTINGS.has(key) && value !== null && value !== "" && typeof value !== "object",
  );
  if (!entries.length) return null;
  const text = (list) => list.map(([key, value]) => `${key} ${value}`).join(" · ");
  const hires = settings.enable_hr === true;
  const keys = [
    ...MAIN_SETTINGS,
    ...(inputs?.init_image || hires ? REDRAW_SETTINGS : []),
    ...(hires ? ["enable_hr", ...HIRES_SETTINGS] : []),
  ];
  const main = keys.map((key) => entries.find(([name]) => name === key)).filter(Boolean);
  const more = entries.length - main.length;
  return h(
    "span",
    { class: "provenance-settings", title: text(entries) },
    text(main.length ? main : entries),
    main.length && more ? h("span", { class: "muted" }, ` · ${more} more`) : null,
  );
}

function askedBy(answer) {
  if (answer.asked_by) return answer.asked_by;
  return answer.job ? "nobody named (a studio without API keys)" : "unknown";
}

function provenanceRows(answer) {
  const rows = [];
  const row = (name, label, ...value) => rows.push(h("dt", {}, label), h("dd", { "data-row": name }, ...value));
  const job = answer.job;
  row("asked-by", "Asked by", h("span", {}, askedBy(answer), job?.created_at ? h("span", { class: "muted" }, ` · ${formatTime(job.created_at)}`) : null));
  for (const [role, item] of Object.entries(answer.models || {})) {
    const entries = Array.isArray(item) ? item : [item];
    row(role, MODEL_ROLES[role] || role, ...entries.map((entry) => modelLine(entry)));
  }
  if (answer.loras?.length) row("loras", answer.loras.length === 1 ? "LoRA" : "LoRAs", ...answer.loras.map(loraLines));
  for (const [name, value] of Object.entries(answer.inputs || {})) {
    const text = inputText(value);
    if (text) row(`input-${name}`, INPUT_NAMES[name] || name, text);
  }
  const settings = settingsRow(answer.settings, answer.inputs);
  if (settings) row("settings", "Settings", settings);
  if (answer.found_in?.length) row("found-in", "Read from", answer.found_in.join(", "));
  return rows;
}

/** The shown file's audit trail (GET /api/provenance/...): compact, in a panel that stays open or closed. */
async function showProvenance(image) {
  const list = $("#viewer-provenance-list");
  const gist = $("#viewer-provenance-gist");
  list.replaceChildren(h("dt", {}, "Asked by"), h("dd", { "data-row": "asked-by" }, "…"));
  gist.textContent = "";
  let answer;
  try {
    answer = await api.get(`/api/provenance/${image.key.split("/").map(encodeURIComponent).join("/")}`);
  } catch (error) {
    if (images[index] !== image) return;
    list.replaceChildren(h("dt", {}, "Provenance"), h("dd", { "data-row": "error" }, `unavailable: ${error.message}`));
    return;
  }
  if (images[index] !== image) return;
  list.replaceChildren(...provenanceRows(answer));
  const loras = answer.loras?.length || 0;
  gist.textContent = [answer.asked_by, loras ? `${loras} LoRA${loras === 1 ? "" : "s"}` : null]
    .filter(Boolean)
    .map((part) => ` · ${part}`)
    .join("");
}

/** Download the shown image as JPEG (quality 90) for shops and marketplaces; disclosure and infotext kept. */
async function downloadJpeg() {
  const image = images[index];
  try {
    const blob = await fileBlob(`${image.url}?format=jpeg&quality=90`);
    const link = h("a", { href: URL.createObjectURL(blob), download: image.key.split("/").pop().replace(/\.\w+$/, ".jpg") });
    link.click();
    setTimeout(() => URL.revokeObjectURL(link.href), 10000);
  } catch (error) {
    toast(error.message, "error");
  }
}

function step(delta) {
  const next = index + delta;
  if (next < 0 || next >= images.length) return;
  index = next;
  show();
}

async function withBlob(run) {
  const image = images[index];
  try {
    const blob = await fileBlob(image.url);
    dialog.close();
    await run(image, blob);
  } catch (error) {
    toast(error.message, "error");
  }
}

$("#viewer-prev").addEventListener("click", () => step(-1));
$("#viewer-next").addEventListener("click", () => step(1));
$("#viewer-close").addEventListener("click", () => dialog.close());
dialog.addEventListener("keydown", (event) => {
  if (event.key === "ArrowLeft" && event.target.tagName !== "PRE") step(-1);
  if (event.key === "ArrowRight" && event.target.tagName !== "PRE") step(1);
});
dialog.addEventListener("click", (event) => {
  // A click on the backdrop (outside the layout) closes, as people expect of a lightbox.
  if (event.target === dialog) dialog.close();
});
$("#viewer-reuse-seed").addEventListener("click", () => {
  actions.reuseSeed?.(images[index]);
  dialog.close();
});
$("#viewer-use-settings").addEventListener("click", () => withBlob((image, blob) => actions.useSettings?.(image, blob)));
$("#viewer-to-img2img").addEventListener("click", () => withBlob((image, blob) => actions.sendTo?.("img2img", image, blob)));
$("#viewer-to-inpaint").addEventListener("click", () => withBlob((image, blob) => actions.sendTo?.("inpaint", image, blob)));
$("#viewer-upscale").addEventListener("click", upscale);
$("#viewer-download").after(
  h("button", { type: "button", class: "btn", id: "viewer-download-jpeg", onclick: downloadJpeg }, "Download JPEG"),
);

/** Upscale the shown image (A1111's extras: POST /sdapi/v1/extra-single-image) and offer the result. */
async function upscale() {
  const image = images[index];
  const button = $("#viewer-upscale");
  const scale = Number($("#viewer-scale").value);
  button.disabled = true;
  try {
    const source = await dataUrl(await fileBlob(image.url));
    const answer = await api.post("/sdapi/v1/extra-single-image", {
      image: source,
      upscaler_1: $("#viewer-upscaler").value,
      upscaling_resize: scale,
    });
    if (images[index] !== image) return;
    const bytes = Uint8Array.from(atob(answer.image), (c) => c.charCodeAt(0));
    const url = URL.createObjectURL(new Blob([bytes], { type: "image/png" }));
    imageElement.src = url;
    const download = $("#viewer-download");
    download.href = url;
    download.setAttribute("download", image.key.split("/").pop().replace(/\.png$/, `-x${scale}.png`));
    const size = $("#viewer-meta").querySelectorAll("dd")[1];
    size.textContent = `${image.width * scale} × ${image.height * scale} (upscaled ×${scale})`;
    toast(`Upscaled ×${scale}: download it from here.`);
  } catch (error) {
    toast(error.message, "error");
  } finally {
    button.disabled = false;
  }
}
