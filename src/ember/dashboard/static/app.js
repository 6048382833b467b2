// ember dashboard shell: navigation, the API key, the error banner, the theme, and the page contract.
//
// The dashboard is a client of ember's HTTP API only (the same API the CLI and SDKs use): it
// imports nothing from the server and holds no secret of its own.
//
// PAGE CONTRACT. Each page is an ES module static/pages/<id>.js with
//
//   export default { id, title, needsAdmin: bool, async mount(root, ctx), unmount() }
//
// mount(root, ctx) fills `root` (an empty <div>); unmount() is called when the user leaves the
// page (the shell then also clears ctx.every timers, destroys ctx.chart charts and aborts
// ctx.signal). `ctx` holds:
//
//   ctx.api(path, {method, body, signal, headers})  -> parsed JSON (text for a non-JSON answer).
//       `body` is sent as JSON unless it is a string/FormData/Blob. Throws an ApiError
//       (.message is the server's own message, read from the OpenAI {"error": {"message"}}, Ollama
//       {"error": "..."}, Anthropic {"type": "error", "error": {...}} and FastAPI {"detail"}
//       shapes; .status is the HTTP status, 0 for a network failure; .code the error code if any).
//       A 401 also opens the key prompt.
//   ctx.stream(path, body, onEvent, signal)  POSTs JSON and calls onEvent(data, eventName) for each
//       SSE `data:` line (parsed JSON; "[DONE]" ends it) or each NDJSON line. Resolves when the
//       stream ends; throws an ApiError if the request fails or an event carries an `error`
//       field; an abort rejects with a DOMException named "AbortError" (ctx.showError ignores it).
//   ctx.showError(err)  shows the error in the page's banner (data-testid="error-banner"); a
//       string or an Error. ctx.clearError() hides it.
//   ctx.chart(el, config)  a uPlot chart in `el` (see makeChart below for `config`); returns
//       {setData(x, ...ys), push(x, ...ys), destroy()}; `el` gets data-testid="chart-<name>" and
//       data-points="<number of points>" after every update.
//   ctx.hasAdmin()  true when the current key (or no key, where none is needed) may call /admin,
//       as last found out (the shell asks before it mounts a needsAdmin page; false until then).
//   ctx.every(ms, fn)  calls fn now and every ms (not while the tab is hidden); a slow async fn
//       is never run twice at once. An error is shown in the banner; a 401 or 403 also stops
//       the timer (asking again every second would only repeat the key prompt or the refusal).
//   ctx.signal  an AbortSignal aborted when the page is left.
//   ctx.h, ctx.fmt  the DOM helper and formatters below (also importable from "../app.js").
//
// Navigation is by hash: #/overview, #/models, #/chat, ... Stable data-testid names: nav-<id>,
// error-banner, key-prompt, key-input, key-save, theme-toggle, nav-toggle.

import uPlot from "./vendor/uplot/uPlot.esm.js";

// Nav order. needsAdmin here must match the module's own (the nav is drawn before modules load).
export const PAGES = [
  { id: "overview", title: "Overview", needsAdmin: true },
  { id: "models", title: "Models", needsAdmin: false },
  { id: "chat", title: "Chat", needsAdmin: false },
  { id: "routes", title: "Routes", needsAdmin: true },
  { id: "usage", title: "Usage", needsAdmin: true },
  { id: "keys", title: "Keys", needsAdmin: true },
  { id: "audit", title: "Audit", needsAdmin: true },
  { id: "batches", title: "Batches", needsAdmin: false },
  { id: "approvals", title: "Approvals", needsAdmin: true },
];

const KEY_STORAGE = "ember.key"; // sessionStorage: gone when the tab closes
const THEME_STORAGE = "ember.theme"; // localStorage: "light" | "dark"

// -- DOM helper and formatters ---------------------------------------------------------------

// h("div", {class: "x", onclick: fn, dataset: {testid: "y"}}, "text", child, [more])
// Attributes: class, style (an object), on<event> (a function), dataset, value/checked/disabled
// (set as properties); anything else with setAttribute. null/false/undefined children are skipped.
export function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (name.startsWith("on") && typeof value === "function") el.addEventListener(name.slice(2), value);
    else if (name === "style" && typeof value === "object") Object.assign(el.style, value);
    else if (name === "dataset") Object.assign(el.dataset, value);
    else if (name === "value" || name === "checked" || name === "disabled" || name === "selected") el[name] = value;
    else el.setAttribute(name, value === true ? "" : String(value));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    if (Array.isArray(child)) append(el, child);
    else el.append(child instanceof Node ? child : String(child));
  }
}

export const fmt = {
  bytes(n) {
    if (n === null || n === undefined) return "";
    const units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let i = 0;
    let v = Number(n);
    while (Math.abs(v) >= 1024 && i < units.length - 1) { v /= 1024; i++; }
    return `${v.toFixed(i === 0 ? 0 : 1)} ${units[i]}`;
  },
  number(n, digits = 0) {
    if (n === null || n === undefined || Number.isNaN(n)) return "";
    return Number(n).toLocaleString(undefined, { maximumFractionDigits: digits, minimumFractionDigits: digits });
  },
  ms(n) {
    if (n === null || n === undefined) return "–";
    return n >= 1000 ? `${(n / 1000).toFixed(2)} s` : `${Math.round(n)} ms`;
  },
  duration(seconds) {
    if (seconds === null || seconds === undefined) return "–";
    if (seconds < 0) return "forever";
    const s = Math.round(seconds);
    const d = Math.floor(s / 86400), hh = Math.floor((s % 86400) / 3600), mm = Math.floor((s % 3600) / 60), ss = s % 60;
    if (d) return `${d}d ${hh}h`;
    if (hh) return `${hh}h ${mm}m`;
    if (mm) return `${mm}m ${ss}s`;
    return `${ss}s`;
  },
  time(ts) { // seconds since the epoch, or an ISO string
    if (ts === null || ts === undefined || ts === "") return "";
    const d = typeof ts === "number" ? new Date(ts * 1000) : new Date(ts);
    return Number.isNaN(d.getTime()) ? String(ts) : d.toLocaleString();
  },
  usd(n) { return n === null || n === undefined ? "" : `$${Number(n).toFixed(n && Math.abs(n) < 0.01 ? 5 : 2)}`; },
};

// -- the API key -----------------------------------------------------------------------------

export function getKey() { return sessionStorage.getItem(KEY_STORAGE) || ""; }
function setKey(key) {
  if (key) sessionStorage.setItem(KEY_STORAGE, key);
  else sessionStorage.removeItem(KEY_STORAGE);
  adminState = null;
}

let keyDialogOpen = null; // a promise while the prompt is shown, so parallel 401s open it once

function promptForKey(reason) {
  if (keyDialogOpen) return keyDialogOpen;
  const dialog = document.querySelector('[data-testid="key-prompt"]');
  const input = dialog.querySelector('[data-testid="key-input"]');
  dialog.querySelector(".key-reason").textContent = reason || "This server needs an API key.";
  input.value = "";
  keyDialogOpen = new Promise((resolve) => {
    dialog.addEventListener("close", () => {
      keyDialogOpen = null;
      if (dialog.returnValue === "save" && input.value.trim()) {
        setKey(input.value.trim());
        resolve(true);
        showVersion();
        route(); // draw the page again with the key
      } else {
        if (dialog.returnValue === "forget") { setKey(""); route(); }
        resolve(false);
      }
      input.value = ""; // the key stays in sessionStorage only, not in the DOM
    }, { once: true });
  });
  dialog.returnValue = ""; // else Escape would read as the last button pressed
  dialog.showModal();
  input.focus();
  return keyDialogOpen;
}

// -- HTTP ------------------------------------------------------------------------------------

export class ApiError extends Error {
  constructor(message, status = 0, code = null) {
    super(message);
    this.name = "ApiError";
    this.status = status;
    this.code = code;
  }
}

// The message out of any of the error shapes ember speaks (its three protocols, FastAPI's own).
function errorMessage(data, fallback) {
  if (!data) return fallback;
  if (typeof data === "string") return data || fallback;
  const err = data.error;
  if (typeof err === "string") return err;
  if (err && typeof err === "object") return err.message || JSON.stringify(err);
  if (typeof data.detail === "string") return data.detail;
  if (Array.isArray(data.detail)) return data.detail.map((d) => d.msg || JSON.stringify(d)).join("; ");
  if (typeof data.message === "string") return data.message;
  return fallback;
}

function errorCode(data) {
  const err = data && data.error;
  return err && typeof err === "object" ? (err.code || err.type || null) : null;
}

function requestInit(method, body, signal, headers) {
  const init = { method, signal, headers: { ...(headers || {}) }, credentials: "same-origin", cache: "no-store" };
  const key = getKey();
  if (key) init.headers.Authorization = `Bearer ${key}`;
  if (body !== undefined && body !== null) {
    if (typeof body === "string" || body instanceof FormData || body instanceof Blob) init.body = body;
    else {
      init.body = JSON.stringify(body);
      init.headers["Content-Type"] = "application/json";
    }
  }
  return init;
}

async function send(path, init) {
  let response;
  try {
    response = await fetch(path, init);
  } catch (err) {
    if (err.name === "AbortError") throw err;
    throw new ApiError(`cannot reach the server (${err.message})`, 0);
  }
  if (!response.ok) {
    const text = await response.text().catch(() => "");
    let data = text;
    try { data = JSON.parse(text); } catch { /* not JSON: the text is the message */ }
    const error = new ApiError(errorMessage(data, `${response.status} ${response.statusText}`), response.status, errorCode(data));
    if (response.status === 401) promptForKey(getKey() ? `The key was refused: ${error.message}` : "This server needs an API key.");
    throw error;
  }
  return response;
}

export async function api(path, { method, body, signal, headers } = {}) {
  const response = await send(path, requestInit(method || (body === undefined ? "GET" : "POST"), body, signal, headers));
  if (response.status === 204) return null;
  const type = response.headers.get("content-type") || "";
  return type.includes("json") ? response.json() : response.text();
}

export async function stream(path, body, onEvent, signal) {
  const response = await send(path, requestInit("POST", body, signal));
  const sse = (response.headers.get("content-type") || "").includes("text/event-stream");
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  let eventName = "";
  let done = false;

  const deliver = (text) => {
    let data;
    try { data = JSON.parse(text); } catch { throw new ApiError(`the server sent a line that is not JSON: ${text.slice(0, 200)}`); }
    if (data && data.error !== undefined && data.error !== null) throw new ApiError(errorMessage(data, "the stream failed"), 0, errorCode(data));
    onEvent(data, eventName);
  };
  const line = (raw) => {
    const text = raw.endsWith("\r") ? raw.slice(0, -1) : raw;
    if (!sse) { if (text.trim()) deliver(text); return; }
    if (text === "") { eventName = ""; return; } // the end of one SSE event
    if (text.startsWith(":")) return; // a comment (keep-alive)
    if (text.startsWith("event:")) { eventName = text.slice(6).trim(); return; }
    if (text.startsWith("data:")) {
      const data = text.slice(5).trimStart();
      if (data === "[DONE]") { done = true; return; }
      deliver(data);
    }
  };

  try {
    while (!done) {
      const { value, done: ended } = await reader.read();
      if (ended) break;
      buffer += decoder.decode(value, { stream: true });
      let nl;
      while (!done && (nl = buffer.indexOf("\n")) >= 0) {
        line(buffer.slice(0, nl));
        buffer = buffer.slice(nl + 1);
      }
    }
    if (!done && buffer) line(buffer);
  } finally {
    // Closing the body tells the server the client has gone (it cancels the generation).
    if (!done) await reader.cancel().catch(() => {});
    else reader.releaseLock();
  }
}

// -- the error banner --------------------------------------------------------------------------

function banner() { return document.querySelector('[data-testid="error-banner"]'); }

export function showError(err) {
  if (!err) return;
  if (err.name === "AbortError") return; // the user stopped it
  let message = typeof err === "string" ? err : err.message || String(err);
  if (err.status === 403 && currentPage && currentPage.needsAdmin) message = adminMessage(message);
  const el = banner();
  el.querySelector(".error-text").textContent = message;
  el.hidden = false;
}

export function clearError() {
  const el = banner();
  el.hidden = true;
  el.querySelector(".error-text").textContent = "";
}

function adminMessage(detail) {
  return `This page needs a key with the admin scope.${detail ? ` (${detail})` : ""}`;
}

// -- admin probe ---------------------------------------------------------------------------------

let adminState = null; // null: not asked yet for this key; else a promise of true/false

function probeAdmin() {
  if (adminState === null) {
    adminState = fetch("/admin/stats", requestInit("GET", null, undefined))
      // Only a 403 means "not this key"; any other failure is the page's to show when it asks
      // (and is asked again at the next navigation, as is a 401 once a key is given).
      .then((r) => {
        if (!r.ok && r.status !== 403) adminState = null;
        return r.status === 401 ? "needs-key" : r.status !== 403;
      })
      .catch(() => {
        adminState = null;
        return true;
      });
  }
  return adminState;
}
let adminKnown = false;

// -- theme -----------------------------------------------------------------------------------------

function systemTheme() { return matchMedia("(prefers-color-scheme: dark)").matches ? "dark" : "light"; }

function applyTheme() {
  const theme = localStorage.getItem(THEME_STORAGE) || systemTheme();
  document.documentElement.dataset.theme = theme;
  window.dispatchEvent(new CustomEvent("ember-theme", { detail: theme }));
}

function toggleTheme() {
  const next = document.documentElement.dataset.theme === "dark" ? "light" : "dark";
  localStorage.setItem(THEME_STORAGE, next);
  applyTheme();
}

export function themeColor(name) {
  return getComputedStyle(document.documentElement).getPropertyValue(`--${name}`).trim();
}

// -- charts ----------------------------------------------------------------------------------------

// config: {
//   name: "tokens" -> data-testid="chart-tokens" on el,
//   series: [{label: "out", color: "series-1"}],   // color: a CSS variable name (themes follow)
//   kind: "line" (default) | "bars",
//   x: "time" (default: x values are seconds since the epoch) | "category" (x is 0..n-1, labels below),
//   labels: ["2026-11-30", ...] (for x: "category"),
//   window: 120 (seconds kept by push(); time charts only),
//   height: 180, yLabel: "tok/s", yMin: 0 (default 0: a rate starts at zero),
// }
function makeChart(el, config, registry) {
  const kind = config.kind || "line";
  const category = config.x === "category";
  let labels = config.labels || [];
  const height = config.height || 180;
  el.classList.add("chart");
  if (config.name) el.dataset.testid = `chart-${config.name}`;
  el.dataset.points = "0";
  const colors = (config.series || []).map((s, i) => s.color || `series-${(i % 5) + 1}`);
  const color = (name) => () => themeColor(name);
  // Bars of two series stand side by side (one left of its x, one right); one series is
  // centred; more overlap, each narrower than the one before, so every series stays visible.
  const nBars = (config.series || []).length;
  const bars = (i) => {
    if (kind !== "bars") return undefined;
    if (nBars === 2) return uPlot.paths.bars({ size: [0.35, 40], align: i === 0 ? -1 : 1 });
    return uPlot.paths.bars({ size: [0.7 * (1 - i / Math.max(nBars, 1)), 60] });
  };
  const axis = {
    stroke: color("muted"),
    grid: { stroke: color("grid"), width: 1 },
    ticks: { stroke: color("grid"), width: 1 },
  };
  const options = {
    width: Math.max(200, el.clientWidth || 400),
    height,
    legend: { show: true, live: false },
    cursor: { drag: { x: false, y: false } },
    scales: {
      // A live chart (config.window) shows the whole window from the start, so its ticks stay
      // seconds apart and it scrolls evenly instead of zooming into the first few points.
      x: config.window && !category
        ? { time: true, range: (u, min, max) => [(Number.isFinite(max) ? max : Date.now() / 1000) - config.window, Number.isFinite(max) ? max : Date.now() / 1000] }
        // Categories sit half a step in from each edge, so the end bars are drawn whole.
        : category ? { time: false, range: (u, min, max) => [-0.5, Math.max(labels.length, (max ?? 0) + 1) - 0.5] } : { time: true },
      // From zero (or yMin) up to a little over the largest value; an all-zero chart spans 0..1.
      y: { range: (u, min, max) => [Math.min(config.yMin ?? 0, Number.isFinite(min) ? min : 0), Number.isFinite(max) && max > 0 ? max * 1.1 : 1] },
    },
    axes: [
      category
        ? { ...axis, values: (u, splits) => splits.map((i) => labels[Math.round(i)] ?? ""), splits: () => labels.map((_, i) => i) }
        : config.window
          // A live chart spans minutes: the clock time on one line (uPlot's default adds a date row).
          ? { ...axis, space: 70, values: (u, splits) => splits.map((v) => new Date(v * 1000).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit", hour12: false })) }
          : { ...axis },
      { ...axis, label: config.yLabel || "", size: 56 },
    ],
    series: [
      { label: category ? "" : "time", value: category ? (u, i) => labels[i] ?? "" : undefined },
      ...(config.series || []).map((s, i) => ({
        label: s.label,
        stroke: color(colors[i]),
        fill: kind === "bars" ? () => themeColor(colors[i]) + "bb" : undefined,
        width: kind === "bars" ? 0 : 2,
        paths: bars(i),
        points: { show: kind !== "bars" && false },
        spanGaps: false,
      })),
    ],
  };
  const nSeries = (config.series || []).length;
  let data = [[], ...Array.from({ length: nSeries }, () => [])];
  const plot = new uPlot(options, data, el);
  const mark = () => { el.dataset.points = String(data[0].length); };
  const resize = new ResizeObserver(() => {
    const width = el.clientWidth;
    if (width > 0 && Math.abs(width - plot.width) > 2) plot.setSize({ width, height });
  });
  resize.observe(el);
  // Strokes and fills are functions of the theme, read at each draw; the legend's markers are
  // styled once by uPlot, so they are given the new colours here.
  const onTheme = () => {
    const rows = [...plot.root.querySelectorAll(".u-legend .u-series")];
    const offset = rows.length > nSeries ? 1 : 0; // the x series' row, where it is shown
    colors.forEach((name, i) => {
      const marker = rows[i + offset] && rows[i + offset].querySelector(".u-marker");
      if (!marker) return;
      marker.style.borderColor = themeColor(name);
      if (kind === "bars") marker.style.background = `${themeColor(name)}bb`;
    });
    plot.redraw(false, true);
  };
  window.addEventListener("ember-theme", onTheme);

  const handle = {
    plot,
    setData(x, ...ys) {
      data = [Array.from(x), ...ys.map((y) => Array.from(y))];
      while (data.length < nSeries + 1) data.push([]);
      plot.setData(data);
      mark();
    },
    setLabels(next) { labels = next || []; },
    push(x, ...ys) {
      data[0].push(x);
      for (let i = 0; i < nSeries; i++) data[i + 1].push(ys[i] ?? null);
      const window = config.window || 120;
      while (data[0].length > 1 && data[0][0] < x - window) data.forEach((col) => col.shift());
      plot.setData(data);
      mark();
    },
    destroy() {
      resize.disconnect();
      window.removeEventListener("ember-theme", onTheme);
      plot.destroy();
      registry.delete(handle);
    },
  };
  registry.add(handle);
  return handle;
}

// -- pages and navigation ------------------------------------------------------------------------

let currentPage = null; // the module now mounted
let teardown = null; // clears what the mounted page registered
let generation = 0; // bumps on every navigation, so a slow mount cannot draw over the next page

function currentId() {
  const id = (location.hash.match(/^#\/([\w-]+)/) || [])[1];
  return id || "overview";
}

function drawNav() {
  const nav = document.getElementById("nav");
  nav.replaceChildren(...PAGES.map((p) => h("a", {
    href: `#/${p.id}`,
    dataset: { testid: `nav-${p.id}` },
    onclick: () => closeNav(),
  }, p.title)));
}

function markNav(id) {
  for (const a of document.querySelectorAll("#nav a")) {
    const active = a.dataset.testid === `nav-${id}`;
    a.classList.toggle("active", active);
    if (active) a.setAttribute("aria-current", "page"); else a.removeAttribute("aria-current");
  }
}

function closeNav() {
  document.getElementById("nav").classList.remove("open");
  document.querySelector('[data-testid="nav-toggle"]').setAttribute("aria-expanded", "false");
}

function makeContext(signal, timers, charts) {
  return {
    api: (path, opts = {}) => api(path, { ...opts, signal: opts.signal || signal }),
    stream: (path, body, onEvent, sig) => stream(path, body, onEvent, sig || signal),
    showError,
    clearError,
    chart: (el, config) => makeChart(el, config, charts),
    hasAdmin: () => adminKnown,
    every(ms, fn) {
      let running = false;
      let timer = null;
      const tick = async () => {
        // A tab in the background polls nothing (the next tick after it is shown catches up).
        if (running || signal.aborted || document.hidden) return;
        running = true;
        try {
          await fn();
        } catch (err) {
          showError(err);
          if ((err.status === 401 || err.status === 403) && timer !== null) clearInterval(timer);
        } finally {
          running = false;
        }
      };
      timer = setInterval(tick, ms);
      timers.push(timer);
      tick();
    },
    signal,
    h,
    fmt,
  };
}

async function unmountCurrent() {
  if (teardown) { const t = teardown; teardown = null; t(); }
  if (currentPage) {
    const page = currentPage;
    currentPage = null;
    try { await page.unmount?.(); } catch (err) { console.warn("unmount failed", err); }
  }
}

async function route() {
  const mine = ++generation;
  await unmountCurrent();
  clearError();
  const id = currentId();
  const meta = PAGES.find((p) => p.id === id);
  markNav(id);
  const root = h("div", { class: "page-body", dataset: { page: id } });
  document.getElementById("page").replaceChildren(root);
  if (!meta) {
    document.title = "ember";
    root.append(h("div", { class: "notice" }, `No page "${id}". `, h("a", { href: "#/overview" }, "Overview")));
    return;
  }
  document.title = `${meta.title} · ember`;
  if (meta.needsAdmin) {
    const admin = await probeAdmin();
    if (mine !== generation) return;
    adminKnown = admin === true;
    if (admin === "needs-key") {
      root.append(h("div", { class: "notice" }, "This page needs an API key with the admin scope."));
      promptForKey("This server needs an API key.");
      return;
    }
    if (!admin) {
      root.append(h("div", { class: "notice", dataset: { testid: "needs-admin" } },
        "This page needs a key with the admin scope. ",
        h("a", { href: "#", onclick: (e) => { e.preventDefault(); promptForKey("Enter a key with the admin scope."); } }, "Use another key")));
      return;
    }
  }
  let module;
  try {
    module = await import(`./pages/${id}.js`);
  } catch (err) {
    if (mine !== generation) return;
    showError(`The ${meta.title} page could not be loaded: ${err.message}`);
    return;
  }
  if (mine !== generation) return;
  const page = module.default;
  const controller = new AbortController();
  const timers = [];
  const charts = new Set();
  teardown = () => {
    controller.abort();
    timers.forEach(clearInterval);
    [...charts].forEach((c) => c.destroy());
  };
  currentPage = page;
  try {
    await page.mount(root, makeContext(controller.signal, timers, charts));
  } catch (err) {
    if (mine === generation) showError(err);
  }
}

async function boot() {
  applyTheme();
  matchMedia("(prefers-color-scheme: dark)").addEventListener("change", () => {
    if (!localStorage.getItem(THEME_STORAGE)) applyTheme();
  });
  drawNav();
  document.querySelector('[data-testid="theme-toggle"]').addEventListener("click", toggleTheme);
  document.querySelector('[data-testid="error-dismiss"]').addEventListener("click", clearError);
  document.querySelector('[data-testid="key-button"]').addEventListener("click", () => promptForKey(getKey() ? "A key is in use for this tab." : "No key in use."));
  const toggle = document.querySelector('[data-testid="nav-toggle"]');
  toggle.addEventListener("click", () => {
    const open = document.getElementById("nav").classList.toggle("open");
    toggle.setAttribute("aria-expanded", String(open));
  });
  window.addEventListener("hashchange", route);
  window.addEventListener("unhandledrejection", (e) => { showError(e.reason); e.preventDefault(); });
  showVersion();
  await route();
}

function showVersion() {
  api("/api/version").then((v) => {
    document.querySelector('[data-testid="server-version"]').textContent = v && v.version ? `v${v.version}` : "";
  }).catch(() => { /* a 401 opens the key prompt; the page shows its own errors */ });
}

boot();
