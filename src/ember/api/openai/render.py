"""The OpenAI wire format of what is not a route's own business: errors, and stream framing."""

from __future__ import annotations

import json
from typing import Any

from ember.engine.types import TokenLogprob
from ember.errors import EmberError
from ember.services.types import Answer, FinishReason, GenerationEvent, ToolCall, ToolCallDelta


def error_type(status: int) -> str:
    """OpenAI's error `type` for a status: what its own API answers with."""
    if status == 429:
        return "rate_limit_error"
    return "invalid_request_error" if status < 500 else "server_error"


def error_body(error: EmberError) -> dict[str, Any]:
    return {
        "error": {
            "message": error.message,
            "type": error_type(error.status_code),
            "param": error.param,
            "code": error.code,
        }
    }


def frame(payload: dict[str, Any]) -> str:
    """One server-sent event."""
    return f"data: {json.dumps(payload, ensure_ascii=False, separators=(',', ':'))}\n\n"


STREAM_END = "data: [DONE]\n\n"
MEDIA_TYPE = "text/event-stream"


# -- answers and chunks ---------------------------------------------------------------------------

# An agent run's own reasons, as the reasons OpenAI's clients know (their types take no other):
# paused for an approval is "stop" (ember runs the tool, so the pending call is no tool call for
# the client to run); stopped at a step limit or the deadline is "length", an answer cut short.
# The exact reason is the `ember` object's finish_reason (api/agent_wire.py).
_FINISH = {
    "stop": "stop",
    "length": "length",
    "tool_calls": "tool_calls",
    "cancelled": "stop",
    "approval": "stop",
    "max_steps": "length",
    "deadline": "length",
}


def finish_reason(reason: FinishReason | None) -> str:
    return _FINISH[reason or "stop"]


def usage(prompt: int, completion: int, cached: int = 0) -> dict[str, Any]:
    # cached_tokens: prompt tokens whose KV cache a previous request left behind (prefix reuse).
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": cached},
    }


def tool_call(call: ToolCall) -> dict[str, Any]:
    return {"id": call.id, "type": "function", "function": {"name": call.name, "arguments": call.arguments}}


def tool_call_delta(delta: ToolCallDelta) -> dict[str, Any]:
    """The first delta of a call has index, id, type and name; later ones only fragments (the
    SDK concatenates string fields, so id and name must never repeat)."""
    function: dict[str, Any] = {"arguments": delta.arguments}
    out: dict[str, Any] = {"index": delta.index}
    if delta.id is not None:
        out["id"] = delta.id
        out["type"] = "function"
    if delta.name is not None:
        function["name"] = delta.name
    out["function"] = function
    return out


def chat_logprobs(logprobs: tuple[TokenLogprob, ...], wanted: bool) -> dict[str, Any] | None:
    if not wanted:
        return None
    return {
        "content": [
            {
                "token": lp.token,
                "logprob": lp.logprob,
                "bytes": list(lp.bytes),
                "top_logprobs": [{"token": t.token, "logprob": t.logprob, "bytes": list(t.bytes)} for t in lp.top],
            }
            for lp in logprobs
        ],
        "refusal": None,
    }


def completion_logprobs(logprobs: tuple[TokenLogprob, ...], wanted: bool, offset: int = 0) -> dict[str, Any] | None:
    """The legacy completions shape: parallel lists, top alternatives as {token: logprob}."""
    if not wanted:
        return None
    offsets = []
    for lp in logprobs:
        offsets.append(offset)
        offset += len(lp.token)
    return {
        "tokens": [lp.token for lp in logprobs],
        "token_logprobs": [lp.logprob for lp in logprobs],
        "top_logprobs": [{t.token: t.logprob for t in lp.top} for lp in logprobs],
        "text_offset": offsets,
    }


def chat_choice(index: int, answer: Answer, logprobs: bool) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": answer.text, "refusal": None}
    if answer.tool_calls:
        message["content"] = answer.text or None
        message["tool_calls"] = [tool_call(c) for c in answer.tool_calls]
    return {
        "index": index,
        "message": message,
        "logprobs": chat_logprobs(answer.logprobs, logprobs),
        "finish_reason": finish_reason(answer.finish_reason),
    }


def completion_choice(index: int, answer: Answer, logprobs: bool, prefix: str = "") -> dict[str, Any]:
    return {
        "index": index,
        "text": prefix + answer.text,
        "logprobs": completion_logprobs(answer.logprobs, logprobs, len(prefix)),
        "finish_reason": finish_reason(answer.finish_reason),
    }


def chat_delta(index: int, event: GenerationEvent | None, logprobs: bool, *, role: bool = False) -> dict[str, Any]:
    """A chunk's choice: the opening one (role only), one per event, and the closing one."""
    delta: dict[str, Any] = {}
    if role:
        delta["role"] = "assistant"
        delta["content"] = ""
    finish = None
    lps: tuple[TokenLogprob, ...] = ()
    if event is not None:
        if event.text:
            delta["content"] = event.text
        if event.tool_calls:
            delta["tool_calls"] = [tool_call_delta(d) for d in event.tool_calls]
        if event.done:
            finish = finish_reason(event.finish_reason)
        lps = event.logprobs
    return {
        "index": index,
        "delta": delta,
        "logprobs": chat_logprobs(lps, logprobs) if lps else None,
        "finish_reason": finish,
    }


def completion_delta(index: int, event: GenerationEvent, logprobs: bool) -> dict[str, Any]:
    return {
        "index": index,
        "text": event.text,
        "logprobs": completion_logprobs(event.logprobs, logprobs) if event.logprobs else None,
        "finish_reason": finish_reason(event.finish_reason) if event.done else None,
    }


class TextFrames:
    """The SSE frames of one stream's plain text chunks, byte for byte what `frame` makes of
    the chunk dict, built without one: the fields fixed per stream (id, object, created, model,
    system_fingerprint, the null usage) are encoded once, so a token costs one json.dumps of its
    text. Any other chunk (role, tool calls, logprobs, the end) goes through `frame`."""

    def __init__(self, base: dict[str, Any], *, include_usage: bool, chat: bool) -> None:
        # A dict's JSON ends in "}": the choices go in its place, then the usage, then "}".
        self._head = "data: " + _dumps(base)[:-1] + ',"choices":['
        self._tail = "]" + (',"usage":null' if include_usage else "") + "}\n\n"
        self._opening = '"delta":{"content":' if chat else '"text":'
        self._closing = ("}" if chat else "") + ',"logprobs":null,"finish_reason":null}'

    def text(self, index: int, text: str) -> str:
        return f'{self._head}{{"index":{index},{self._opening}{_dumps(text)}{self._closing}{self._tail}'


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))
