"""Neutral chat messages as plain JSON and back, for what is kept on disk.

Used by the stored responses (api/responses/store.py) and the parked agent runs
(agents/approvals/codec.py), so both read what either wrote the same way.

Invariant: `decode_message(encode_message(m)) == m` for every ChatMessage; fields at their
defaults are left out of the JSON, and an older row without them still decodes.
"""

from __future__ import annotations

from typing import Any

from ember.services.types import ChatMessage, ContentPart, ImagePart, TextPart, ToolCall


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
