// The Klieg console: one page, routed by the URL's fragment, reading the gateway's JSON API
// with the key the user signs in with (kept in this tab's sessionStorage only). Each page gets
// an AbortSignal that fires when the user leaves it, which ends its streams.

import {
  ApiError, KEY, SIGNED_OUT, api, errorBox, h, json, local, logView, mediaView, notFound, pill,
  queueNote, secs, short, sse, statusPill, target, when,
} from "./dom.js";
import { fleetPage } from "./fleet.js";

const root = document.getElementById("root");
let leave = new AbortController();

// ---- pages --------------------------------------------------------------------------------

async function appsPage(main) {
  const apps = await api("/apps");
  main.append(h("h1", {}, "Apps"), h("p", { class: "sub" }, "Your deployed apps, their aliases and revisions."));
  if (!apps.length) {
    main.append(h("div", { class: "card empty" }, "No apps yet. Deploy one with ", h("code", {}, "klieg deploy apps/echo/app.py")));
    return;
  }
  main.append(h("table", { "data-apps": "" },
    h("tr", {}, h("th", {}, "App"), h("th", {}, "Aliases"), h("th", {}, "Created"), h("th", {}, "")),
    apps.map((a) => h("tr", { class: "link", "data-app": a.name, onclick: () => go(`#/apps/${a.name}`) },
      h("td", {}, h("b", {}, `${a.owner}/${a.name}`)),
      h("td", {}, Object.entries(a.aliases || {}).map(([k, v]) => pill(`${k} → ${short(v)}`, "alias"))),
      h("td", {}, when(a.created_at)),
      h("td", {}, h("a", { href: `#/playground/${a.owner}/${a.name}`, onclick: (e) => e.stopPropagation() }, "Playground →"))))));
}

async function appPage(main, name) {
  const revs = await api(`/apps/${encodeURIComponent(name)}/revisions`);
  const owner = revs.length ? revs[0].owner : "";
  main.append(
    h("div", { class: "row" }, h("h1", {}, `${owner}/${name}`), h("span", { class: "spacer" }),
      h("a", { class: "button", href: `#/playground/${owner}/${name}` }, "Open playground"),
      h("button", { "data-rollback": "", onclick: async () => {
        if (!confirm(`Roll the latest alias of ${name} back to its previous revision?`)) return;
        try { await api(`/apps/${encodeURIComponent(name)}/rollback?alias=latest`, { method: "POST" }); route(); }
        catch (e) { main.prepend(errorBox(e)); }
      } }, "Roll back latest")),
    h("p", { class: "sub" }, `${revs.length} revision(s), newest first.`),
    h("table", { "data-revisions": "" },
      h("tr", {}, h("th", {}, "Revision"), h("th", {}, "Created"), h("th", {}, "Environment"), h("th", {}, "Hardware"), h("th", {}, "Aliases"), h("th", {}, "")),
      revs.map((r) => h("tr", { "data-revision": r.id },
        h("td", { class: "mono" }, r.id),
        h("td", {}, when(r.created_at)),
        h("td", { class: "mono", title: `preloads ${(r.preload || []).join(", ") || "nothing"}${r.preload_code ? " and its code" : ""}` },
          `${short(r.env_key)} · py${r.python}${r.preload_code ? " · code preloaded" : ""}`),
        h("td", {}, (r.hardware || []).map((x) => pill(`${x.function}: ${x.gpu ? `${x.num_gpus || 1}× ${x.gpu}` : "CPU"}`))),
        h("td", {}, r.aliases.map((a) => pill(a, "alias"))),
        h("td", {}, h("button", { class: "small", onclick: async () => {
          const alias = prompt(`Point which alias at revision ${short(r.id)}?`, "latest");
          if (!alias || !confirm(`Point ${name}@${alias} at ${r.id}?`)) return;
          try { await api(`/apps/${encodeURIComponent(name)}/aliases/${encodeURIComponent(alias)}`, { method: "PUT", json: { revision: r.id } }); route(); }
          catch (e) { main.prepend(errorBox(e)); }
        } }, "Point alias…"))))));
}

function requestRow(r) {
  return h("tr", { class: "link", "data-request": r.request_id, onclick: () => go(`#/requests/${r.request_id}`) },
    h("td", { class: "mono" }, short(r.request_id)),
    h("td", {}, target(r)),
    h("td", {}, statusPill(r), r.error_type ? h("span", { class: "hint" }, r.error_type) : null),
    h("td", {}, when(r.created_at)),
    h("td", {}, secs(r.queue_s)), h("td", {}, secs(r.run_s)), h("td", {}, secs(r.cold_start_s)));
}

async function requestsPage(main, params) {
  const app = h("input", { placeholder: "app (name or owner/name)", value: params.get("app") || "", "data-filter-app": "" });
  const status = h("select", { "data-filter-status": "" },
    ["", "ok", "error", "cancelled", "IN_QUEUE", "IN_PROGRESS"].map((s) => h("option", { value: s, selected: s === (params.get("status") || "") }, s || "any status")));
  const search = () => {
    const q = new URLSearchParams();
    if (app.value) q.set("app", app.value);
    if (status.value) q.set("status", status.value);
    go(`#/requests?${q}`);
  };
  app.addEventListener("keydown", (e) => e.key === "Enter" && search());
  status.addEventListener("change", search);
  const body = h("tbody", {});
  const more = h("button", { class: "mt12" }, "Load older");
  main.append(h("h1", {}, "Requests"), h("p", { class: "sub" }, "Your requests, newest first."),
    h("div", { class: "row mb14" }, h("div", { class: "f2" }, app), h("div", { class: "f1" }, status), h("button", { onclick: search }, "Search")),
    h("table", { "data-requests": "" }, h("thead", {}, h("tr", {}, ["Request", "App", "Status", "Created", "Queued", "Ran", "Cold start"].map((t) => h("th", {}, t)))), body),
    more);
  let cursor = null;
  const load = async () => {
    const q = new URLSearchParams({ limit: "50" });
    for (const k of ["app", "status"]) if (params.get(k)) q.set(k, params.get(k));
    if (cursor) q.set("after", cursor);
    const page = await api(`/requests?${q}`);
    page.requests.forEach((r) => body.append(requestRow(r)));
    if (!body.children.length) body.append(h("tr", {}, h("td", { colspan: 7, class: "empty" }, "No requests match.")));
    cursor = page.next;
    more.style.display = cursor ? "" : "none";
  };
  more.addEventListener("click", load);
  await load();
}

async function requestPage(main, id, signal) {
  const r = await api(`/requests/${encodeURIComponent(id)}`);
  const running = r.status !== "COMPLETED";
  const logs = logView(running ? [] : r.logs);  // a running request's stream sends every line
  const output = h("div", { "data-output": "" });
  const state = h("span", { class: "row", "data-state": "" }, statusPill(r), queueNote(r));
  main.append(
    h("h1", {}, "Request ", h("span", { class: "mono" }, r.request_id)),
    h("p", { class: "sub" }, h("a", { href: `#/apps/${r.app.split("/")[1]}` }, target(r)), " · revision ", h("span", { class: "mono" }, short(r.revision))),
    h("div", { class: "card kv mb18" },
      h("div", { class: "k" }, "Status"), state,
      h("div", { class: "k" }, "Created"), h("div", {}, when(r.created_at)),
      h("div", { class: "k" }, "Queued / ran / cold start"), h("div", {}, `${secs(r.queue_s)} / ${secs(r.run_s)} / ${secs(r.cold_start_s)}`),
      h("div", { class: "k" }, "Tier · attempts"), h("div", {}, `${r.tier} · ${r.attempts}`)),
    h("div", { class: "grid2" },
      h("div", {}, h("h2", {}, "Input"), r.input_stored ? h("div", { class: "notice" }, "A large input, kept in the blob store.") : h("pre", { class: "json", "data-input": "" }, json(r.input))),
      h("div", {}, h("h2", {}, "Output"), output)),
    h("h2", {}, "Logs"), logs.box);
  const finish = async (doc) => {
    state.replaceChildren(statusPill(doc));
    if (doc.outcome === "ok") {
      const result = await api(local(r.response_url));
      output.replaceChildren(mediaView(result) || "", h("pre", { class: "json" }, json(result)));
    } else if (doc.error) output.replaceChildren(errorBox({ type: doc.error_type, message: doc.error }));
  };
  if (!running) return finish(r);
  output.append(h("div", { class: "notice" }, "Waiting for the result…"));
  sse(`${local(r.status_url)}/stream?logs=1`, async (doc) => {
    logs.add(doc.logs);
    state.replaceChildren(statusPill(doc), queueNote(doc));
    if (doc.status === "COMPLETED") finish({ ...doc, outcome: doc.error_type ? "error" : "ok" });
  }, signal).catch(() => {});
}

// ---- the playground -------------------------------------------------------------------------

function deref(doc, s) {
  let out = s || {};
  for (let i = 0; out.$ref && i < 10; i++) out = doc.components.schemas[out.$ref.split("/").pop()] || {};
  if (out.anyOf) {
    const real = out.anyOf.filter((x) => x.type !== "null");
    if (real.length === 1) out = { ...deref(doc, real[0]), nullable: true, default: out.default, description: out.description, title: out.title };
  }
  return out;
}

function fieldInput(doc, name, schema, required) {
  const s = deref(doc, schema);
  const described = schema.description || (schema.$ref ? null : s.description);
  const hint = [described, s.minimum !== undefined && s.maximum !== undefined ? `${s.minimum} – ${s.maximum}` : null].filter(Boolean).join(" · ");
  let control, read;
  const media = s["x-klieg-media"] || (s.type === "string" && /(_url|^url)$/.test(name));
  if (media) {
    const url = h("input", { placeholder: "https://… or upload a file", "data-field": name });
    const file = h("input", { type: "file", "data-upload": name });
    const note = h("span", { class: "hint" });
    file.addEventListener("change", async () => {
      const f = file.files[0];
      if (!f) return;
      note.textContent = "uploading…";
      try {
        const up = await api("/files/upload", { method: "POST", body: f, headers: { "Content-Type": f.type || "application/octet-stream", "X-Klieg-File-Name": f.name } });
        url.value = up.url;
        url.dataset.contentType = up.content_type || "";
        note.textContent = `uploaded ${f.name} (${up.file_size} bytes)`;
      } catch (e) { note.textContent = e.message; }
    });
    control = h("div", {}, url, h("div", { class: "row mt6" }, file, note));
    url.addEventListener("input", () => { url.dataset.contentType = ""; });
    read = () => (url.value ? (s["x-klieg-media"] ? { url: url.value, content_type: url.dataset.contentType || null } : url.value) : undefined);
  } else if (s.enum) {
    const sel = h("select", { "data-field": name }, s.enum.map((v) => h("option", { value: JSON.stringify(v), selected: v === s.default }, String(v))));
    control = sel;
    read = () => JSON.parse(sel.value);
  } else if (s.type === "boolean") {
    const box = h("input", { type: "checkbox", "data-field": name, checked: s.default === true });
    control = box;
    read = () => box.checked;
  } else if (s.type === "integer" || s.type === "number") {
    const step = s.type === "integer" ? "1" : "any";
    const num = h("input", { type: "number", step, min: s.minimum, max: s.maximum, value: s.default ?? "", "data-field": name });
    if (s.minimum !== undefined && s.maximum !== undefined) {
      const range = h("input", { type: "range", min: s.minimum, max: s.maximum, step: s.type === "integer" ? "1" : String((s.maximum - s.minimum) / 100), value: s.default ?? s.minimum });
      range.addEventListener("input", () => { num.value = range.value; });
      num.addEventListener("input", () => { range.value = num.value; });
      control = h("div", { class: "numrow" }, range, num);
    } else control = num;
    read = () => (num.value === "" ? undefined : Number(num.value));
  } else if (s.type === "string") {
    const long = (s.maxLength || 0) > 200 || /prompt|text/.test(name);
    const el = long ? h("textarea", { rows: 3, "data-field": name }, s.default ?? "") : h("input", { value: s.default ?? "", pattern: s.pattern, "data-field": name });
    control = el;
    read = () => (el.value === "" && !required ? undefined : el.value);
  } else {
    const el = h("textarea", { rows: 4, class: "mono", "data-field": name }, s.default !== undefined ? json(s.default) : "");
    control = el;
    read = () => (el.value.trim() ? JSON.parse(el.value) : undefined);
  }
  const label = h("label", { class: "field" },
    h("div", { class: "name" }, s.title || name, required ? h("span", { class: "req" }, "*") : null, hint ? h("span", { class: "hint" }, hint) : null), control);
  return { label, read };
}

function snippets(base, path, body) {
  const b = JSON.stringify(body);
  const id = path.replace(/^\//, "");
  const py = JSON.stringify(body, null, 4).replace(/\btrue\b/g, "True").replace(/\bfalse\b/g, "False").replace(/\bnull\b/g, "None");
  return {
    curl: `curl -X POST ${base}/queue${path} \\\n  -H "Authorization: Key $KLIEG_KEY" \\\n  -H "Content-Type: application/json" \\\n  -d '${b.replace(/'/g, "'\\''")}'`,
    Python: `import os\nfrom klieg import Client\n\nwith Client("${base}", os.environ["KLIEG_KEY"]) as client:\n    print(client.run("${id}", ${py}))`,
    fal_client: `# fal-client speaks HTTPS: run \`klieg up --tls\`, then\n# export FAL_KEY=$KLIEG_KEY FAL_RUN_HOST=${location.host} FAL_QUEUE_RUN_HOST=<its queue host:port>\nimport fal_client\n\nprint(fal_client.subscribe("${id}", arguments=${py}, with_logs=True))`,
  };
}

async function playgroundPage(main, owner, app, signal) {
  const doc = await api(`/${owner}/${app}/openapi.json`);
  const ops = Object.entries(doc.paths).filter(([p, m]) => m.post && m.post.operationId.startsWith("run_"))
    .map(([path, m]) => ({ path, op: m.post }));
  main.append(h("h1", {}, `${doc.info.title}`), h("p", { class: "sub" }, "Playground · revision ", h("span", { class: "mono" }, short(doc.info.version))));
  const pick = h("select", { "data-endpoint": "" }, ops.map((o, i) => h("option", { value: i }, o.path.slice(`/${owner}/${app}`.length) || "/")));
  const left = h("div", { class: "card" });
  const right = h("div", {});
  main.append(ops.length > 1 ? h("div", { class: "mb14 narrow" }, pick) : "", h("div", { class: "grid2" }, left, right));
  const render = () => {
    const { path, op } = ops[Number(pick.value || 0)];
    const schema = deref(doc, op.requestBody.content["application/json"].schema);
    const req = new Set(schema.required || []);
    const fields = Object.entries(schema.properties || {}).map(([n, s]) => [n, fieldInput(doc, n, s, req.has(n))]);
    const run = h("button", { class: "primary", "data-run": "" }, "Run");
    const codeTabs = h("div", { class: "tabs" });
    const code = h("pre", { class: "json", "data-snippet": "" });
    const body = () => {
      const out = {};
      for (const [n, f] of fields) { const v = f.read(); if (v !== undefined) out[n] = v; }
      return out;
    };
    let lang = "curl";
    const showCode = () => {
      let b = {};
      try { b = body(); } catch { /* a JSON field being typed */ }
      const all = snippets(location.origin, path, b);
      codeTabs.replaceChildren(...Object.keys(all).map((k) => h("button", { class: k === lang ? "on" : "", onclick: () => { lang = k; showCode(); } }, k)),
        h("span", { class: "spacer" }), h("button", { class: "small", onclick: () => navigator.clipboard && navigator.clipboard.writeText(code.textContent) }, "Copy"));
      code.textContent = all[lang];
    };
    left.replaceChildren(...fields.map(([, f]) => f.label), h("div", { class: "row" }, run), h("h2", {}, "Call it from code"), codeTabs, code);
    left.addEventListener("input", showCode);
    showCode();
    right.replaceChildren(h("div", { class: "card notice" }, "Fill in the form and press Run: the request goes through the queue and its result appears here."));
    run.addEventListener("click", async () => {
      let args;
      try { args = body(); } catch (e) { right.replaceChildren(errorBox({ message: `invalid JSON: ${e.message}` })); return; }
      run.disabled = true;
      const state = h("div", { class: "row", "data-state": "" }, pill("submitting…", "run"));
      const logs = logView([]);
      const result = h("div", { "data-result": "" });
      right.replaceChildren(h("div", { class: "card" }, state, h("h2", {}, "Logs"), logs.box, h("h2", {}, "Result"), result));
      try {
        const sub = await api(`/queue${path}`, { method: "POST", json: args });
        const link = h("a", { href: `#/requests/${sub.request_id}`, "data-request-link": "" }, short(sub.request_id));
        let done = null;
        await sse(`${local(sub.status_url)}/stream?logs=1`, (st) => {
          logs.add(st.logs);
          state.replaceChildren(link, pill(st.status, st.status === "COMPLETED" ? (st.error_type ? "error" : "ok") : "run"), queueNote(st));
          if (st.status === "COMPLETED") done = st;
        }, signal);
        if (done && done.error_type) result.replaceChildren(errorBox({ type: done.error_type, message: done.error }));
        else {
          const out = await api(local(sub.response_url));
          result.replaceChildren(mediaView(out) || "", h("pre", { class: "json", "data-result-json": "" }, json(out)));
        }
      } catch (e) {
        result.replaceChildren(errorBox(e));
      } finally { run.disabled = false; }
    });
  };
  pick.addEventListener("change", render);
  render();
}

// ---- workflows --------------------------------------------------------------------------------

function refsOf(value, out = new Set()) {
  if (typeof value === "string" && value.startsWith("$")) out.add(value.slice(1).split(/[.[]/)[0]);
  else if (Array.isArray(value)) value.forEach((v) => refsOf(v, out));
  else if (value && typeof value === "object") Object.values(value).forEach((v) => refsOf(v, out));
  return out;
}

// The document's DAG as layers: "input", then each node after the nodes it refers to, "output".
function layers(doc) {
  const deps = {};
  for (const [id, node] of Object.entries(doc.nodes || {})) deps[id] = [...refsOf(node.input)].filter((r) => r !== "input" && r in doc.nodes);
  const depth = {};
  const visit = (id) => (depth[id] ??= 1 + Math.max(0, ...deps[id].map(visit)));
  Object.keys(deps).forEach(visit);
  const out = [["input"]];
  for (const [id, d] of Object.entries(depth)) (out[d] ??= []).push(id);
  out.push(["output"]);
  const edges = [];
  for (const [id, node] of Object.entries(doc.nodes || {})) for (const r of refsOf(node.input)) edges.push([r in doc.nodes || r === "input" ? r : "input", id]);
  for (const r of refsOf(doc.output)) edges.push([r, "output"]);
  return { layers: out.filter(Boolean), edges };
}

function dagView(doc) {
  const NS = "http://www.w3.org/2000/svg";
  const { layers: cols, edges } = layers(doc);
  const W = 170, H = 46, GX = 70, GY = 26;
  const tall = Math.max(...cols.map((c) => c.length));
  const width = cols.length * (W + GX) - GX + 20, height = tall * (H + GY) - GY + 20;
  const pos = {};
  cols.forEach((col, i) => col.forEach((id, j) => {
    const off = ((tall - col.length) * (H + GY)) / 2;
    pos[id] = [10 + i * (W + GX), 10 + off + j * (H + GY)];
  }));
  const svg = document.createElementNS(NS, "svg");
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  svg.setAttribute("class", "dag");
  svg.setAttribute("width", String(width));
  const mk = (tag, attrs) => { const el = document.createElementNS(NS, tag); for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, String(v)); return el; };
  for (const [a, b] of edges) {
    if (!pos[a] || !pos[b]) continue;
    const [x1, y1] = [pos[a][0] + W, pos[a][1] + H / 2], [x2, y2] = [pos[b][0], pos[b][1] + H / 2];
    svg.append(mk("path", { d: `M${x1},${y1} C${x1 + GX / 2},${y1} ${x2 - GX / 2},${y2} ${x2},${y2}`, class: "edge" }));
  }
  const nodes = {};
  for (const [id, [x, y]] of Object.entries(pos)) {
    const g = mk("g", { "data-node": id, class: `node ${id === "input" || id === "output" ? "io" : ""}` });
    g.append(mk("rect", { x, y, width: W, height: H, rx: 9 }));
    const title = mk("text", { x: x + 12, y: y + 19, class: "title" });
    title.textContent = id;
    const sub = mk("text", { x: x + 12, y: y + 35, class: "app" });
    sub.textContent = doc.nodes && doc.nodes[id] ? doc.nodes[id].app : id === "input" ? "the request" : "the result";
    g.append(title, sub);
    svg.append(g);
    nodes[id] = g;
  }
  const set = (id, state) => { if (nodes[id]) nodes[id].setAttribute("class", `node ${state}`); };
  return { svg, set };
}

async function workflowsPage(main) {
  const { workflows } = await api("/workflows");
  main.append(h("h1", {}, "Workflows"), h("p", { class: "sub" }, "Apps chained into graphs; each node runs through the queue like any request."));
  if (!workflows.length) {
    main.append(h("div", { class: "card empty" }, "No workflows yet. Store one with ", h("code", {}, "klieg workflow create apps/workflows/digits-movie.yaml")));
    return;
  }
  main.append(h("table", { "data-workflows": "" },
    h("tr", {}, ["Workflow", "Revisions", "Visibility", "Aliases"].map((t) => h("th", {}, t))),
    workflows.map((w) => h("tr", { class: "link", "data-workflow": w.name, onclick: () => go(`#/workflows/${w.name}`) },
      h("td", {}, h("b", {}, `${w.owner}/${w.name}`)), h("td", {}, w.revisions), h("td", {}, w.visibility),
      h("td", {}, Object.entries(w.aliases || {}).map(([k, v]) => pill(`${k} → ${short(v)}`, "alias")))))));
}

async function workflowPage(main, name, signal) {
  const wf = await api(`/workflows/${encodeURIComponent(name)}`);
  const latest = wf.revisions.find((r) => r.aliases.includes("latest")) || wf.revisions[0];
  const doc = latest.document;
  const dag = dagView(doc);
  const empty = { components: { schemas: {} } };
  const schema = doc.input || { properties: {} };
  const req = new Set(schema.required || []);
  const fields = Object.entries(schema.properties || {}).map(([n, s]) => [n, fieldInput(empty, n, s, req.has(n))]);
  const run = h("button", { class: "primary", "data-run": "" }, "Run");
  const state = h("div", { class: "row", "data-state": "" });
  const logs = logView([]);
  const result = h("div", { "data-result": "" });
  main.append(h("h1", {}, `${wf.owner}/${wf.name}`), h("p", { class: "sub" }, `Workflow · revision `, h("span", { class: "mono" }, short(latest.id)), ` · ${wf.visibility}`),
    h("div", { class: "card dagbox" }, dag.svg),
    h("div", { class: "grid2 mt12" }, h("div", { class: "card" }, ...fields.map(([, f]) => f.label), run),
      h("div", { class: "card" }, state, h("h2", {}, "Events"), logs.box, h("h2", {}, "Result"), result)));
  run.addEventListener("click", async () => {
    const args = {};
    for (const [n, f] of fields) { const v = f.read(); if (v !== undefined) args[n] = v; }
    run.disabled = true;
    Object.keys(doc.nodes).forEach((id) => dag.set(id, "waiting"));
    dag.set("input", "ok");
    dag.set("output", "io");
    result.replaceChildren();
    try {
      const sub = await api(`/queue/workflows/${wf.owner}/${wf.name}`, { method: "POST", json: args });
      const link = h("a", { href: `#/requests/${sub.request_id}` }, short(sub.request_id));
      let done = null;
      await sse(`${local(sub.status_url)}/stream?logs=1`, (st) => {
        logs.add(st.logs);
        for (const l of st.logs || []) {
          if (l.node) dag.set(l.node, l.event === "started" ? "running" : l.event === "completed" ? "ok" : l.event === "failed" ? "failed" : "waiting");
        }
        state.replaceChildren(link, pill(st.status, st.status === "COMPLETED" ? (st.error_type ? "error" : "ok") : "run"));
        if (st.status === "COMPLETED") done = st;
      }, signal);
      if (done && done.error_type) result.replaceChildren(errorBox({ type: done.error_type, message: done.error }));
      else {
        dag.set("output", "ok");
        const out = await api(local(sub.response_url));
        result.replaceChildren(mediaView(out) || "", h("pre", { class: "json", "data-result-json": "" }, json(out)));
      }
    } catch (e) { result.replaceChildren(errorBox(e)); } finally { run.disabled = false; }
  });
}

// ---- shell and routing ------------------------------------------------------------------------

function go(hash) { if (location.hash === hash) route(); else location.hash = hash; }

// End the page shown (its streams stop) and give the next one a fresh signal.
function leavePage() {
  leave.abort();
  leave = new AbortController();
  return leave.signal;
}

function signOut(message) {
  sessionStorage.removeItem(KEY);
  login(message);
}

function login(message) {
  leavePage();
  const key = h("input", { type: "password", placeholder: "key_id:secret", "data-key": "", autocomplete: "off" });
  const err = h("div", {});
  const submit = async (e) => {
    e.preventDefault();
    sessionStorage.setItem(KEY, key.value.trim());
    try { await api("/apps", { quiet: true }); route(); }
    catch (ex) { sessionStorage.removeItem(KEY); err.replaceChildren(errorBox(ex)); }
  };
  root.replaceChildren(h("div", { class: "login" }, h("form", { class: "card", onsubmit: submit },
    h("div", { class: "brand" }, h("span", { class: "dot" }), "Klieg"),
    h("p", {}, "Sign in with an API key (", h("code", {}, "klieg keys create"), "). It stays in this tab only."),
    message ? errorBox({ message }) : null, err,
    h("label", { class: "field" }, h("div", { class: "name" }, "API key"), key),
    h("button", { class: "primary", type: "submit", "data-sign-in": "" }, "Sign in"))));
  key.focus();
}

// [fragment, page(main, match, signal), nav section]
const PAGES = [
  [/^#\/apps\/([^/?]+)$/, (m, p) => appPage(m, decodeURIComponent(p[1])), "apps"],
  [/^#\/apps$/, (m) => appsPage(m), "apps"],
  [/^#\/playground\/([^/]+)\/([^/?]+)$/, (m, p, s) => playgroundPage(m, p[1], p[2], s), "apps"],
  [/^#\/requests\/([^/?]+)$/, (m, p, s) => requestPage(m, decodeURIComponent(p[1]), s), "requests"],
  [/^#\/requests(\?.*)?$/, (m, p) => requestsPage(m, new URLSearchParams((p[1] || "").slice(1))), "requests"],
  [/^#\/fleet$/, (m, p, s) => fleetPage(m, s), "fleet"],
  [/^#\/workflows$/, (m) => workflowsPage(m), "workflows"],
  [/^#\/workflows\/([^/?]+)$/, (m, p, s) => workflowPage(m, decodeURIComponent(p[1]), s), "workflows"],
];

async function route() {
  const signal = leavePage();
  if (!sessionStorage.getItem(KEY)) return login();
  const hash = location.hash || "#/apps";
  const found = PAGES.find(([re]) => re.test(hash)) || PAGES[1];
  const main = h("main", { "data-page": found[2] });
  const nav = (href, label, name) => h("a", { class: `nav ${found[2] === name ? "active" : ""}`, href }, label);
  root.replaceChildren(h("div", { class: "shell" },
    h("nav", { class: "side" }, h("div", { class: "brand" }, h("span", { class: "dot" }), "Klieg"),
      nav("#/apps", "Apps", "apps"), nav("#/requests", "Requests", "requests"), nav("#/workflows", "Workflows", "workflows"), nav("#/fleet", "Fleet", "fleet"),
      h("div", { class: "grow" }),
      h("div", { class: "who" }, `key ${(sessionStorage.getItem(KEY) || "").split(":")[0]}`),
      h("a", { class: "nav", href: "#", onclick: (e) => { e.preventDefault(); signOut(); } }, "Sign out")),
    main));
  try { await found[1](main, hash.match(found[0]), signal); }
  catch (e) {
    if (e instanceof ApiError && e.status === 404) main.replaceChildren(notFound(e));
    else if (!(e instanceof ApiError && e.status === 401)) main.replaceChildren(errorBox(e));
  }
}

window.addEventListener(SIGNED_OUT, (e) => signOut(e.detail));
window.addEventListener("hashchange", route);
route();
