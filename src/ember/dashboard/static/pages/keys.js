// Keys: create an API key (scopes, limits, budget, expiry), list the keys, revoke one.
//
// POST /admin/keys answers with the secret once; this page shows it in one panel with a copy
// button until the operator closes it or leaves the page, and never stores it anywhere. The list
// (GET /admin/keys) holds only names, prefixes, scopes, limits and dates.

import { getKey } from "../app.js";

const SCOPES = ["chat", "embed", "models", "admin"]; // until GET /admin/keys names the server's own
const DEFAULT_SCOPES = new Set(["chat", "embed", "models"]);

function limits(fmt, k) {
  const parts = [];
  if (k.rpm) parts.push(`${fmt.number(k.rpm)} rpm`);
  if (k.tpm) parts.push(`${fmt.number(k.tpm)} tpm`);
  if (k.max_concurrent) parts.push(`${k.max_concurrent} at once`);
  if (k.budget_usd !== null && k.budget_usd !== undefined) parts.push(`${fmt.usd(k.budget_usd)}/${k.budget_period}`);
  if (k.budget_tokens !== null && k.budget_tokens !== undefined) parts.push(`${fmt.number(k.budget_tokens)} tokens/${k.budget_period}`);
  return parts.join(", ") || "–";
}

function numberField(h, name, text, attrs = {}) {
  const input = h("input", { type: "number", min: attrs.min ?? 1, step: attrs.step ?? 1, placeholder: "no limit", name, dataset: { testid: `key-${name.replaceAll("_", "-")}` } });
  return { input, el: h("div", {}, h("label", {}, text), input) };
}

export default {
  id: "keys",
  title: "Keys",
  needsAdmin: true,
  async mount(root, ctx) {
    const { h, fmt } = ctx;
    const name = h("input", { type: "text", name: "name", required: true, maxlength: 64, pattern: "[A-Za-z0-9_.@\\-]+",
      placeholder: "e.g. team-a", autocomplete: "off", dataset: { testid: "key-name" } });
    let scopeBoxes = [];
    const scopeRow = h("div", { class: "row" });
    const drawScopes = (scopes) => {
      if (scopeBoxes.map((b) => b.value).join() === scopes.join()) return;
      const was = new Map(scopeBoxes.map((b) => [b.value, b.checked]));
      scopeBoxes = scopes.map((s) => h("input", { type: "checkbox", value: s, checked: was.get(s) ?? DEFAULT_SCOPES.has(s), dataset: { testid: `key-scope-${s}` } }));
      scopeRow.replaceChildren(...scopeBoxes.map((box) => h("label", { class: "inline" }, box, box.value)));
    };
    drawScopes(SCOPES);
    const rpm = numberField(h, "rpm", "Requests / minute");
    const tpm = numberField(h, "tpm", "Tokens / minute");
    const conc = numberField(h, "max_concurrent", "At once");
    const usd = numberField(h, "budget_usd", "Budget (USD)", { min: 0, step: "any" });
    const tokens = numberField(h, "budget_tokens", "Budget (tokens)", { min: 0 });
    const period = h("select", { name: "budget_period", dataset: { testid: "key-budget-period" } },
      ["month", "day", "total"].map((p) => h("option", { value: p }, p)));
    const expires = h("input", { type: "text", name: "expires", placeholder: "never (or 30d, 12h, 2026-12-31)", dataset: { testid: "key-expires" } });
    const create = h("button", { type: "submit", class: "primary", dataset: { testid: "key-create" } }, "Create key");
    const form = h("form", { class: "panel", autocomplete: "off" },
      h("h2", {}, "New key"),
      h("div", { class: "row" },
        h("div", {}, h("label", {}, "Name"), name),
        h("div", {}, h("label", {}, "Scopes"), scopeRow)),
      h("div", { class: "row" }, rpm.el, tpm.el, conc.el),
      h("div", { class: "row" }, usd.el, tokens.el, h("div", {}, h("label", {}, "Budget period"), period),
        h("div", {}, h("label", {}, "Expires"), expires)),
      h("div", { class: "row", style: { marginTop: "10px" } }, create));
    const secretBox = h("div", { hidden: true });
    const list = h("div", { class: "table-wrap" });
    root.append(h("h1", {}, "Keys"), secretBox, form, h("section", { class: "panel" }, h("h2", {}, "Keys"), list));

    const showSecret = (record) => {
      const code = h("code", { class: "mono secret", dataset: { testid: "key-secret" } }, record.key);
      const copied = h("span", { class: "muted" });
      const copy = h("button", { type: "button", dataset: { testid: "key-copy" }, onclick: async () => {
        try {
          await navigator.clipboard.writeText(record.key);
          copied.textContent = "copied";
        } catch {
          // No clipboard permission (plain http on another host): select it for a manual copy.
          const range = document.createRange();
          range.selectNodeContents(code);
          getSelection().removeAllRanges();
          getSelection().addRange(range);
          copied.textContent = "selected: press Ctrl+C";
        }
      } }, "Copy");
      const close = h("button", { type: "button", dataset: { testid: "key-secret-close" }, onclick: () => {
        secretBox.hidden = true;
        secretBox.replaceChildren(); // the secret leaves the page
      } }, "Done");
      secretBox.replaceChildren(h("div", { class: "panel", role: "status" },
        h("h2", {}, `Key “${record.name}” created`),
        h("p", {}, "Copy it now: it is shown this once, and only its hash is kept."),
        h("div", { class: "row" }, code, copy, close, copied)));
      secretBox.hidden = false;
    };

    const revoke = async (k) => {
      const mine = getKey().startsWith(k.prefix);
      const question = mine ? `Revoke “${k.name}”? This tab uses that key: the dashboard will ask for another.`
        : `Revoke “${k.name}”? Requests with it are refused from the next one.`;
      if (!window.confirm(question)) return;
      await ctx.api(`/admin/keys/${encodeURIComponent(k.name)}`, { method: "DELETE" });
      await refresh();
    };

    const refresh = async () => {
      const data = await ctx.api("/admin/keys");
      const keys = data.data || [];
      if (Array.isArray(data.scopes) && data.scopes.length) drawScopes(data.scopes);
      const status = (k) => h("span", { class: `badge ${k.status === "active" ? "ok" : "bad"}`, dataset: { testid: `key-status-${k.name}` } }, k.status);
      list.replaceChildren(h("table", { dataset: { testid: "keys-table" } },
        h("thead", {}, h("tr", {}, ...["Name", "Prefix", "Scopes", "Limits", "Created", "Expires", "Status", ""].map((t) => h("th", {}, t)))),
        h("tbody", {}, keys.length ? keys.map((k) => h("tr", { dataset: { key: k.name } },
          h("td", {}, k.name, getKey().startsWith(k.prefix) ? h("span", { class: "muted" }, " (this tab)") : null),
          h("td", { class: "mono" }, `${k.prefix}…`),
          h("td", {}, k.scopes.join(", ")),
          h("td", {}, limits(fmt, k)),
          h("td", {}, fmt.time(k.created)),
          h("td", {}, k.expires ? fmt.time(k.expires) : "never"),
          h("td", {}, status(k), k.revoked ? h("span", { class: "muted" }, ` ${fmt.time(k.revoked)}`) : null),
          h("td", {}, k.status === "active" ? h("button", { type: "button", class: "danger", dataset: { testid: `key-revoke-${k.name}` },
            onclick: () => revoke(k).catch(ctx.showError) }, "Revoke") : null)))
          : h("tr", {}, h("td", { class: "empty", colspan: 8 }, "No keys yet.")))));
    };

    form.addEventListener("submit", async (e) => {
      e.preventDefault();
      ctx.clearError();
      const scopes = scopeBoxes.filter((b) => b.checked).map((b) => b.value);
      if (!scopes.length) { ctx.showError("Pick at least one scope."); return; }
      const body = { name: name.value.trim(), scopes, budget_period: period.value };
      for (const [field, input] of [["rpm", rpm], ["tpm", tpm], ["max_concurrent", conc], ["budget_usd", usd], ["budget_tokens", tokens]]) {
        if (input.input.value !== "") body[field] = Number(input.input.value);
      }
      if (expires.value.trim()) body.expires = expires.value.trim();
      create.disabled = true;
      try {
        const record = await ctx.api("/admin/keys", { method: "POST", body });
        showSecret(record);
        form.reset();
        scopeBoxes.forEach((b) => { b.checked = DEFAULT_SCOPES.has(b.value); });
        await refresh();
      } catch (err) {
        ctx.showError(err);
      } finally {
        create.disabled = false;
      }
    });
    await refresh();
  },
  unmount() {},
};
