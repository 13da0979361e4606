// Entry point: tabs, the API key dialog, and loading what the studio offers.

import { initAds, refreshAdsGallery } from "./ads.js";
import { apiEvents, getKey, request, setKey } from "./api.js";
import { catalog, refreshCatalog } from "./catalog.js";
import { $, $$, toast } from "./dom.js";
import { clearErrors, showFieldError } from "./fields.js";
import { addLoraToPrompt, initGenerate, isGenerateMode, setMode } from "./generate.js";
import { initHistory, refreshHistory } from "./history.js";
import { initModels } from "./models.js";
import { initProduct, refreshProduct } from "./product.js";
import { initQueue, setQueueVisible } from "./queue.js";
import { initTraining, refreshRuns } from "./training.js";

const TABS = ["txt2img", "img2img", "inpaint", "history", "models", "training", "product", "queue", "ads"];
let currentTab = null;

function panelFor(tab) {
  return isGenerateMode(tab) ? $("#panel-generate") : $(`#panel-${tab}`);
}

export function selectTab(tab, { focus = false } = {}) {
  if (!TABS.includes(tab)) tab = "txt2img";
  currentTab = tab;
  for (const button of $$("[role=tab]")) {
    const selected = button.dataset.tab === tab;
    button.setAttribute("aria-selected", String(selected));
    button.tabIndex = selected ? 0 : -1;
    if (selected && focus) button.focus();
  }
  for (const panel of $$("[role=tabpanel]")) panel.hidden = panel !== panelFor(tab);
  if (isGenerateMode(tab)) setMode(tab);
  if (tab === "history") refreshHistory();
  if (tab === "training") refreshRuns();
  if (tab === "ads") refreshAdsGallery();
  if (tab === "product") refreshProduct();
  setQueueVisible(tab === "queue");
  if (location.hash !== `#${tab}`) history.replaceState(null, "", `#${tab}`);
}

function initTabs() {
  const tabs = $$("[role=tab]");
  for (const button of tabs) {
    button.addEventListener("click", () => selectTab(button.dataset.tab));
    button.addEventListener("keydown", (event) => {
      const index = tabs.indexOf(button);
      let next = null;
      if (event.key === "ArrowRight") next = tabs[(index + 1) % tabs.length];
      if (event.key === "ArrowLeft") next = tabs[(index - 1 + tabs.length) % tabs.length];
      if (event.key === "Home") next = tabs[0];
      if (event.key === "End") next = tabs[tabs.length - 1];
      if (next) {
        event.preventDefault();
        selectTab(next.dataset.tab, { focus: true });
      }
    });
  }
  window.addEventListener("hashchange", () => {
    const tab = location.hash.slice(1);
    if (tab !== currentTab && TABS.includes(tab)) selectTab(tab);
  });
}

// -- API key ---------------------------------------------------------------------------------------------------

const keyDialog = $("#key-dialog");

let caller = null; // { name, role, keys_required } from /api/whoami, once the studio answered

function renderKeyButton() {
  const button = $("#key-button");
  if (caller && caller.name) {
    // Who the page acts as: a user key sees its own jobs; an admin key may change models and options.
    button.textContent = `${caller.name} · ${caller.role}`;
    button.title = caller.role === "admin" ? "Admin key: models, options and everyone's jobs" : "User key: your own jobs";
  } else {
    button.textContent = getKey() ? "API key ✓" : "API key";
    button.title = "";
  }
  button.dataset.role = caller ? caller.role : "";
  // The tabs that offer admin actions (the Models tab's "Set licence") hear who the page acts as.
  catalog.caller = caller;
  catalog.dispatchEvent(new Event("caller"));
}

async function loadCaller() {
  try {
    caller = await request("GET", "/api/whoami");
  } catch {
    caller = null;
  }
  renderKeyButton();
}

function openKeyDialog(reason) {
  const form = $("#key-form");
  clearErrors(form);
  $("#key-input").value = getKey();
  $("#key-reason").textContent = reason || "Requests to this studio carry this key.";
  $("#key-forget").hidden = !getKey();
  if (!keyDialog.open) keyDialog.showModal();
  if (getKey() && reason) showFieldError(form, "authorization", "The studio did not accept this key.");
  $("#key-input").focus();
}

async function loadStudio() {
  try {
    await refreshCatalog();
    await loadCaller();
    return true;
  } catch (error) {
    if (error.status !== 401) toast(error.message, "error");
    return false;
  }
}

function initKeyDialog() {
  renderKeyButton();
  $("#key-button").addEventListener("click", () => openKeyDialog(null));
  $("#key-cancel").addEventListener("click", () => keyDialog.close());
  $("#key-forget").addEventListener("click", () => {
    setKey("");
    caller = null;
    renderKeyButton();
    keyDialog.close();
    toast("The key was removed from this browser.");
  });
  $("#key-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const form = event.target;
    clearErrors(form);
    const key = $("#key-input").value.trim();
    if (!key) {
      showFieldError(form, "authorization", "Paste the key printed by `atelier keys create`.");
      return;
    }
    setKey(key);
    renderKeyButton();
    if (await loadStudio()) {
      keyDialog.close();
      toast("Key saved. Welcome to the studio.");
      if (currentTab) selectTab(currentTab);
    } else {
      showFieldError(form, "authorization", "The studio did not accept this key.");
    }
  });
  apiEvents.addEventListener("unauthorized", () => {
    openKeyDialog(
      getKey()
        ? "The studio rejected the saved API key (revoked, or made for another studio). Enter a valid one."
        : "This studio requires an API key.",
    );
  });
}

// -- start -----------------------------------------------------------------------------------------------------

initTabs();
initKeyDialog();
initGenerate({
  selectTab,
  afterJob: () => {
    if (currentTab === "history") refreshHistory();
  },
});
initHistory();
initModels();
initTraining({ selectTab, insertLora: addLoraToPrompt });
initQueue();
initAds();
initProduct({ selectTab });
selectTab(location.hash.slice(1) || "txt2img");
loadStudio().then((ok) => {
  document.body.dataset.ready = ok ? "true" : "needs-key";
});
