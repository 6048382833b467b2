"""Ollama wire requests -> the neutral request (services/types.py)."""

from __future__ import annotations

import json
from typing import Any

from ember.api.ollama.protocol import ChatRequest, Message, _Run
from ember.errors import BadRequest
from ember.services.types import ChatMessage, ImagePart, LogprobOptions, ResponseFormat, Tool, ToolCall


def chat_messages(messages: list[Message]) -> list[ChatMessage]:
    """Ollama's calls carry no ids: each gets one, and a tool result answers the latest
    unanswered call of its function (or, without a tool_name, the latest unanswered call)."""
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
        if m.role == "tool" and pending:
            match = next((c for c in reversed(pending) if m.tool_name in (None, c.name)), None)
            if match is not None:
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
        return ResponseFormat(type="json_schema", schema=value)
    raise BadRequest(f'format must be "json" or a JSON schema object, not {json.dumps(value)[:80]}', param="format")


def logprobs(body: _Run) -> LogprobOptions | None:
    if not body.logprobs:
        if body.top_logprobs:
            raise BadRequest("top_logprobs needs logprobs: true", param="top_logprobs")
        return None
    return LogprobOptions(top=body.top_logprobs or 0)
