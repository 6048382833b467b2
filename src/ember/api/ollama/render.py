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
    # Ollama says "stop" for an answer that ends in tool calls, and for a cancelled one. An agent
    # run paused for an approval stopped; one at its step limit or deadline was cut short, as
    # "length" says (the exact reason is the `ember` object's, api/agent_wire.py).
    return "length" if reason in ("length", "max_steps", "deadline") else "stop"


def tool_call(call: ToolCall) -> dict[str, Any] | None:
    """Ollama's call: the arguments as an object (OpenAI carries JSON text). None for a call whose
    arguments are not a JSON object (cut off by num_predict, or a remote model's slip): Ollama's
    clients only take an object there, so such a call is not sent as a call."""
    try:  # "" too: a call cut off right after its name (a finished call has at least "{}")
        arguments: Any = json.loads(call.arguments)
    except ValueError:
        return None
    if not isinstance(arguments, dict):
        return None
    return {"function": {"name": call.name, "arguments": arguments}}


def tool_calls(calls: tuple[ToolCall, ...] | list[ToolCall]) -> tuple[list[dict[str, Any]], str]:
    """The calls Ollama can carry, and the text of the ones it cannot (so nothing is lost: the
    client sees what the model wrote, as content)."""
    rendered, leftover = [], []
    for call in calls:
        wire = tool_call(call)
        if wire is None:
            leftover.append(json.dumps({"name": call.name, "arguments": call.arguments}, ensure_ascii=False))
        else:
            rendered.append(wire)
    return rendered, "".join(leftover)


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
        calls, leftover = tool_calls(answer.tool_calls)
        message: dict[str, Any] = {"role": "assistant", "content": answer.text + leftover}
        if calls:
            message["tool_calls"] = calls
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
        calls, leftover = tool_calls(
            [ToolCall(id=p[0], name=p[1], arguments="".join(p[2:])) for _, p in sorted(self._calls.items())]
        )
        self._calls.clear()
        chunk = self._content(leftover)
        if calls:
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


class TextFrames:
    """The NDJSON lines of one stream's plain text chunks, byte for byte what `frame` makes of
    the chunk dict, built without one: the model is encoded once, so a token costs one
    json.dumps of its text. Every other chunk (tool calls, logprobs, the end) goes through `frame`."""

    def __init__(self, model: str, *, chat: bool) -> None:
        self._head = '{"model":' + _dumps(model) + ',"created_at":"'
        self._middle = '","message":{"role":"assistant","content":' if chat else '","response":'
        self._tail = ("}" if chat else "") + ',"done":false}\n'

    @staticmethod
    def plain(event: GenerationEvent, want_logprobs: bool) -> bool:
        """The event is text alone, as a TextFrames line carries it (ChunkRenderer's chunks of
        it would be its content and nothing else)."""
        return bool(event.text) and not (event.tool_calls or event.done or (want_logprobs and event.logprobs))

    def text(self, created_at: str, text: str) -> str:
        # created_at is an ISO timestamp: nothing in it needs escaping.
        return f"{self._head}{created_at}{self._middle}{_dumps(text)}{self._tail}"


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))
