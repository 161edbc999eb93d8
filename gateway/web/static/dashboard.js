// iiot-gateway dashboard: plain JS, no build step. Draws the `meta` event of /api/v1/events once, then
// updates in place from each `snapshot` event. Sparklines start from the ring buffer (the history endpoint)
// and grow from the snapshots. Text from the gateway is always set with textContent, never as HTML.
"use strict";

const SPARK_SECONDS = 120;
const SPARK_POINTS = 80;
const QUALITY = ["good", "uncertain", "bad"];
const $ = (sel, root = document) => root.querySelector(sel);

const state = { meta: null, assets: new Map(), filter: "", badOnly: false, lastSnapshot: null };

function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined && text !== null) e.textContent = text;
  return e;
}

function setText(node, text) {
  const t = text === null || text === undefined ? "" : String(text);
  if (node.textContent !== t) node.textContent = t;
}

function fmtNumber(v) {
  if (typeof v !== "number") return String(v);
  const a = Math.abs(v);
  if (a !== 0 && (a >= 1e9 || a < 1e-3)) return v.toExponential(3);
  if (Number.isInteger(v)) return v.toLocaleString("en-US");
  return v.toLocaleString("en-US", { maximumFractionDigits: a >= 100 ? 2 : a >= 1 ? 3 : 4 });
}

function fmtValue(v, kind) {
  if (v === null || v === undefined) return "—";
  if (kind === "bool" && typeof v === "number") return v ? "ON" : "OFF";
  return fmtNumber(v);
}

function fmtAge(seconds) {
  if (seconds === null || seconds === undefined || !isFinite(seconds)) return "—";
  if (seconds < 0) seconds = 0;
  if (seconds < 10) return seconds.toFixed(1) + " s";
  if (seconds < 120) return Math.round(seconds) + " s";
  if (seconds < 7200) return Math.round(seconds / 60) + " min";
  if (seconds < 172800) return Math.round(seconds / 3600) + " h";
  return Math.round(seconds / 86400) + " d";
}

function fmtMs(ms) {
  return ms === null || ms === undefined ? "—" : ms < 100 ? ms.toFixed(2) : fmtNumber(Math.round(ms));
}

function fmtBytes(n) {
  if (n === null || n === undefined) return "—";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return (i === 0 ? n : n.toFixed(n >= 100 ? 0 : 1)) + " " + units[i];
}

function fmtUptime(s) {
  if (s === null || s === undefined) return "";
  const d = Math.floor(s / 86400), h = Math.floor(s % 86400 / 3600), m = Math.floor(s % 3600 / 60);
  return "up " + (d ? d + "d " : "") + (d || h ? h + "h " : "") + m + "min";
}

const STATE_CLASS = { connected: "good", connecting: "warn", disconnected: "bad", stopped: "" };

// ---------------------------------------------------------------------------------------------- drawing

function buildAsset(a) {
  const card = $("#asset-tpl").content.firstElementChild.cloneNode(true);
  card.dataset.asset = a.id;
  setText($(".a-id", card), a.id);
  setText($(".a-desc", card), [a.description, a.driver, "poll " + fmtNumber(a.poll_interval_s) + " s"]
    .filter(Boolean).join(" · "));
  const body = $("tbody", card);
  const rows = a.tags.map((t, i) => {
    const tr = el("tr");
    tr.dataset.tag = t.name;
    const name = el("td", "name");
    t.name.split(/(?<=[_.-])/).forEach((part, k) => { if (k) name.append(el("wbr")); name.append(part); });
    if (t.description) name.append(el("small", null, t.description));
    const value = el("td", "value");
    const vtext = el("span", "v", "—");
    const unit = el("span", "unit", t.unit || "");
    value.append(vtext, unit);
    const qcell = el("td");
    const q = el("span", "q", "no value");
    qcell.append(q);
    const age = el("td", "age", "—");
    const sparkCell = el("td", "spark-cell");
    const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
    svg.setAttribute("class", "spark");
    svg.setAttribute("viewBox", "0 0 100 26");
    svg.setAttribute("preserveAspectRatio", "none");
    svg.setAttribute("aria-hidden", "true");
    const line = document.createElementNS("http://www.w3.org/2000/svg", "polyline");
    svg.append(line);
    sparkCell.append(svg);
    const act = el("td");
    if (t.writable) {
      const b = el("button", "w-btn", "Write");
      b.type = "button";
      b.title = state.meta.writes ? "Write a value to " + t.name : "API writes are off: no api.token on this gateway";
      b.disabled = !state.meta.writes;
      b.addEventListener("click", () => openWrite(a, i));
      act.append(b);
    }
    tr.append(name, value, qcell, age, sparkCell, act);
    const errRow = el("tr", "err-row");
    const errText = el("td", "err-text");
    errText.colSpan = 6;
    errRow.append(errText);
    errRow.hidden = true;
    body.append(tr, errRow);
    return { tr, vtext, unit, q, errRow, errText, age, line, series: [], lastTs: null, value: null, quality: null,
      onScreen: false, historyAsked: false };
  });
  const view = { card, meta: a, rows, snap: null };
  state.assets.set(a.id, view);
  return view;
}

function drawMeta(meta) {
  state.meta = meta;
  state.assets.clear();
  setText($("#gw-id"), meta.gateway.id);
  setText($("#gw-ns"), meta.gateway.namespace + " · v" + meta.gateway.version);
  document.title = meta.gateway.id + " · iiot-gateway";
  const box = $("#assets");
  box.replaceChildren(...meta.assets.map((a) => buildAsset(a).card));
  applyFilter();
  watchRows();
}

function drawUplinks(uplinks) {
  const box = $("#uplinks");
  const names = Object.keys(uplinks);
  if (box.dataset.names !== names.join("\n")) {
    box.dataset.names = names.join("\n");
    box.replaceChildren(...names.map((n) => {
      const c = el("article", "card uplink");
      c.dataset.uplink = n;
      const h = el("header");
      const left = el("div");
      left.append(el("h3", null, n), el("div", "muted u-active"));
      h.append(left, el("span", "badge u-state"));
      const links = el("table", "links");
      links.append(el("tbody"));
      c.append(h, links, el("p", "spool"), el("p", "last-error u-err"));
      return c;
    }));
  }
  for (const n of names) {
    const u = uplinks[n];
    const c = box.querySelector(`[data-uplink="${CSS.escape(n)}"]`);
    const badge = $(".u-state", c);
    setText(badge, u.connected ? "connected" : "disconnected");
    badge.className = "badge u-state " + (u.connected ? "good" : "bad");
    setText($(".u-active", c), u.active_link ? "active link: " + u.active_link : "no active link");
    const tb = $(".links tbody", c);
    const linkNames = Object.keys(u.links || {});
    if (tb.children.length !== linkNames.length) {
      tb.replaceChildren(...linkNames.map(() => {
        const tr = el("tr");
        tr.append(el("td"), el("td", "num"), el("td", "num"));
        return tr;
      }));
    }
    linkNames.forEach((ln, i) => {
      const l = u.links[ln], tds = tb.children[i].children;
      setText(tds[0], ln + (l.active ? " · active" : "") + (l.metered ? " · metered" : ""));
      setText(tds[1], fmtBytes(l.bytes_sent) + " sent");
      setText(tds[2], fmtNumber(l.messages_sent ?? 0) + " msgs");
    });
    const sp = u.spool || {};
    setText($(".spool", c), "Spool backlog: " + fmtNumber(sp.messages ?? 0) + " messages, " + fmtBytes(sp.bytes ?? 0)
      + (sp.oldest_age_s ? " (oldest " + fmtAge(sp.oldest_age_s) + ")" : ""));
    const err = $(".u-err", c);
    err.hidden = u.connected || !u.last_error;
    setText(err, u.last_error || "");
  }
}

function drawAsset(view, s, now) {
  view.snap = s;
  const c = view.card;
  const badge = $(".a-state", c);
  setText(badge, s.state);
  badge.className = "badge a-state " + (STATE_CLASS[s.state] || "");
  setText($(".s-last", c), s.last_poll ? fmtAge(now / 1000 - s.last_poll) + " ago" : "never");
  setText($(".s-lat", c), s.latency_ms_last === null ? "—" : fmtMs(s.latency_ms_last) + " / " + fmtMs(s.latency_ms_p50) + " ms");
  setText($(".s-polls", c), fmtNumber(s.polls));
  const perr = $(".s-perr", c), terr = $(".s-terr", c);
  setText(perr, fmtNumber(s.poll_errors));
  perr.classList.toggle("err", s.poll_errors > 0);
  setText(terr, fmtNumber(s.tag_errors));
  terr.classList.toggle("err", s.tag_errors > 0);
  setText($(".s-rec", c), fmtNumber(s.reconnects));
  const cf = $(".s-cf", c);
  setText(cf, fmtNumber(s.connect_failures));
  cf.classList.toggle("err", s.connect_failures > 0);
  setText($(".s-over", c), fmtNumber(s.overruns));
  const le = $(".last-error", c);
  le.hidden = !s.last_error;
  if (s.last_error) {
    const when = s.last_error_at ? new Date(s.last_error_at * 1000).toLocaleTimeString() : "";
    setText(le, "Last error" + (when ? " at " + when : "") + ": " + s.last_error);
  }
  view.rows.forEach((r, i) => {
    const t = view.meta.tags[i], q = s.q[i], v = s.v[i], ts = s.ts[i];
    r.quality = q;
    r.value = v;
    setText(r.vtext, q === null ? "—" : fmtValue(v, t.kind));
    r.unit.hidden = v === null || v === undefined;
    const qname = q === null ? "no value" : QUALITY[q];
    setText(r.q, qname);
    r.q.className = "q " + (q === null ? "" : QUALITY[q]);
    // a tag's own error; while the asset is down the card's last error says it once for all tags
    r.error = s.state === "connected" ? s.err[i] : null;
    setText(r.errText, r.error || "");
    r.tr.title = s.err[i] || "";
    setText(r.age, q === null ? "—" : fmtAge((now - ts) / 1000));
    if (q !== null && ts !== r.lastTs) {
      r.lastTs = ts;
      if (typeof v === "number" || v === null) pushPoint(r, ts, v);
    }
    if (r.onScreen) drawSpark(r, now);
  });
  applyFilterTo(view);
}

function pushPoint(r, ts, v) {
  const last = r.series.length ? r.series[r.series.length - 1][0] : -Infinity;
  if (ts > last) r.series.push([ts, v]);
  const from = ts - SPARK_SECONDS * 1000;
  while (r.series.length && r.series[0][0] < from) r.series.shift();
}

function drawSpark(r, now) {
  const from = now - SPARK_SECONDS * 1000;
  while (r.series.length && r.series[0][0] < from) r.series.shift();
  const pts = r.series.filter((p) => p[1] !== null && typeof p[1] === "number");
  if (pts.length < 2) { r.line.setAttribute("points", ""); return; }
  // at most SPARK_POINTS points: the last value of each time bucket
  const step = Math.max(1, Math.ceil(pts.length / SPARK_POINTS));
  const use = pts.filter((_, i) => i % step === 0 || i === pts.length - 1);
  let lo = Infinity, hi = -Infinity;
  for (const p of use) { if (p[1] < lo) lo = p[1]; if (p[1] > hi) hi = p[1]; }
  const span = hi - lo || 1;
  const x0 = use[0][0], width = Math.max(now, use[use.length - 1][0]) - x0 || 1;  // fill the cell from the first point
  const out = use.map((p) => {
    const x = ((p[0] - x0) / width) * 100;
    const y = 24 - ((p[1] - lo) / span) * 22;
    return x.toFixed(2) + "," + y.toFixed(2);
  });
  r.line.setAttribute("points", out.join(" "));
}

// ----------------------------------------------------------------------------------------------- filter

function applyFilterTo(view) {
  const f = state.filter;
  const assetMatch = f && view.meta.id.toLowerCase().includes(f);
  let shown = 0;
  view.rows.forEach((r, i) => {
    const t = view.meta.tags[i];
    const textOk = !f || assetMatch || t.name.toLowerCase().includes(f)
      || (t.description || "").toLowerCase().includes(f);
    const badOk = !state.badOnly || r.quality !== 0;
    const show = textOk && badOk;
    r.tr.hidden = !show;
    r.errRow.hidden = !show || !r.error;
    if (show) shown++;
  });
  $(".none", view.card).hidden = shown > 0;
  $("table.tags", view.card).hidden = shown === 0;
  view.card.hidden = Boolean(f) && shown === 0 && !assetMatch;
}

function applyFilter() {
  for (const view of state.assets.values()) applyFilterTo(view);
}

// ---------------------------------------------------------------------------------------------- history

// Rows fetch their history when they first come on screen (a gateway may have thousands of tags), at most
// three requests at a time; sparklines are redrawn only for rows on screen.
const historyQueue = [];
let historyWorkers = 0;
let observer = null;

function watchRows() {
  if (observer) observer.disconnect();
  historyQueue.length = 0;
  const rows = new Map();
  observer = new IntersectionObserver((entries) => {
    for (const e of entries) {
      const item = rows.get(e.target);
      item.r.onScreen = e.isIntersecting;
      if (e.isIntersecting && !item.r.historyAsked) {
        item.r.historyAsked = true;
        historyQueue.push(item);
      }
    }
    while (historyWorkers < 3 && historyQueue.length) fetchHistory();
  }, { rootMargin: "200px" });
  for (const view of state.assets.values()) {
    view.rows.forEach((r, i) => {
      if (view.meta.tags[i].kind === "string") return;
      rows.set(r.tr, { view, i, r });
      observer.observe(r.tr);
    });
  }
}

async function fetchHistory() {
  historyWorkers++;
  const meta = state.meta;
  try {
    while (historyQueue.length && state.meta === meta) {
      const { view, i, r } = historyQueue.shift();
      const t = view.meta.tags[i];
      try {
        const res = await fetch(`/api/v1/assets/${encodeURIComponent(view.meta.id)}/tags/${encodeURIComponent(t.name)}`
          + `/history?seconds=${SPARK_SECONDS}`);
        if (!res.ok) continue;
        const h = await res.json();
        const live = r.series;
        r.series = h.ts.map((ts, k) => [ts, typeof h.v[k] === "number" ? h.v[k] : null]);
        for (const p of live) pushPoint(r, p[0], p[1]);
        if (state.lastSnapshot) drawSpark(r, state.lastSnapshot.t);
      } catch (e) { /* the live points still come */ }
    }
  } finally {
    historyWorkers--;
  }
}

// ------------------------------------------------------------------------------------------------ write

let writing = null;

function openWrite(a, i) {
  const t = a.tags[i];
  const view = state.assets.get(a.id);
  writing = { asset: a.id, tag: t };
  setText($("#w-target"), a.id + " / " + t.name);
  const r = view.rows[i];
  setText($("#w-current"), "Now: " + (r.quality === null ? "no value" : fmtValue(r.value, t.kind) + (t.unit ? " " + t.unit : "")));
  const range = [t.min != null ? "min " + t.min : "", t.max != null ? "max " + t.max : ""].filter(Boolean).join(", ");
  setText($("#w-range"), range ? "(" + range + ")" : "");
  let input;
  if (t.kind === "bool") {
    input = el("select");
    for (const [label, val] of [["ON (true)", "true"], ["OFF (false)", "false"]]) {
      const o = el("option", null, label); o.value = val; input.append(o);
    }
  } else {
    input = el("input");
    input.type = t.kind === "number" ? "number" : "text";
    if (t.kind === "number") {
      input.step = "any";
      if (t.min != null) input.min = t.min;
      if (t.max != null) input.max = t.max;
    }
    input.required = true;
    if (r.value !== null && r.value !== undefined) input.value = r.value;
  }
  input.id = "w-value";
  $("#w-input-slot").replaceChildren(input);
  const saved = sessionStorage.getItem("iiot-token");
  $("#w-token").value = saved || "";
  $("#w-remember").checked = Boolean(saved);
  const res = $("#w-result");
  setText(res, "");
  res.className = "w-result";
  $("#w-dlg").showModal();
  input.focus();
}

function parseValue(raw, kind) {
  if (kind === "bool") return raw === "true";
  if (kind === "number") return Number(raw);
  if (kind === "auto") {
    if (raw === "true" || raw === "false") return raw === "true";
    if (raw.trim() !== "" && !isNaN(Number(raw))) return Number(raw);
  }
  return raw;
}

async function submitWrite(ev) {
  ev.preventDefault();
  if (!writing) return;
  const res = $("#w-result");
  const token = $("#w-token").value.trim();
  if ($("#w-remember").checked) sessionStorage.setItem("iiot-token", token);
  else sessionStorage.removeItem("iiot-token");
  const value = parseValue($("#w-value").value, writing.tag.kind);
  setText(res, "writing…");
  res.className = "w-result";
  $("#w-submit").disabled = true;
  try {
    const r = await fetch(`/api/v1/assets/${encodeURIComponent(writing.asset)}/tags/${encodeURIComponent(writing.tag.name)}`, {
      method: "PUT",
      headers: { "Content-Type": "application/json", "Authorization": "Bearer " + token },
      body: JSON.stringify({ value }),
    });
    const body = await r.json().catch(() => ({}));
    if (r.ok) {
      setText(res, "Written; the device reads back " + fmtValue(body.value, writing.tag.kind));
      res.className = "w-result ok";
    } else {
      setText(res, "Refused (" + r.status + "): " + (body.detail || r.statusText));
      res.className = "w-result fail";
    }
  } catch (e) {
    setText(res, "No answer from the gateway: " + e);
    res.className = "w-result fail";
  } finally {
    $("#w-submit").disabled = false;
  }
}

// ------------------------------------------------------------------------------------------------- feed

function setConn(s, text) {
  $("#conn").dataset.state = s;
  setText($("#conn-text"), text);
  for (const view of state.assets.values()) view.card.classList.toggle("stale", s !== "live");
}

function connect() {
  const es = new EventSource("/api/v1/events");
  es.addEventListener("meta", (e) => drawMeta(JSON.parse(e.data)));
  es.addEventListener("snapshot", (e) => {
    const snap = JSON.parse(e.data);
    state.lastSnapshot = snap;
    setConn("live", "live");
    setText($("#gw-uptime"), fmtUptime(snap.uptime_s));
    drawUplinks(snap.uplinks);
    for (const [id, s] of Object.entries(snap.assets)) {
      const view = state.assets.get(id);
      if (view) drawAsset(view, s, snap.t);
    }
  });
  es.onerror = () => setConn("lost", "reconnecting…");
}

document.addEventListener("DOMContentLoaded", () => {
  $("#filter").addEventListener("input", (e) => { state.filter = e.target.value.trim().toLowerCase(); applyFilter(); });
  $("#bad-only").addEventListener("change", (e) => { state.badOnly = e.target.checked; applyFilter(); });
  $("#write-form").addEventListener("submit", submitWrite);
  $("#w-cancel").addEventListener("click", () => $("#w-dlg").close());
  connect();
});
