// The Models tab: registered checkpoints and LoRAs (GET /api/models) and uploads (PUT /api/models/{file}).

import { upload } from "./api.js";
import { catalog, refreshModels } from "./catalog.js";
import { $, formatBytes, formatTime, h, toast } from "./dom.js";
import { clearErrors, showError, showFieldError } from "./fields.js";

const SOURCE_NAMES = { upload: "uploaded", training: "trained here", demo: "demo" };

function row(model) {
  const name = h("td", { class: "model-name" }, h("strong", {}, model.name));
  if (model.label) name.append(h("span", { class: "warning-badge", title: model.label }, `⚠ ${model.label}`));
  return h(
    "tr",
    { "data-model": model.name, "data-kind": model.kind },
    name,
    h("td", {}, model.kind === "lora" ? "LoRA" : "Checkpoint"),
    h("td", {}, h("code", {}, model.architecture)),
    h("td", {}, h("code", { title: model.sha256 }, model.sha256.slice(0, 10))),
    h("td", {}, SOURCE_NAMES[model.source] || model.source),
    h("td", { class: "numeric" }, formatBytes(model.size)),
    h("td", {}, formatTime(model.created_at)),
  );
}

function render() {
  const body = $("#models-table tbody");
  const models = [...catalog.checkpoints, ...catalog.loras];
  body.replaceChildren(
    ...(models.length
      ? models.map(row)
      : [h("tr", {}, h("td", { colspan: "7", class: "muted" }, "No models yet. Upload a .safetensors checkpoint above."))]),
  );
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
  $("#model-upload-form").addEventListener("submit", submitUpload);
  $("#models-refresh").addEventListener("click", () => refreshModels().catch((error) => toast(error.message, "error")));
}
