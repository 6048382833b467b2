// Routes: each gateway route's targets with their health, from GET /admin/routes every 2 s.
//
// One table per route; the table is redrawn whole on each refresh (nothing on it is editable).

const STATE_CLASS = { closed: "ok", half_open: "warn", "half-open": "warn", open: "bad" };

function stateBadge(h, state) {
  const title = state === "closed" ? "healthy: requests go to it" : state === "open" ? "failing: skipped until the cooldown ends"
    : "cooling down: one probe request at a time";
  return h("span", { class: `badge ${STATE_CLASS[state] || ""}`, title, dataset: { testid: "breaker-state" } }, String(state || "?"));
}

function targetRow(h, fmt, t) {
  return h("tr", { dataset: { target: t.target } },
    h("td", { class: "mono" }, t.target),
    h("td", {}, t.kind),
    h("td", {}, stateBadge(h, t.state)),
    h("td", { class: "num" }, fmt.number(t.in_flight)),
    h("td", { class: "num" }, fmt.number(t.requests)),
    h("td", { class: "num" }, fmt.number(t.failures),
      t.consecutive_failures ? h("span", { class: "muted", title: "failures in a row" }, ` (${t.consecutive_failures} in a row)`) : null),
    h("td", { class: "num" }, t.ttft_ms === null || t.ttft_ms === undefined ? "–" : fmt.ms(t.ttft_ms)),
    h("td", { class: "num" }, t.tokens_per_s === null || t.tokens_per_s === undefined ? "–" : fmt.number(t.tokens_per_s, 1)),
    h("td", { class: t.last_error ? "bad" : "muted", style: { minWidth: "14em" } }, t.last_error || "–"),
  );
}

function routeTable(h, fmt, route) {
  const targets = route.targets || [];
  return h("section", { class: "panel", dataset: { testid: `route-${route.model}` } },
    h("h2", {}, route.model, " ", h("span", { class: "muted" }, `· ${route.strategy} · ${targets.length} target${targets.length === 1 ? "" : "s"}`)),
    h("div", { class: "table-wrap" }, h("table", {},
      h("thead", {}, h("tr", {},
        h("th", {}, "Target"), h("th", {}, "Kind"), h("th", {}, "Breaker"), h("th", { class: "num" }, "In flight"),
        h("th", { class: "num" }, "Requests"), h("th", { class: "num" }, "Failures"), h("th", { class: "num" }, "TTFT"),
        h("th", { class: "num" }, "tok/s"), h("th", {}, "Last error"))),
      h("tbody", {}, targets.length ? targets.map((t) => targetRow(h, fmt, t))
        : h("tr", {}, h("td", { class: "empty", colspan: 9 }, "This route has no targets."))),
    )),
  );
}

export default {
  id: "routes",
  title: "Routes",
  needsAdmin: true,
  async mount(root, ctx) {
    const { h, fmt } = ctx;
    const body = h("div", { dataset: { testid: "routes-body" } }, h("p", { class: "muted" }, "Loading…"));
    const updated = h("span", { class: "muted", dataset: { testid: "routes-updated" } });
    root.append(
      h("div", { class: "row" }, h("h1", {}, "Routes"), h("span", { class: "spacer" }), updated),
      h("p", { class: "muted" }, "The gateway's routes (ember.toml [[routes]]) and the health of each target, refreshed every 2 s. ",
        "A target whose breaker is open is skipped until it recovers."),
      body,
    );
    let failing = false; // the last refresh failed: its banner goes once one succeeds again
    ctx.every(2000, async () => {
      let data;
      try {
        data = await ctx.api("/admin/routes");
      } catch (err) {
        failing = true;
        throw err;
      }
      if (failing) { ctx.clearError(); failing = false; }
      const routes = data.routes || [];
      body.replaceChildren(...(routes.length ? routes.map((r) => routeTable(h, fmt, r))
        : [h("div", { class: "notice", dataset: { testid: "routes-empty" } },
          "No routes are configured: a request names a local model (or provider/model) directly. ",
          "Routes with fallback targets are set in ember.toml under [[routes]].")]));
      updated.textContent = `updated ${new Date().toLocaleTimeString()}`;
    });
  },
  unmount() {},
};
