"""The Ollama wire format of what is not a route's own business: errors, and stream framing."""

from __future__ import annotations

import json
from typing import Any

from ember.engine.types import TokenLogprob
from ember.errors import EmberError
from ember.services.types import Answer, FinishReason, GenerationEvent, ToolCall


def error_body(error: EmberError) -> dict[str, Any]:
    return {"error": error.message}


def frame(payload: dict[str, Any]) -> str:
    """One NDJSON line."""
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":")) + "\n"


STREAM_END = ""  # the stream ends with its done chunk
MEDIA_TYPE = "application/x-ndjson"


# -- answers and chunks ---------------------------------------------------------------------------


def done_reason(reason: FinishReason | None) -> str:
    # Ollama says "stop" for an answer that ends in tool calls, and for a cancelled one.
    return "length" if reason == "length" else "stop"


def tool_call(call: ToolCall) -> dict[str, Any]:
    """Ollama's call: the arguments as an object (OpenAI carries JSON text)."""
    try:
        arguments: Any = json.loads(call.arguments) if call.arguments else {}
    except ValueError:
        arguments = call.arguments  # not JSON (a remote model's slip): passed on as it came
    return {"function": {"name": call.name, "arguments": arguments}}


def logprobs(entries: tuple[TokenLogprob, ...]) -> list[dict[str, Any]]:
    return [
        {
            "token": lp.token,
            "logprob": lp.logprob,
            "bytes": list(lp.bytes),
            "top_logprobs": [{"token": t.token, "logprob": t.logprob, "bytes": list(t.bytes)} for t in lp.top],
        }
        for lp in entries
    ]


def answer_fields(answer: Answer, *, chat: bool, want_logprobs: bool) -> dict[str, Any]:
    """The content part of a whole (non-streamed) answer."""
    fields: dict[str, Any]
    if chat:
        message: dict[str, Any] = {"role": "assistant", "content": answer.text}
        if answer.tool_calls:
            message["tool_calls"] = [tool_call(c) for c in answer.tool_calls]
        fields = {"message": message}
    else:
        fields = {"response": answer.text}
    if want_logprobs:
        fields["logprobs"] = logprobs(answer.logprobs)
    return fields


class ChunkRenderer:
    """Neutral events -> the content part of Ollama chunks. A tool call is sent whole, in one
    chunk, once it is complete (when the next call starts, or at the end)."""

    def __init__(self, *, chat: bool, want_logprobs: bool) -> None:
        self._chat = chat
        self._want_logprobs = want_logprobs
        self._calls: dict[int, list[str]] = {}  # index -> [id, name, argument fragments...]

    def chunks(self, event: GenerationEvent) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for delta in event.tool_calls:
            if delta.index not in self._calls:
                out.extend(self._flush())
                self._calls[delta.index] = [delta.id or "", delta.name or ""]
            self._calls[delta.index].append(delta.arguments)
        if event.done:
            out.extend(self._flush())
        if event.text or (event.logprobs and self._want_logprobs):
            out.append(self._content(event.text, logprobs(event.logprobs) if self._want_logprobs else None))
        return out

    def _flush(self) -> list[dict[str, Any]]:
        if not self._calls or not self._chat:  # generate has no tools
            self._calls.clear()
            return []
        calls = [
            tool_call(ToolCall(id=p[0], name=p[1], arguments="".join(p[2:]))) for _, p in sorted(self._calls.items())
        ]
        self._calls.clear()
        chunk = self._content("")
        chunk["message"]["tool_calls"] = calls
        return [chunk]

    def _content(self, text: str, lps: list[dict[str, Any]] | None = None) -> dict[str, Any]:
        fields: dict[str, Any] = (
            {"message": {"role": "assistant", "content": text}} if self._chat else {"response": text}
        )
        if lps is not None:
            fields["logprobs"] = lps
        return fields

    def final(self) -> dict[str, Any]:
        """The content part of the done chunk."""
        return self._content("")
