// Audit: the newest rows of the tamper-evident audit log (GET /admin/audit), older pages on
// demand, and a check of the whole hash chain (POST /admin/audit/verify) with its verdict.
//
// Prompts are never sent to the browser: a row that keeps one encrypted says so.

function what(h, r) {
  if (r.kind === "admin") {
    const detail = r.detail && Object.keys(r.detail).length ? JSON.stringify(r.detail) : "";
    return h("span", {}, h("b", {}, r.action), " ", h("span", { class: "mono muted" }, detail));
  }
  if (r.kind === "request") {
    const parts = [r.endpoint, r.model && `model=${r.model}`, r.route && `route=${r.route}`,
      r.provider && `provider=${r.provider}`, `tokens=${r.tokens_in ?? 0}/${r.tokens_out ?? 0}`,
      r.cache && `cache=${r.cache}`].filter(Boolean);
    return h("span", {}, h("span", { class: "mono" }, parts.join(" ")),
      r.error ? h("span", { class: "bad" }, ` ${r.error}`) : null,
      r.prompt_encrypted ? h("span", { class: "muted" }, " · prompt kept encrypted") : null);
  }
  return h("span", { class: "bad mono" }, r.data ?? JSON.stringify(r));
}

export default {
  id: "audit",
  title: "Audit",
  needsAdmin: true,
  async mount(root, ctx) {
    const { h, fmt } = ctx;
    const limit = h("select", { dataset: { testid: "audit-limit" } }, [50, 100, 200, 500].map((n) => h("option", { value: n }, `${n} rows`)));
    const verify = h("button", { type: "button", class: "primary", dataset: { testid: "audit-verify" } }, "Verify the chain");
    const verdict = h("div", { dataset: { testid: "audit-verify-result" }, hidden: true });
    const newest = h("button", { type: "button", dataset: { testid: "audit-newest" } }, "Newest");
    const older = h("button", { type: "button", dataset: { testid: "audit-older" }, disabled: true }, "Older");
    const summary = h("span", { class: "muted" });
    const table = h("div", { class: "table-wrap" });
    root.append(
      h("h1", {}, "Audit"),
      h("p", { class: "muted" }, "Every request and admin action, chained by SHA-256: an edited, inserted or deleted row breaks the chain, and the check names it."),
      h("div", { class: "row panel" }, verify, verdict),
      h("section", { class: "panel" }, h("div", { class: "row" }, newest, older, limit, h("span", { class: "spacer" }), summary), table),
    );

    let pageFloor = null; // the lowest seq shown: where "Older" continues

    const load = async (before) => {
      const query = new URLSearchParams({ limit: limit.value });
      if (before) query.set("before", String(before));
      const data = await ctx.api(`/admin/audit?${query}`);
      const rows = data.data || [];
      pageFloor = rows.length ? rows[rows.length - 1].seq : null;
      older.disabled = !data.has_more;
      summary.textContent = rows.length ? `seq ${rows[0].seq}–${pageFloor} of ${fmt.number(data.total)} rows` : `${fmt.number(data.total)} rows`;
      table.replaceChildren(h("table", { dataset: { testid: "audit-table" } },
        h("thead", {}, h("tr", {}, ...["Seq", "Time", "Key", "Status", "What", "Latency", "Hash"].map((t) => h("th", {}, t)))),
        h("tbody", {}, rows.length ? rows.map((r) => h("tr", { dataset: { seq: r.seq } },
          h("td", { class: "num" }, r.seq),
          h("td", { style: { whiteSpace: "nowrap" } }, fmt.time(r.ts)),
          h("td", {}, r.key || h("span", { class: "muted" }, "–")),
          h("td", { class: r.status >= 400 ? "bad" : "" }, r.status ?? ""),
          h("td", { style: { minWidth: "18em" } }, what(h, r)),
          h("td", { class: "num" }, r.latency_ms === undefined ? "" : fmt.ms(r.latency_ms)),
          h("td", { class: "mono muted", title: r.hash }, String(r.hash).slice(0, 10))))
          : h("tr", {}, h("td", { class: "empty", colspan: 7 }, "The audit log is empty.")))));
    };

    verify.addEventListener("click", async () => {
      verify.disabled = true;
      verdict.hidden = false;
      verdict.className = "muted";
      verdict.textContent = "checking…";
      try {
        const result = await ctx.api("/admin/audit/verify", { method: "POST" });
        verdict.className = result.ok ? "ok" : "bad";
        verdict.dataset.ok = String(result.ok);
        verdict.replaceChildren(result.ok ? `Intact: ${fmt.number(result.rows)} rows, every hash matches.`
          : h("div", {}, `${result.problems.length} problem${result.problems.length === 1 ? "" : "s"} in ${fmt.number(result.rows)} rows:`,
            h("ul", {}, result.problems.map((p) => h("li", { class: "mono" }, p)))));
      } catch (err) {
        verdict.hidden = true;
        ctx.showError(err);
      } finally {
        verify.disabled = false;
      }
    });
    newest.addEventListener("click", () => load().catch(ctx.showError));
    limit.addEventListener("change", () => load().catch(ctx.showError));
    older.addEventListener("click", () => { if (pageFloor) load(pageFloor).catch(ctx.showError); });
    await load();
  },
  unmount() {},
};
