// The Models tab: registered checkpoints, LoRAs, embeddings and VAEs (GET /api/models) and uploads (PUT /api/models/{file}).

import { api, upload } from "./api.js";
import { catalog, isAdmin, refreshModels } from "./catalog.js";
import { $, formatBytes, formatTime, h, toast } from "./dom.js";
import { clearErrors, showError, showFieldError } from "./fields.js";
import { licenseBadge, licenseUseText, rightsElement } from "./licenses.js";

const SOURCE_NAMES = { upload: "uploaded", training: "trained here", demo: "demo" };
const KIND_NAMES = { checkpoint: "Checkpoint", lora: "LoRA", embedding: "Embedding", vae: "VAE" };

const COLUMNS = 9;

function licenseCell(model) {
  const cell = h("td", { class: "license-cell" }, licenseBadge(model.license));
  // Recording a licence is an admin's act (PATCH /api/models/{name}); other keys only see it.
  if (isAdmin()) {
    cell.append(
      h(
        "button",
        {
          type: "button",
          class: "btn btn-quiet btn-small license-set",
          "aria-label": `Set the licence of ${model.name}`,
          onclick: () => openLicenseDialog(model),
        },
        "Set licence",
      ),
    );
  }
  return cell;
}

function row(model) {
  const name = h("td", { class: "model-name" }, h("strong", {}, model.name));
  if (model.label) name.append(h("span", { class: "warning-badge", title: model.label }, `⚠ ${model.label}`));
  return h(
    "tr",
    { "data-model": model.name, "data-kind": model.kind },
    name,
    h("td", {}, KIND_NAMES[model.kind] || model.kind),
    h("td", {}, h("code", {}, model.architecture)),
    licenseCell(model),
    h("td", { class: "rights-cell" }, model.kind === "lora" ? rightsElement(model.rights) : h("span", { class: "muted" }, "—")),
    h("td", {}, h("code", { title: model.sha256 }, model.sha256.slice(0, 10))),
    h("td", {}, SOURCE_NAMES[model.source] || model.source),
    h("td", { class: "numeric" }, formatBytes(model.size)),
    h("td", {}, formatTime(model.created_at)),
  );
}

function render() {
  const body = $("#models-table tbody");
  const models = [...catalog.checkpoints, ...catalog.loras, ...catalog.embeddings, ...catalog.vaes];
  body.replaceChildren(
    ...(models.length
      ? models.map(row)
      : [h("tr", {}, h("td", { colspan: String(COLUMNS), class: "muted" }, "No models yet. Upload a .safetensors checkpoint above."))]),
  );
}

// -- an admin's licence record -------------------------------------------------------------------------------

const licenseDialog = $("#license-dialog");
let licenseModel = null;

function openLicenseDialog(model) {
  licenseModel = model;
  const form = $("#license-form");
  clearErrors(form);
  const license = model.license || {};
  $("#license-model").textContent = `${KIND_NAMES[model.kind] || model.kind} ${model.name} · now: ${license.name || "none recorded"} (${licenseUseText(license)})`;
  $("#license-name").value = license.name || "";
  // An admin's ruling on the use shows as chosen; otherwise the studio's licence table decides.
  $("#license-use").value = license.source === "admin" && license.use ? license.use : "";
  $("#license-note").value = license.note || "";
  if (!licenseDialog.open) licenseDialog.showModal();
  $("#license-name").focus();
}

async function submitLicense(event) {
  event.preventDefault();
  const form = event.target;
  clearErrors(form);
  const model = licenseModel;
  if (!model) return;
  const body = { license: $("#license-name").value };
  if ($("#license-use").value) body.use = $("#license-use").value;
  const note = $("#license-note").value.trim();
  if (note) body.note = note;
  const button = form.querySelector("button[type=submit]");
  button.disabled = true;
  try {
    const record = await api.patch(`/api/models/${encodeURIComponent(model.name)}`, body, { query: { kind: model.kind } });
    licenseDialog.close();
    toast(`${record.name}: ${record.license.name} (${licenseUseText(record.license)}).`);
    await refreshModels();
  } catch (error) {
    showError(form, error, { name: "license", kind: null });
  } finally {
    button.disabled = false;
  }
}

async function submitUpload(event) {
  event.preventDefault();
  const form = event.target;
  clearErrors(form);
  const file = $("#model-file").files[0];
  if (!file) {
    showFieldError(form, "file", "Choose a .safetensors file first.");
    return;
  }
  const progress = $("#model-upload-progress");
  const button = form.querySelector("button[type=submit]");
  progress.hidden = false;
  progress.value = 0;
  button.disabled = true;
  try {
    const record = await upload(`/api/models/${encodeURIComponent(file.name)}`, file, {
      onProgress: (fraction) => {
        progress.value = fraction;
      },
    });
    toast(`${record.name} (${record.kind}, ${record.architecture}) is ready to use.`);
    form.reset();
    await refreshModels();
  } catch (error) {
    showError(form, error, { body: "file" });
  } finally {
    progress.hidden = true;
    button.disabled = false;
  }
}

export function initModels() {
  catalog.addEventListener("change", render);
  catalog.addEventListener("caller", render);
  $("#license-form").addEventListener("submit", submitLicense);
  $("#license-cancel").addEventListener("click", () => licenseDialog.close());
  $("#model-upload-form").addEventListener("submit", submitUpload);
  $("#models-refresh").addEventListener("click", () => refreshModels().catch((error) => toast(error.message, "error")));
}
