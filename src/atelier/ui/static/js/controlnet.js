// The folded ControlNet section of the txt2img, img2img and Inpaint tabs: as many control units as the studio
// allows (GET /api/controlnet/models says max_units), each with its image, preprocessor and a live preview of
// its map, model and strength. The enabled ones are sent, in order, as ``controlnet_units``.

import { ApiError, api, dataUrl } from "./api.js";
import { $, h } from "./dom.js";
import { clearErrors, showFieldError } from "./fields.js";

// Wait this long after the last change before asking for a preview: typing a threshold sends one request.
const PREVIEW_DELAY_MS = 350;
const PREVIEW_SIDE = { min: 64, max: 2048 };
const NO_MODELS_HINT = "No ControlNet models yet: put ControlNet models in models/controlnet/.";
// Every field a unit of the request may have, to map the API's errors back to the unit they belong to.
const REQUEST_FIELDS = ["image", "image_key", "module", "model", "weight", "guidance_start", "guidance_end", "control_mode", "resize_mode", "processor_res", "threshold_a", "threshold_b", "pixel_perfect"];

let section = null;
let units = [];
// Which unit each entry of the last request's controlnet_units came from (disabled units are not sent).
let sentUnits = [];
let lists = { modules: [], controlModes: [], resizeModes: [], models: [] };

function numberInput(value, { min, max, step }) {
  return h("input", { type: "number", min: String(min), max: String(max), step: String(step), value: String(value) });
}

function fillSelect(select, values, preferred) {
  const previous = select.value || preferred;
  select.replaceChildren(...values.map(([value, label]) => h("option", { value }, label)));
  if (values.some(([value]) => value === previous)) select.value = previous;
}

function formSize(selector) {
  const value = Math.round(Number($(selector).value));
  if (!Number.isFinite(value)) return 512;
  return Math.min(PREVIEW_SIDE.max, Math.max(PREVIEW_SIDE.min, value));
}

/** One control unit: its fields (ids cn-<index>-<name>), its control image and its map preview. */
class ControlUnit {
  constructor(index) {
    this.index = index;
    this.field = `controlnet_units[${index}]`;
    this.input = {};
    this.image = null;
    this.timer = null;
    // Only the answer to the newest preview request is shown; slower, older answers are dropped.
    this.serial = 0;
    this.preview = h("img", { id: this.id("preview"), class: "cn-preview", alt: "Control map preview", hidden: true });
    this.status = h("p", { class: "hint", id: this.id("preview-status"), "aria-live": "polite" });
    this.element = this.render();
  }

  id(name) {
    return `cn-${this.index}-${name.replaceAll("_", "-")}`;
  }

  unitField(name, label, control, hint) {
    control.id = this.id(name);
    const hintLine = hint !== undefined ? h("p", { class: "hint", id: `${control.id}-hint` }, hint) : null;
    if (hintLine) control.setAttribute("aria-describedby", hintLine.id);
    this.input[name] = control;
    return h("div", { class: "field", "data-field": `${this.field}.${name}` }, h("label", { for: control.id }, label), control, hintLine);
  }

  render() {
    const enabled = h("input", { type: "checkbox", id: this.id("enabled") });
    this.input.enabled = enabled;
    const details = h(
      "details",
      { class: "cn-unit", id: `cn-unit-${this.index}`, open: this.index === 0 },
      h("summary", {}, `Unit ${this.index + 1}`, h("span", { class: "cn-unit-state muted" }, "")),
      h("label", { class: "check", "data-field": this.field }, enabled, " Enable ControlNet"),
      this.unitField("image", "Control image", h("input", { type: "file", accept: "image/png,image/jpeg,image/webp" })),
      h("div", { class: "grid-2" },
        this.unitField("module", "Preprocessor", h("select", {})),
        this.unitField("model", "ControlNet model", h("select", {}), "")),
      h("div", { class: "grid-2" },
        this.unitField("threshold_a", "Threshold A", numberInput(-1, { min: -1, max: 255, step: 1 }), "-1: the preprocessor's default"),
        this.unitField("threshold_b", "Threshold B", numberInput(-1, { min: -1, max: 255, step: 1 }), "-1: the preprocessor's default")),
      h("div", { class: "field" }, this.status, this.preview),
      h("div", { class: "grid-3" },
        this.unitField("weight", "Weight", numberInput(1, { min: 0, max: 2, step: 0.05 })),
        this.unitField("guidance_start", "Guidance start", numberInput(0, { min: 0, max: 1, step: 0.05 })),
        this.unitField("guidance_end", "Guidance end", numberInput(1, { min: 0, max: 1, step: 0.05 }))),
      h("div", { class: "grid-2" },
        this.unitField("control_mode", "Control mode", h("select", {})),
        this.unitField("resize_mode", "Resize mode", h("select", {}))),
    );
    this.input.image.addEventListener("change", () => {
      this.image = this.input.image.files[0] || null;
      // Choosing a control image means wanting control, as in sd-webui-controlnet.
      if (this.image) enabled.checked = true;
      else this.preview.hidden = true;
      this.showState();
      this.schedulePreview();
    });
    enabled.addEventListener("change", () => this.showState());
    for (const name of ["module", "resize_mode"]) this.input[name].addEventListener("change", () => this.schedulePreview());
    for (const name of ["threshold_a", "threshold_b"]) this.input[name].addEventListener("input", () => this.schedulePreview());
    return details;
  }

  showState() {
    const state = this.element.querySelector(".cn-unit-state");
    state.textContent = this.input.enabled.checked ? ` · on${this.image ? `, ${this.image.name}` : ""}` : "";
  }

  fillLists() {
    fillSelect(this.input.module, lists.modules.map((name) => [name, name]), "canny");
    fillSelect(this.input.control_mode, lists.controlModes.map((name) => [name, name]), "Balanced");
    fillSelect(this.input.resize_mode, lists.resizeModes.map((name) => [name, name]), "Crop and Resize");
    fillSelect(this.input.model, lists.models.map((name) => [name, name]));
    this.input.model.disabled = lists.models.length === 0;
    $(`#${this.id("model")}-hint`).textContent = lists.models.length ? "" : NO_MODELS_HINT;
  }

  schedulePreview() {
    clearTimeout(this.timer);
    if (this.image) this.timer = setTimeout(() => this.showPreview(), PREVIEW_DELAY_MS);
  }

  async showPreview() {
    const serial = ++this.serial;
    this.status.textContent = "Preprocessing…";
    clearErrors(this.element);
    try {
      const answer = await api.post("/api/controlnet/preview", {
        image: await dataUrl(this.image),
        module: this.input.module.value || "none",
        width: formSize("#g-width"),
        height: formSize("#g-height"),
        resize_mode: this.input.resize_mode.value || "Crop and Resize",
        threshold_a: Number(this.input.threshold_a.value || -1),
        threshold_b: Number(this.input.threshold_b.value || -1),
      });
      if (serial !== this.serial) return;
      this.preview.src = `data:image/png;base64,${answer.image}`;
      this.preview.alt = `Control map preview of unit ${this.index + 1}: ${answer.module}, ${answer.width}×${answer.height}`;
      this.preview.hidden = false;
      this.status.textContent = `${answer.module} map · ${answer.width}×${answer.height}`;
    } catch (error) {
      if (serial !== this.serial) return;
      this.preview.hidden = true;
      this.status.textContent = "";
      // The preview names its fields without the unit prefix the generate request uses.
      if (!showFieldError(this.element, `${this.field}.${error.field || "image"}`, error.message)) this.status.textContent = error.message;
    }
  }

  numberOf(name) {
    const text = this.input[name].value.trim();
    const value = Number(text);
    if (text === "" || !Number.isFinite(value)) throw new ApiError(0, `${name} must be a number`, `${this.field}.${name}`);
    return value;
  }

  async toRequest() {
    if (!this.image) throw new ApiError(0, "Choose a control image, or turn this ControlNet unit off.", `${this.field}.image`);
    if (!this.input.model.value) throw new ApiError(0, NO_MODELS_HINT, `${this.field}.model`);
    return {
      image: await dataUrl(this.image),
      module: this.input.module.value,
      model: this.input.model.value,
      weight: this.numberOf("weight"),
      guidance_start: this.numberOf("guidance_start"),
      guidance_end: this.numberOf("guidance_end"),
      control_mode: this.input.control_mode.value,
      resize_mode: this.input.resize_mode.value,
      threshold_a: this.numberOf("threshold_a"),
      threshold_b: this.numberOf("threshold_b"),
    };
  }
}

/** The request's ``controlnet_units`` (the enabled units, in order); null when none is on. */
export async function controlNetUnits() {
  const enabled = units.filter((unit) => unit.input.enabled.checked);
  sentUnits = enabled.map((unit) => unit.index);
  if (!enabled.length) return null;
  const requests = [];
  for (const unit of enabled) requests.push(await unit.toRequest());
  return requests;
}

/** The API names units by their place in the request; the form by their own number. */
export function controlNetErrorAliases() {
  const aliases = {};
  sentUnits.forEach((unitIndex, sentIndex) => {
    aliases[`controlnet_units[${sentIndex}]`] = `controlnet_units[${unitIndex}]`;
    for (const name of REQUEST_FIELDS) aliases[`controlnet_units[${sentIndex}].${name}`] = `controlnet_units[${unitIndex}].${name}`;
  });
  return aliases;
}

function reportLoadError(error) {
  const status = units[0]?.status;
  if (status) status.textContent = `ControlNet lists could not load: ${error.message}`;
}

async function loadModules() {
  const answer = await api.get("/api/controlnet/modules");
  lists = { ...lists, modules: answer.modules.map((module) => module.name), controlModes: answer.control_modes, resizeModes: answer.resize_modes };
}

/** Read the models (and how many units the studio allows) again; add units up to that number. */
async function loadModels() {
  const answer = await api.get("/api/controlnet/models");
  lists = { ...lists, models: answer.models };
  const host = $("#controlnet-unit");
  while (units.length < Math.max(1, answer.max_units || 1)) {
    const unit = new ControlUnit(units.length);
    units.push(unit);
    host.append(unit.element);
  }
}

async function refreshLists() {
  await loadModels();
  for (const unit of units) unit.fillLists();
}

/** Build the section inside ``#controlnet-unit`` and load its lists. */
export function initControlNet() {
  section = $("#controlnet-section");
  const first = new ControlUnit(0);
  units = [first];
  $("#controlnet-unit").replaceChildren(first.element);
  // Models can be added while the page is open: the list is read again whenever the section opens.
  section.addEventListener("toggle", () => {
    if (section.open) refreshLists().catch(reportLoadError);
  });
  Promise.all([loadModules(), loadModels()])
    .then(() => {
      for (const unit of units) unit.fillLists();
    })
    .catch(reportLoadError);
}
