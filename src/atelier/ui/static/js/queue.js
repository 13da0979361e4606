// The Queue tab: every job (generate and train) with its state, progress, owner and timing; cancel from here.

import { api } from "./api.js";
import { imagesOfJob } from "./generate.js";
import { openViewer } from "./viewer.js";
import { $, describeJob, formatDuration, formatTime, h, progressBar, secondsBetween, shortId, stateBadge, toast } from "./dom.js";

const PAGE_SIZE = 50;
const REFRESH_MS = 1500;
let page = 0;
let hasOlder = false;
let timer = null;
let loading = false;

async function cancel(job, button) {
  button.disabled = true;
  try {
    await api.post(`/api/jobs/${job.id}/cancel`);
    await refreshQueue();
  } catch (error) {
    toast(error.message, "error");
    button.disabled = false;
  }
}

/** What the job is, in words people recognise: the run's LoRA name, or the prompt with its model and LoRAs. */
async function retry(job, button) {
  button.disabled = true;
  try {
    await api.post(`/api/jobs/${job.id}/retry`);
    await refreshQueue();
  } catch (error) {
    toast(error.message, "error");
    button.disabled = false;
  }
}

function jobTitle(job) {
  const label = job.label || {};
  const main = job.kind === "train" ? `LoRA ${label.name || "run"}` : label.prompt || "(no prompt)";
  const details = job.kind === "train" ? [label.base] : [label.model, ...(label.loras || []).map((name) => `<${name}>`)];
  return h(
    "td",
    { class: "job-cell" },
    h("span", { class: "job-title", title: main }, main),
    h("span", { class: "cell-note" }, [...details.filter(Boolean), shortId(job.id)].join(" · ")),
  );
}

function row(job) {
  const active = job.state === "queued" || job.state === "running";
  const progress = h(
    "td",
    { class: "progress-cell" },
    job.state === "running" || job.state === "succeeded" ? progressBar(job.progress, `Progress of job ${shortId(job.id)}`) : null,
    h("span", { class: "cell-note" }, describeJob(job)),
  );
  const waited = secondsBetween(job.created_at, job.started_at || (job.state === "queued" ? null : job.finished_at));
  const ran = job.started_at ? secondsBetween(job.started_at, job.finished_at) : null;
  const actions = h("td", { class: "actions-cell" });
  const images = job.kind === "generate" && job.state === "succeeded" ? job.result?.images || [] : [];
  if (images.length) {
    actions.append(
      h(
        "button",
        { type: "button", class: "btn btn-quiet btn-small", "aria-label": `View the images of job ${shortId(job.id)}`, onclick: () => openViewer(imagesOfJob(job.id, images), 0) },
        "View",
      ),
    );
  }
  if (job.state === "failed" || (job.state === "canceled" && job.kind === "train")) {
    // A canceled training run resumes from its saved state; a failed job of either kind is tried afresh.
    const label = job.state === "canceled" ? "Resume" : "Retry";
    const button = h("button", { type: "button", class: "btn btn-quiet btn-small", "aria-label": `${label} job ${shortId(job.id)}` }, label);
    button.addEventListener("click", () => retry(job, button));
    actions.append(button);
  }
  if (active && !job.cancel_requested) {
    const button = h("button", { type: "button", class: "btn btn-quiet btn-danger btn-small", "aria-label": `Cancel job ${shortId(job.id)}` }, "Cancel");
    button.addEventListener("click", () => cancel(job, button));
    actions.append(button);
  }
  return h(
    "tr",
    { "data-job": job.id, "data-state": job.state },
    jobTitle(job),
    h("td", {}, job.kind),
    h("td", {}, stateBadge(job.state)),
    progress,
    h("td", {}, job.owner || "—"),
    h("td", {}, formatTime(job.created_at)),
    h("td", { class: "numeric" }, formatDuration(waited)),
    h("td", { class: "numeric" }, formatDuration(ran)),
    actions,
  );
}

export async function refreshQueue() {
  if (loading) return;
  loading = true;
  const error = $("#queue-error");
  try {
    const { jobs } = await api.get("/api/jobs", {
      query: { state: $("#q-state").value, kind: $("#q-kind").value, limit: PAGE_SIZE + 1, offset: page * PAGE_SIZE },
    });
    error.textContent = "";
    hasOlder = jobs.length > PAGE_SIZE;
    const shown = jobs.slice(0, PAGE_SIZE);
    $("#queue-table tbody").replaceChildren(
      ...(shown.length ? shown.map(row) : [h("tr", {}, h("td", { colspan: "9", class: "muted" }, "No jobs match."))]),
    );
  } catch (problem) {
    error.textContent = problem.message;
  } finally {
    loading = false;
  }
  const pager = $("#queue-pager");
  pager.querySelector("[data-page=newer]").disabled = page === 0;
  pager.querySelector("[data-page=older]").disabled = !hasOlder;
  pager.querySelector(".pager-label").textContent = `Page ${page + 1}`;
}

/** Refresh live while the tab is shown, and stop when it is left. */
export function setQueueVisible(visible) {
  clearInterval(timer);
  timer = null;
  if (visible) {
    refreshQueue();
    timer = setInterval(refreshQueue, REFRESH_MS);
  }
}

export function initQueue() {
  for (const select of [$("#q-state"), $("#q-kind")]) {
    select.addEventListener("change", () => {
      page = 0;
      refreshQueue();
    });
  }
  const pager = $("#queue-pager");
  pager.querySelector("[data-page=newer]").addEventListener("click", () => {
    page = Math.max(0, page - 1);
    refreshQueue();
  });
  pager.querySelector("[data-page=older]").addEventListener("click", () => {
    page += 1;
    refreshQueue();
  });
}
