// Batches: this key's batches (GET /v1/batches) with status and counts, cancel, and downloads of
// the output and error files (GET /v1/files/{id}/content).
//
// A download is fetched with the key in the Authorization header and handed to the browser as a
// blob: URL, never as a link carrying the key. Refreshed every 3 s while any batch is unfinished.

import { getKey } from "../app.js";

const FINAL = new Set(["completed", "failed", "cancelled", "expired"]);
const STATUS_CLASS = { completed: "ok", failed: "bad", expired: "bad", cancelled: "warn", cancelling: "warn" };

async function download(fileId, filename) {
  const headers = {};
  const key = getKey();
  if (key) headers.Authorization = `Bearer ${key}`;
  const response = await fetch(`/v1/files/${encodeURIComponent(fileId)}/content`, { headers, cache: "no-store" });
  if (!response.ok) {
    let message = `${response.status} ${response.statusText}`;
    try {
      const data = await response.json();
      message = (data.error && (data.error.message || data.error)) || message;
    } catch { /* not JSON */ }
    throw new Error(`download of ${fileId} failed: ${message}`);
  }
  const url = URL.createObjectURL(await response.blob());
  const a = document.createElement("a");
  a.href = url;
  a.download = filename;
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10_000);
}

export default {
  id: "batches",
  title: "Batches",
  needsAdmin: false,
  async mount(root, ctx) {
    const { h, fmt } = ctx;
    const table = h("div", { class: "table-wrap" });
    const more = h("button", { type: "button", hidden: true, dataset: { testid: "batches-more" } }, "More");
    root.append(
      h("h1", {}, "Batches"),
      h("p", { class: "muted" }, "The batches of the key in use (each key sees its own), newest first. Create one with ",
        h("code", {}, "ember batch create FILE"), " or the OpenAI SDK's batches API."),
      h("section", { class: "panel" }, table, more),
    );
    let shown = [];
    let lastId = null;

    const counts = (b) => {
      const c = b.request_counts || {};
      const total = c.total || 0;
      const done = (c.completed || 0) + (c.failed || 0);
      return h("div", {},
        h("div", {}, `${fmt.number(c.completed || 0)} done · `, h("span", { class: c.failed ? "bad" : "" }, `${fmt.number(c.failed || 0)} failed`), ` · ${fmt.number(total)} total`),
        total ? h("div", { class: "progress", title: `${done}/${total}` }, h("div", { style: { width: `${Math.round((100 * done) / total)}%` } })) : null);
    };
    const fileButton = (id, label, b, suffix) => id ? h("button", { type: "button", dataset: { testid: `batch-${suffix}-${b.id}` },
      onclick: () => download(id, `${b.id}-${suffix}.jsonl`).catch(ctx.showError) }, label) : null;
    const cancel = async (b) => {
      if (!window.confirm(`Cancel ${b.id}? Requests already running finish and are kept.`)) return;
      await ctx.api(`/v1/batches/${encodeURIComponent(b.id)}/cancel`, { method: "POST" });
      await refresh();
    };

    const draw = () => {
      table.replaceChildren(h("table", { dataset: { testid: "batches-table" } },
        h("thead", {}, h("tr", {}, ...["Batch", "Status", "Endpoint", "Created", "Requests", "Files", ""].map((t) => h("th", {}, t)))),
        h("tbody", {}, shown.length ? shown.map((b) => h("tr", { dataset: { batch: b.id } },
          h("td", { class: "mono" }, b.id, b.metadata && Object.keys(b.metadata).length ? h("div", { class: "muted" }, JSON.stringify(b.metadata)) : null),
          h("td", {}, h("span", { class: `badge ${STATUS_CLASS[b.status] || ""}` }, b.status),
            b.errors && b.errors.data && b.errors.data.length ? h("div", { class: "bad" }, b.errors.data.map((e) => e.message).join("; ")) : null),
          h("td", { class: "mono" }, b.endpoint),
          h("td", {}, fmt.time(b.created_at)),
          h("td", {}, counts(b)),
          h("td", {}, h("div", { class: "row" }, fileButton(b.output_file_id, "Output", b, "output"), fileButton(b.error_file_id, "Errors", b, "errors"))),
          h("td", {}, FINAL.has(b.status) || b.status === "cancelling" ? null
            : h("button", { type: "button", class: "danger", dataset: { testid: `batch-cancel-${b.id}` }, onclick: () => cancel(b).catch(ctx.showError) }, "Cancel"))))
          : h("tr", {}, h("td", { class: "empty", colspan: 7 }, "No batches for this key.")))));
    };

    // The first page again (newest first), keeping any older pages already fetched with "More".
    const refresh = async () => {
      const data = await ctx.api("/v1/batches?limit=100");
      const fresh = data.data || [];
      const seen = new Set(fresh.map((b) => b.id));
      shown = [...fresh, ...shown.filter((b) => !seen.has(b.id))];
      if (lastId === null) { lastId = data.last_id; more.hidden = !data.has_more; }
      draw();
    };
    more.addEventListener("click", async () => {
      try {
        const data = await ctx.api(`/v1/batches?limit=100&after=${encodeURIComponent(lastId)}`);
        shown = [...shown, ...(data.data || [])];
        lastId = data.last_id;
        more.hidden = !data.has_more;
        draw();
      } catch (err) { ctx.showError(err); }
    });
    await refresh();
    ctx.every(3000, async () => { if (shown.some((b) => !FINAL.has(b.status))) await refresh(); });
  },
  unmount() {},
};
