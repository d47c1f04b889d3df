// What every page of the Klieg console uses: building elements, the gateway's JSON API and its
// server-sent events with the signed-in key, formatting, and the views pages share (status
// pills, errors, media, logs, a queued request's position and ETA).

export const KEY = "klieg.console.key";
/** Dispatched on window when the gateway refuses the key (401); detail: why. */
export const SIGNED_OUT = "klieg-signed-out";

export function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "class") el.className = v;
    else el.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

export function svg(tag, attrs) {
  const el = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs || {})) el.setAttribute(k, String(v));
  return el;
}

export class ApiError extends Error {
  constructor(status, body) {
    super(body && body.detail ? String(body.detail) : `HTTP ${status}`);
    this.status = status;
    this.type = body && body.error_type;
  }
}

function auth() {
  return { Authorization: `Key ${sessionStorage.getItem(KEY) || ""}` };
}

export async function api(path, opts = {}) {
  const headers = { ...auth(), ...(opts.headers || {}) };
  let body = opts.body;
  if (opts.json !== undefined) {
    headers["Content-Type"] = "application/json";
    body = JSON.stringify(opts.json);
  }
  const r = await fetch(path, { method: opts.method || "GET", headers, body, signal: opts.signal });
  const text = await r.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch { data = { detail: text }; }
  if (!r.ok && r.status !== 202) {
    if (r.status === 401 && !opts.quiet) {
      window.dispatchEvent(new CustomEvent(SIGNED_OUT, { detail: "Your key was refused: " + (data && data.detail) }));
    }
    throw new ApiError(r.status, data);
  }
  return data;
}

// Server-sent events over fetch (EventSource cannot send the Authorization header).
export async function sse(path, onEvent, signal) {
  const r = await fetch(path, { headers: auth(), signal });
  if (!r.ok) {
    let data = null;
    try { data = await r.json(); } catch { /* not JSON */ }
    throw new ApiError(r.status, data);
  }
  const reader = r.body.getReader();
  const decoder = new TextDecoder();
  let buf = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buf += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buf.indexOf("\n\n")) >= 0) {
      const chunk = buf.slice(0, cut);
      buf = buf.slice(cut + 2);
      const data = chunk.split("\n").filter((l) => l.startsWith("data: ")).map((l) => l.slice(6)).join("");
      if (data) onEvent(JSON.parse(data));
    }
  }
}

/** A gateway URL as a path of this origin (the API answers with absolute URLs). */
export const local = (url) => url.replace(/^https?:\/\/[^/]+/, "");
export const when = (s) => (s ? new Date(s * 1000).toLocaleString() : "");
export const secs = (s) => (s === null || s === undefined ? "–" : s < 1 ? `${Math.round(s * 1000)} ms` : `${s.toFixed(2)} s`);
export const short = (id) => (id ? String(id).slice(0, 10) : "");
export const json = (v) => JSON.stringify(v, null, 2);
/** "owner/app" and the endpoint's path, the root endpoint as the app alone. */
export const target = (r) => `${r.app}${r.endpoint && r.endpoint !== "/" ? r.endpoint : ""}`;

export function pill(text, kind) { return h("span", { class: `pill ${kind || ""}` }, text); }
export function statusPill(r) {
  const s = r.outcome || r.status;
  const kind = s === "ok" ? "ok" : s === "error" || s === "cancelled" ? "error" : "run";
  return pill(s, kind);
}
export function errorBox(err) {
  return h("div", { class: "error-box", "data-error-type": err.type || "" },
    err.type ? `${err.type}: ` : "", err.message);
}
export function notFound(err) {
  return h("div", {}, h("h1", {}, "Not found"), h("p", { class: "sub" }, err.message));
}

// A queued request's place: its position (0: next) and the expected wait before it starts
// ("" once it has left the queue).
export function queueNote(st) {
  if (st.status !== "IN_QUEUE") return "";
  const eta = st.queue_eta_s;
  const wait = eta === null || eta === undefined ? null : eta < 1 ? "under a second" : eta < 90 ? `about ${Math.round(eta)} s` : `about ${Math.round(eta / 60)} min`;
  return h("span", { class: "queue-note", "data-queue": "" },
    h("span", { "data-queue-position": st.queue_position ?? "" }, st.queue_position === 0 ? "next in line" : `position ${st.queue_position ?? "?"}`),
    wait ? h("span", { "data-queue-eta": eta }, ` · starts in ${wait}`) : null);
}

// ---- media (fal's rule: an object with url and content_type is a file) --------------------

function isMedia(v) {
  return v && typeof v === "object" && typeof v.url === "string" && "content_type" in v;
}
function collectMedia(v, path = "", out = []) {
  if (isMedia(v)) out.push([path, v]);
  else if (Array.isArray(v)) v.forEach((x, i) => collectMedia(x, `${path}[${i}]`, out));
  else if (v && typeof v === "object") for (const [k, x] of Object.entries(v)) collectMedia(x, path ? `${path}.${k}` : k, out);
  return out;
}
export function mediaView(v) {
  const found = collectMedia(v);
  if (!found.length) return null;
  return h("div", { class: "media" }, found.map(([path, m]) => {
    const kind = (m.content_type || "").split("/")[0];
    const el = kind === "image" ? h("img", { src: m.url, alt: path, "data-media": path })
      : kind === "video" ? h("video", { src: m.url, controls: true, "data-media": path })
      : kind === "audio" ? h("audio", { src: m.url, controls: true, preload: "metadata", "data-media": path })
      : h("a", { href: m.url, target: "_blank", "data-media": path }, m.file_name || path);
    return h("figure", { class: kind === "audio" ? "audio" : "" }, el, h("figcaption", {}, `${path} · ${m.content_type || "file"}`));
  }));
}
export function logView(lines) {
  const box = h("div", { class: "logs", "data-logs": "" });
  const add = (ls) => {
    for (const l of ls || []) box.append(h("div", { class: "line" }, h("span", { class: "lvl" }, l.level || ""), l.message || ""));
    box.scrollTop = box.scrollHeight;
  };
  add(lines);
  return { box, add };
}
