// The Training tab: a training set (a zip, or images with captions typed here and zipped in the browser) and
// its options become two uploads, the way the seed's pipeline works: the hyper-parameters as
// PUT /api/training-data/{name}.toml, then the zip as PUT /api/training-data/{name}.zip, which queues the run
// with them. Progress, loss and samples come from the job's events and results.

import { ApiError, api, fileObjectUrl, fileUrl, followJob, upload } from "./api.js";
import { catalog, refreshModels } from "./catalog.js";
import { $, $$, describeJob, formatTime, h, setProgress, shortId, stateBadge, toast } from "./dom.js";
import { clearErrors, showError, showFieldError } from "./fields.js";
import { drawLossChart } from "./chart.js";
import { licenseUseText } from "./licenses.js";
import { zipFiles } from "./zip.js";

// Options under kohya-ss sd-scripts' names, as the training .toml takes them. Empty means "the preset's
// value", so only what the user set is sent.
const MAIN_OPTIONS = [
  { key: "max_train_epochs", label: "Epochs", type: "int" },
  { key: "max_train_steps", label: "Steps (when no epochs)", type: "int" },
  { key: "learning_rate", label: "Learning rate", type: "float" },
  { key: "network_dim", label: "Network rank (dim)", type: "int" },
  { key: "network_alpha", label: "Network alpha", type: "float" },
  { key: "resolution", label: "Resolution (px)", type: "int" },
  { key: "train_batch_size", label: "Batch size", type: "int" },
];
const ADVANCED_OPTIONS = [
  { key: "unet_lr", label: "UNet learning rate", type: "float" },
  { key: "text_encoder_lr", label: "Text encoder learning rate", type: "float" },
  { key: "lr_scheduler", label: "LR scheduler", type: "select", options: ["constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts"] },
  { key: "lr_warmup_steps", label: "Warmup steps", type: "number" },
  { key: "optimizer_type", label: "Optimizer", type: "select", options: ["AdamW", "AdamW8bit"] },
  { key: "mixed_precision", label: "Mixed precision", type: "select", options: ["no", "fp16", "bf16"] },
  { key: "num_repeats", label: "Repeats per image", type: "int" },
  { key: "gradient_accumulation_steps", label: "Gradient accumulation", type: "int" },
  { key: "clip_skip", label: "Clip skip", type: "int" },
  { key: "max_token_length", label: "Max caption tokens", type: "select", options: ["75", "150", "225"], numeric: true },
  { key: "noise_offset", label: "Noise offset", type: "float" },
  { key: "min_snr_gamma", label: "Min-SNR gamma", type: "float" },
  { key: "seed", label: "Seed", type: "int" },
  { key: "keep_tokens", label: "Keep tokens", type: "int" },
  { key: "caption_dropout_rate", label: "Caption dropout", type: "float" },
  { key: "min_bucket_reso", label: "Min bucket size", type: "int" },
  { key: "max_bucket_reso", label: "Max bucket size", type: "int" },
  { key: "bucket_reso_steps", label: "Bucket step", type: "int" },
  { key: "max_data_loader_n_workers", label: "Loader workers", type: "int" },
  { key: "save_every_n_epochs", label: "Save every N epochs", type: "int" },
  { key: "sample_every_n_epochs", label: "Sample every N epochs", type: "int" },
  { key: "sample_every_n_steps", label: "Sample every N steps", type: "int" },
  { key: "shuffle_caption", label: "Shuffle caption tags", type: "bool" },
  { key: "flip_aug", label: "Flip augmentation", type: "bool" },
  { key: "enable_bucket", label: "Aspect ratio buckets", type: "bool" },
  { key: "cache_latents", label: "Cache latents", type: "bool" },
  { key: "gradient_checkpointing", label: "Gradient checkpointing", type: "bool" },
  { key: "network_train_unet_only", label: "Train UNet only", type: "bool" },
  { key: "sample_prompts", label: "Sample prompts (one per line)", type: "lines", wide: true },
];
const NAME_PROBLEM = /[<>:"/\\|?*\x00-\x1f]/;

const form = $("#train-form");
const items = []; // {file, url, caption: textarea}
const knownTriggers = new Map(); // LoRA name -> trigger word, for runs started on this page
let selectTab = () => {};
let insertLora = () => {};
let currentRun = null; // {id, name, controller, points}

// -- options ---------------------------------------------------------------------------------------------------

function optionField(option) {
  const id = `t-opt-${option.key}`;
  let input;
  if (option.type === "select" || option.type === "bool") {
    const choices = option.type === "bool" ? [["true", "on"], ["false", "off"]] : option.options.map((value) => [value, value]);
    input = h("select", { id, "data-option": option.key }, h("option", { value: "" }, "preset default"), ...choices.map(([value, label]) => h("option", { value }, label)));
  } else if (option.type === "lines") {
    input = h("textarea", { id, rows: "2", "data-option": option.key, placeholder: "a photo of oue jacket, forest --w 512 --h 512" });
  } else {
    input = h("input", {
      id,
      type: "text",
      inputmode: "decimal",
      "data-option": option.key,
      placeholder: option.placeholder || "preset default",
      autocomplete: "off",
    });
  }
  return h(
    "div",
    { class: `field${option.wide ? " span-all" : ""}`, "data-field": option.key },
    h("label", { for: id }, option.label),
    input,
    h("code", { class: "option-key" }, option.key),
  );
}

function readOption(option, raw) {
  const text = raw.trim();
  if (text === "") return undefined;
  if (option.type === "bool") return text === "true";
  if (option.type === "select") return option.numeric ? Number(text) : text;
  if (option.type === "lines") return text.split("\n").map((line) => line.trim()).filter(Boolean);
  const value = Number(text);
  // Sent as typed when it is not a number, so the API names the option in its answer.
  return Number.isFinite(value) ? value : text;
}

function collectConfig() {
  const config = {};
  for (const option of [...MAIN_OPTIONS, ...ADVANCED_OPTIONS]) {
    const input = form.querySelector(`[data-option="${option.key}"]`);
    const value = readOption(option, input.value);
    if (value !== undefined) config[option.key] = value;
  }
  const trigger = $("#t-trigger").value.trim();
  if (trigger) config.instance_prompt = trigger;
  if ($("#t-caption-missing").checked) config.caption_missing = "clip";
  return config;
}

function tomlValue(value) {
  if (Array.isArray(value)) return `[${value.map(tomlValue).join(", ")}]`;
  if (typeof value === "boolean" || typeof value === "number") return String(value);
  // A JSON string's escapes (\" \\ \n \uXXXX ...) are all valid in a TOML basic string.
  return JSON.stringify(String(value));
}

/** The run's settings as the training .toml: kohya keys plus the studio's base and preset keys. */
function toToml(settings) {
  return Object.entries(settings)
    .map(([key, value]) => `${key} = ${tomlValue(value)}`)
    .join("\n")
    .concat("\n");
}

// -- rights ----------------------------------------------------------------------------------------------------

// The Rights card becomes the [rights] table of the run's .toml, which the studio reads as the images' rights
// record (service/training_rights.py; the schema is rights.toml's, training/rights.py):
//
//   [rights]
//   owner = "Acme Retail GmbH"
//   depicts_people = true
//   [[rights.consent]]
//   person = "Jane Doe"
//   reference = "MR-2026-014"
//   date = 2026-02-02
//
// The studio checks it when the .toml is uploaded, so a missing consent is refused before the zip is sent.
const ISO_DATE = /^\d{4}-\d{2}-\d{2}$/;
let consentRows = 0;

function consentRow() {
  consentRows += 1;
  const id = `t-consent-${consentRows}`;
  const input = (name, props) =>
    h("div", { class: "field", "data-role": name }, h("label", { for: `${id}-${name}` }, props.label), h("input", { id: `${id}-${name}`, "data-consent": name, autocomplete: "off", ...props.input }));
  const row = h(
    "li",
    { class: "consent-row" },
    input("person", { label: "Person (name or id)", input: { type: "text", placeholder: "Jane Doe" } }),
    input("reference", { label: "Release reference", input: { type: "text", placeholder: "MR-2026-014" } }),
    input("date", { label: "Date given", input: { type: "date", max: new Date().toISOString().slice(0, 10) } }),
  );
  row.append(
    h(
      "button",
      {
        type: "button",
        class: "icon-btn consent-remove",
        "aria-label": "Remove this person",
        onclick: () => {
          row.remove();
          renumberConsent();
        },
      },
      "✕",
    ),
  );
  return row;
}

function addConsentRow() {
  const row = consentRow();
  $("#t-consent-list").append(row);
  renumberConsent();
  row.querySelector("input").focus();
}

function consentValues(row) {
  const values = {};
  for (const input of row.querySelectorAll("[data-consent]")) values[input.dataset.consent] = input.value.trim();
  return values;
}

/** Each row's fields are named as the API names them (rights.consent[0].date), counting only the rows sent. */
function renumberConsent() {
  let index = 0;
  for (const row of $$("#t-consent-list .consent-row")) {
    const blank = Object.values(consentValues(row)).every((value) => !value);
    for (const field of row.querySelectorAll("[data-role]")) {
      if (blank) field.removeAttribute("data-field");
      else field.dataset.field = `rights.consent[${index}].${field.dataset.role}`;
    }
    if (!blank) index += 1;
  }
}

function peopleChanged() {
  const shown = $("#t-rights-people").checked;
  $("#t-consent-field").hidden = !shown;
  if (shown && !$("#t-consent-list").children.length) addConsentRow();
}

/** The Rights card as a record, or null when nothing in it is filled (the studio then trains without one). */
function collectRights() {
  renumberConsent();
  const owner = $("#t-rights-owner").value.trim();
  const notes = $("#t-rights-notes").value.trim();
  const people = $("#t-rights-people").checked;
  const consent = people
    ? $$("#t-consent-list .consent-row")
        .map(consentValues)
        .filter((values) => Object.values(values).some(Boolean))
    : [];
  if (!owner && !notes && !people) return null;
  // Sent as typed, empty owner included: the studio names the field that is missing.
  const rights = { owner, depicts_people: people };
  if (notes) rights.notes = notes;
  rights.consent = consent.map((values) => {
    const item = {};
    if (values.person) item.person = values.person;
    if (values.reference) item.reference = values.reference;
    if (values.date) item.date = values.date;
    return item;
  });
  return rights;
}

/** A rights record as the TOML tables [rights] and [[rights.consent]] (after the run's top-level keys). */
function rightsToml(rights) {
  const lines = ["", "[rights]"];
  for (const key of ["owner", "depicts_people", "notes"]) {
    if (rights[key] !== undefined) lines.push(`${key} = ${tomlValue(rights[key])}`);
  }
  for (const item of rights.consent || []) {
    lines.push("", "[[rights.consent]]");
    for (const [key, value] of Object.entries(item)) {
      // A consent's day as a TOML date; anything else as text, which the studio refuses naming the field.
      lines.push(`${key} = ${key === "date" && ISO_DATE.test(value) ? value : tomlValue(value)}`);
    }
  }
  return lines.join("\n").concat("\n");
}

/** The API names a rights field the card may not show (a removed row): the card's own line takes it. */
function rightsAlias(field) {
  if (!field || !field.startsWith("rights")) return {};
  return form.querySelector(`[data-field="${CSS.escape(field)}"]`) ? {} : { [field]: "rights" };
}

// -- images and captions ---------------------------------------------------------------------------------------

function addImages(files) {
  for (const file of files) {
    if (!file.type.startsWith("image/")) continue;
    const url = URL.createObjectURL(file);
    const caption = h("textarea", { rows: "2", placeholder: "caption, e.g. a yellow windbreaker on a hanger", "aria-label": `Caption for ${file.name}` });
    const item = { file, url, caption };
    const remove = h("button", {
      type: "button",
      class: "icon-btn",
      "aria-label": `Remove ${file.name}`,
      onclick: () => {
        items.splice(items.indexOf(item), 1);
        URL.revokeObjectURL(url);
        element.remove();
        summarize();
      },
    }, "✕");
    const element = h(
      "li",
      { class: "caption-item" },
      h("img", { src: url, alt: file.name }),
      h("div", { class: "caption-body" }, h("span", { class: "caption-name" }, file.name), caption),
      remove,
    );
    items.push(item);
    $("#t-caption-list").append(element);
  }
  summarize();
}

function summarize() {
  const source = $("input[name=data_source]:checked").value;
  $("#t-summary").textContent = source === "images" ? `${items.length} image${items.length === 1 ? "" : "s"}` : "";
}

function captionFor(text, trigger) {
  const caption = text.trim();
  if (!trigger) return caption;
  if (!caption) return trigger;
  return caption.toLowerCase().includes(trigger.toLowerCase()) ? caption : `${trigger}, ${caption}`;
}

async function buildZip(trigger) {
  if (!items.length) throw new ApiError(0, "Add some images first.", "captions");
  const missing = items.filter((item) => !item.caption.value.trim());
  if (missing.length && !trigger) {
    throw new ApiError(0, `${missing.length} image(s) have no caption: type one, or set a trigger word to use instead.`, "captions");
  }
  const encoder = new TextEncoder();
  const files = [];
  for (const [index, item] of items.entries()) {
    // Numbered names keep two photos called the same from overwriting each other.
    const stem = `${String(index + 1).padStart(3, "0")}-${item.file.name.replace(/\.[^.]+$/, "").replace(/[^\w.-]+/g, "_")}`;
    const extension = (item.file.name.match(/\.[^.]+$/) || [".png"])[0].toLowerCase();
    files.push({ name: `${stem}${extension}`, data: new Uint8Array(await item.file.arrayBuffer()) });
    files.push({ name: `${stem}.txt`, data: encoder.encode(captionFor(item.caption.value, trigger)) });
  }
  return zipFiles(files);
}

// -- starting a run --------------------------------------------------------------------------------------------

function setDataSource(value) {
  $("#t-images-field").hidden = value !== "images";
  $("#t-zip-field").hidden = value !== "zip";
  summarize();
}

function renderBases() {
  const select = $("#t-base");
  const previous = select.value || catalog.currentModel;
  const bases = catalog.checkpoints.filter((model) => model.architecture === "sd15" || model.architecture === "sdxl");
  select.replaceChildren(
    ...bases.map((model) =>
      h(
        "option",
        { value: model.name, "data-arch": model.architecture },
        `${model.name} · ${model.architecture}${model.source === "demo" ? " · demo" : ""} · ${licenseUseText(model.license)}`,
      ),
    ),
  );
  if (bases.some((model) => model.name === previous)) select.value = previous;
  choosePresetForBase();
}

function choosePresetForBase() {
  const option = $("#t-base").selectedOptions[0];
  if (option) $("#t-preset").value = option.dataset.arch === "sdxl" ? "sdxl-dreambooth-lora" : "sd15-lora";
}

async function startTraining(event) {
  event.preventDefault();
  clearErrors(form);
  const name = $("#t-name").value.trim();
  if (!name) {
    showFieldError(form, "output_name", "Give the LoRA a name; prompts will use it as <lora:name:weight>.");
    return;
  }
  if (name.startsWith(".") || NAME_PROBLEM.test(name)) {
    showFieldError(form, "output_name", "Use a plain name without '/', ':', '<', '>' or quotes.");
    return;
  }
  const trigger = $("#t-trigger").value.trim();
  const source = $("input[name=data_source]:checked").value;
  const fileAliases = {
    file: source === "zip" ? "file" : "captions",
    training_data: source === "zip" ? "file" : "captions",
    instance_prompt: "trigger",
    pretrained_model_name_or_path: "base",
  };
  const submit = $("#t-submit");
  const progress = $("#t-upload-progress");
  submit.disabled = true;
  try {
    let data;
    if (source === "zip") {
      data = $("#t-zip").files[0];
      if (!data) throw new ApiError(0, "Choose a zip file.", "file");
    } else {
      data = await buildZip(trigger);
    }
    const settings = { preset: $("#t-preset").value, ...collectConfig() };
    if ($("#t-base").value) settings.base = $("#t-base").value;
    const rights = collectRights();
    // The settings go first: the zip's upload queues the run with the .toml of the same name, and the
    // server checks every option, and the rights record, as it stores the .toml.
    const toml = toToml(settings) + (rights ? rightsToml(rights) : "");
    await upload(`/api/training-data/${encodeURIComponent(name)}.toml`, new Blob([toml], { type: "application/toml" }));
    progress.hidden = false;
    progress.value = 0;
    const stored = await upload(`/api/training-data/${encodeURIComponent(name)}.zip`, data, {
      onProgress: (fraction) => {
        progress.value = fraction;
      },
    });
    const job = stored.job;
    if (!job) {
      toast(`${name}.zip is stored; the bucket watcher started its run (see Recent runs).`);
      refreshRuns();
      return;
    }
    if (trigger) knownTriggers.set(name, trigger);
    toast(`Training ${name} is queued.`);
    selectRun(job, name);
    refreshRuns();
  } catch (error) {
    showError(form, error, { ...fileAliases, ...rightsAlias(error.field) });
  } finally {
    submit.disabled = false;
    progress.hidden = true;
  }
}

// -- following a run -------------------------------------------------------------------------------------------

function sampleCaption(key) {
  const file = key.split("/").pop();
  const epoch = file.match(/_e(\d{6})_/);
  if (epoch) return Number(epoch[1]) === 0 ? "before training" : `epoch ${Number(epoch[1])}`;
  const step = file.match(/_(\d{6})_\d+_/);
  return step ? `step ${Number(step[1])}` : file;
}

function showRunState(job) {
  const badge = $("#t-run-state");
  badge.hidden = false;
  badge.className = `state-badge state-${job.state}`;
  badge.textContent = job.state;
  $("#t-run-status").textContent = describeJob(job);
  setProgress($("#t-run-bar"), job.progress);
  $("#t-run-cancel").hidden = Boolean(job.finished_at);
  $("#t-run-error").textContent = job.state === "failed" ? job.error || "" : "";
  // A failed run can be tried again; a canceled one goes on from the state it saved when it stopped.
  const retry = $("#t-run-retry");
  retry.hidden = job.state !== "failed" && job.state !== "canceled";
  retry.textContent = job.state === "canceled" ? "Resume" : "Retry";
  const warnings = job.info?.warnings || [];
  const list = $("#t-run-warnings");
  list.hidden = !warnings.length;
  list.replaceChildren(...warnings.map((text) => h("li", {}, text)));
}

async function retryRun() {
  if (!currentRun) return;
  const { id, name } = currentRun;
  try {
    const job = await api.post(`/api/jobs/${id}/retry`);
    toast(job.kind === "train" ? `Training ${name || shortId(id)} is queued again.` : "Queued again.");
    selectRun(job, name);
    refreshRuns();
  } catch (error) {
    toast(error.message, "error");
  }
}

function addLossPoint(run, job) {
  const loss = job.info?.loss;
  if (typeof loss !== "number" || job.step === null || job.step === undefined) return;
  const last = run.points[run.points.length - 1];
  if (last && last[0] === job.step) return;
  run.points.push([job.step, loss]);
  drawLossChart($("#t-loss-chart"), run.points);
}

export function selectRun(job, name = null) {
  if (currentRun) currentRun.controller.abort();
  const run = { id: job.id, name, controller: new AbortController(), points: [] };
  currentRun = run;
  $("#t-run-empty").hidden = true;
  $("#t-run-body").hidden = false;
  $("#t-run-title").textContent = `${name || "Training run"} · ${shortId(job.id)}`;
  $("#t-samples-wrap").hidden = true;
  $("#t-use-wrap").hidden = true;
  $("#t-epochs-wrap").hidden = true;
  drawLossChart($("#t-loss-chart"), []);
  showRunState(job);
  const update = (snapshot) => {
    if (currentRun !== run) return;
    showRunState(snapshot);
    addLossPoint(run, snapshot);
    if (snapshot.info?.samples?.length) showSamples(run, snapshot.info.samples);
  };
  if (job.finished_at) {
    showRunResults(run, job);
    return;
  }
  followJob(job.id, update, run.controller.signal)
    .then((final) => {
      update(final);
      refreshRuns();
      return showRunResults(run, final);
    })
    .catch((error) => {
      if (error.name !== "AbortError") $("#t-run-error").textContent = error.message;
    });
}

// Samples arrive per epoch while a run trains (job.info.samples: storage keys), and all of them with the results.
function showSamples(run, samples) {
  const keys = samples.map((sample) => (typeof sample === "string" ? sample : sample.key));
  if (keys.join("|") === (run.sampleKeys || []).join("|")) return;
  run.sampleKeys = keys;
  $("#t-samples-wrap").hidden = !samples.length;
  $("#t-samples").replaceChildren(
    ...samples.map((sample) => {
      const key = typeof sample === "string" ? sample : sample.key;
      const img = h("img", { alt: `Sample, ${sampleCaption(key)}`, loading: "lazy" });
      fileObjectUrl(sample.url || fileUrl(key)).then((url) => {
        img.src = url;
      });
      return h("figure", {}, img, h("figcaption", {}, sampleCaption(key)));
    }),
  );
}

async function showRunResults(run, job) {
  if (job.state !== "succeeded") return;
  const results = await api.get(`/api/jobs/${job.id}/results`);
  if (currentRun !== run) return;
  const model = results.model || {};
  run.name = model.name || run.name;
  $("#t-run-title").textContent = `${run.name} · ${shortId(job.id)}`;
  if (results.summary_url) {
    try {
      const response = await api.get(results.summary_url);
      const summary = response instanceof Response ? await response.json() : response;
      if (Array.isArray(summary.loss_curve) && summary.loss_curve.length) {
        run.points = summary.loss_curve.map(([step, loss]) => [Number(step), Number(loss)]);
      }
    } catch (error) {
      toast(`The loss curve could not be read: ${error.message}`, "error");
    }
  }
  drawLossChart($("#t-loss-chart"), run.points);
  showSamples(run, results.samples || []);
  const epochs = results.epochs || [];
  $("#t-epochs-wrap").hidden = !epochs.length;
  $("#t-epochs").replaceChildren(
    ...epochs.map((epoch) =>
      h(
        "li",
        {},
        h("code", {}, epoch.name),
        h(
          "button",
          { type: "button", class: "btn btn-quiet btn-small", onclick: () => useEpoch(epoch.name) },
          "Use",
        ),
      ),
    ),
  );
  if (model.name) {
    $("#t-use-wrap").hidden = false;
    const trigger = knownTriggers.get(model.name);
    $("#t-use-note").textContent = `Adds <lora:${model.name}:0.8>${trigger ? ` and “${trigger}”` : ""} to the txt2img prompt.`;
    await refreshModels();
  }
}

function useEpoch(name) {
  selectTab("txt2img");
  insertLora(name, currentRun?.name ? knownTriggers.get(currentRun.name) : undefined);
}

function useLora() {
  if (!currentRun?.name) return;
  selectTab("txt2img");
  insertLora(currentRun.name, knownTriggers.get(currentRun.name));
}

async function cancelRun() {
  if (!currentRun) return;
  try {
    showRunState(await api.post(`/api/jobs/${currentRun.id}/cancel`));
  } catch (error) {
    toast(error.message, "error");
  }
}

export async function refreshRuns() {
  const list = $("#t-runs");
  try {
    const { jobs } = await api.get("/api/jobs", { query: { kind: "train", limit: 8 } });
    list.replaceChildren(
      ...(jobs.length
        ? jobs.map((job) => {
            const name = job.result?.model?.name;
            return h(
              "li",
              {},
              h(
                "button",
                { type: "button", class: "run-item", "data-job": job.id, onclick: () => selectRun(job, name) },
                h("span", { class: "run-name" }, name || job.label?.name || `run ${shortId(job.id)}`),
                stateBadge(job.state),
                h("span", { class: "muted" }, formatTime(job.created_at)),
              ),
            );
          })
        : [h("li", { class: "muted" }, "No training runs yet.")]),
    );
  } catch (error) {
    list.replaceChildren(h("li", { class: "form-error" }, error.message));
  }
}

export function initTraining(options) {
  selectTab = options.selectTab;
  insertLora = options.insertLora;
  $("#t-main-options").append(...MAIN_OPTIONS.map(optionField));
  $("#t-advanced-options").append(...ADVANCED_OPTIONS.map(optionField));
  catalog.addEventListener("change", renderBases);
  $("#t-base").addEventListener("change", choosePresetForBase);
  for (const radio of $$("input[name=data_source]")) radio.addEventListener("change", () => setDataSource(radio.value));
  $("#t-images").addEventListener("change", (event) => {
    addImages([...event.target.files]);
    event.target.value = "";
  });
  const zone = $("#t-images-field .dropzone");
  zone.addEventListener("dragover", (event) => {
    event.preventDefault();
    zone.classList.add("drag-over");
  });
  zone.addEventListener("dragleave", () => zone.classList.remove("drag-over"));
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    zone.classList.remove("drag-over");
    addImages([...(event.dataTransfer?.files || [])]);
  });
  form.addEventListener("submit", startTraining);
  $("#t-rights-people").addEventListener("change", peopleChanged);
  $("#t-consent-add").addEventListener("click", addConsentRow);
  $("#t-run-cancel").addEventListener("click", cancelRun);
  $("#t-run-retry").addEventListener("click", retryRun);
  $("#t-use-lora").addEventListener("click", useLora);
  $("#t-runs-refresh").addEventListener("click", refreshRuns);
  drawLossChart($("#t-loss-chart"), []);
}
