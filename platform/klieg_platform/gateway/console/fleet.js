// The fleet page: live figures, the last hour's charts, and per worker, pool and runner what the
// fleet is doing, from GET /fleet/stream (one event a second, each new fleet sample with it).

import { h, pill, secs, short, sse, svg } from "./dom.js";

let every = 10; // seconds between samples, as the stream's first event says
const kept = () => Math.max(1, Math.round(3600 / every)); // the last hour
const period = () => `${Math.round(every * 10) / 10} s`;

// The samples (running totals) as per-period series: requests queued and runners busy when each
// was taken, and between consecutive samples the mean run time and the cold starts.
function periods(samples) {
  const out = { queued: [], busy: [], latency: [], cold: [] };
  samples.forEach((s, i) => {
    out.queued.push(s.queued || 0);
    out.busy.push(s.busy || 0);
    if (i === 0) return;
    const p = samples[i - 1];
    const done = (s.done || 0) - (p.done || 0);
    out.latency.push(done > 0 ? ((s.run_s || 0) - (p.run_s || 0)) / done : 0);
    out.cold.push(Math.max(0, (s.cold || 0) - (p.cold || 0)));
  });
  return out;
}

const CW = 240, CH = 56;

function chart(name, values, format) {
  const n = values.length;
  const top = Math.max(0, ...values) || 1;
  const el = svg("svg", { viewBox: `0 0 ${CW} ${CH}`, preserveAspectRatio: "none", class: `chart ${name}`, "data-chart": name, "data-points": n });
  const title = svg("title");
  title.textContent = n ? `${n} points, one per ${period()}; highest ${format(Math.max(0, ...values))}` : "the first point comes with the next sample";
  el.append(title);
  if (!n) {
    el.append(svg("line", { x1: 0, y1: CH - 2, x2: CW, y2: CH - 2, class: "baseline" }));
    return el;
  }
  const vals = n === 1 ? [values[0], values[0]] : values;  // one sample: a flat line
  const x = (i) => (i / (vals.length - 1)) * CW;
  const y = (v) => CH - 2 - (v / top) * (CH - 8);
  const pts = vals.map((v, i) => `${x(i).toFixed(1)},${y(v).toFixed(1)}`);
  const fill = svg("linearGradient", { id: `fill-${name}`, x1: 0, y1: 0, x2: 0, y2: 1 });
  fill.append(svg("stop", { offset: "0%", class: "top" }), svg("stop", { offset: "100%", class: "bottom" }));
  const defs = svg("defs");
  defs.append(fill);
  el.append(defs,
    svg("path", { d: `M0,${CH} L${pts.join(" L")} L${CW},${CH} Z`, fill: `url(#fill-${name})`, class: "area" }),
    svg("polyline", { points: pts.join(" "), class: "line" }));
  return el;
}

function ago(seconds) {
  return seconds < 90 ? `${Math.round(seconds)} s ago` : `${Math.round(seconds / 60)} min ago`;
}

function stat(key, label, value, values, format, since) {
  return h("div", { class: "stat", [`data-stat-${key}`]: "" },
    h("div", { class: "k" }, label), h("div", { class: "v" }, value),
    values ? chart(key, values, format) : null,
    values && since !== null ? h("div", { class: "axis" }, h("span", {}, ago(since)), h("span", {}, "now")) : null);
}

const fnName = (fn) => (fn || "").split("/").slice(1).join("/") || fn;

function gpuChip(g) {
  const held = g.app !== null;
  return h("span", { class: `gpu ${held ? g.state : "free"}`, "data-gpu": g.id, title: held ? `${g.app} · ${g.function} (${g.state})` : "free" },
    h("b", {}, `GPU ${g.id}`), held ? ` ${g.app} · ${fnName(g.function)}` : " free");
}

function slotsView(w) {
  const busy = w.slots_busy, idle = Math.max(0, w.slots_held - w.slots_busy), free = Math.max(0, w.slots - w.slots_held);
  const cells = [];
  for (let i = 0; i < w.slots; i++) cells.push(h("span", { class: `slot ${i < busy ? "busy" : i < busy + idle ? "idle" : "free"}` }));
  return h("div", { class: "slots", "data-slots": `${busy}/${idle}/${free}` },
    h("div", { class: "slotbar" }, cells), h("div", { class: "note" }, `${busy} busy · ${idle} idle · ${free} free`));
}

function workersView(workers) {
  if (!workers.length) return h("div", { class: "card empty" }, "No live workers: start one with ", h("code", {}, "klieg worker"));
  return h("table", {},
    h("tr", {}, ["Worker", "Pools", "GPUs and what holds them", "Slots", "State", "Last seen"].map((t) => h("th", {}, t))),
    workers.map((w) => h("tr", { "data-worker": w.id },
      h("td", { class: "mono" }, w.id, h("div", { class: "note" }, `${w.cold_starts} cold start(s)`)),
      h("td", {}, w.pools.map((p) => pill(p, "alias"))),
      h("td", {}, w.gpus.length ? h("div", { class: "gpus" }, w.gpus.map(gpuChip)) : h("span", { class: "hint" }, "CPU only")),
      h("td", {}, slotsView(w)),
      h("td", {}, w.draining ? pill("draining", "run") : pill("serving", "ok")),
      h("td", { "data-seen": w.seen_s_ago }, `${w.seen_s_ago.toFixed(1)} s ago`))));
}

function poolsView(pools) {
  if (!pools.length) return h("div", { class: "card empty" }, "No pools yet.");
  return h("table", {},
    h("tr", {}, ["Pool", "Workers", "GPU slots (busy / held / total)", "Runners", "Queue per tier (oldest wait)"].map((t) => h("th", {}, t))),
    pools.map((p) => h("tr", { "data-pool": p.pool },
      h("td", {}, h("b", {}, p.pool)), h("td", {}, p.workers),
      h("td", {}, `${p.slots.busy} / ${p.slots.held} / ${p.slots.total}`),
      h("td", {}, Object.entries(p.runners).filter(([, n]) => n).map(([s, n]) => pill(`${s} ${n}`))),
      h("td", {}, p.queue.filter((q) => q.queued).map((q) => pill(`${q.tier}: ${q.queued} (${q.oldest_wait_s.toFixed(1)} s)`, "run")), p.queued ? null : "empty"))));
}

function runnersView(runners) {
  if (!runners.length) return h("div", { class: "card empty" }, "No runners: every app is cold.");
  return h("table", {},
    h("tr", {}, ["App", "Revision", "Function", "State", "Worker", "GPUs"].map((t) => h("th", {}, t))),
    runners.map((r) => h("tr", { "data-runner": r.app },
      h("td", {}, r.app), h("td", { class: "mono" }, short(r.revision)), h("td", {}, r.function),
      h("td", {}, pill(r.state === "idle" ? `idle ${r.idle_s.toFixed(0)} s` : r.state, r.state === "busy" ? "run" : r.state === "idle" ? "ok" : "")),
      h("td", { class: "mono" }, r.worker), h("td", {}, r.gpus.join(", ") || "–"))));
}

export function fleetPage(main, signal) {
  const stats = h("div", { class: "stats" });
  const pools = h("div", { "data-pools": "" });
  const workers = h("div", { "data-workers": "" });
  const runners = h("div", { "data-runners": "" });
  const operator = h("div", {}, h("h2", {}, "Pools"), pools, h("h2", {}, "Workers"), workers);
  const live = h("span", { class: "pill" }, "connecting…");
  main.append(h("div", { class: "row" }, h("h1", {}, "Fleet"), h("span", { class: "spacer" }), live),
    h("p", { class: "sub" }, "Live workers, GPU slots, runners and queues; the charts cover the last hour."),
    stats, operator, h("h2", {}, "Runners"), runners);
  let samples = [];
  const show = (doc) => {
    live.replaceChildren("● live");
    live.className = "pill ok";
    if (doc.every_s) every = doc.every_s;
    if (doc.history) samples = doc.history.slice(-kept());
    if (doc.sample) samples = [...samples, doc.sample].slice(-kept());
    const series = periods(samples);
    const since = samples.length ? Math.max(0, doc.at - samples[0].at) : null;
    const count = (s) => doc.runners.filter((r) => r.state === s).length;
    const queued = doc.pools ? doc.pools.reduce((a, p) => a + p.queued, 0) : null;
    const recent = series.latency.filter((x) => x > 0);
    const whole = (v) => String(Math.round(v));
    stats.replaceChildren(
      ...(queued === null ? [] : [stat("queued", "Requests queued", queued, series.queued, whole, since)]),
      stat("busy", "Runners busy", count("busy") + count("starting"), series.busy, whole, since),
      stat("latency", "Mean run time", recent.length ? secs(recent[recent.length - 1]) : "–", series.latency, secs, since),
      stat("cold", "Cold starts, last hour", series.cold.reduce((a, b) => a + b, 0), series.cold, whole, since),
      stat("idle", "Runners idle (warm)", count("idle"), null));
    if (doc.pools === null) operator.replaceChildren(h("div", { class: "notice mt12" }, "Pools, workers and queues are shown to an admin tenant's key."));
    else {
      pools.replaceChildren(poolsView(doc.pools));
      workers.replaceChildren(workersView(doc.workers || []));
    }
    runners.replaceChildren(runnersView(doc.runners));
  };
  (async () => {  // each stream lasts a minute; the next one follows, as EventSource would
    while (!signal.aborted) {
      try { await sse("/fleet/stream", show, signal); }
      catch (e) {
        if (e.name === "AbortError") return;
        live.replaceChildren("reconnecting…");
        live.className = "pill error";
        await new Promise((done) => setTimeout(done, 2000));
      }
    }
  })();
}
