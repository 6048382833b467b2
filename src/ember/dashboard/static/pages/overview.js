// Overview: what the server is doing now, from GET /admin/stats polled every second.
//
// The stats endpoint returns totals that only grow (requests, tokens, errors) and TTFT
// percentiles over its own recent window; rates are the difference of two polls divided by the
// time between them (the server's clock, so a slow poll does not read as a dip). The page keeps
// the last WINDOW seconds of points itself: nothing is stored on the server for the charts.

import { h, fmt } from "../app.js";

const POLL_MS = 1000;
const WINDOW = 120; // seconds of history on the charts

let previous = null;

function card(label, testid) {
  const value = h("div", { class: "value", dataset: { testid } }, "–");
  return { el: h("div", { class: "card" }, h("div", { class: "label" }, label), value), value };
}

function chartPanel(title) {
  const body = h("div");
  return { el: h("div", { class: "panel" }, h("div", { class: "chart-title" }, title), body), body };
}

function modelRows(models) {
  if (!models.length) return [h("tr", {}, h("td", { class: "empty", colspan: 7 }, "No model is loaded. A request loads one; so does Load on the Models page."))];
  return models.map((m) => h("tr", { dataset: { testid: `loaded-${m.name}` } },
    h("td", {}, m.name),
    h("td", { class: "num" }, `${m.slots_busy} / ${m.slots}`),
    h("td", { class: "num" }, m.queue),
    h("td", { class: "num" }, fmt.bytes(m.memory_bytes)),
    h("td", { class: "num" }, fmt.number(m.context_length)),
    h("td", { class: "num" }, keepAlive(m)),
    h("td", { class: "num" }, m.in_flight),
  ));
}

function keepAlive(m) {
  if (m.keep_alive_s < 0) return "kept loaded";
  if (m.keep_alive_left_s === null) return m.in_flight ? `in use (${fmt.duration(m.keep_alive_s)} after)` : fmt.duration(m.keep_alive_s);
  return fmt.duration(m.keep_alive_left_s);
}

export default {
  id: "overview",
  title: "Overview",
  needsAdmin: true,

  async mount(root, ctx) {
    previous = null;
    const cards = {
      version: card("Version", "stat-version"),
      uptime: card("Uptime", "stat-uptime"),
      models: card("Models loaded", "stat-models"),
      slots: card("Slots busy", "stat-slots"),
      queue: card("Queued", "stat-queue"),
      memory: card("Model memory", "stat-memory"),
      requests: card("Requests", "stat-requests"),
      errors: card("Errors (4xx / 5xx)", "stat-errors"),
    };
    const tbody = h("tbody");
    const table = h("div", { class: "panel" },
      h("h2", {}, "Loaded models"),
      h("div", { class: "table-wrap" }, h("table", { dataset: { testid: "loaded-models" } },
        h("thead", {}, h("tr", {},
          h("th", {}, "Model"), h("th", { class: "num" }, "Slots busy"), h("th", { class: "num" }, "Queue"),
          h("th", { class: "num" }, "Memory"), h("th", { class: "num" }, "Context"),
          h("th", { class: "num" }, "Keep-alive left"), h("th", { class: "num" }, "In flight"))),
        tbody)));
    const panels = {
      tokens: chartPanel("Tokens per second (counted as each request ends)"),
      requests: chartPanel("Requests per second"),
      ttft: chartPanel("Time to first token, ms (requests of the last minute)"),
      errors: chartPanel("Errors per second"),
    };
    const updated = h("span", { class: "muted", dataset: { testid: "stats-updated" } });
    root.append(
      h("div", { class: "row" }, h("h1", {}, "Overview"), h("span", { class: "spacer" }), updated),
      h("div", { class: "cards" }, Object.values(cards).map((c) => c.el)),
      h("div", { class: "grid-2" }, Object.values(panels).map((p) => p.el)),
      h("div", { style: { height: "14px" } }),
      table,
    );
    const charts = {
      tokens: ctx.chart(panels.tokens.body, { name: "tokens", window: WINDOW, yLabel: "tok/s", series: [{ label: "generated" }, { label: "read", color: "series-2" }] }),
      requests: ctx.chart(panels.requests.body, { name: "requests", window: WINDOW, yLabel: "req/s", series: [{ label: "requests", color: "series-2" }] }),
      ttft: ctx.chart(panels.ttft.body, { name: "ttft", window: WINDOW, yLabel: "ms", series: [{ label: "p50", color: "series-3" }, { label: "p95", color: "series-4" }] }),
      errors: ctx.chart(panels.errors.body, { name: "errors", window: WINDOW, yLabel: "err/s", series: [{ label: "4xx", color: "series-4" }, { label: "5xx", color: "series-5" }] }),
    };

    ctx.every(POLL_MS, async () => {
      const s = await ctx.api("/admin/stats");
      const t = s.totals;
      cards.version.value.textContent = s.version;
      cards.uptime.value.textContent = fmt.duration(s.uptime_s);
      cards.models.value.textContent = String(s.models.length);
      cards.slots.value.textContent = `${s.slots_busy} / ${s.slots}`;
      cards.queue.value.textContent = String(s.queue);
      cards.memory.value.textContent = `${fmt.bytes(s.memory.resident_bytes)} of ${fmt.bytes(s.memory.budget_bytes)}`;
      cards.requests.value.textContent = fmt.number(t.requests);
      cards.errors.value.textContent = `${fmt.number(t.errors - t.server_errors)} / ${fmt.number(t.server_errors)}`;
      tbody.replaceChildren(...modelRows(s.models));
      updated.textContent = `updated ${new Date(s.now * 1000).toLocaleTimeString()}`;

      const p = s.window.ttft_ms;
      charts.ttft.push(s.now, p.p50, p.p95);
      // A server restart (the totals fell) starts the rates again rather than charting a negative.
      if (previous && s.now > previous.now && t.requests >= previous.totals.requests) {
        const dt = s.now - previous.now;
        const was = previous.totals;
        const rate = (key) => (t[key] - was[key]) / dt;
        charts.tokens.push(s.now, rate("tokens_out"), rate("tokens_in"));
        charts.requests.push(s.now, rate("requests"));
        charts.errors.push(s.now, ((t.errors - t.server_errors) - (was.errors - was.server_errors)) / dt, rate("server_errors"));
      }
      previous = s;
    });
  },

  unmount() {
    previous = null;
  },
};
