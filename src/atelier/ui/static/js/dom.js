// Small DOM and formatting helpers shared by the tabs.

export const $ = (selector, root = document) => root.querySelector(selector);
export const $$ = (selector, root = document) => [...root.querySelectorAll(selector)];

/** Create an element: h("button", {class: "btn", onclick: fn}, "Label"). */
export function h(tag, props = {}, ...children) {
  const element = document.createElement(tag);
  for (const [name, value] of Object.entries(props || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (name === "class") element.className = value;
    else if (name === "dataset") Object.assign(element.dataset, value);
    else if (name.startsWith("on") && typeof value === "function") element.addEventListener(name.slice(2), value);
    else if (name in element && typeof value !== "string") element[name] = value;
    else element.setAttribute(name, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    element.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return element;
}

export function formatBytes(bytes) {
  if (bytes === null || bytes === undefined) return "—";
  const units = ["B", "KB", "MB", "GB", "TB"];
  let value = bytes;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit += 1;
  }
  return `${value.toFixed(value >= 10 || unit === 0 ? 0 : 1)} ${units[unit]}`;
}

export function formatDuration(seconds) {
  if (seconds === null || seconds === undefined || Number.isNaN(seconds)) return "—";
  if (seconds < 1) return `${Math.round(seconds * 1000)} ms`;
  if (seconds < 60) return `${seconds.toFixed(seconds < 10 ? 1 : 0)} s`;
  const minutes = Math.floor(seconds / 60);
  if (minutes < 60) return `${minutes} min ${Math.round(seconds % 60)} s`;
  return `${Math.floor(minutes / 60)} h ${minutes % 60} min`;
}

export function secondsBetween(startIso, endIso) {
  if (!startIso) return null;
  const end = endIso ? Date.parse(endIso) : Date.now();
  return Math.max(0, (end - Date.parse(startIso)) / 1000);
}

export function formatTime(iso) {
  if (!iso) return "—";
  const date = new Date(iso);
  const today = new Date();
  const sameDay = date.toDateString() === today.toDateString();
  const time = date.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit" });
  return sameDay ? time : `${date.toLocaleDateString()} ${time}`;
}

export function shortId(id) {
  return id ? id.slice(0, 8) : "";
}

/** A passing message in the corner; errors stay a little longer. */
export function toast(message, kind = "info") {
  const host = document.getElementById("toasts");
  const item = h("div", { class: `toast toast-${kind}` }, message);
  host.append(item);
  setTimeout(() => item.remove(), kind === "error" ? 8000 : 4000);
}

/** Keep a range slider and a number input showing the same value. */
export function pairSlider(range, number) {
  range.addEventListener("input", () => {
    number.value = range.value;
  });
  number.addEventListener("input", () => {
    if (number.value !== "") range.value = number.value;
  });
}

export function stateBadge(state) {
  return h("span", { class: `state-badge state-${state}` }, state);
}

export function progressBar(fraction, label) {
  const percent = Math.round(Math.max(0, Math.min(1, fraction || 0)) * 100);
  return h(
    "div",
    {
      class: "progressbar",
      role: "progressbar",
      "aria-valuemin": "0",
      "aria-valuemax": "100",
      "aria-valuenow": String(percent),
      "aria-label": label,
    },
    h("span", { style: `width: ${percent}%` }),
  );
}

export function setProgress(bar, fraction) {
  const percent = Math.round(Math.max(0, Math.min(1, fraction || 0)) * 100);
  bar.setAttribute("aria-valuenow", String(percent));
  bar.firstElementChild.style.width = `${percent}%`;
}

/** A job's status in words: queue position while waiting, step/total while running. */
export function describeJob(job) {
  if (job.state === "queued") {
    // The API counts the queued jobs ahead of this one: 0 means it runs next.
    const ahead = job.queue_position;
    // Why it waits, from the API: "training oue-windbreaker, ~6 min left".
    const why = job.waiting_for && job.waiting_for.reason ? ` · waiting for ${job.waiting_for.reason}` : "";
    if (ahead === null || ahead === undefined) return `Queued${why}`;
    const place = ahead === 0 ? "next in line" : `${ahead} job${ahead === 1 ? "" : "s"} ahead`;
    return `Queued · ${place}${why}`;
  }
  if (job.state === "running") {
    if (job.cancel_requested) return "Stopping…";
    const info = job.info || {};
    const parts = [];
    if (info.total_epochs) parts.push(`epoch ${info.epoch ?? "?"} of ${info.total_epochs}`);
    if (job.total) parts.push(`step ${job.step ?? 0} of ${job.total}`);
    if (typeof info.loss === "number") parts.push(`loss ${info.loss.toFixed(4)}`);
    return parts.length ? `Running · ${parts.join(" · ")}` : "Running · loading the model";
  }
  if (job.state === "succeeded") {
    if (job.kind === "train") return job.total ? `Done · ${job.total} steps` : "Done";
    // Time taken and pace, as the worker measured them (stored with the job's result).
    const timings = job.timings || job.result?.timings;
    if (timings && timings.generate_seconds !== undefined) {
      const pace = timings.seconds_per_step ? ` · ${(1 / timings.seconds_per_step).toFixed(1)} steps/s` : "";
      return `Done · ${timings.generate_seconds.toFixed(1)} s${pace}`;
    }
    return "Done";
  }
  if (job.state === "canceled") return "Canceled";
  return `Failed: ${job.error || "unknown error"}`;
}

/** Let `zone` take an image file dropped on it: the first image of the drop goes to `onFile`. */
export function acceptDrops(zone, onFile) {
  zone.addEventListener("dragover", (event) => {
    event.preventDefault();
    event.stopPropagation();
    zone.classList.add("drag-over");
  });
  zone.addEventListener("dragleave", () => zone.classList.remove("drag-over"));
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    event.stopPropagation();
    zone.classList.remove("drag-over");
    const file = [...(event.dataTransfer?.files || [])].find((item) => item.type.startsWith("image/"));
    if (file) onFile(file);
  });
}
