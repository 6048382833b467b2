// Usage: requests, tokens and cost grouped by day, model, route, key or provider over a date
// range, as three bar charts and a table, from GET /admin/usage?by=&since=&until=.
//
// Days are UTC, both ends included (as the API and `ember usage` count them). Grouped by day, the
// days in the range with no traffic are drawn as zeros, so the chart's x axis is the calendar.

const GROUPS = ["day", "model", "route", "key", "provider"];
const MAX_FILLED_DAYS = 400; // past this a range is drawn with only the days that have rows

function isoDay(date) { return date.toISOString().slice(0, 10); }

function daysBack(n) {
  const d = new Date();
  d.setUTCDate(d.getUTCDate() - n);
  return isoDay(d);
}

function dayRange(since, until) {
  const out = [];
  const d = new Date(`${since}T00:00:00Z`);
  const end = new Date(`${until}T00:00:00Z`);
  while (d <= end && out.length <= MAX_FILLED_DAYS) { out.push(isoDay(d)); d.setUTCDate(d.getUTCDate() + 1); }
  return out.length > MAX_FILLED_DAYS ? null : out;
}

function label(by, value) {
  if (value === null || value === undefined || value === "") return by === "key" ? "(no key)" : "(none)";
  return String(value);
}

export default {
  id: "usage",
  title: "Usage",
  needsAdmin: true,
  async mount(root, ctx) {
    const { h, fmt } = ctx;
    const by = h("select", { dataset: { testid: "usage-by" } }, GROUPS.map((g) => h("option", { value: g }, g)));
    const since = h("input", { type: "date", value: daysBack(29), dataset: { testid: "usage-since" } });
    const until = h("input", { type: "date", value: daysBack(0), dataset: { testid: "usage-until" } });
    const apply = h("button", { type: "submit", class: "primary", dataset: { testid: "usage-apply" } }, "Show");
    const form = h("form", { class: "row panel" },
      h("label", { class: "inline" }, "By ", by),
      h("label", { class: "inline" }, "From ", since),
      h("label", { class: "inline" }, "to ", until),
      apply,
      h("span", { class: "muted" }, "UTC days, both included"));
    const cards = h("div", { class: "cards", dataset: { testid: "usage-totals" } });
    const chartBox = (title, name) => {
      const el = h("div");
      return { panel: h("div", { class: "panel" }, h("div", { class: "chart-title" }, title), el), el, name };
    };
    const boxes = [chartBox("Requests (errors)", "usage-requests"), chartBox("Tokens in / out", "usage-tokens"), chartBox("Cost (USD)", "usage-cost")];
    const table = h("div", { class: "table-wrap" });
    root.append(h("h1", {}, "Usage"), h("div", { class: "stack" },
      form,
      cards,
      h("div", { class: "grid-2" }, boxes[0].panel, boxes[1].panel),
      boxes[2].panel,
      h("div", { class: "panel" }, table),
    ));
    const charts = {
      requests: ctx.chart(boxes[0].el, { name: "usage-requests", kind: "bars", x: "category",
        series: [{ label: "requests", color: "series-1" }, { label: "errors", color: "bad" }] }),
      tokens: ctx.chart(boxes[1].el, { name: "usage-tokens", kind: "bars", x: "category",
        series: [{ label: "in", color: "series-2" }, { label: "out", color: "series-3" }] }),
      cost: ctx.chart(boxes[2].el, { name: "usage-cost", kind: "bars", x: "category", height: 150,
        series: [{ label: "USD", color: "series-4" }] }),
    };

    const load = async () => {
      ctx.clearError();
      if (since.value && until.value && since.value > until.value) {
        ctx.showError(`The range is empty: ${since.value} is after ${until.value}.`);
        return;
      }
      const group = by.value;
      const query = new URLSearchParams({ by: group });
      if (since.value) query.set("since", since.value);
      if (until.value) query.set("until", until.value);
      const data = await ctx.api(`/admin/usage?${query}`);
      const rows = data.rows || [];
      draw(group, rows, data.total || {});
    };

    const draw = (group, rows, total) => {
      cards.replaceChildren(
        ...[["Requests", fmt.number(total.requests)], ["Errors", fmt.number(total.errors)],
          ["Tokens in", fmt.number(total.tokens_in)], ["Tokens out", fmt.number(total.tokens_out)],
          ["Cost", fmt.usd(total.cost ?? 0)]].map(([name, value]) => h("div", { class: "card" },
          h("div", { class: "label" }, name), h("div", { class: "value" }, value))));
      // Charts: days oldest first (the API answers newest first); other groups as ranked.
      let series = rows.map((r) => ({ name: label(group, r[group]), r }));
      if (group === "day") {
        const days = since.value && until.value ? dayRange(since.value, until.value) : null;
        const byDay = new Map(rows.map((r) => [r.day, r]));
        series = days ? days.map((d) => ({ name: d, r: byDay.get(d) || {} }))
          : series.slice().sort((a, b) => (a.name < b.name ? -1 : 1));
      }
      // One label per ~80 px of chart, the rest blank, so they never run into each other.
      const labelsFor = (el) => {
        const fit = Math.max(2, Math.floor((el.clientWidth || 400) / 80));
        const step = Math.max(1, Math.ceil(series.length / fit));
        return series.map((s, i) => (i % step ? ""
          : group === "day" ? s.name.slice(5) : s.name.length > 12 ? `${s.name.slice(0, 11)}…` : s.name));
      };
      const x = series.map((_, i) => i);
      const col = (f) => series.map((s) => s.r[f] ?? 0);
      charts.requests.setLabels(labelsFor(boxes[0].el)); charts.requests.setData(x, col("requests"), col("errors"));
      charts.tokens.setLabels(labelsFor(boxes[1].el)); charts.tokens.setData(x, col("tokens_in"), col("tokens_out"));
      charts.cost.setLabels(labelsFor(boxes[2].el)); charts.cost.setData(x, col("cost"));

      const head = h("tr", {}, h("th", {}, group), ...["Requests", "Errors", "Tokens in", "Tokens out", "Cost", "Avg latency", "Avg TTFT"]
        .map((t) => h("th", { class: "num" }, t)));
      const cells = (r, name) => h("tr", {}, h("td", { class: "mono" }, name),
        h("td", { class: "num" }, fmt.number(r.requests)), h("td", { class: "num" }, fmt.number(r.errors)),
        h("td", { class: "num" }, fmt.number(r.tokens_in)), h("td", { class: "num" }, fmt.number(r.tokens_out)),
        h("td", { class: "num" }, fmt.usd(r.cost ?? 0)),
        h("td", { class: "num" }, r.avg_latency_ms === undefined ? "" : fmt.ms(r.avg_latency_ms)),
        h("td", { class: "num" }, r.avg_ttft_ms === undefined ? "" : fmt.ms(r.avg_ttft_ms)));
      table.replaceChildren(h("table", { dataset: { testid: "usage-table" } },
        h("thead", {}, head),
        h("tbody", {}, rows.length ? rows.map((r) => cells(r, label(group, r[group])))
          : h("tr", {}, h("td", { class: "empty", colspan: 8 }, "No requests in this range."))),
        rows.length ? h("tfoot", {}, h("tr", {}, h("th", {}, "total"),
          ...[fmt.number(total.requests), fmt.number(total.errors), fmt.number(total.tokens_in), fmt.number(total.tokens_out),
            fmt.usd(total.cost ?? 0), "", ""].map((v) => h("th", { class: "num" }, v)))) : null));
    };

    form.addEventListener("submit", (e) => { e.preventDefault(); load().catch(ctx.showError); });
    by.addEventListener("change", () => load().catch(ctx.showError));
    await load();
  },
  unmount() {},
};
