// Trunkline dashboard: a client of the public API and nothing else.
// Auth: the key typed once is exchanged for an HttpOnly session cookie (POST /v1/dashboard/session)
// and dropped; every later request is a same-origin GET that carries the cookie.
// The event stream is read with fetch() rather than EventSource so that every event type is
// seen (EventSource only dispatches the `event:` names it was told about); it resumes exactly
// as EventSource does, with the Last-Event-ID header of the last frame received.
"use strict";

const $ = (id) => document.getElementById(id);
const WINDOW = 60; // seconds on the chart
const FEED_ROWS = 200;
const RENEW_MS = 5 * 60 * 1000;
const SEEN_MAX = 100000; // event ids kept for inspection (window.trunklineDashboard.seenIds)

const state = {
  lastId: null, // the id of the last frame received: the resume point
  seenIds: [], // every event id received, in order (the browser test compares it with the log)
  reconnects: 0,
  resumedFrom: [], // the Last-Event-ID sent on each reconnect
  session: null,
  stream: null, // AbortController of the open stream
  retryMs: 1000,
  buckets: new Map(), // epoch second -> {m, c}
  eventsSeen: 0,
  paused: false,
  timers: [],
};
window.trunklineDashboard = state;

function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") e.className = v;
    else if (k === "onclick") e.addEventListener("click", v);
    else e.setAttribute(k, v);
  }
  for (const c of children) e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return e;
}

async function api(path, init = {}) {
  const resp = await fetch(path, { credentials: "same-origin", ...init });
  if (resp.status === 401) {
    signedOut("Your session has ended: enter the key again.");
    throw new Error("unauthorized");
  }
  return resp;
}

// --- session --------------------------------------------------------------------------------

async function boot() {
  $("login-form").addEventListener("submit", login);
  $("signout").addEventListener("click", signOut);
  $("filter").addEventListener("input", refilter);
  $("pause").addEventListener("click", () => {
    state.paused = !state.paused;
    $("pause").textContent = state.paused ? "Resume" : "Pause";
  });
  $("detail-close").addEventListener("click", () => ($("detail").hidden = true));
  window.addEventListener("online", () => state.stream === null && state.session && connect());
  const resp = await fetch("/v1/dashboard/session", { credentials: "same-origin" });
  if (resp.ok) start(await resp.json());
  else signedOut("");
}

async function login(ev) {
  ev.preventDefault();
  const input = $("key");
  const key = input.value.trim();
  input.value = ""; // the key is used for this one request and not kept
  $("login-error").textContent = "";
  const resp = await fetch("/v1/dashboard/session", {
    method: "POST",
    credentials: "same-origin",
    headers: { Authorization: "Bearer " + key },
  });
  if (resp.status === 201) {
    start(await resp.json());
    return;
  }
  let detail = resp.statusText;
  try {
    detail = (await resp.json()).detail || detail;
  } catch (e) { /* not JSON */ }
  $("login-error").textContent = `${resp.status}: ${detail}`;
}

async function signOut() {
  await fetch("/v1/dashboard/session", { method: "DELETE", credentials: "same-origin" });
  signedOut("");
}

function signedOut(message) {
  state.session = null;
  if (state.stream) state.stream.abort();
  state.stream = null;
  for (const t of state.timers) clearInterval(t);
  state.timers = [];
  $("app").hidden = true;
  $("signout").hidden = true;
  $("login").hidden = false;
  $("tenant").textContent = "";
  $("login-error").textContent = message;
  setConn("off", "signed out");
}

function start(session) {
  state.session = session;
  $("login").hidden = true;
  $("app").hidden = false;
  $("signout").hidden = false;
  $("tenant").textContent = `tenant ${session.tenant} · key ${session.key_id}`;
  connect();
  refreshAll();
  state.timers.push(setInterval(refreshAll, 2000));
  state.timers.push(setInterval(drawChart, 1000));
  state.timers.push(
    setInterval(async () => {
      try {
        const resp = await api("/v1/dashboard/session");
        if (resp.ok) state.session = await resp.json();
      } catch (e) { /* signed out or offline: handled */ }
    }, RENEW_MS),
  );
}

const can = (scope) => state.session && (state.session.scopes.includes("*") || state.session.scopes.includes(scope));

// --- the event stream -----------------------------------------------------------------------

function setConn(cls, text) {
  const c = $("conn");
  c.className = "pill " + cls;
  c.textContent = text;
  c.dataset.state = cls;
}

async function connect() {
  if (!state.session) return;
  const ctrl = new AbortController();
  state.stream = ctrl;
  const headers = { Accept: "text/event-stream" };
  if (state.lastId !== null) {
    headers["Last-Event-ID"] = String(state.lastId);
    state.resumedFrom.push(state.lastId);
  }
  setConn("wait", state.lastId === null ? "connecting" : "resuming");
  try {
    const resp = await fetch("/v1/events", { headers, credentials: "same-origin", signal: ctrl.signal, cache: "no-store" });
    if (resp.status === 401) {
      signedOut("Your session has ended: enter the key again.");
      return;
    }
    if (!resp.ok || !resp.body) throw new Error("HTTP " + resp.status);
    setConn("live", "live");
    await readFrames(resp.body.getReader());
  } catch (e) {
    if (ctrl.signal.aborted && state.stream !== ctrl) return; // replaced or signed out
  }
  if (state.stream !== ctrl || !state.session) return;
  state.stream = null;
  state.reconnects += 1;
  setConn("off", "reconnecting");
  setTimeout(() => state.stream === null && state.session && connect(), Math.min(state.retryMs, 5000));
}

async function readFrames(reader) {
  const decoder = new TextDecoder();
  let buf = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buf += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buf.search(/\r?\n\r?\n/)) >= 0) {
      const block = buf.slice(0, cut);
      buf = buf.slice(cut).replace(/^\r?\n\r?\n/, "");
      frame(block);
    }
  }
}

function frame(block) {
  let id = null, type = "message", data = [];
  for (const line of block.split(/\r?\n/)) {
    if (line === "" || line.startsWith(":")) continue;
    const i = line.indexOf(":");
    const field = i < 0 ? line : line.slice(0, i);
    const value = i < 0 ? "" : line.slice(i + 1).replace(/^ /, "");
    if (field === "id") id = value;
    else if (field === "event") type = value;
    else if (field === "data") data.push(value);
    else if (field === "retry" && /^\d+$/.test(value)) state.retryMs = parseInt(value, 10);
  }
  if (id !== null) {
    state.lastId = parseInt(id, 10);
    $("last-id").textContent = id;
  }
  if (!data.length) return;
  let body;
  try {
    body = JSON.parse(data.join("\n"));
  } catch (e) {
    return; // not an event this page understands: its id still counts as the resume point
  }
  if (type === "reset") {
    feedRow({ id: state.lastId, type: "reset", subject: body.reason, trace_id: null, created_at: new Date().toISOString() });
    return;
  }
  state.seenIds.push(body.id);
  if (state.seenIds.length > SEEN_MAX) state.seenIds.splice(0, SEEN_MAX / 2); // bounded memory
  onEvent(body);
}

function onEvent(ev) {
  state.eventsSeen += 1;
  $("events-seen").textContent = state.eventsSeen;
  const family = ev.type.split(".")[0];
  if (family === "message" || family === "call") {
    const sec = Math.floor(Date.now() / 1000);
    const b = state.buckets.get(sec) || { m: 0, c: 0 };
    if (family === "message") b.m += 1;
    else b.c += 1;
    state.buckets.set(sec, b);
  }
  if (family === "campaign") refreshCampaigns().catch(() => {});
  if (family === "ivr") ivrEvent(ev);
  if ((family === "message" || family === "call") && state.statsSoon === undefined) {
    // the counters move with the events: read them again shortly (at most twice a second)
    state.statsSoon = setTimeout(() => {
      state.statsSoon = undefined;
      refreshStats().catch(() => {});
    }, 500);
  }
  feedRow(ev);
}

// --- the live feed and timelines ------------------------------------------------------------

function patterns() {
  return $("filter").value.split(",").map((s) => s.trim()).filter(Boolean);
}

function matches(type, pats) {
  if (!pats.length || pats.includes("*")) return true;
  return pats.some((p) => (p.endsWith(".*") ? type.startsWith(p.slice(0, -1)) : type === p));
}

function refilter() {
  const pats = patterns();
  for (const tr of $("feed").tBodies[0].rows) tr.hidden = !matches(tr.dataset.type, pats);
}

const RESOURCE = {
  message: "/v1/messages/",
  call: "/v1/calls/",
  campaign: "/v1/campaigns/",
  ivr: "/v1/ivr/sessions/",
};

function feedRow(ev) {
  if (state.paused) return;
  const family = ev.type.split(".")[0];
  const subject = RESOURCE[family] && ev.subject
    ? el("a", { onclick: () => showTimeline(RESOURCE[family] + encodeURIComponent(ev.subject), `${family} ${ev.subject}`), class: "subject" }, ev.subject)
    : ev.subject || "";
  const trace = ev.trace_id && !/^0+$/.test(ev.trace_id)
    ? el("a", { onclick: () => showTimeline("/v1/traces/" + encodeURIComponent(ev.trace_id), `trace ${ev.trace_id}`), class: "trace" }, ev.trace_id.slice(0, 12) + "…")
    : "";
  const time = ev.created_at ? new Date(ev.created_at).toLocaleTimeString() : "";
  const tr = el("tr", { "data-type": ev.type, "data-id": String(ev.id) },
    el("td", {}, ev.id), el("td", {}, time), el("td", {}, ev.type), el("td", {}, subject), el("td", {}, trace));
  tr.hidden = !matches(ev.type, patterns());
  const body = $("feed").tBodies[0];
  body.prepend(tr);
  while (body.rows.length > FEED_ROWS) body.deleteRow(body.rows.length - 1);
}

async function showTimeline(path, title) {
  $("detail").hidden = false;
  $("detail-title").textContent = title;
  const out = $("detail-body");
  out.replaceChildren(el("p", { class: "muted" }, "loading " + path));
  let resp;
  try {
    resp = await api(path);
  } catch (e) {
    return;
  }
  const body = await resp.json();
  if (!resp.ok) {
    out.replaceChildren(el("p", { class: "error" }, `${resp.status}: ${body.detail || ""}`));
    return;
  }
  const rows = Array.isArray(body.timeline) ? body.timeline : Array.isArray(body.events) ? body.events : null;
  const facts = el("table", {});
  for (const [k, v] of Object.entries(body)) {
    if (v === null || typeof v === "object") continue;
    facts.append(el("tr", {}, el("td", {}, k), el("td", {}, v)));
  }
  const parts = [facts];
  if (rows) {
    const t = el("table", {}, el("tr", {}, el("th", {}, "at"), el("th", {}, "what"), el("th", {}, "detail")));
    for (const r of rows) {
      const at = r.at || r.created_at || "";
      const what = r.type || r.kind || r.status || "";
      const rest = r.data ?? r.detail ?? r;
      t.append(el("tr", {}, el("td", {}, at), el("td", {}, what), el("td", {}, el("code", {}, JSON.stringify(rest)))));
    }
    parts.push(el("h3", {}, "timeline"), t);
  } else {
    parts.push(el("pre", {}, JSON.stringify(body, null, 2)));
  }
  if (body.trace_id && !path.startsWith("/v1/traces/")) {
    parts.push(el("p", {}, el("a", { onclick: () => showTimeline("/v1/traces/" + body.trace_id, `trace ${body.trace_id}`) }, "whole trace " + body.trace_id)));
  }
  out.replaceChildren(...parts);
}

// --- REST panels ----------------------------------------------------------------------------

async function refreshAll() {
  if (!state.session) return;
  await Promise.allSettled([refreshStats(), refreshPools(), refreshOps(), refreshDeadLetters(), refreshCampaigns()]);
}

const COLORS = {
  queued: "#8a98a8", accepted: "#8a98a8", sent: "#4fb3ff", dispatched: "#4fb3ff", delivered: "#4cd08a",
  completed: "#4cd08a", answered: "#2fa56a", ringing: "#ffd24f", initiated: "#b38aff", failed: "#ff6b6b",
  undelivered: "#ff8f6b", busy: "#ffb54f", no_answer: "#ff9a4f", canceled: "#6b7a8a", rejected: "#d94f8a",
};

function mixBlock(title, counts) {
  const total = Object.values(counts).reduce((a, b) => a + b, 0);
  const bar = el("div", { class: "bar" });
  const legend = el("div", { class: "legend" });
  for (const [status, n] of Object.entries(counts).sort((a, b) => b[1] - a[1])) {
    const color = COLORS[status] || "#5d6d7e";
    const s = el("span", { title: `${status}: ${n}` });
    s.style.width = `${(100 * n) / (total || 1)}%`;
    s.style.background = color;
    bar.append(s);
    const k = el("i", { class: "key" });
    k.style.background = color;
    legend.append(el("span", { "data-status": status }, k, `${status} `, el("b", {}, n)));
  }
  return [el("div", {}, `${title} `, el("b", { id: `mix-${title}` }, total)), bar, legend];
}

async function refreshStats() {
  if (!can("events:read")) return;
  const resp = await api("/v1/stats");
  if (!resp.ok) return;
  const s = await resp.json();
  $("mix").replaceChildren(...mixBlock("messages", s.messages), ...mixBlock("calls", s.calls));
  $("stats-as-of").textContent = s.as_of_event_id;
}

function gauge(label, inUse, size, waiting) {
  const frac = size ? inUse / size : 0;
  const g = el("div", { class: "gauge" + (frac >= 1 ? " full" : frac >= 0.8 ? " hot" : ""), "data-pool": label });
  const bar = el("div", { class: "bar" });
  const fill = el("span", {});
  fill.style.width = `${Math.min(100, 100 * frac)}%`;
  bar.append(fill);
  g.append(el("div", {}, `${label} `, el("b", { class: "in-use" }, inUse), ` / ${size}`, waiting ? ` · ${waiting} waiting` : ""), bar);
  return g;
}

async function refreshPools() {
  if (can("ops:read")) return; // the trunk-wide view below replaces the tenant's
  if (!can("calls:read")) {
    $("pools-note").textContent = "needs the calls:read scope";
    return;
  }
  const resp = await api("/v1/pools");
  if (!resp.ok) return;
  const { pools } = await resp.json();
  $("pools").replaceChildren(...pools.map((p) => gauge(`${p.trunk}/${p.name}`, p.in_use, p.size, p.waiting)));
  $("pools-note").textContent = "your calls' channels in the trunk's pools (ops:read shows every tenant's)";
}

function queueTable(title, rows) {
  const queues = el("table", { id: "queues" },
    el("tr", {}, el("th", {}, "queue"), el("th", {}, "ready (due)"), el("th", {}, "running"), el("th", {}, "dead"), el("th", {}, "oldest due")));
  for (const q of rows) {
    queues.append(el("tr", { "data-queue": q.queue }, el("td", {}, q.queue), el("td", {}, `${q.ready} (${q.due})`),
      el("td", {}, q.running), el("td", {}, q.dead), el("td", {}, `${q.oldest_due_s.toFixed(1)} s`)));
  }
  if (!rows.length) queues.append(el("tr", {}, el("td", { colspan: "5", class: "muted" }, "no jobs in flight")));
  $("queue-depth").replaceChildren(el("h3", {}, title), queues);
}

async function refreshOps() {
  if (!can("ops:read")) {
    // A tenant sees its own jobs' depth (GET /v1/queues); the trunk's breakers are the operator's.
    $("breakers").replaceChildren(el("p", { class: "muted small" }, "provider breakers: needs the ops:read scope"));
    const resp = await api("/v1/queues");
    if (resp.ok) queueTable("work queues (your jobs)", (await resp.json()).queues);
    return;
  }
  const resp = await api("/v1/ops/trunk");
  if (!resp.ok) return;
  const t = await resp.json();
  $("pools").replaceChildren(...t.pools.map((p) => gauge(`${p.trunk}/${p.name}`, p.in_use, p.size, p.waiting)));
  $("pools-note").textContent = "trunk-wide: every tenant's calls (ops:read)";
  queueTable("work queues (trunk-wide)", t.queues);
  $("breakers").replaceChildren(
    el("h3", {}, "circuit breakers"),
    ...t.breakers.map((b) =>
      el("div", { class: "breaker", "data-provider": b.provider }, b.provider,
        el("span", { class: "state-" + b.state }, b.state + (b.error_rate !== null ? ` · ${Math.round(100 * b.error_rate)}% errors` : ""))),
    ),
  );
}

async function refreshDeadLetters() {
  const box = $("dead-letters");
  if (!can("dead_letters:manage")) {
    box.replaceChildren(el("p", { class: "muted small" }, "dead letters: needs the dead_letters:manage scope"));
    return;
  }
  const resp = await api("/v1/dead-letters?limit=100");
  if (!resp.ok) return;
  const body = await resp.json();
  const items = body.data || body.items || [];
  box.replaceChildren(el("h3", {}, "dead letters ", el("b", { id: "dead-count" }, items.length >= 100 ? "100+" : items.length)));
}

const OPEN_PROSPECTS = ["pending", "dialing", "retry_scheduled"];

async function refreshCampaigns() {
  const box = $("campaigns");
  if (!can("campaigns:read")) {
    box.replaceChildren(el("p", { class: "muted small" }, "needs the campaigns:read scope"));
    return;
  }
  const resp = await api("/v1/campaigns?limit=8");
  if (!resp.ok) return;
  const { data } = await resp.json();
  if (!data.length) {
    box.replaceChildren(el("p", { class: "muted small" }, "no campaigns"));
    return;
  }
  box.replaceChildren(
    ...data.map((c) => {
      const total = c.prospects.total || 0;
      const open = OPEN_PROSPECTS.reduce((n, s) => n + (c.prospects[s] || 0), 0);
      const done = total - open;
      const row = el("div", { class: "gauge campaign", "data-campaign": c.id });
      const bar = el("div", { class: "bar" });
      const fill = el("span", {});
      fill.style.width = `${total ? (100 * done) / total : 0}%`;
      bar.append(fill);
      row.append(
        el("div", {},
          el("a", { onclick: () => showTimeline("/v1/campaigns/" + c.id, `campaign ${c.name}`) }, c.name),
          ` · ${c.status} · `, el("b", { class: "done" }, done), ` / ${total} prospects done`),
        bar,
      );
      return row;
    }),
  );
}

// IVR sessions: there is no list of live sessions in the API, so this panel follows
// ivr.started / ivr.ended on the stream (sessions that started since the page opened).
const ivrLive = new Map();

function ivrEvent(ev) {
  if (ev.type === "ivr.started") ivrLive.set(ev.subject, ev);
  else if (ev.type === "ivr.ended" || ev.type === "ivr.transfer") ivrLive.delete(ev.subject);
  else return;
  const box = $("ivr");
  box.replaceChildren(
    el("div", {}, "in a flow now ", el("b", { id: "ivr-live" }, ivrLive.size)),
    ...[...ivrLive.values()].slice(-8).map((e) =>
      el("div", { class: "small" },
        el("a", { onclick: () => showTimeline(RESOURCE.ivr + encodeURIComponent(e.subject), `IVR session ${e.subject}`) }, e.subject),
        ` ${e.data.from || ""} → ${e.data.to || ""}`)),
  );
}

// --- the chart ------------------------------------------------------------------------------

function drawChart() {
  const canvas = $("chart");
  const w = (canvas.width = canvas.clientWidth || 720);
  const h = (canvas.height = 160);
  const ctx = canvas.getContext("2d");
  const now = Math.floor(Date.now() / 1000);
  const series = { m: [], c: [] };
  for (let s = now - WINDOW + 1; s <= now; s++) {
    const b = state.buckets.get(s) || { m: 0, c: 0 };
    series.m.push(b.m);
    series.c.push(b.c);
  }
  for (const s of state.buckets.keys()) if (s <= now - WINDOW) state.buckets.delete(s);
  const last = (xs) => xs.slice(-10).reduce((a, b) => a + b, 0) / 10;
  $("rate-messages").textContent = last(series.m).toFixed(1);
  $("rate-calls").textContent = last(series.c).toFixed(1);
  const max = Math.max(1, ...series.m, ...series.c);
  ctx.clearRect(0, 0, w, h);
  ctx.strokeStyle = "#2a3540";
  ctx.fillStyle = "#8a98a8";
  ctx.font = "11px sans-serif";
  for (let i = 0; i <= 4; i++) {
    const y = 8 + ((h - 24) * i) / 4;
    ctx.beginPath();
    ctx.moveTo(30, y);
    ctx.lineTo(w, y);
    ctx.stroke();
    ctx.fillText(String(Math.round((max * (4 - i)) / 4)), 2, y + 4);
  }
  ctx.fillText("-60 s", 30, h - 2);
  ctx.fillText("now", w - 24, h - 2);
  const plot = (ys, color) => {
    ctx.strokeStyle = color;
    ctx.lineWidth = 2;
    ctx.beginPath();
    ys.forEach((v, i) => {
      const x = 30 + ((w - 34) * i) / (WINDOW - 1);
      const y = 8 + (h - 24) * (1 - v / max);
      if (i === 0) ctx.moveTo(x, y);
      else ctx.lineTo(x, y);
    });
    ctx.stroke();
  };
  plot(series.m, "#4fb3ff");
  plot(series.c, "#ffb54f");
}

document.addEventListener("DOMContentLoaded", boot);
