"""Neutral chat messages and agent steps as plain JSON and back, for what is kept on disk
and what a trace shows.

Used by the stored responses (api/responses/store.py), the parked agent runs
(agents/approvals/codec.py) and the agent trace on the wire (api/agent_wire.py), so each
reads what another wrote the same way.

Invariants: `decode_message(encode_message(m)) == m` for every ChatMessage; fields at their
defaults are left out of the JSON, and an older row without them still decodes.
`decode_step(encode_step(s)) == s` for every AgentStep whose `detail` is JSON-able.
"""

from __future__ import annotations

from typing import Any

from ember.services.types import AgentStep, ChatMessage, ContentPart, ImagePart, TextPart, ToolCall


def encode_message(message: ChatMessage) -> dict[str, Any]:
    out: dict[str, Any] = {"role": message.role, "content": message.content}
    if message.attachments:
        out["attachments"] = [
            {"image": p.source} if isinstance(p, ImagePart) else {"text": p.text} for p in message.attachments
        ]
    if message.tool_calls:
        out["tool_calls"] = [{"id": c.id, "name": c.name, "arguments": c.arguments} for c in message.tool_calls]
    if message.tool_call_id is not None:
        out["tool_call_id"] = message.tool_call_id
    if message.name is not None:
        out["name"] = message.name
    return out


def decode_message(data: dict[str, Any]) -> ChatMessage:
    attachments: list[ContentPart] = [
        ImagePart(source=a["image"]) if "image" in a else TextPart(text=a["text"]) for a in data.get("attachments", ())
    ]
    return ChatMessage(
        role=data["role"],
        content=data.get("content", ""),
        attachments=tuple(attachments),
        tool_calls=tuple(
            ToolCall(id=c["id"], name=c["name"], arguments=c["arguments"]) for c in data.get("tool_calls", ())
        ),
        tool_call_id=data.get("tool_call_id"),
        name=data.get("name"),
    )


def encode_step(step: AgentStep) -> dict[str, Any]:
    return {
        "index": step.index,
        "kind": step.kind,
        "agent": step.agent,
        "name": step.name,
        "arguments": step.arguments,
        "result": step.result,
        "is_error": step.is_error,
        "seconds": step.seconds,
        "tokens_in": step.tokens_in,
        "tokens_out": step.tokens_out,
        "cost": step.cost,
        "detail": step.detail,
    }


def decode_step(data: dict[str, Any]) -> AgentStep:
    return AgentStep(
        index=int(data["index"]),
        kind=data["kind"],
        agent=str(data["agent"]),
        name=str(data.get("name", "")),
        arguments=str(data.get("arguments", "")),
        result=str(data.get("result", "")),
        is_error=bool(data.get("is_error", False)),
        seconds=float(data.get("seconds", 0.0)),
        tokens_in=int(data.get("tokens_in", 0)),
        tokens_out=int(data.get("tokens_out", 0)),
        cost=float(data.get("cost", 0.0)),
        detail=dict(data.get("detail") or {}),
    )
