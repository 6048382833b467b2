// Approvals: agent tool calls waiting for a human (GET /admin/approvals?status=pending), each with
// approve / deny and a reason (POST /admin/approvals/{id} {"approve", "reason"}).
//
// Refreshed every 3 s, but a row is only redrawn when its status changes, so a reason being typed
// is not wiped by the refresh. A server without agents answers 404: the page says so.

function pretty(text) {
  try { return JSON.stringify(JSON.parse(text), null, 2); } catch { return String(text ?? ""); }
}

const STATUS_CLASS = { pending: "warn", approved: "ok", denied: "bad" };

export default {
  id: "approvals",
  title: "Approvals",
  needsAdmin: true,
  async mount(root, ctx) {
    const { h, fmt } = ctx;
    const filter = h("select", { dataset: { testid: "approvals-status" } },
      ["pending", "approved", "denied", "all"].map((s) => h("option", { value: s }, s)));
    const body = h("tbody");
    const table = h("table", { dataset: { testid: "approvals-table" } },
      h("thead", {}, h("tr", {}, ...["Asked", "Agent", "Tool call", "Key", "Status", "Decision"].map((t) => h("th", {}, t)))), body);
    const holder = h("div", { class: "table-wrap" }, table);
    root.append(
      h("h1", {}, "Approvals"),
      h("p", { class: "muted" }, "Tool calls of agent runs that wait for a person. Approving runs the call and the run goes on; denying ends the run with the reason."),
      h("div", { class: "row" }, h("label", { class: "inline" }, "Show ", filter)),
      h("section", { class: "panel" }, holder),
    );
    const rows = new Map(); // id -> {tr, status}
    let unavailable = false;

    const decide = async (a, approve, reasonInput, buttons) => {
      buttons.forEach((b) => { b.disabled = true; });
      try {
        const reason = reasonInput.value.trim();
        const record = await ctx.api(`/admin/approvals/${encodeURIComponent(a.id)}`, { method: "POST", body: { approve, reason: reason || null } });
        place(record, true);
      } catch (err) {
        ctx.showError(err);
        buttons.forEach((b) => { b.disabled = false; });
      }
    };

    const row = (a) => {
      let decision;
      if (a.status === "pending") {
        const reason = h("input", { type: "text", placeholder: "reason (optional)", maxlength: 2000, dataset: { testid: `approval-reason-${a.id}` } });
        const yes = h("button", { type: "button", class: "primary", dataset: { testid: `approval-approve-${a.id}` } }, "Approve");
        const no = h("button", { type: "button", class: "danger", dataset: { testid: `approval-deny-${a.id}` } }, "Deny");
        yes.addEventListener("click", () => decide(a, true, reason, [yes, no]));
        no.addEventListener("click", () => decide(a, false, reason, [yes, no]));
        decision = h("div", { class: "row" }, reason, yes, no);
      } else {
        decision = h("div", {}, a.decided_by ? `by ${a.decided_by}` : "", a.decided_at ? ` · ${fmt.time(a.decided_at)}` : "",
          a.reason ? h("div", { class: "muted" }, a.reason) : null);
      }
      return h("tr", { dataset: { approval: a.id } },
        h("td", { style: { whiteSpace: "nowrap" } }, fmt.time(a.created_at)),
        h("td", {}, a.agent, h("div", { class: "muted mono", title: "run" }, a.run_id)),
        h("td", {}, h("b", { class: "mono" }, a.tool), h("pre", { style: { minWidth: "16em", margin: "4px 0 0" } }, pretty(a.arguments))),
        h("td", {}, a.key || h("span", { class: "muted" }, "–")),
        h("td", {}, h("span", { class: `badge ${STATUS_CLASS[a.status] || ""}`, dataset: { testid: `approval-status-${a.id}` } }, a.status)),
        h("td", {}, decision));
    };

    // Put one approval's row in the table (new, or its status changed); `decided` keeps a row that
    // no longer matches the filter until the next refresh, so the click's result stays visible.
    const place = (a, decided = false) => {
      const known = rows.get(a.id);
      if (known && known.status === a.status) return;
      const tr = row(a);
      if (known) known.tr.replaceWith(tr); else body.append(tr);
      rows.set(a.id, { tr, status: a.status, decided });
    };

    let failing = false; // the last refresh failed: its banner goes once one succeeds again
    const refresh = async () => {
      if (unavailable) return;
      let data;
      try {
        data = await ctx.api(`/admin/approvals?status=${filter.value}&limit=200`);
        if (failing) { ctx.clearError(); failing = false; }
      } catch (err) {
        failing = err.status !== 404;
        if (err.status === 404) {
          unavailable = true;
          holder.replaceChildren(h("div", { class: "notice", dataset: { testid: "approvals-unavailable" } },
            "Approvals are not available on this server (it has no agents that ask for them)."));
          return;
        }
        throw err;
      }
      const list = data.data || [];
      const ids = new Set(list.map((a) => a.id));
      for (const [id, known] of rows) {
        if (!ids.has(id) && !known.decided) { known.tr.remove(); rows.delete(id); }
        else if (!ids.has(id)) known.decided = false; // shown once after the decision, gone next time
      }
      // Newest first, as the API lists them: rebuild the order only when a new one arrived.
      list.forEach((a) => place(a));
      const order = list.map((a) => rows.get(a.id).tr);
      if (order.some((tr, i) => body.children[i] !== tr)) {
        const rest = [...body.children].filter((tr) => !order.includes(tr));
        body.replaceChildren(...order, ...rest);
      }
      const empty = body.querySelector("td.empty");
      if (!rows.size && !empty) body.replaceChildren(h("tr", {}, h("td", { class: "empty", colspan: 6 }, `No ${filter.value === "all" ? "" : `${filter.value} `}approvals.`)));
      else if (rows.size && empty) empty.parentElement.remove();
    };
    filter.addEventListener("change", () => {
      rows.clear();
      body.replaceChildren();
      refresh().catch(ctx.showError);
    });
    ctx.every(3000, refresh);
  },
  unmount() {},
};
