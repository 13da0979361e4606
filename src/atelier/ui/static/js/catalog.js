// What the studio offers (models, LoRAs, samplers), loaded once and shared by the tabs. Listeners hear
// "change" whenever a list was reloaded.

import { api } from "./api.js";

export const catalog = Object.assign(new EventTarget(), {
  checkpoints: [],
  loras: [],
  embeddings: [],
  vaes: [],
  samplers: [],
  styles: [],
  currentModel: null,
  // GET /api/whoami: {name, role, keys_required}, or null before the studio answered. Listeners hear "caller".
  caller: null,
});

export function isAdmin() {
  return catalog.caller?.role === "admin";
}

export function isSdxl(model) {
  return Boolean(model) && model.architecture === "sdxl";
}

export function findCheckpoint(name) {
  return catalog.checkpoints.find((model) => model.name === name) || null;
}

export async function refreshModels() {
  const [{ models }, options] = await Promise.all([api.get("/api/models"), api.get("/sdapi/v1/options")]);
  catalog.checkpoints = models.filter((model) => model.kind === "checkpoint");
  catalog.loras = models.filter((model) => model.kind === "lora");
  catalog.embeddings = models.filter((model) => model.kind === "embedding");
  catalog.vaes = models.filter((model) => model.kind === "vae");
  const current = catalog.checkpoints.find((model) => model.title === options.sd_model_checkpoint);
  catalog.currentModel = current ? current.name : catalog.checkpoints[0]?.name ?? null;
  catalog.dispatchEvent(new Event("change"));
}

export async function refreshSamplers() {
  catalog.samplers = await api.get("/sdapi/v1/samplers");
  catalog.dispatchEvent(new Event("change"));
}

export async function refreshStyles() {
  catalog.styles = (await api.get("/api/styles")).styles;
  catalog.dispatchEvent(new Event("change"));
}

export async function refreshCatalog() {
  await Promise.all([refreshModels(), refreshSamplers(), refreshStyles()]);
}
