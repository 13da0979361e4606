// The History tab: finished generations, newest first, a page at a time (GET /api/jobs).

import { api, fileObjectUrl } from "./api.js";
import { $, formatTime, h, toast } from "./dom.js";
import { imagesOfJob } from "./generate.js";
import { openViewer } from "./viewer.js";

const PAGE_SIZE = 24;
let page = 0;
let hasOlder = false;

function card(job) {
  const result = job.result || {};
  const images = imagesOfJob(job.id, result.images || []);
  const params = result.params || {};
  const thumb = h("img", { alt: images.length ? `First image of the generation at ${formatTime(job.created_at)}` : "", loading: "lazy" });
  if (images.length) {
    fileObjectUrl(images[0].url)
      .then((url) => {
        thumb.src = url;
      })
      .catch(() => thumb.classList.add("missing"));
  }
  return h(
    "button",
    {
      type: "button",
      class: "history-card",
      "data-job": job.id,
      disabled: !images.length,
      onclick: () => openViewer(images, 0),
    },
    h("span", { class: "history-thumb" }, thumb, images.length > 1 ? h("span", { class: "count-badge" }, `${images.length}`) : null),
    h("span", { class: "history-prompt" }, params.prompt || "(empty prompt)"),
    h(
      "span",
      { class: "history-meta" },
      [formatTime(job.finished_at || job.created_at), params.width ? `${params.width}×${params.height}` : null, params.model]
        .filter(Boolean)
        .join(" · "),
    ),
  );
}

export async function refreshHistory() {
  const grid = $("#history-grid");
  const error = $("#history-error");
  error.textContent = "";
  try {
    // One more than a page tells whether an older page exists.
    const { jobs } = await api.get("/api/jobs", {
      query: { kind: "generate", state: "succeeded", limit: PAGE_SIZE + 1, offset: page * PAGE_SIZE },
    });
    hasOlder = jobs.length > PAGE_SIZE;
    const shown = jobs.slice(0, PAGE_SIZE);
    grid.replaceChildren(
      ...(shown.length
        ? shown.map(card)
        : [h("div", { class: "empty-state" }, h("p", {}, h("strong", {}, "No generations yet.")), h("p", { class: "muted" }, "Finished images from every tab and API client show here."))]),
    );
  } catch (problem) {
    error.textContent = problem.message;
  }
  const pager = $("#history-pager");
  pager.querySelector("[data-page=newer]").disabled = page === 0;
  pager.querySelector("[data-page=older]").disabled = !hasOlder;
  pager.querySelector(".pager-label").textContent = `Page ${page + 1}`;
}

export function initHistory() {
  const pager = $("#history-pager");
  pager.querySelector("[data-page=newer]").addEventListener("click", () => {
    page = Math.max(0, page - 1);
    refreshHistory();
  });
  pager.querySelector("[data-page=older]").addEventListener("click", () => {
    if (!hasOlder) {
      toast("That was the oldest page.");
      return;
    }
    page += 1;
    refreshHistory();
  });
}
