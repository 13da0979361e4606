// The image viewer: one generated image large, with its infotext and what can be done with it.

import { api, dataUrl, fileBlob, fileObjectUrl } from "./api.js";
import { $, h, toast } from "./dom.js";

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
  );
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
