"""The fake upstream's Anthropic Messages API (/v1/messages, /v1/messages/count_tokens), beside
OpenAI's and Ollama's in upstream.py, with the same faults and scripts.

A streamed answer is message_start, one text block of max_tokens tokens ("tok0 ", ...; a
ping after the first), message_delta (stop_reason "max_tokens", output_tokens) and
message_stop. A script's answer is its text block, then one tool_use block per call (id
toolu_fake<i>, input {} at the start, then the arguments' JSON text as `fragments`
input_json_delta events) and stop_reason "tool_use". usage.input_tokens is the number of words
in system and messages. Errors come in Anthropic's shape ({"type": "error", "error": {"type",
"message"}}): overloaded_error for 529, rate_limit_error for 429, api_error otherwise; "inband"
breaks a stream with an overloaded_error event, "garbage" with an event that is not JSON.
"""

from __future__ import annotations

import hashlib
import json
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ember.bench.upstream import Answer, Upstream

_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    429: "rate_limit_error",
    529: "overloaded_error",
}


def error_payload(status: int, message: str) -> dict[str, Any]:
    return {"type": "error", "error": {"type": _ERROR_TYPES.get(status, "api_error"), "message": message}}


def breakage(mode: str) -> bytes:
    if mode == "garbage":
        return b"event: content_block_delta\ndata: {not json\n\n"
    return _event(error_payload(529, "fake upstream broke mid-stream"))


def _event(payload: dict[str, Any]) -> bytes:
    data = json.dumps(payload, separators=(",", ":"))
    return f"event: {payload['type']}\ndata: {data}\n\n".encode()


def count_tokens(body: dict[str, Any]) -> dict[str, int]:
    from ember.bench.upstream import _words

    return {"input_tokens": _words(body.get("messages")) + _words(body.get("system"))}


def messages(up: Upstream, body: dict[str, Any]) -> Answer:
    # upstream.py imports this module for its routes: its own names are taken once it is loaded.
    from ember.bench.upstream import Answer, Timing, _count, _dumps, _tokens

    model = str(body.get("model") or "")
    up.seen(model)
    count = _count(body.get("max_tokens"))
    prompt_tokens = count_tokens(body)["input_tokens"]
    fault = up.take_fault()
    script = up.take_script()
    reason = "tool_use" if script is not None and script.tool_calls else "max_tokens"
    if script is not None and not script.tool_calls:
        reason = "end_turn"
    ident = "msg_" + hashlib.sha1(str(time.time_ns()).encode()).hexdigest()[:24]
    message = {"id": ident, "type": "message", "role": "assistant", "model": model}

    if not body.get("stream"):

        def whole(n: int, _: Timing) -> bytes:
            text = "".join(_tokens(n)) if script is None else script.text
            content: list[dict[str, Any]] = [{"type": "text", "text": text}] if text else []
            for i, call in enumerate(script.tool_calls if script is not None else ()):
                content.append(
                    {
                        "type": "tool_use",
                        "id": f"toolu_fake{i}",
                        "name": call["name"],
                        "input": call.get("arguments") or {},
                    }
                )
            usage = {"input_tokens": prompt_tokens, "output_tokens": n}
            return _dumps({**message, "content": content, "stop_reason": reason, "stop_sequence": None, "usage": usage})

        return Answer(up, fault, "anthropic", "application/json", whole, pieces=[b""] * count, streamed=False)

    start: dict[str, Any] = {
        **message,
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": {"input_tokens": prompt_tokens, "output_tokens": 1},
    }
    head = _event({"type": "message_start", "message": start})

    def text_block(index: int) -> bytes:
        return _event({"type": "content_block_start", "index": index, "content_block": {"type": "text", "text": ""}})

    def text_delta(index: int, text: str) -> bytes:
        return _event({"type": "content_block_delta", "index": index, "delta": {"type": "text_delta", "text": text}})

    def stop(index: int) -> bytes:
        return _event({"type": "content_block_stop", "index": index})

    if script is None:
        pieces = [text_delta(0, t) for t in _tokens(count)]
        if pieces:
            pieces[0] = text_block(0) + pieces[0] + _event({"type": "ping"})
        closing = stop(0) if pieces else b""
    else:
        pieces, index = [], 0
        if script.text:
            pieces.append(text_block(0) + text_delta(0, script.text) + stop(0))
            index = 1
        for i, call in enumerate(script.tool_calls):
            block = {"type": "tool_use", "id": f"toolu_fake{i}", "name": call["name"], "input": {}}
            pieces.append(_event({"type": "content_block_start", "index": index, "content_block": block}))
            pieces += [
                _event(
                    {
                        "type": "content_block_delta",
                        "index": index,
                        "delta": {"type": "input_json_delta", "partial_json": part},
                    }
                )
                for part in script.split(script.arguments(call))
            ]
            pieces[-1] += stop(index)
            index += 1
        closing = b""

    def tail(n: int, _: Timing) -> bytes:
        delta = {
            "type": "message_delta",
            "delta": {"stop_reason": reason, "stop_sequence": None},
            "usage": {"output_tokens": n},
        }
        return closing + _event(delta) + _event({"type": "message_stop"})

    return Answer(up, fault, "anthropic", "text/event-stream", tail, pieces=pieces, head=head)
