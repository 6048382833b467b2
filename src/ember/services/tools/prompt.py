"""The messages (and `tools`) a chat template gets when a request has tools or a tool history.

Templates that take tools (the families in families.py) get them as OpenAI-style dicts, and
the history in the shape Hugging Face templates read: an assistant message's
`tool_calls: [{id, type: "function", function: {name, arguments: <object>}}]`, a tool result
`{role: "tool", content, tool_call_id, name}`. Mistral's templates demand 9-character
alphanumeric call ids, so ids are mapped to such ones there (the same id, the same mapping);
Llama 3.x templates take one call per message, so a message of several calls becomes several.

Templates that know no tools get the generic envelope (generic.py): a system message that
describes the tools and the answer's JSON shape, earlier calls written in that shape, and tool
results as `tool` messages where the template names that role, or else as user text (one user
turn for a run of results and a user message right after them, for templates that insist on
alternating turns).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from ember.services.tools.families import Family
from ember.services.types import ChatMessage, Tool, ToolCall, ToolChoice


def template_tools(tools: tuple[Tool, ...]) -> list[dict[str, Any]]:
    """The `tools` variable of templates that take tools."""
    return [
        {"type": "function", "function": {"name": t.name, "description": t.description, "parameters": t.parameters}}
        for t in tools
    ]


def _role(message: ChatMessage) -> str:
    # "developer" is OpenAI's newer name for the system role; templates know "system".
    return "system" if message.role == "developer" else message.role


def _arguments(call: ToolCall) -> Any:
    """The arguments as an object, as templates write them with `tojson` (raw text if not JSON)."""
    try:
        value = json.loads(call.arguments) if call.arguments.strip() else {}
    except ValueError:
        return call.arguments
    return value


def _mistral_id(call_id: str) -> str:
    return hashlib.sha256(call_id.encode("utf-8")).hexdigest()[:9]


def family_messages(messages: list[ChatMessage], family: Family) -> list[dict[str, Any]]:
    """The history for a template that speaks `family` (not "generic")."""
    ids = _mistral_id if family == "mistral" else str
    out: list[dict[str, Any]] = []
    for message in messages:
        entry: dict[str, Any] = {"role": _role(message), "content": message.content}
        if message.role == "tool":
            entry["tool_call_id"] = ids(message.tool_call_id or "")
            if message.name:
                entry["name"] = message.name
        if not message.tool_calls:
            out.append(entry)
            continue
        calls = [
            {"id": ids(c.id), "type": "function", "function": {"name": c.name, "arguments": _arguments(c)}}
            for c in message.tool_calls
        ]
        if family == "llama3":
            for i, call in enumerate(calls):
                out.append({"role": "assistant", "content": message.content if i == 0 else "", "tool_calls": [call]})
        else:
            out.append({**entry, "tool_calls": calls})
    return out


# --- the generic envelope --------------------------------------------------------------------


def _compact(value: Any) -> str:
    """JSON as the envelope's grammar has the model write it: no whitespace between tokens."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def _envelope_calls(calls: tuple[ToolCall, ...]) -> str:
    return _compact({"tool_calls": [{"name": c.name, "arguments": _arguments(c)} for c in calls]})


def envelope_instructions(tools: tuple[Tool, ...], choice: ToolChoice, parallel: bool) -> str:
    """The system prompt's description of the tools and of the answer's shape."""
    listed = "\n".join(
        _compact({"name": t.name, "description": t.description, "parameters": t.parameters}) for t in tools
    )
    call_shape = '{"tool_calls":[{"name":"<tool name>","arguments":{<the arguments>}}]}'
    lines = [
        "You can call tools. Each tool, with a JSON schema of its arguments:",
        listed,
        "",
        "Answer with one JSON object and nothing else.",
    ]
    if choice.mode == "function":
        lines.append(f'Call the tool "{choice.name}": ' + call_shape.replace("<tool name>", str(choice.name)))
    elif choice.mode == "required":
        lines.append("Call one or more of the tools: " + call_shape)
    else:
        lines.append("To call tools: " + call_shape)
        lines.append('To answer the user directly: {"response":"<your answer>"}')
    if choice.mode != "function":
        lines.append("Call one tool at a time." if not parallel else "You may call several tools at once.")
    return "\n".join(lines)


def envelope_messages(
    messages: list[ChatMessage], *, instructions: str | None, tool_role: bool
) -> list[dict[str, Any]]:
    """The history for a template that knows no tools. With `instructions` (the envelope is
    in force), earlier answers are written as envelopes too, so the model sees its own format."""
    names = {c.id: c.name for m in messages for c in m.tool_calls}
    out: list[dict[str, Any]] = []
    results_at: int | None = None  # the user message that holds the latest run of tool results
    for message in messages:
        role, content = _role(message), message.content
        if message.role == "assistant":
            if message.tool_calls:
                content = (content + "\n" if content else "") + _envelope_calls(message.tool_calls)
            elif instructions is not None:
                content = _compact({"response": content})
        elif message.role == "tool":
            name = message.name or names.get(message.tool_call_id or "", "")
            if not tool_role:
                text = f"The tool {name} returned: {content}" if name else f"A tool returned: {content}"
                if results_at is not None and results_at == len(out) - 1:
                    out[results_at]["content"] += "\n" + text
                else:
                    results_at = len(out)
                    out.append({"role": "user", "content": text})
                continue
        if role == "user" and results_at is not None and results_at == len(out) - 1:
            # Templates that insist on alternating turns get one user turn, results then question.
            out[results_at]["content"] += "\n\n" + content
            continue
        out.append({"role": role, "content": content})
    if instructions is not None:
        if out and out[0]["role"] == "system":
            out[0] = {"role": "system", "content": out[0]["content"] + "\n\n" + instructions}
        else:
            out.insert(0, {"role": "system", "content": instructions})
    return out
