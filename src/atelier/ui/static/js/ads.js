// The Ads tab: pick generated images (or upload some), write the copy, compose (POST /api/ads), preview, download.

import { api, dataUrl, fileObjectUrl, fileUrl } from "./api.js";
import { $, h, toast } from "./dom.js";
import { clearErrors, showError, showFieldError } from "./fields.js";

// Materials in the order they will appear: {source: outputs key or data URL, label}.
let materials = [];

function renderMaterials() {
  const list = $("#ads-materials");
  list.replaceChildren(
    ...materials.map((material, index) => {
      const thumb = h("img", { alt: material.label });
      if (material.source.startsWith("data:")) thumb.src = material.source;
      else fileObjectUrl(fileUrl(material.source)).then((url) => (thumb.src = url)).catch(() => thumb.classList.add("missing"));
      return h(
        "li",
        { class: "ads-material" },
        thumb,
        h("button", { type: "button", class: "btn btn-quiet", "aria-label": `Remove ${material.label}`, onclick: () => removeMaterial(index) }, "Remove"),
      );
    }),
  );
  $("#ads-materials-empty").hidden = materials.length > 0;
}

function removeMaterial(index) {
  materials.splice(index, 1);
  renderMaterials();
}

/** Add a material to the ad: an outputs key (the Product shot tab sends its results here) or a data URL. */
export function addMaterial(source, label) {
  materials.push({ source, label });
  renderMaterials();
}

/** The images of finished generations, newest first, offered as materials. */
export async function refreshAdsGallery() {
  const gallery = $("#ads-gallery");
  try {
    const { jobs } = await api.get("/api/jobs", { query: { kind: "generate", state: "succeeded", limit: 24 } });
    const images = jobs.flatMap((job) => ((job.result && job.result.images) || []).map((image) => ({ ...image, prompt: (job.result.params || {}).prompt })));
    gallery.replaceChildren(
      ...images.map((image) => {
        const thumb = h("img", { alt: image.prompt || image.key, loading: "lazy" });
        fileObjectUrl(fileUrl(image.key)).then((url) => (thumb.src = url)).catch(() => thumb.classList.add("missing"));
        return h("button", { type: "button", class: "ads-pick", "data-key": image.key, title: "Add to the ad", onclick: () => addMaterial(image.key, image.prompt || image.key) }, thumb);
      }),
    );
    $("#ads-gallery-empty").hidden = images.length > 0;
  } catch (error) {
    if (error.status !== 401) toast(error.message, "error");
  }
}

function specFromForm(form) {
  const value = (name) => form.elements[name].value.trim();
  const spec = {
    materials: materials.map((material) => material.source),
    headline: value("headline"),
    body: value("body"),
    cta: value("cta"),
    template: value("template"),
    channels: [...form.querySelectorAll("input[name=channel]:checked")].map((box) => box.value),
    brand: { primary: value("primary"), secondary: value("secondary"), text: value("text"), background: value("background") },
  };
  const custom = value("custom_channel");
  if (custom) spec.channels.push(custom);
  if (form.dataset.logo) spec.logo = form.dataset.logo;
  return spec;
}

async function renderResult(answer) {
  const results = $("#ads-results");
  const items = answer.files.map((file) => {
    const preview = file.kind === "video" ? h("video", { controls: true, loop: true, muted: true }) : h("img", { alt: `${file.name} (${file.channel})` });
    fileObjectUrl(file.url).then((url) => (preview.src = url));
    const link = h("a", { class: "btn btn-quiet", href: "#", "data-name": file.name }, `Download ${file.name}`);
    link.addEventListener("click", async (event) => {
      event.preventDefault();
      const anchor = h("a", { href: await fileObjectUrl(file.url), download: file.name });
      anchor.click();
    });
    const size = file.width ? `${file.width}×${file.height}` : file.kind;
    const note = file.truncated && file.truncated.length ? ` · shortened: ${file.truncated.join(", ")}` : "";
    return h("figure", { class: "ads-output", "data-kind": file.kind }, preview, h("figcaption", {}, `${file.name} · ${size}${note} `, link));
  });
  results.replaceChildren(...items);
}

export function initAds() {
  const form = $("#ads-form");
  $("#ads-upload").addEventListener("change", async (event) => {
    for (const file of event.target.files) addMaterial(await dataUrl(file), file.name);
    event.target.value = "";
  });
  $("#ads-logo").addEventListener("change", async (event) => {
    const file = event.target.files[0];
    if (file) form.dataset.logo = await dataUrl(file);
    else delete form.dataset.logo;
  });
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    clearErrors(form);
    const spec = specFromForm(form);
    if (!spec.materials.length) {
      showFieldError(form, "materials", "Pick at least one image from the gallery or upload one.");
      return;
    }
    const button = form.querySelector("button[type=submit]");
    button.disabled = true;
    try {
      await renderResult(await api.post("/api/ads", spec));
      toast("The ad is ready.");
    } catch (error) {
      // The API names fields like materials[0] or brand.primary; the form shows them on their nearest field.
      const field = (error.field || "").replace(/\[\d+\]$/, "");
      showError(form, error, { [error.field]: field.startsWith("brand.") ? field.slice(6) : field });
    } finally {
      button.disabled = false;
    }
  });
  renderMaterials();
}
