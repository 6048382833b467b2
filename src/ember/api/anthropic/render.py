"""The Anthropic wire format: errors, stream framing, messages and stream events.

Usage, where the issue left it open: Anthropic's `input_tokens` excludes the prompt tokens read
from cache, so `input_tokens + cache_read_input_tokens` is the whole prompt (what
messages.count_tokens counts). ember's cache reads are its prefix reuse
(GenerationStats.cached_prompt_tokens); it writes no separate prompt cache, so
`cache_creation_input_tokens` is always 0.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterable, AsyncIterator
from typing import Any

from ember.api import agent_wire
from ember.engine.types import GenerationStats
from ember.errors import EmberError
from ember.services.types import Answer, FinishReason, GenerationEvent, ToolCall

# Anthropic's error `type` for each status it documents; other statuses by their class.
_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    503: "overloaded_error",
    529: "overloaded_error",
}


def error_type(status: int) -> str:
    if status in _ERROR_TYPES:
        return _ERROR_TYPES[status]
    return "invalid_request_error" if status < 500 else "api_error"


def error_body(error: EmberError) -> dict[str, Any]:
    return {"type": "error", "error": {"type": error_type(error.status_code), "message": error.message}}


def frame(payload: dict[str, Any]) -> str:
    """One server-sent event, named by the payload's own type (an error body is type "error")."""
    data = json.dumps(payload, ensure_ascii=False, separators=(",", ":"))
    return f"event: {payload['type']}\ndata: {data}\n\n"


STREAM_END = ""  # message_stop ends a stream
MEDIA_TYPE = "text/event-stream"


# -- messages ---------------------------------------------------------------------------------


def message_id() -> str:
    return f"msg_{uuid.uuid4().hex[:24]}"


def tool_use_id(call_id: str) -> str:
    """Anthropic's clients know tool_use ids as toolu_...: an OpenAI-style call_... id keeps its
    unique part (a client echoes the id back in its tool_result, where it only has to match)."""
    if call_id.startswith("toolu_"):
        return call_id
    return "toolu_" + call_id.removeprefix("call_")


def stop_reason(reason: FinishReason | None, stop_sequence: str | None, has_calls: bool) -> str:
    """An agent run paused for an approval is "pause_turn" (Anthropic's word for a turn to be
    continued by a later request; not "tool_use": ember runs the tool, not the client); one
    stopped at its step limit or deadline is "max_tokens", an answer cut short. The exact
    reason is the `ember` object's (api/agent_wire.py)."""
    if reason == "approval":
        return "pause_turn"
    if reason in ("length", "max_steps", "deadline"):
        return "max_tokens"
    if has_calls:  # "tool_calls" with no call that could be rendered as one is a turn's end
        return "tool_use"
    return "stop_sequence" if stop_sequence is not None else "end_turn"


def usage(stats: GenerationStats) -> dict[str, int]:
    cached = min(stats.cached_prompt_tokens, stats.prompt_tokens)
    return {
        "input_tokens": stats.prompt_tokens - cached,
        "output_tokens": stats.completion_tokens,
        "cache_read_input_tokens": cached,
        "cache_creation_input_tokens": 0,
    }


def tool_input(call: ToolCall) -> dict[str, Any] | None:
    """A call's arguments as the object Anthropic's tool_use carries; None when they are not a
    JSON object (a call cut off by max_tokens, or a remote model's slip)."""
    try:  # "" too: a call cut off right after its name (a finished call has at least "{}")
        value = json.loads(call.arguments)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def message(ident: str, model: str, answer: Answer, label: agent_wire.RunLabel) -> dict[str, Any]:
    """The whole message. A call whose arguments are not an object cannot be a tool_use block:
    what the model wrote of it is text (as the Ollama API does), so nothing is lost; a stream
    sends such a call's fragments as they came, which the SDK parses as far as they go. An
    agent run's answer carries its trace as `ember`."""
    text = answer.text
    calls: list[dict[str, Any]] = []
    for call in answer.tool_calls:
        arguments = tool_input(call)
        if arguments is None:
            text += json.dumps({"name": call.name, "arguments": call.arguments}, ensure_ascii=False)
        else:
            calls.append({"type": "tool_use", "id": tool_use_id(call.id), "name": call.name, "input": arguments})
    content: list[dict[str, Any]] = [{"type": "text", "text": text}] if text or not calls else []
    reason = stop_reason(answer.finish_reason, answer.stop_sequence, bool(calls))
    return {
        "id": ident,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content + calls,
        "stop_reason": reason,
        "stop_sequence": answer.stop_sequence if reason == "stop_sequence" else None,
        "usage": usage(answer.stats),
        **(
            {"ember": agent_wire.answer_trace(label, answer)}
            if agent_wire.is_agent_run(answer.run_id, answer.steps, answer.pending)
            else {}
        ),
    }


# -- streams ----------------------------------------------------------------------------------


async def stream_events(
    ident: str, model: str, prompt_tokens: int, events: AsyncIterable[GenerationEvent], label: agent_wire.RunLabel
) -> AsyncIterator[dict[str, Any]]:
    """The neutral events as Anthropic's stream: message_start, a ping, then one content block
    at a time (start, deltas, stop; indexes 0, 1, ...), then message_delta and message_stop.

    message_start can only say the whole prompt's size (how much of it was reused is known at
    the end); message_delta carries the final usage, which the SDK's accumulator takes over.
    An agent run's steps are `ember_step` events as they finish (Anthropic's clients pass over
    event types they do not know, as its versioning policy asks), and its message_delta has
    the run's `ember` object.
    """
    yield {
        "type": "message_start",
        "message": {
            "id": ident,
            "type": "message",
            "role": "assistant",
            "model": model,
            "content": [],
            "stop_reason": None,
            "stop_sequence": None,
            "usage": {
                "input_tokens": prompt_tokens,
                "output_tokens": 0,
                "cache_read_input_tokens": 0,
                "cache_creation_input_tokens": 0,
            },
        },
    }
    yield {"type": "ping"}
    blocks = _Blocks()
    final: GenerationEvent | None = None
    stepped = False
    async for event in events:
        if event.step is not None:
            stepped = True
            yield {"type": "ember_step", "step": agent_wire.step(event.step)}
        if event.text:
            for out in blocks.text(event.text):
                yield out
        for delta in event.tool_calls:
            for out in blocks.tool(delta.index, delta.id, delta.name, delta.arguments):
                yield out
        if event.done:
            final = event
    assert final is not None and final.stats is not None, "a stream always ends with a done event"
    if blocks.count == 0:  # as the whole message: never an empty content list
        for out in blocks.text(""):
            yield out
    for out in blocks.close():
        yield out
    reason = stop_reason(final.finish_reason, final.stop_sequence, blocks.calls > 0)
    yield {
        "type": "message_delta",
        "delta": {"stop_reason": reason, "stop_sequence": final.stop_sequence if reason == "stop_sequence" else None},
        "usage": usage(final.stats),
        **(
            {"ember": agent_wire.event_trace(label, final)}
            if stepped or agent_wire.is_agent_run(final.run_id, (), final.pending)
            else {}
        ),
    }
    yield {"type": "message_stop"}


class _Blocks:
    """The content blocks of a streamed message: which one is open, and the next index."""

    def __init__(self) -> None:
        self.count = 0  # blocks started
        self.calls = 0  # of them tool_use blocks
        self._open: tuple[str, int | None] | None = None  # ("text", None) or ("tool", call index)

    def close(self) -> list[dict[str, Any]]:
        if self._open is None:
            return []
        self._open = None
        return [{"type": "content_block_stop", "index": self.count - 1}]

    def _start(self, kind: str, call: int | None, block: dict[str, Any]) -> list[dict[str, Any]]:
        out = self.close()
        out.append({"type": "content_block_start", "index": self.count, "content_block": block})
        self._open = (kind, call)
        self.count += 1
        return out

    def text(self, text: str) -> list[dict[str, Any]]:
        out = [] if self._open == ("text", None) else self._start("text", None, {"type": "text", "text": ""})
        if text:
            out.append(
                {"type": "content_block_delta", "index": self.count - 1, "delta": {"type": "text_delta", "text": text}}
            )
        return out

    def tool(self, call: int, ident: str | None, name: str | None, arguments: str) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        if self._open != ("tool", call):
            block = {
                "type": "tool_use",
                "id": tool_use_id(ident or f"call_{uuid.uuid4().hex[:24]}"),
                "name": name or "",
                "input": {},
            }
            out = self._start("tool", call, block)
            self.calls += 1
        if arguments:
            out.append(
                {
                    "type": "content_block_delta",
                    "index": self.count - 1,
                    "delta": {"type": "input_json_delta", "partial_json": arguments},
                }
            )
        return out
