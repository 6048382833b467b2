"""Ollama wire requests -> the neutral request (services/types.py)."""

from __future__ import annotations

import json
from typing import Any

from ember.api.ollama.protocol import ChatRequest, Message, _Run
from ember.errors import BadRequest
from ember.services.types import ChatMessage, ImagePart, LogprobOptions, ResponseFormat, Tool, ToolCall
from ember.services.validation import check_schema


def chat_messages(messages: list[Message]) -> list[ChatMessage]:
    """Ollama's calls carry no ids: each gets one, and a tool result answers the latest
    unanswered call of its function (or, without a tool_name, the latest unanswered call);
    a tool result with no such call is a 400, as OpenAI's with an unknown tool_call_id is."""
    out: list[ChatMessage] = []
    pending: list[ToolCall] = []
    for i, m in enumerate(messages):
        calls = tuple(
            ToolCall(
                id=f"call_{i}_{j}", name=c.function.name, arguments=json.dumps(c.function.arguments, ensure_ascii=False)
            )
            for j, c in enumerate(m.tool_calls or ())
        )
        pending.extend(calls)
        call_id = None
        if m.role == "tool":
            match = next((c for c in reversed(pending) if m.tool_name in (None, c.name)), None)
            if match is None:
                raise BadRequest(
                    _unanswerable(i, m.tool_name), param=f"messages[{i}].tool_name" if m.tool_name else f"messages[{i}]"
                )
            pending.remove(match)
            call_id = match.id
        out.append(
            ChatMessage(
                role=m.role,
                content=m.content,
                attachments=tuple(ImagePart(source=image) for image in m.images or ()),
                tool_calls=calls,
                tool_call_id=call_id,
                name=m.tool_name if m.role == "tool" else None,
            )
        )
    return out


def _unanswerable(i: int, tool_name: str | None) -> str:
    if tool_name:
        return (
            f"messages[{i}] is a tool result from '{tool_name}', but no earlier assistant message "
            f"has an unanswered call of '{tool_name}' in its tool_calls"
        )
    return f"messages[{i}] is a tool result, but no earlier assistant message has an unanswered call in its tool_calls"


def tools(body: ChatRequest) -> tuple[Tool, ...]:
    return tuple(
        Tool(
            name=t.function.name,
            description=t.function.description or "",
            parameters=t.function.parameters
            if t.function.parameters is not None
            else {"type": "object", "properties": {}},
        )
        for t in body.tools or ()
    )


def response_format(value: Any) -> ResponseFormat:
    if value is None or value == "":
        return ResponseFormat()
    if value == "json":
        return ResponseFormat(type="json_object")
    if isinstance(value, dict):
        check_schema(value, "format", want_object=False)  # named as Ollama names it
        return ResponseFormat(type="json_schema", schema=value)
    raise BadRequest(f'format must be "json" or a JSON schema object, not {json.dumps(value)[:80]}', param="format")


def logprobs(body: _Run) -> LogprobOptions | None:
    if not body.logprobs:
        if body.top_logprobs:
            raise BadRequest("top_logprobs needs logprobs: true", param="top_logprobs")
        return None
    return LogprobOptions(top=body.top_logprobs or 0)
