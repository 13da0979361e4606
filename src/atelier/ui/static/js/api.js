// The studio's public HTTP API, as the page uses it. Nothing here is private to the UI: every call is one a
// script could make with the same key.

const KEY_STORAGE = "atelier.apiKey";
// Browsers allow about six connections per server; live streams beyond this many fall back to polling so that
// image downloads and other calls never wait behind them.
const MAX_STREAMS = 3;
const POLL_MS = 700;

export function getKey() {
  return localStorage.getItem(KEY_STORAGE) || "";
}

export function setKey(key) {
  if (key) localStorage.setItem(KEY_STORAGE, key);
  else localStorage.removeItem(KEY_STORAGE);
  objectUrls.forEach((url) => URL.revokeObjectURL(url));
  objectUrls.clear();
}

/** An error answer of the API: status, the message, and the request field it is about (or null). */
export class ApiError extends Error {
  constructor(status, message, field = null) {
    super(message);
    this.name = "ApiError";
    this.status = status;
    this.field = field;
  }
}

/** Fires "unauthorized" whenever the studio asks for a key the page does not have (or rejects it). */
export const apiEvents = new EventTarget();

function authHeaders(extra = {}) {
  const headers = { ...extra };
  const key = getKey();
  if (key) headers.Authorization = `Bearer ${key}`;
  return headers;
}

async function errorFrom(response) {
  let data = null;
  try {
    data = await response.json();
  } catch {
    // Not JSON (a proxy's error page): the status line says enough.
  }
  const detail = data && typeof data.detail === "string" ? data.detail : null;
  const message = detail || `${response.status} ${response.statusText || "error"}`;
  const error = new ApiError(response.status, message, data && data.field ? data.field : null);
  if (response.status === 401) {
    apiEvents.dispatchEvent(new CustomEvent("unauthorized", { detail: error }));
  }
  return error;
}

function unreachable() {
  return new ApiError(0, "The studio cannot be reached. Is `atelier serve` still running?");
}

function withQuery(path, query) {
  if (!query) return path;
  const params = new URLSearchParams();
  for (const [name, value] of Object.entries(query)) {
    if (value !== undefined && value !== null && value !== "") params.set(name, String(value));
  }
  const text = params.toString();
  return text ? `${path}?${text}` : path;
}

// Requests carry the key in a header and never browser credentials: with credentials, a browser answers the
// studio's 401 (which offers HTTP basic auth to A1111 clients) with its own login prompt, and the request
// waits on that prompt instead of coming back to the page.
const NO_CREDENTIALS = "omit";

/** One API call. JSON answers are parsed; other answers come back as the Response. */
export async function request(method, path, { json, body, contentType, query, signal } = {}) {
  const init = { method, headers: authHeaders(), signal, credentials: NO_CREDENTIALS };
  if (json !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(json);
  } else if (body !== undefined) {
    init.body = body;
    if (contentType) init.headers["Content-Type"] = contentType;
  }
  let response;
  try {
    response = await fetch(withQuery(path, query), init);
  } catch (error) {
    if (error.name === "AbortError") throw error;
    throw unreachable();
  }
  if (!response.ok) throw await errorFrom(response);
  const type = response.headers.get("content-type") || "";
  if (type.includes("application/json")) return response.json();
  return response;
}

export const api = {
  get: (path, options) => request("GET", path, options),
  post: (path, json, options) => request("POST", path, { ...options, json }),
  patch: (path, json, options) => request("PATCH", path, { ...options, json }),
};

/**
 * Upload a file as a raw request body (the API's upload routes), reporting progress as a fraction.
 * XMLHttpRequest is the one browser API that reports upload progress, but it cannot leave out credentials, so
 * the key is checked first with a small request: a refused key must not reach the browser's login prompt.
 */
export async function upload(path, blob, { query, onProgress } = {}) {
  await api.get("/api/jobs", { query: { limit: 1 } });
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    xhr.open("PUT", withQuery(path, query));
    for (const [name, value] of Object.entries(authHeaders({ "Content-Type": "application/octet-stream" }))) {
      xhr.setRequestHeader(name, value);
    }
    xhr.responseType = "json";
    if (onProgress) {
      xhr.upload.onprogress = (event) => {
        if (event.lengthComputable) onProgress(event.loaded / event.total);
      };
    }
    xhr.onerror = () => reject(unreachable());
    xhr.onload = () => {
      const data = xhr.response;
      if (xhr.status >= 200 && xhr.status < 300) {
        resolve(data);
        return;
      }
      const message = data && typeof data.detail === "string" ? data.detail : `${xhr.status} ${xhr.statusText}`;
      const error = new ApiError(xhr.status, message, data && data.field ? data.field : null);
      if (xhr.status === 401) apiEvents.dispatchEvent(new CustomEvent("unauthorized", { detail: error }));
      reject(error);
    };
    xhr.send(blob);
  });
}

// Files are fetched with the key and shown through object URLs: an <img src> cannot send a header.
const objectUrls = new Map();

export async function fileBlob(url) {
  const response = await request("GET", url);
  return response.blob();
}

export async function fileObjectUrl(url) {
  if (!objectUrls.has(url)) {
    objectUrls.set(url, URL.createObjectURL(await fileBlob(url)));
  }
  return objectUrls.get(url);
}

export function fileUrl(key) {
  return `/api/files/${key.split("/").map(encodeURIComponent).join("/")}`;
}

let openStreams = 0;

/**
 * Follow a job until it finishes, calling onUpdate with each progress snapshot (the API's job view).
 * Uses the server-sent events stream, read with fetch so the key can be sent; polls when that is not possible.
 * Resolves with the final snapshot.
 */
export async function followJob(jobId, onUpdate, signal) {
  if (openStreams < MAX_STREAMS) {
    openStreams += 1;
    try {
      const final = await streamEvents(jobId, onUpdate, signal);
      if (final) return final;
    } catch (error) {
      if (signal && signal.aborted) throw error;
      if (error instanceof ApiError && error.status !== 0 && error.status < 500) throw error;
    } finally {
      openStreams -= 1;
    }
  }
  return pollJob(jobId, onUpdate, signal);
}

async function streamEvents(jobId, onUpdate, signal) {
  let response;
  try {
    response = await fetch(`/api/jobs/${encodeURIComponent(jobId)}/events`, {
      headers: authHeaders({ Accept: "text/event-stream" }),
      credentials: NO_CREDENTIALS,
      signal,
    });
  } catch (error) {
    if (error.name === "AbortError") throw error;
    throw unreachable();
  }
  if (!response.ok) throw await errorFrom(response);
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return null;
      buffer += value.replace(/\r\n?/g, "\n");
      let boundary = buffer.indexOf("\n\n");
      while (boundary >= 0) {
        const event = parseEvent(buffer.slice(0, boundary));
        buffer = buffer.slice(boundary + 2);
        boundary = buffer.indexOf("\n\n");
        if (!event) continue;
        const data = JSON.parse(event.data);
        onUpdate(data);
        if (event.name === "done") return data;
      }
    }
  } finally {
    reader.cancel().catch(() => {});
  }
}

function parseEvent(block) {
  let name = "message";
  const data = [];
  for (const line of block.split("\n")) {
    if (line.startsWith(":")) continue;
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    const value = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
    if (field === "event") name = value;
    else if (field === "data") data.push(value);
  }
  return data.length ? { name, data: data.join("\n") } : null;
}

async function pollJob(jobId, onUpdate, signal) {
  for (;;) {
    const job = await api.get(`/api/jobs/${encodeURIComponent(jobId)}`, { signal });
    onUpdate(job);
    if (job.finished_at) return job;
    await new Promise((resolve, reject) => {
      const timer = setTimeout(resolve, POLL_MS);
      signal?.addEventListener("abort", () => {
        clearTimeout(timer);
        reject(new DOMException("aborted", "AbortError"));
      });
    });
  }
}

/** Read a File or Blob as a data: URL (the API accepts base64 images in that form). */
export function dataUrl(blob) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);
    reader.onerror = () => reject(reader.error);
    reader.readAsDataURL(blob);
  });
}
