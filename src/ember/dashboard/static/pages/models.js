// Models: the local store (/api/tags, context from /api/show), what is loaded (/api/ps), pull
// with live progress (/api/pull's NDJSON), delete, copy, details and template, load and unload.
//
// Loading is what Ollama clients do: /api/generate with an empty prompt (keep_alive 0 unloads).
// Delete asks again in the page (a second click on the same row) rather than with confirm(), so
// it works the same for a person and for a browser driven by a test.

import { h, fmt } from "../app.js";

let pulling = null; // the AbortController of a pull in progress

function progressBar() {
  const fill = h("div");
  const bar = h("div", { class: "progress", role: "progressbar", "aria-valuemin": 0, "aria-valuemax": 100, "aria-valuenow": 0, dataset: { testid: "pull-progress", percent: "0", done: "false" } }, fill);
  return {
    bar,
    set(percent, done = false) {
      const p = Math.max(0, Math.min(100, percent));
      fill.style.width = `${p}%`;
      bar.setAttribute("aria-valuenow", String(Math.round(p)));
      bar.dataset.percent = String(Math.round(p));
      bar.dataset.done = String(done);
    },
  };
}

export default {
  id: "models",
  title: "Models",
  needsAdmin: false,

  async mount(root, ctx) {
    const tbody = h("tbody");
    const details = h("div", { class: "panel", hidden: true, dataset: { testid: "model-details" } });
    const status = h("div", { class: "muted", dataset: { testid: "pull-status" } });
    const progress = progressBar();
    const nameInput = h("input", { type: "text", placeholder: "smollm2:135m, hf://org/repo/file.gguf or a URL", size: 44, dataset: { testid: "pull-name" }, spellcheck: "false" });
    const asInput = h("input", { type: "text", placeholder: "name as (optional)", size: 18, dataset: { testid: "pull-destination" }, spellcheck: "false" });
    const start = h("button", { class: "primary", type: "submit", dataset: { testid: "pull-start" } }, "Pull");
    const cancel = h("button", { type: "button", hidden: true, dataset: { testid: "pull-cancel" }, onclick: () => pulling && pulling.abort() }, "Cancel");

    const routesLine = h("p", { dataset: { testid: "models-virtual" } });

    const refresh = async () => {
      const [tags, ps] = await Promise.all([ctx.api("/api/tags"), ctx.api("/api/ps")]);
      const loaded = new Map((ps.models || []).map((m) => [m.name, m]));
      // /api/tags lists the gateway's routes and agents too (as Ollama clients should see them);
      // they are no stored file (nothing to load, copy or delete, /api/show answers 404), so they
      // go in a line of their own below the store.
      const virtual = (t) => ["route", "agent"].includes((t.details || {}).format);
      const models = (tags.models || []).filter((t) => !virtual(t));
      const others = (tags.models || []).filter(virtual);
      tbody.replaceChildren(...(models.length ? models.map((m) => row(m, loaded.get(m.name))) : [
        h("tr", {}, h("td", { class: "empty", colspan: 8 }, "The store is empty: pull a model above.")),
      ]));
      routesLine.replaceChildren(...(others.length ? [
        h("span", { class: "muted" }, "Also served here (not stored): "),
        ...others.map((t, i) => h("span", { dataset: { testid: `virtual-${t.name}` } }, i ? ", " : "", h("code", {}, t.name),
          t.details.parent_model ? ` → ${t.details.parent_model}` : "", ` (${t.details.format})`)),
      ] : []));
      // Context lengths are only in /api/show: one call per model, after the table is drawn.
      for (const m of models) {
        ctx.api("/api/show", { method: "POST", body: { model: m.name } }).then((info) => {
          const cell = tbody.querySelector(`[data-ctx="${CSS.escape(m.name)}"]`);
          if (cell) cell.textContent = fmt.number(contextLength(info));
        }).catch(() => {});
      }
    };

    const act = async (fn) => {
      ctx.clearError();
      try { await fn(); } catch (err) { ctx.showError(err); }
      await refresh().catch(ctx.showError);
    };

    const row = (m, running) => {
      const d = m.details || {};
      const confirmDelete = h("button", { class: "danger", hidden: true, dataset: { testid: `delete-confirm-${m.name}` },
        onclick: () => act(() => ctx.api("/api/delete", { method: "DELETE", body: { model: m.name } })) }, "Really delete");
      const del = h("button", { class: "danger", dataset: { testid: `delete-${m.name}` }, onclick: () => {
        del.hidden = true;
        confirmDelete.hidden = false;
      } }, "Delete");
      const copyName = h("input", { type: "text", size: 14, placeholder: "new name", hidden: true, dataset: { testid: `copy-name-${m.name}` } });
      const copyGo = h("button", { hidden: true, dataset: { testid: `copy-confirm-${m.name}` }, onclick: () => {
        const destination = copyName.value.trim();
        if (!destination) { ctx.showError("Name the copy first."); return; }
        act(() => ctx.api("/api/copy", { method: "POST", body: { source: m.name, destination } }));
      } }, "Copy");
      const copy = h("button", { dataset: { testid: `copy-${m.name}` }, onclick: () => {
        copy.hidden = true;
        copyName.hidden = false;
        copyGo.hidden = false;
        copyName.focus();
      } }, "Copy…");
      const load = running
        ? h("button", { dataset: { testid: `unload-${m.name}` }, onclick: () => act(() => ctx.api("/api/generate", { method: "POST", body: { model: m.name, keep_alive: 0 } })) }, "Unload")
        : h("button", { dataset: { testid: `load-${m.name}` }, onclick: (e) => {
          e.target.disabled = true;
          e.target.textContent = "Loading…";
          act(() => ctx.api("/api/generate", { method: "POST", body: { model: m.name, prompt: "" } }));
        } }, "Load");
      return h("tr", { dataset: { testid: `model-${m.name}` } },
        h("td", {}, h("a", { href: "#/models", onclick: (e) => { e.preventDefault(); showDetails(m.name); }, dataset: { testid: `details-${m.name}` } }, m.name),
          running ? h("span", {}, " ", h("span", { class: "badge ok", title: `${running.slots_busy ?? 0} of ${running.slots ?? "?"} slots busy` }, "loaded")) : null),
        h("td", {}, d.family || ""),
        h("td", {}, d.parameter_size || ""),
        h("td", {}, d.quantization_level || ""),
        h("td", { class: "num" }, fmt.bytes(m.size)),
        h("td", { class: "num", dataset: { ctx: m.name } }, "…"),
        h("td", {}, fmt.time(m.modified_at)),
        h("td", {}, h("div", { class: "row" }, load, copy, copyName, copyGo, del, confirmDelete)),
      );
    };

    const showDetails = async (name) => {
      ctx.clearError();
      let info;
      try {
        info = await ctx.api("/api/show", { method: "POST", body: { model: name } });
      } catch (err) { ctx.showError(err); return; }
      const facts = { ...(info.details || {}), ...(info.model_info || {}) };
      details.hidden = false;
      details.replaceChildren(
        h("div", { class: "row" }, h("h2", {}, name), h("span", { class: "spacer" }),
          h("button", { onclick: () => { details.hidden = true; } }, "Close")),
        h("div", { class: "table-wrap" }, h("table", {}, h("tbody", {},
          Object.entries(facts).filter(([, v]) => typeof v !== "object" || v === null).map(([k, v]) => h("tr", {}, h("th", {}, k), h("td", { class: "mono" }, String(v ?? "")))),
          h("tr", {}, h("th", {}, "capabilities"), h("td", {}, (info.capabilities || []).join(", "))),
          h("tr", {}, h("th", {}, "parameters"), h("td", { class: "mono" }, info.parameters || "")),
        ))),
        h("h3", {}, "Template"),
        h("pre", { dataset: { testid: "model-template" } }, info.template || "(none)"),
      );
      details.scrollIntoView({ block: "nearest" });
    };

    const pull = async (event) => {
      event.preventDefault();
      const model = nameInput.value.trim();
      if (!model) { ctx.showError("Name a model to pull."); return; }
      ctx.clearError();
      pulling = new AbortController();
      start.disabled = true;
      cancel.hidden = false;
      progress.set(0);
      status.textContent = "starting…";
      const body = { model, stream: true };
      if (asInput.value.trim()) body.destination = asInput.value.trim();
      let last = "";
      try {
        await ctx.stream("/api/pull", body, (e) => {
          last = e.status || last;
          if (e.total) {
            const done = e.completed || 0;
            progress.set((100 * done) / e.total);
            status.textContent = `${e.status} · ${fmt.bytes(done)} of ${fmt.bytes(e.total)}`;
          } else {
            status.textContent = e.status || "";
          }
        }, pulling.signal);
        if (last === "success") {
          progress.set(100, true);
          status.textContent = body.destination ? `pulled ${model} as ${body.destination}` : `pulled ${model}`;
        } else {
          status.textContent = `the pull ended without success (last: ${last || "nothing"})`;
        }
      } catch (err) {
        if (err.name === "AbortError") status.textContent = "cancelled (a pull resumes from what it has)";
        else { status.textContent = "failed"; ctx.showError(err); }
      } finally {
        pulling = null;
        start.disabled = false;
        cancel.hidden = true;
        refresh().catch(ctx.showError);
      }
    };

    root.append(
      h("h1", {}, "Models"),
      h("div", { class: "panel" },
        h("h2", {}, "Pull"),
        h("form", { class: "row", onsubmit: pull }, nameInput, asInput, start, cancel),
        h("div", { style: { marginTop: "10px" } }, progress.bar),
        status),
      h("div", { class: "panel" },
        h("div", { class: "row" }, h("h2", {}, "Store"), h("span", { class: "spacer" }),
          h("button", { dataset: { testid: "models-refresh" }, onclick: () => refresh().catch(ctx.showError) }, "Refresh")),
        h("div", { class: "table-wrap" }, h("table", { dataset: { testid: "models-table" } },
          h("thead", {}, h("tr", {},
            h("th", {}, "Name"), h("th", {}, "Family"), h("th", {}, "Parameters"), h("th", {}, "Quantization"),
            h("th", { class: "num" }, "Size"), h("th", { class: "num" }, "Context"), h("th", {}, "Modified"), h("th", {}, ""))),
          tbody)),
        routesLine),
      details,
    );
    await refresh();
  },

  unmount() {
    // Leaving the page stops watching a pull, which cancels it on the server (it resumes later).
    if (pulling) pulling.abort();
    pulling = null;
  },
};

function contextLength(info) {
  const mi = info.model_info || {};
  const key = Object.keys(mi).find((k) => k.endsWith(".context_length"));
  return key ? mi[key] : null;
}
