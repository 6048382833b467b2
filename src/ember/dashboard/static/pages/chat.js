// Chat: try a model, route or agent through /v1/chat/completions, streamed (SSE).
//
// - The model list is /v1/models (local models, gateway routes, agents as agent/NAME).
// - Stop aborts the fetch; the server sees the connection close and cancels the generation, so
//   its slot is free for the next request at once.
// - Tool calls stream in as deltas and are shown as they grow; a tool call can be answered with
//   a result (a `tool` message) and the conversation goes on. Agent runs send their steps as
//   chunks of no choice carrying `ember.step`, shown as they arrive; a run that stops for an
//   approval lists the pending calls with Approve / Deny, which resume it (`approvals`).
// - Each answer shows its tokens (from the stream's usage chunk), TTFT (send to first token,
//   measured here) and tok/s (generated tokens over the time from first token to the end).
// - Conversations live in localStorage only (this browser); the settings travel with each.

import { h, fmt } from "../app.js";

const STORE = "ember.chats";
const LAST_SETTINGS = "ember.chat.settings"; // what a new conversation starts with
const MAX_CONVERSATIONS = 50;

let active = null; // {controller} of the answer being streamed

// What another version of this page (or a hand edit) left in localStorage is taken only in the
// shape this one writes: a conversation without its messages list is dropped, settings are
// completed from the defaults.
function load() {
  let data;
  try {
    data = JSON.parse(localStorage.getItem(STORE) || "[]");
  } catch {
    return [];
  }
  if (!Array.isArray(data)) return [];
  return data
    .filter((c) => c && typeof c === "object" && typeof c.id === "string" && Array.isArray(c.messages))
    .map((c) => ({
      ...c,
      title: typeof c.title === "string" ? c.title : "Chat",
      updated: Number(c.updated) || 0,
      messages: c.messages.filter((m) => m && typeof m === "object" && typeof m.role === "string"),
      settings: { ...defaults(), ...(c.settings && typeof c.settings === "object" ? c.settings : {}) },
    }));
}

function save(conversations) {
  const kept = conversations.slice().sort((a, b) => b.updated - a.updated).slice(0, MAX_CONVERSATIONS);
  try {
    localStorage.setItem(STORE, JSON.stringify(kept));
  } catch (err) {
    throw new Error(`could not keep the conversation in this browser: ${err.message}`);
  }
  return kept;
}

function lastSettings() {
  try {
    const data = JSON.parse(localStorage.getItem(LAST_SETTINGS) || "{}");
    return data && typeof data === "object" && !Array.isArray(data) ? data : {};
  } catch {
    return {};
  }
}

function newConversation(settings) {
  return {
    id: `c${Date.now().toString(36)}${Math.random().toString(36).slice(2, 6)}`,
    title: "New chat",
    updated: Date.now(),
    messages: [],
    settings: { ...defaults(), ...(settings || lastSettings()) },
  };
}

function defaults() {
  return { model: "", system: "", temperature: "", max_tokens: "256", format: "text", schema: "", tools: "", tool_choice: "auto" };
}

// -- the request ------------------------------------------------------------------------------

function parseJSON(text, what) {
  try {
    return JSON.parse(text);
  } catch (err) {
    throw new Error(`${what} is not valid JSON: ${err.message}`);
  }
}

// The OpenAI tool definitions from the textarea: an array of {type: "function", function: {name}},
// or one such object.
function parseTools(text) {
  if (!text.trim()) return null;
  let tools = parseJSON(text, "Tools");
  if (!Array.isArray(tools)) tools = [tools];
  tools.forEach((t, i) => {
    if (!t || typeof t !== "object" || t.type !== "function" || !t.function || typeof t.function.name !== "string") {
      throw new Error(`Tools[${i}] must be {"type": "function", "function": {"name": ..., "parameters": {...}}}`);
    }
  });
  return tools;
}

function responseFormat(s) {
  if (s.format === "json_object") return { type: "json_object" };
  if (s.format !== "json_schema") return null;
  if (!s.schema.trim()) throw new Error("JSON schema is chosen: write the schema in its box (or pick another format)");
  const parsed = parseJSON(s.schema, "The JSON schema");
  if (!parsed || typeof parsed !== "object" || Array.isArray(parsed)) throw new Error("The JSON schema must be an object");
  // Either the whole json_schema object ({name, schema, strict}) or a bare schema.
  const wrapped = typeof parsed.name === "string" && parsed.schema && typeof parsed.schema === "object"
    ? parsed
    : { name: "answer", schema: parsed, strict: true };
  return { type: "json_schema", json_schema: wrapped };
}

// The messages to send: the system prompt, then each turn as the API expects it. An assistant
// turn's tool calls go back only when every call got its result; otherwise only its text does
// (a dangling call would be a 400 on most servers).
function wireMessages(conv, upTo) {
  const out = [];
  if (conv.settings.system.trim()) out.push({ role: "system", content: conv.settings.system });
  const msgs = conv.messages.slice(0, upTo ?? conv.messages.length);
  msgs.forEach((m, i) => {
    if (m.role === "user") out.push({ role: "user", content: m.content });
    else if (m.role === "tool") out.push({ role: "tool", tool_call_id: m.tool_call_id, content: m.content });
    else if (m.role === "assistant") {
      const calls = (m.tool_calls || []).filter((c) => c.function && c.function.name);
      const answered = calls.length && calls.every((c) => msgs.slice(i + 1).some((r) => r.role === "tool" && r.tool_call_id === c.id));
      if (answered) out.push({ role: "assistant", content: m.content || null, tool_calls: calls });
      else if (m.content) out.push({ role: "assistant", content: m.content });
    }
  });
  return out;
}

function requestBody(conv, extra) {
  const s = conv.settings;
  if (!s.model) throw new Error("Pick a model first.");
  const body = {
    model: s.model,
    messages: wireMessages(conv, extra && extra.upTo),
    stream: true,
    stream_options: { include_usage: true },
  };
  if (s.temperature !== "" && s.temperature !== null) {
    const t = Number(s.temperature);
    if (!Number.isFinite(t) || t < 0 || t > 2) throw new Error("Temperature must be a number from 0 to 2");
    body.temperature = t;
  }
  if (s.max_tokens !== "" && s.max_tokens !== null) {
    const n = Number(s.max_tokens);
    if (!Number.isInteger(n) || n < 1) throw new Error("Max tokens must be a whole number of 1 or more");
    body.max_tokens = n;
  }
  const format = responseFormat(s);
  if (format) body.response_format = format;
  const tools = parseTools(s.tools);
  if (tools) {
    body.tools = tools;
    if (s.tool_choice === "none" || s.tool_choice === "required" || s.tool_choice === "auto") body.tool_choice = s.tool_choice;
    else if (s.tool_choice) body.tool_choice = { type: "function", function: { name: s.tool_choice } };
  }
  if (extra && extra.approvals) body.approvals = extra.approvals;
  return body;
}

// -- the page ---------------------------------------------------------------------------------

export default {
  id: "chat",
  title: "Chat",
  needsAdmin: false,

  async mount(root, ctx) {
    let conversations = load();
    let current = conversations[0] || newConversation();
    let models = null; // null until /v1/models answers

    const list = h("div", { class: "chat-list", dataset: { testid: "chat-conversations" } });
    const messages = h("div", { class: "messages", dataset: { testid: "chat-messages" } });
    const input = h("textarea", { rows: 3, placeholder: "Message (Enter sends, Shift+Enter for a new line)", dataset: { testid: "chat-input" } });
    const send = h("button", { class: "primary", type: "submit", dataset: { testid: "chat-send" } }, "Send");
    const stop = h("button", { type: "button", class: "danger", hidden: true, dataset: { testid: "chat-stop" }, onclick: () => active && active.controller.abort() }, "Stop");

    const modelSelect = h("select", { dataset: { testid: "chat-model" } });
    const field = (key, el) => {
      el.addEventListener("change", () => {
        current.settings[key] = el.type === "checkbox" ? el.checked : el.value;
        if (key === "tools") refreshToolChoice();
        if (key === "format") schema.disabled = el.value !== "json_schema";
        persist();
      });
      return el;
    };
    const system = field("system", h("textarea", { rows: 3, placeholder: "System prompt (optional)", dataset: { testid: "chat-system" } }));
    const temperature = field("temperature", h("input", { type: "number", min: 0, max: 2, step: 0.1, placeholder: "model default", dataset: { testid: "chat-temperature" } }));
    const maxTokens = field("max_tokens", h("input", { type: "number", min: 1, step: 1, dataset: { testid: "chat-max-tokens" } }));
    const format = field("format", h("select", { dataset: { testid: "chat-format" } },
      h("option", { value: "text" }, "text"), h("option", { value: "json_object" }, "JSON mode"), h("option", { value: "json_schema" }, "JSON schema")));
    const schema = field("schema", h("textarea", { rows: 5, class: "code", placeholder: '{"type": "object", "properties": {...}}', dataset: { testid: "chat-schema" } }));
    const tools = field("tools", h("textarea", { rows: 6, class: "code", placeholder: '[{"type": "function", "function": {"name": "get_weather", "parameters": {...}}}]', dataset: { testid: "chat-tools" } }));
    const toolChoice = field("tool_choice", h("select", { dataset: { testid: "chat-tool-choice" } }));
    modelSelect.addEventListener("change", () => { current.settings.model = modelSelect.value; persist(); });

    // A conversation is listed (and kept) from its first message; its settings are also kept
    // as the starting point of the next new one.
    const persist = () => {
      current.updated = Date.now();
      if (!conversations.includes(current) && current.messages.length) conversations.unshift(current);
      try {
        localStorage.setItem(LAST_SETTINGS, JSON.stringify(current.settings));
        conversations = save(conversations);
      } catch (err) {
        ctx.showError(err);
      }
      drawList();
    };

    // The fields as they are now (a change event comes only when a field loses focus).
    const readSettings = () => {
      Object.assign(current.settings, {
        model: modelSelect.value || current.settings.model,
        system: system.value,
        temperature: temperature.value,
        max_tokens: maxTokens.value,
        format: format.value,
        schema: schema.value,
        tools: tools.value,
        tool_choice: toolChoice.value || "auto",
      });
    };

    const refreshToolChoice = () => {
      let names = [];
      try { names = (parseTools(tools.value) || []).map((t) => t.function.name); } catch { /* shown on send */ }
      const wanted = current.settings.tool_choice || "auto";
      toolChoice.replaceChildren(
        ...["auto", "none", "required"].map((v) => h("option", { value: v }, v)),
        ...names.map((n) => h("option", { value: n }, `force ${n}`)),
      );
      toolChoice.value = [...toolChoice.options].some((o) => o.value === wanted) ? wanted : "auto";
      toolChoice.disabled = names.length === 0;
    };

    const drawSettings = () => {
      const s = current.settings;
      system.value = s.system;
      temperature.value = s.temperature;
      maxTokens.value = s.max_tokens;
      format.value = s.format;
      schema.value = s.schema;
      schema.disabled = s.format !== "json_schema";
      tools.value = s.tools;
      refreshToolChoice();
      drawModels();
    };

    const drawModels = () => {
      if (models === null) {
        // Until the list comes, the conversation's own choice (not reset to nothing meanwhile).
        modelSelect.replaceChildren(h("option", { value: current.settings.model }, current.settings.model || "loading…"));
        return;
      }
      const groups = { Models: [], Routes: [], Agents: [] };
      for (const m of models) {
        if (m.id.startsWith("agent/")) groups.Agents.push(m.id);
        else if (m.owned_by === "ember-gateway") groups.Routes.push(m.id);
        else groups.Models.push(m.id);
      }
      modelSelect.replaceChildren(...Object.entries(groups).filter(([, ids]) => ids.length).map(([label, ids]) =>
        h("optgroup", { label }, ids.map((id) => h("option", { value: id }, id)))));
      if (!models.length) modelSelect.append(h("option", { value: "" }, "(no models: pull one on the Models page)"));
      const ids = models.map((m) => m.id);
      if (!ids.includes(current.settings.model)) current.settings.model = ids.find((id) => !id.startsWith("agent/")) || ids[0] || "";
      modelSelect.value = current.settings.model;
    };

    const drawList = () => {
      list.replaceChildren(
        ...conversations.map((c) => h("div", { class: "conv" },
          h("a", { href: "#/chat", class: c === current ? "active" : "", title: c.title, dataset: { testid: `chat-open-${c.id}` },
            onclick: (e) => { e.preventDefault(); if (!active) { current = c; drawAll(); } } }, c.title),
          h("button", { class: "icon-button", title: "Delete this conversation", "aria-label": "Delete", dataset: { testid: `chat-delete-${c.id}` },
            onclick: () => {
              if (active && c === current) return;
              conversations = conversations.filter((x) => x !== c);
              try { save(conversations); } catch (err) { ctx.showError(err); }
              if (c === current) current = conversations[0] || newConversation(current.settings);
              drawAll();
            } }, "×"))),
      );
      if (!conversations.length) list.append(h("div", { class: "muted" }, "No saved conversations yet."));
    };

    const drawMessages = () => {
      messages.replaceChildren(...current.messages.map((m, i) => bubble(m, i)));
      if (!current.messages.length) messages.append(h("div", { class: "muted" }, "Ask something. The answer streams in here."));
    };

    const drawAll = () => { drawSettings(); drawList(); drawMessages(); };

    // One message's element; an assistant answer's element is redrawn as its stream grows.
    const bubble = (m, index) => {
      if (m.role === "user") return h("div", { class: "msg user" }, h("span", { class: "role" }, "you"), m.content);
      if (m.role === "tool") return h("div", { class: "msg tool" }, h("span", { class: "role" }, `tool result · ${m.name || m.tool_call_id}`), m.content);
      const el = h("div", { class: "msg assistant" });
      fillAnswer(el, m, index);
      return el;
    };

    const fillAnswer = (el, m, index) => {
      const parts = [h("span", { class: "role" }, m.model || "assistant")];
      for (const step of m.steps || []) parts.push(stepView(step));
      parts.push(h("div", { dataset: { testid: "chat-answer" } }, m.content || ""));
      (m.tool_calls || []).forEach((c) => parts.push(toolCallView(c, index)));
      for (const p of m.pending || []) parts.push(approvalView(p, index));
      // Only once the answer has ended: a test (or a person) may take the stats line as "done".
      if (m.meta && m.meta.ended) parts.push(h("span", { class: "meta", dataset: { testid: "chat-stats" } }, metaText(m.meta)));
      el.replaceChildren(...parts);
    };

    // One step of an agent run: a model call (and the tools it asked for), a tool run (its
    // arguments and result), or a mode's own step (its detail: a score, a plan, a handoff).
    const stepView = (s) => {
      const detail = s.detail || {};
      const asked = (detail.tool_calls || []).map((c) => `${c.name}(${c.arguments || ""})`).join(", ");
      const extra = Object.entries(detail).filter(([k]) => !["tool_calls", "finish_reason", "call_id"].includes(k));
      return h("div", { class: "step", dataset: { testid: "chat-step", kind: s.kind } },
        h("strong", {}, `${s.index + 1}. ${s.kind}${s.name ? ` ${s.name}` : ""}`),
        s.agent ? h("span", { class: "muted" }, ` · ${s.agent}`) : null,
        s.seconds ? h("span", { class: "muted" }, ` · ${fmt.ms(s.seconds * 1000)}`) : null,
        s.tokens_out ? h("span", { class: "muted" }, ` · ${s.tokens_in} in, ${s.tokens_out} out`) : null,
        s.is_error ? h("span", { class: "bad" }, " · error") : null,
        asked ? h("div", { class: "mono" }, `→ ${asked}`) : null,
        s.arguments ? h("div", { class: "mono" }, s.arguments) : null,
        s.result ? h("div", {}, s.result.length > 2000 ? `${s.result.slice(0, 2000)}…` : s.result) : null,
        extra.length ? h("div", { class: "mono muted" }, extra.map(([k, v]) => `${k}: ${typeof v === "string" ? v : JSON.stringify(v)}`).join("\n")) : null);
    };

    const toolCallView = (c, index) => {
      const answered = current.messages.some((r) => r.role === "tool" && r.tool_call_id === c.id);
      const result = h("input", { type: "text", placeholder: "result to send back", size: 30, dataset: { testid: "chat-tool-result" } });
      return h("div", { class: "tool-call", dataset: { testid: "chat-tool-call" } },
        h("strong", {}, `tool call: ${c.function.name || "…"}`),
        h("div", { class: "mono" }, c.function.arguments || ""),
        answered || active || index !== current.messages.length - 1 || !c.id ? null : h("form", { class: "row", onsubmit: (e) => {
          e.preventDefault();
          current.messages.push({ role: "tool", tool_call_id: c.id, name: c.function.name, content: result.value });
          persist();
          const stillOpen = (current.messages[index].tool_calls || []).some((x) => !current.messages.some((r) => r.role === "tool" && r.tool_call_id === x.id));
          if (stillOpen) drawMessages(); else ask();
        } }, result, h("button", { type: "submit" }, "Send result")));
    };

    const approvalView = (p, index) => h("div", { class: "tool-call", dataset: { testid: "chat-approval" } },
      h("strong", {}, `waiting for approval: ${p.tool}`),
      h("div", { class: "mono" }, p.arguments || ""),
      active || index !== current.messages.length - 1 ? null : h("div", { class: "row" },
        h("button", { class: "primary", dataset: { testid: "chat-approve" }, onclick: () => ask({ approvals: [{ id: p.id, approve: true }], upTo: index }) }, "Approve"),
        h("button", { class: "danger", dataset: { testid: "chat-deny" }, onclick: () => ask({ approvals: [{ id: p.id, approve: false, reason: "denied in the dashboard" }], upTo: index }) }, "Deny")));

    const metaText = (meta) => {
      const bits = [];
      if (meta.completion_tokens !== undefined) bits.push(`${meta.completion_tokens} tokens`);
      if (meta.prompt_tokens !== undefined) bits.push(`${meta.prompt_tokens} prompt`);
      if (meta.ttft_ms !== undefined) bits.push(`TTFT ${fmt.ms(meta.ttft_ms)}`);
      if (meta.tok_s) bits.push(`${meta.tok_s.toFixed(1)} tok/s`);
      if (meta.finish) bits.push(meta.finish);
      if (meta.stopped) bits.push("stopped");
      return bits.join(" · ");
    };

    // Send the conversation (after a new user turn, a tool result or an approval decision) and
    // stream the answer into a new assistant message.
    const ask = async (extra) => {
      if (active) return;
      ctx.clearError();
      readSettings();
      let body;
      try {
        body = requestBody(current, extra);
      } catch (err) {
        ctx.showError(err);
        return;
      }
      const answer = { role: "assistant", model: body.model, content: "", tool_calls: [], steps: [], pending: [], meta: {} };
      current.messages.push(answer);
      drawMessages();
      const el = messages.lastElementChild;
      active = { controller: new AbortController() };
      send.disabled = true;
      stop.hidden = false;
      const started = performance.now();
      let first = null;
      let redraw = 0;
      const paint = () => {
        cancelAnimationFrame(redraw);
        redraw = requestAnimationFrame(() => fillAnswer(el, answer, current.messages.indexOf(answer)));
      };
      try {
        await ctx.stream("/v1/chat/completions", body, (chunk) => {
          const ember = chunk.ember;
          if (ember && ember.step) answer.steps.push(ember.step);
          if (ember && ember.pending_approvals) answer.pending = ember.pending_approvals;
          if (ember && ember.finish_reason) answer.meta.finish = ember.finish_reason;
          if (chunk.usage) {
            answer.meta.prompt_tokens = chunk.usage.prompt_tokens;
            answer.meta.completion_tokens = chunk.usage.completion_tokens;
          }
          for (const choice of chunk.choices || []) {
            const delta = choice.delta || {};
            if (delta.content || delta.tool_calls) {
              if (first === null) {
                first = performance.now();
                answer.meta.ttft_ms = first - started;
              }
            }
            if (delta.content) answer.content += delta.content;
            for (const d of delta.tool_calls || []) {
              const at = d.index ?? answer.tool_calls.length;
              const call = answer.tool_calls[at] || (answer.tool_calls[at] = { id: "", type: "function", function: { name: "", arguments: "" } });
              if (d.id) call.id = d.id;
              if (d.function && d.function.name) call.function.name += d.function.name;
              if (d.function && d.function.arguments) call.function.arguments += d.function.arguments;
            }
            if (choice.finish_reason && !answer.meta.finish) answer.meta.finish = choice.finish_reason;
          }
          paint();
        }, active.controller.signal);
      } catch (err) {
        if (err.name === "AbortError") answer.meta.stopped = true;
        else ctx.showError(err);
      } finally {
        const end = performance.now();
        // The first token's own time is TTFT's; the rate is over the ones after it, and only
        // when they took a measurable time (an upstream may send a whole answer in one chunk).
        if (first !== null && answer.meta.completion_tokens > 1 && end - first >= 50) {
          answer.meta.tok_s = (answer.meta.completion_tokens - 1) / ((end - first) / 1000);
        }
        answer.meta.total_ms = end - started;
        answer.meta.ended = true;
        active = null;
        send.disabled = false;
        stop.hidden = true;
        cancelAnimationFrame(redraw);
        if (!answer.content && !answer.tool_calls.length && !answer.steps.length && !answer.pending.length && !answer.meta.stopped) {
          current.messages.splice(current.messages.indexOf(answer), 1); // nothing came: the error says why
        }
        persist();
        drawMessages();
        input.focus();
      }
    };

    const submit = (event) => {
      event.preventDefault();
      const text = input.value;
      if (!text.trim() || active) return;
      current.messages.push({ role: "user", content: text });
      if (current.title === "New chat") current.title = text.trim().slice(0, 60);
      input.value = "";
      persist();
      ask();
    };
    input.addEventListener("keydown", (e) => {
      if (e.key === "Enter" && !e.shiftKey && !e.isComposing) submit(e);
    });

    root.append(
      h("h1", {}, "Chat"),
      h("div", { class: "chat" },
        h("div", { class: "panel" },
          h("div", { class: "row" }, h("h2", {}, "Conversations"), h("span", { class: "spacer" }),
            h("button", { dataset: { testid: "chat-new" }, onclick: () => {
              if (active) return;
              current = newConversation(current.settings);
              drawAll();
            } }, "New")),
          list),
        h("div", { class: "stack" },
          h("div", { class: "panel" }, messages),
          h("form", { class: "panel composer", onsubmit: submit },
            input,
            h("div", { class: "row end", style: { marginTop: "8px" } }, stop, send))),
        h("div", { class: "panel chat-settings" },
          h("label", {}, "Model, route or agent"), modelSelect,
          h("label", {}, "System prompt"), system,
          h("div", { class: "row" },
            h("div", {}, h("label", {}, "Temperature"), temperature),
            h("div", {}, h("label", {}, "Max tokens"), maxTokens)),
          h("label", {}, "Response format"), format,
          h("label", {}, "JSON schema"), schema,
          h("label", {}, "Tools (OpenAI tool definitions, JSON)"), tools,
          h("label", {}, "Tool choice"), toolChoice)));

    drawAll();
    try {
      models = (await ctx.api("/v1/models")).data || [];
    } catch (err) {
      models = [];
      ctx.showError(err);
    }
    drawModels();
  },

  unmount() {
    // Leaving the page ends the answer being streamed (the server cancels it).
    if (active) active.controller.abort();
    active = null;
  },
};
