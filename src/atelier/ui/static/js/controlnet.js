// The folded ControlNet section of the txt2img, img2img and Inpaint tabs: one control unit (image, preprocessor
// with a live preview of its map, model and strength), sent as ``controlnet_units`` with the generate request.

import { ApiError, api, dataUrl } from "./api.js";
import { $, h } from "./dom.js";
import { clearErrors, showFieldError } from "./fields.js";

const UNIT = "controlnet_units[0]";
// Wait this long after the last change before asking for a preview: typing a threshold sends one request.
const PREVIEW_DELAY_MS = 350;
const PREVIEW_SIDE = { min: 64, max: 2048 };
const NO_MODELS_HINT = "No ControlNet models yet: put ControlNet models in models/controlnet/.";

let section = null;
let controlImage = null;
let previewTimer = null;
// Only the answer to the newest preview request is shown; slower, older answers are dropped.
let previewSerial = 0;
const input = {};

function unitField(name, label, control, hint) {
  control.id = `cn-${name.replaceAll("_", "-")}`;
  const hintLine = hint !== undefined ? h("p", { class: "hint", id: `${control.id}-hint` }, hint) : null;
  if (hintLine) control.setAttribute("aria-describedby", hintLine.id);
  input[name] = control;
  return h("div", { class: "field", "data-field": `${UNIT}.${name}` }, h("label", { for: control.id }, label), control, hintLine);
}

function numberInput(value, { min, max, step }) {
  return h("input", { type: "number", min: String(min), max: String(max), step: String(step), value: String(value) });
}

function render(host) {
  const preview = h("img", { id: "cn-preview", alt: "Control map preview", hidden: true, style: "max-width: 100%; border-radius: 6px;" });
  const status = h("p", { class: "hint", id: "cn-preview-status", "aria-live": "polite" });
  host.replaceChildren(
    h("label", { class: "check", "data-field": "controlnet_units" },
      h("input", { type: "checkbox", id: "cn-enabled" }), " Enable ControlNet"),
    unitField("image", "Control image", h("input", { type: "file", accept: "image/png,image/jpeg,image/webp" })),
    h("div", { class: "grid-2" },
      unitField("module", "Preprocessor", h("select", {})),
      unitField("model", "ControlNet model", h("select", {}), "")),
    h("div", { class: "grid-2" },
      unitField("threshold_a", "Threshold A", numberInput(-1, { min: -1, max: 255, step: 1 }), "-1: the preprocessor's default"),
      unitField("threshold_b", "Threshold B", numberInput(-1, { min: -1, max: 255, step: 1 }), "-1: the preprocessor's default")),
    h("div", { class: "field" }, status, preview),
    h("div", { class: "grid-3" },
      unitField("weight", "Weight", numberInput(1, { min: 0, max: 2, step: 0.05 })),
      unitField("guidance_start", "Guidance start", numberInput(0, { min: 0, max: 1, step: 0.05 })),
      unitField("guidance_end", "Guidance end", numberInput(1, { min: 0, max: 1, step: 0.05 }))),
    h("div", { class: "grid-2" },
      unitField("control_mode", "Control mode", h("select", {})),
      unitField("resize_mode", "Resize mode", h("select", {}))),
  );
  input.enabled = $("#cn-enabled", host);
}

function fillSelect(select, values, preferred) {
  const previous = select.value || preferred;
  select.replaceChildren(...values.map(([value, label]) => h("option", { value }, label)));
  if (values.some(([value]) => value === previous)) select.value = previous;
}

async function loadModules() {
  const answer = await api.get("/api/controlnet/modules");
  fillSelect(input.module, answer.modules.map((module) => [module.name, module.name]), "canny");
  fillSelect(input.control_mode, answer.control_modes.map((name) => [name, name]), "Balanced");
  fillSelect(input.resize_mode, answer.resize_modes.map((name) => [name, name]), "Crop and Resize");
}

async function loadModels() {
  const answer = await api.get("/api/controlnet/models");
  fillSelect(input.model, answer.models.map((name) => [name, name]));
  input.model.disabled = answer.models.length === 0;
  $("#cn-model-hint").textContent = answer.models.length ? "" : NO_MODELS_HINT;
}

function formSize(selector) {
  const value = Math.round(Number($(selector).value));
  if (!Number.isFinite(value)) return 512;
  return Math.min(PREVIEW_SIDE.max, Math.max(PREVIEW_SIDE.min, value));
}

function schedulePreview() {
  clearTimeout(previewTimer);
  if (controlImage) previewTimer = setTimeout(showPreview, PREVIEW_DELAY_MS);
}

async function showPreview() {
  const serial = ++previewSerial;
  const preview = $("#cn-preview");
  const status = $("#cn-preview-status");
  status.textContent = "Preprocessing…";
  clearErrors(section);
  try {
    const answer = await api.post("/api/controlnet/preview", {
      image: await dataUrl(controlImage),
      module: input.module.value || "none",
      width: formSize("#g-width"),
      height: formSize("#g-height"),
      resize_mode: input.resize_mode.value || "Crop and Resize",
      threshold_a: Number(input.threshold_a.value || -1),
      threshold_b: Number(input.threshold_b.value || -1),
    });
    if (serial !== previewSerial) return;
    preview.src = `data:image/png;base64,${answer.image}`;
    preview.alt = `Control map preview: ${answer.module}, ${answer.width}×${answer.height}`;
    preview.hidden = false;
    status.textContent = `${answer.module} map · ${answer.width}×${answer.height}`;
  } catch (error) {
    if (serial !== previewSerial) return;
    preview.hidden = true;
    status.textContent = "";
    // The preview names its fields without the unit prefix the generate request uses.
    if (!showFieldError(section, `${UNIT}.${error.field || "image"}`, error.message)) status.textContent = error.message;
  }
}

function numberOf(name) {
  const text = input[name].value.trim();
  const value = Number(text);
  if (text === "" || !Number.isFinite(value)) throw new ApiError(0, `${name} must be a number`, `${UNIT}.${name}`);
  return value;
}

/** The request's ``controlnet_units`` when the section is enabled; null when it is off. */
export async function controlNetUnits() {
  if (!input.enabled?.checked) return null;
  if (!controlImage) throw new ApiError(0, "Choose a control image, or turn ControlNet off.", `${UNIT}.image`);
  if (!input.model.value) throw new ApiError(0, NO_MODELS_HINT, `${UNIT}.model`);
  return [
    {
      image: await dataUrl(controlImage),
      module: input.module.value,
      model: input.model.value,
      weight: numberOf("weight"),
      guidance_start: numberOf("guidance_start"),
      guidance_end: numberOf("guidance_end"),
      control_mode: input.control_mode.value,
      resize_mode: input.resize_mode.value,
      threshold_a: numberOf("threshold_a"),
      threshold_b: numberOf("threshold_b"),
    },
  ];
}

function reportLoadError(error) {
  $("#cn-preview-status").textContent = `ControlNet lists could not load: ${error.message}`;
}

/** Build the section inside ``#controlnet-unit`` and load its lists. */
export function initControlNet() {
  section = $("#controlnet-section");
  render($("#controlnet-unit"));
  input.image.addEventListener("change", () => {
    controlImage = input.image.files[0] || null;
    // Choosing a control image means wanting control, as in sd-webui-controlnet.
    if (controlImage) input.enabled.checked = true;
    else $("#cn-preview").hidden = true;
    schedulePreview();
  });
  for (const name of ["module", "resize_mode"]) input[name].addEventListener("change", schedulePreview);
  for (const name of ["threshold_a", "threshold_b"]) input[name].addEventListener("input", schedulePreview);
  // Models can be added while the page is open: the list is read again whenever the section opens.
  section.addEventListener("toggle", () => {
    if (section.open) loadModels().catch(reportLoadError);
  });
  Promise.all([loadModules(), loadModels()]).catch(reportLoadError);
}
