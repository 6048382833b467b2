"""Anthropic's Messages API as a provider: /v1/messages over SSE, /v1/messages/count_tokens.

base_url is the API's root, as the anthropic SDK takes it (https://api.anthropic.com, or another
ember's root): the paths add /v1. The key goes as `x-api-key` (not Bearer), with an
`anthropic-version` header on every request.

The neutral request becomes a Messages body: system and developer messages joined into
`system`; assistant tool calls as `tool_use` blocks, tool results as `tool_result` blocks in a
user turn, consecutive turns of one role merged (the API wants them alternating); a plain
completion's prompt as one user message; `max_tokens` always (the API requires it: the
provider's default_max_tokens when the request has none). Sampling knobs go only when the client
moved them off ember's defaults (an unset knob reads as its default in every API parser), so
Claude's own defaults apply otherwise, and a model that refuses temperature and top_p together
is not sent both unasked.

What the API cannot say:
- a JSON response format becomes one forced tool whose input_schema is the schema; the tool's
  input streams back as the answer's text (LiteLLM does the same). With tools of the request's
  own, or a schema that is not an object, it is a 400 naming response_format;
- logprobs: a 400 (the answer would lack what was asked for);
- seed, the penalties, min_p, typical_p, a tool's strict flag: hints, named in
  X-Ember-Dropped-Fields when set.
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncGenerator, Callable
from contextlib import aclosing
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from ember.engine.types import GenerationStats, SamplingParams
from ember.errors import BadRequest, UnsupportedParameter, UpstreamError
from ember.gateway.config import ProviderConfig
from ember.gateway.remote import Body, RemoteClient, StreamState, broken, sse_data
from ember.gateway.remote_openai import image_url
from ember.services.embeddings import EmbeddingOutcome
from ember.services.generation import Generation
from ember.services.types import (
    ChatMessage,
    FinishReason,
    GenerationEvent,
    ImagePart,
    TextRequest,
    ToolCall,
    ToolCallDelta,
)

ANTHROPIC_VERSION = "2023-06-01"
# Sent when a request has no max_tokens: every Claude model takes at least 4096 output tokens
# (the smallest limit, Claude 3 Haiku's), so the default never makes a request invalid, and it
# is room for most chat answers; a provider's default_max_tokens raises it.
DEFAULT_MAX_TOKENS = 4096
# The tool a JSON response format is asked through, when the format has no name of its own.
FORMAT_TOOL = "json_response"

_DEFAULTS = SamplingParams()
_ID = re.compile(r"[^A-Za-z0-9_-]")  # what a tool_use id may not contain


def anthropic_headers(version: str, key: str | None) -> dict[str, str]:
    headers = {"anthropic-version": version}
    if key:
        headers["x-api-key"] = key
    return headers


class AnthropicProvider:
    def __init__(self, config: ProviderConfig) -> None:
        self.config = config
        self._remote = RemoteClient(
            config, credentials=partial(anthropic_headers, config.anthropic_version or ANTHROPIC_VERSION)
        )
        self._max_tokens = config.default_max_tokens or DEFAULT_MAX_TOKENS

    @property
    def name(self) -> str:
        return self.config.name

    async def start(self, request: TextRequest, model: str) -> Generation:
        message = translate(request, model, default_max_tokens=self._max_tokens)
        return await self._remote.stream(
            "v1/messages",
            message.body,
            partial(parse_stream, self.name, message.format_tool),
            model,
            dropped=dropped_fields(request),
        )

    async def count_tokens(self, request: TextRequest, model: str) -> int:
        """The prompt's tokens as the upstream counts them (its /v1/messages/count_tokens)."""
        body = translate(request, model, default_max_tokens=self._max_tokens).body
        counted = {k: v for k, v in body.items() if k in _COUNT_FIELDS}
        answer = await self._remote.post_json("v1/messages/count_tokens", counted)
        try:
            return int(answer["input_tokens"])
        except (KeyError, TypeError, ValueError) as exc:
            raise broken(self.name, "count_tokens answer without input_tokens") from exc

    async def embed(
        self, model: str, inputs: list[str], *, dimensions: int | None = None, truncate: bool = True
    ) -> EmbeddingOutcome:
        raise BadRequest(
            f"provider '{self.name}' is of kind anthropic, and Anthropic's API has no embeddings: "
            "route embeddings to a local, openai or ollama target",
            param="model",
        )

    async def aclose(self) -> None:
        await self._remote.aclose()


# What /v1/messages/count_tokens takes of a Messages body (it refuses max_tokens, stream, ...).
_COUNT_FIELDS = frozenset({"model", "system", "messages", "tools", "tool_choice"})


# -- the request --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Translated:
    """A Messages body, and the tool a JSON response format is asked through (None without one)."""

    body: dict[str, Any]
    format_tool: str | None = None


def translate(request: TextRequest, model: str, *, default_max_tokens: int = DEFAULT_MAX_TOKENS) -> Translated:
    """The neutral request as a Messages body (always streamed); refusals are 400s naming the field."""
    if request.logprobs is not None:
        raise UnsupportedParameter(
            "logprobs are not supported by an anthropic provider: Anthropic's API does not return them",
            param="logprobs",
        )
    body: dict[str, Any] = {
        "model": model,
        "max_tokens": request.max_tokens if request.max_tokens is not None else default_max_tokens,
        "stream": True,
    }
    if request.messages is not None:
        system, turns = messages(request.messages)
        if not turns:
            raise BadRequest(
                "messages has nothing but system messages, and an anthropic provider needs a user turn "
                "(Anthropic's API takes the system prompt apart from the conversation)",
                param="messages",
            )
        if system:
            body["system"] = system
        body["messages"] = turns
    else:
        # A plain completion (/v1/completions, /api/generate): the prompt is the user's turn.
        body["messages"] = [{"role": "user", "content": request.prompt or ""}]
    s = request.sampling
    if s.temperature != _DEFAULTS.temperature:
        body["temperature"] = s.temperature
    if s.top_p != _DEFAULTS.top_p:
        body["top_p"] = s.top_p
    if s.top_k != _DEFAULTS.top_k:
        body["top_k"] = s.top_k
    if request.stop:
        body["stop_sequences"] = list(request.stop)
    format_tool = _format_tool(request)
    if format_tool is not None:
        body["tools"] = [format_tool]
        body["tool_choice"] = {"type": "tool", "name": format_tool["name"]}
        return Translated(body, format_tool["name"])
    if request.tools:
        body["tools"] = [_tool(t.name, t.description, t.parameters) for t in request.tools]
        body["tool_choice"] = tool_choice(request)
    return Translated(body)


def tool_choice(request: TextRequest) -> dict[str, Any]:
    """auto -> auto, required -> any, a named function -> tool, none -> none;
    parallel_tool_calls false -> disable_parallel_tool_use (which "none" does not take)."""
    choice = request.tool_choice
    if choice.mode == "none":
        return {"type": "none"}
    out: dict[str, Any] = {"type": {"auto": "auto", "required": "any", "function": "tool"}[choice.mode]}
    if choice.mode == "function":
        out["name"] = choice.name
    if not request.parallel_tool_calls:
        out["disable_parallel_tool_use"] = True
    return out


def _tool(name: str, description: str, schema: dict[str, Any]) -> dict[str, Any]:
    tool: dict[str, Any] = {"name": name, "input_schema": schema}
    if description:
        tool["description"] = description
    return tool


def _format_tool(request: TextRequest) -> dict[str, Any] | None:
    """A JSON response format as the one tool the model must call: its input is the answer."""
    form = request.response_format
    if form.type == "text":
        return None
    if request.tools and request.tool_choice.mode != "none":
        raise UnsupportedParameter(
            "response_format together with tools is not supported by an anthropic provider: "
            "the format is asked for as a forced tool call, which leaves the model no choice of your tools",
            param="response_format",
        )
    schema: dict[str, Any] = {"type": "object"} if form.schema is None else dict(form.schema)
    if schema.setdefault("type", "object") != "object":
        raise UnsupportedParameter(
            f"response_format: an anthropic provider takes a JSON schema whose root is an object, "
            f"not {schema['type']!r} (the schema becomes a tool's input_schema)",
            param="response_format",
        )
    description = "Give your answer by calling this tool: its input is the answer, as JSON"
    return _tool(form.name or FORMAT_TOOL, description + (" valid against the schema." if form.schema else "."), schema)


def messages(history: list[ChatMessage]) -> tuple[str, list[dict[str, Any]]]:
    """(system, turns): system and developer messages joined by blank lines; every other message
    as content blocks, merged into the turn before it when that has the same role."""
    system: list[str] = []
    turns: list[dict[str, Any]] = []
    unanswered: list[ToolCall] = []  # for a tool result that names no call (Ollama's by name)
    for i, message in enumerate(history):
        if message.role in ("system", "developer"):
            if message.content:
                system.append(message.content)
            continue
        if message.role == "assistant":
            role, blocks = "assistant", _assistant_blocks(message, i)
            unanswered.extend(message.tool_calls)
        elif message.role == "tool":
            role, blocks = "user", [_tool_result(message, i, unanswered)]
        else:
            role, blocks = "user", _user_blocks(message, i)
        if not blocks:
            continue  # an empty turn says nothing, and the API refuses empty text blocks
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"].extend(blocks)
        else:
            turns.append({"role": role, "content": blocks})
    for turn in turns:  # a lone text block reads as plain content
        blocks = turn["content"]
        if len(blocks) == 1 and blocks[0]["type"] == "text":
            turn["content"] = blocks[0]["text"]
    return "\n\n".join(system), turns


def _user_blocks(message: ChatMessage, i: int) -> list[dict[str, Any]]:
    blocks: list[dict[str, Any]] = [{"type": "text", "text": message.content}] if message.content else []
    blocks += [
        {"type": "image", "source": image_source(part.source, f"messages[{i}].content")}
        for part in message.attachments
        if isinstance(part, ImagePart)
    ]
    return blocks


def _assistant_blocks(message: ChatMessage, i: int) -> list[dict[str, Any]]:
    blocks: list[dict[str, Any]] = [{"type": "text", "text": message.content}] if message.content else []
    for j, call in enumerate(message.tool_calls):
        blocks.append(
            {
                "type": "tool_use",
                "id": tool_use_id(call.id),
                "name": call.name,
                "input": _arguments(call.arguments, f"messages[{i}].tool_calls[{j}]"),
            }
        )
    return blocks


def _tool_result(message: ChatMessage, i: int, unanswered: list[ToolCall]) -> dict[str, Any]:
    call_id = message.tool_call_id
    if call_id is None:  # answered by function name (Ollama's tool_name), or the oldest unanswered call
        call = next((c for c in unanswered if message.name in (None, c.name)), None)
        if call is None:
            raise BadRequest(
                f"messages[{i}] is a tool result that answers no earlier tool call, and an anthropic "
                "provider must say which call a result answers",
                param=f"messages[{i}]",
            )
        call_id = call.id
    unanswered[:] = [c for c in unanswered if c.id != call_id]
    block: dict[str, Any] = {"type": "tool_result", "tool_use_id": tool_use_id(call_id)}
    if message.content:
        block["content"] = message.content
    return block


def tool_use_id(call_id: str) -> str:
    """A call id as Anthropic takes one (letters, digits, _ and -): the same on the call and
    on its result, so they still match."""
    return _ID.sub("_", call_id) or "call"


def _arguments(text: str, where: str) -> dict[str, Any]:
    """A call's JSON text as the `input` object Anthropic carries."""
    try:
        value = json.loads(text) if text.strip() else {}
    except ValueError:
        value = None
    if not isinstance(value, dict):
        raise UnsupportedParameter(
            f"{where}.function.arguments is not a JSON object, and an anthropic provider takes a call's "
            "arguments as one",
            param=f"{where}.function.arguments",
        )
    return value


_DATA_URL = re.compile(r"^data:([^;,]+);base64,(.*)$", re.DOTALL)


def image_source(source: str, where: str) -> dict[str, Any]:
    """An image as an Anthropic source: a URL as a url source, a data: URL or bare base64
    (Ollama's) as base64 with its media type."""
    if source.startswith(("http://", "https://")):
        return {"type": "url", "url": source}
    match = _DATA_URL.match(image_url(source))  # bare base64 gets its type from its first bytes
    if match is None:
        raise UnsupportedParameter(f"{where} has an image that is not base64 data or a URL", param=where)
    return {"type": "base64", "media_type": match.group(1), "data": match.group(2)}


def dropped_fields(request: TextRequest) -> list[str]:
    """Hints Anthropic's API has no way to say, named when the request set them."""
    s = request.sampling
    out = [
        name
        for name, value, default in (
            ("seed", s.seed, None),
            ("presence_penalty", s.presence_penalty, _DEFAULTS.presence_penalty),
            ("frequency_penalty", s.frequency_penalty, _DEFAULTS.frequency_penalty),
            ("repeat_penalty", s.repeat_penalty, _DEFAULTS.repeat_penalty),
            ("repeat_last_n", s.repeat_last_n, _DEFAULTS.repeat_last_n),
            ("min_p", s.min_p, _DEFAULTS.min_p),
            ("typical_p", s.typical_p, _DEFAULTS.typical_p),
        )
        if value != default
    ]
    if any(t.strict for t in request.tools) and request.response_format.type == "text":
        out.append("tools.strict")
    return out


# -- the stream ---------------------------------------------------------------------------------

# Anthropic's error types and the HTTP statuses it answers them with.
_ERROR_STATUS = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "billing_error": 402,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "timeout_error": 504,
    "overloaded_error": 529,
}


def stream_error(provider: str, event: dict[str, Any]) -> UpstreamError:
    """An in-band `error` event as the UpstreamError its HTTP status would have been: a client
    error (400, 413) is answered at once, anything else (overloaded_error: 529) fails over."""
    error = event.get("error")
    kind = str(error.get("type") or "error") if isinstance(error, dict) else "error"
    message = str(error.get("message") or "") if isinstance(error, dict) else str(error)
    status = _ERROR_STATUS.get(kind, 500)
    out = UpstreamError(f"{provider}: upstream error mid-stream: {kind}: {message}"[:600], upstream_status=status)
    if status in (400, 413):
        out.status_code = status
    return out


def stop_reason(reason: Any, only_format_calls: bool) -> FinishReason:
    """end_turn, stop_sequence (and pause_turn, refusal) -> stop; max_tokens -> length;
    tool_use -> tool_calls, unless the only call was the response format's tool."""
    if reason in ("max_tokens", "model_context_window_exceeded"):
        return "length"
    if reason == "tool_use" and not only_format_calls:
        return "tool_calls"
    return "stop"


@dataclass
class _Reading:
    """What parse_stream tracks between events."""

    calls: dict[int, int] = field(default_factory=dict)  # content block index -> tool call index
    format_blocks: set[int] = field(default_factory=set)  # blocks of the response format's tool
    fragments: set[int] = field(default_factory=set)  # tool blocks that had input fragments
    usage: dict[str, int] = field(default_factory=dict)
    stop_reason: Any = None
    stop_sequence: str | None = None
    ended: bool = False

    def count(self, usage: Any) -> None:
        # message_start has them all; message_delta's are cumulative and may repeat input counts.
        if isinstance(usage, dict):
            for key, value in usage.items():
                if isinstance(value, int) and value >= 0:
                    self.usage[key] = value


async def parse_stream(
    provider: str, format_tool: str | None, body: Body, state: StreamState
) -> AsyncGenerator[GenerationEvent, None]:
    """Messages SSE events -> neutral events: text deltas, a tool_use block's start as a call's
    id and name and its input_json_delta fragments as its arguments (the response format's tool:
    its input as text), then one done event once message_stop has come."""
    reading = _Reading()
    async with aclosing(sse_data(body)) as data_items:
        async for data in data_items:
            event = _event(provider, data)
            kind = event.get("type")
            if kind == "error":
                raise stream_error(provider, event)
            handle = _HANDLERS.get(str(kind))
            if handle is None:
                continue  # ping, and event types newer than this code
            try:
                out = handle(reading, event, format_tool is not None)
            except (KeyError, TypeError, AttributeError, ValueError) as exc:
                raise broken(provider, f"malformed {kind} event from upstream: {data[:200]!r}") from exc
            if kind == "message_start" and isinstance(event.get("message"), dict):
                state.model = str(event["message"].get("model") or state.model)
            if out is not None:
                state.mark_token()
                yield out
    if not reading.ended:
        raise broken(provider, "upstream ended the stream before message_stop")
    u = reading.usage
    cached = u.get("cache_read_input_tokens", 0)
    prompt_eval, eval_seconds = state.timings()
    stats = GenerationStats(
        prompt_tokens=u.get("input_tokens", 0) + cached + u.get("cache_creation_input_tokens", 0),
        completion_tokens=u.get("output_tokens", 0),
        prompt_eval_seconds=prompt_eval,
        eval_seconds=eval_seconds,
        cached_prompt_tokens=cached,
    )
    state.prompt_tokens = stats.prompt_tokens
    only_format = not reading.calls
    yield GenerationEvent(
        done=True,
        finish_reason=stop_reason(reading.stop_reason, only_format),
        stats=stats,
        stop_sequence=reading.stop_sequence if reading.stop_reason == "stop_sequence" else None,
    )


def _event(provider: str, data: str) -> dict[str, Any]:
    try:
        event = json.loads(data)
    except ValueError as exc:
        raise broken(provider, f"malformed event from upstream: {data[:200]!r}") from exc
    if not isinstance(event, dict):
        raise broken(provider, f"malformed event from upstream: {data[:200]!r}")
    return event


def _message_start(reading: _Reading, event: dict[str, Any], formatted: bool) -> GenerationEvent | None:
    reading.count(event["message"].get("usage"))
    return None


def _block_start(reading: _Reading, event: dict[str, Any], formatted: bool) -> GenerationEvent | None:
    index, block = int(event["index"]), event["content_block"]
    if block["type"] == "text":
        text = str(block.get("text") or "")
        return GenerationEvent(text=text) if text and not formatted else None
    if block["type"] != "tool_use":
        return None  # thinking and server-tool blocks are not part of the answer
    given = block.get("input")
    arguments = json.dumps(given, ensure_ascii=False) if given else ""  # usually {}, then fragments
    if arguments:
        reading.fragments.add(index)
    if formatted:
        reading.format_blocks.add(index)
        return GenerationEvent(text=arguments) if arguments else None
    call = reading.calls[index] = len(reading.calls)
    return GenerationEvent(
        tool_calls=(ToolCallDelta(index=call, id=str(block["id"]), name=str(block["name"]), arguments=arguments),)
    )


def _block_delta(reading: _Reading, event: dict[str, Any], formatted: bool) -> GenerationEvent | None:
    index, delta = int(event["index"]), event["delta"]
    if delta["type"] == "text_delta":
        return GenerationEvent(text=str(delta["text"])) if delta["text"] and not formatted else None
    if delta["type"] != "input_json_delta" or not delta.get("partial_json"):
        return None  # thinking, signature and citation deltas; empty fragments
    fragment = str(delta["partial_json"])
    reading.fragments.add(index)
    if index in reading.format_blocks:
        return GenerationEvent(text=fragment)
    if index in reading.calls:
        return GenerationEvent(tool_calls=(ToolCallDelta(index=reading.calls[index], arguments=fragment),))
    return None


def _block_stop(reading: _Reading, event: dict[str, Any], formatted: bool) -> GenerationEvent | None:
    # A call with no input fragments at all (a tool without parameters) still has an object.
    index = int(event["index"])
    if index in reading.fragments:
        return None
    if index in reading.format_blocks:
        return GenerationEvent(text="{}")
    if index in reading.calls:
        return GenerationEvent(tool_calls=(ToolCallDelta(index=reading.calls[index], arguments="{}"),))
    return None


def _message_delta(reading: _Reading, event: dict[str, Any], formatted: bool) -> GenerationEvent | None:
    delta = event.get("delta") or {}
    if delta.get("stop_reason"):
        reading.stop_reason = delta["stop_reason"]
    if delta.get("stop_sequence") is not None:
        reading.stop_sequence = str(delta["stop_sequence"])
    reading.count(event.get("usage"))
    return None


def _message_stop(reading: _Reading, event: dict[str, Any], formatted: bool) -> GenerationEvent | None:
    reading.ended = True
    return None


_HANDLERS: dict[str, Callable[[_Reading, dict[str, Any], bool], GenerationEvent | None]] = {
    "message_start": _message_start,
    "content_block_start": _block_start,
    "content_block_delta": _block_delta,
    "content_block_stop": _block_stop,
    "message_delta": _message_delta,
    "message_stop": _message_stop,
}
