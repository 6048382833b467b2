"""An Ollama (or ember) node as a provider: /api/chat, /api/generate, /api/embed over NDJSON.

base_url is the node's root (http://127.0.0.1:11434). Requests are translated to Ollama's
shapes; what its API cannot say (a tool_choice that forces a call, parallel_tool_calls false) is
named in the X-Ember-Dropped-Fields response header instead of being lost without a word.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import AsyncGenerator
from contextlib import aclosing
from functools import partial
from typing import Any

from ember.engine.types import GenerationStats
from ember.errors import UnsupportedParameter
from ember.gateway.config import ProviderConfig
from ember.gateway.provider import count_by_generating
from ember.gateway.remote import (
    Body,
    RemoteClient,
    StreamState,
    broken,
    finish_reason,
    ndjson_lines,
    read_chunk,
    token_logprobs,
    upstream_role,
)
from ember.services.embeddings import EmbeddingOutcome, shorten
from ember.services.generation import Generation
from ember.services.types import ChatMessage, GenerationEvent, ImagePart, TextRequest, Tool, ToolCallDelta

_NS = 1e9  # Ollama reports durations in nanoseconds


class OllamaProvider:
    def __init__(self, config: ProviderConfig) -> None:
        self.config = config
        self._remote = RemoteClient(config)

    @property
    def name(self) -> str:
        return self.config.name

    async def start(self, request: TextRequest, model: str) -> Generation:
        path = "api/chat" if request.messages is not None else "api/generate"
        return await self._remote.stream(
            path,
            request_body(request, model),
            partial(parse_stream, self.name),
            model,
            dropped=dropped_fields(request),
        )

    async def count_tokens(self, request: TextRequest, model: str) -> int:
        return await count_by_generating(self, request, model)

    async def embed(
        self, model: str, inputs: list[str], *, dimensions: int | None = None, truncate: bool = True
    ) -> EmbeddingOutcome:
        started = time.perf_counter()
        body: dict[str, Any] = {"model": model, "input": inputs}
        if dimensions is not None:
            body["dimensions"] = dimensions
        if not truncate:
            body["truncate"] = False
        answer = await self._remote.post_json("api/embed", body)
        try:
            vectors = [[float(x) for x in row] for row in answer["embeddings"]]
        except (KeyError, TypeError, ValueError) as exc:
            raise broken(self.name, "embed answer without embeddings") from exc
        if dimensions is not None:  # older nodes ignore "dimensions": shorten here
            vectors = [shorten(v, dimensions) if len(v) > dimensions else v for v in vectors]
        return EmbeddingOutcome(
            model=answer.get("model") or model,
            vectors=vectors,
            prompt_tokens=int(answer.get("prompt_eval_count") or 0),
            load_seconds=float(answer.get("load_duration") or 0) / _NS,
            total_seconds=time.perf_counter() - started,
        )

    async def aclose(self) -> None:
        await self._remote.aclose()


def request_body(request: TextRequest, model: str) -> dict[str, Any]:
    """The neutral request as Ollama's: tools, `format` ("json" or the schema), tool calls with
    object arguments, tool results named by `tool_name`, images as base64, logprobs."""
    s = request.sampling
    options: dict[str, Any] = {
        "temperature": s.temperature,
        "top_p": s.top_p,
        "top_k": s.top_k,
        "min_p": s.min_p,
        "typical_p": s.typical_p,
        "repeat_penalty": s.repeat_penalty,
        "repeat_last_n": s.repeat_last_n,
        "presence_penalty": s.presence_penalty,
        "frequency_penalty": s.frequency_penalty,
    }
    if s.seed is not None:
        options["seed"] = s.seed
    if request.max_tokens is not None:
        options["num_predict"] = request.max_tokens
    if request.stop:
        options["stop"] = list(request.stop)
    if request.load_options is not None:
        options["num_ctx"] = request.load_options.num_ctx
    body: dict[str, Any] = {"model": model, "stream": True, "options": options}
    if request.messages is not None:
        body["messages"] = _messages(request.messages)
        tools = tools_sent(request)
        if tools:
            body["tools"] = [
                {
                    "type": "function",
                    "function": {"name": t.name, "description": t.description, "parameters": t.parameters},
                }
                for t in tools
            ]
    else:
        # raw: the prompt is already what the model should see (no template on top).
        body["prompt"] = request.prompt or ""
        body["raw"] = True
    form = request.response_format
    if form.type == "json_object":
        body["format"] = "json"
    elif form.type == "json_schema":
        body["format"] = form.schema
    if request.logprobs is not None:
        body["logprobs"] = True
        body["top_logprobs"] = request.logprobs.top
    if request.keep_alive is not None:
        body["keep_alive"] = request.keep_alive
    return body


def tools_sent(request: TextRequest) -> tuple[Tool, ...]:
    """The tools Ollama gets: tool_choice "none" is honoured by sending none, a named function
    by sending only that one (that it must be called is still not expressible)."""
    choice = request.tool_choice
    if choice.mode == "none":
        return ()
    if choice.mode == "function":
        return tuple(t for t in request.tools if t.name == choice.name)
    return request.tools


def dropped_fields(request: TextRequest) -> list[str]:
    """Request fields Ollama's API has no way to say, so the upstream did not get them: a
    tool_choice that forces a call ("required", or a named function), parallel_tool_calls
    false, and a tool's strict flag."""
    sent = tools_sent(request)
    if not sent:
        return []
    out = []
    if request.tool_choice.mode in ("required", "function"):
        out.append("tool_choice")
    if not request.parallel_tool_calls:
        out.append("parallel_tool_calls")
    if any(t.strict for t in sent):
        out.append("tools.strict")
    return out


def _messages(messages: list[ChatMessage]) -> list[dict[str, Any]]:
    names: dict[str, str] = {}  # call id -> function name, for the tool results that follow
    out = []
    for i, message in enumerate(messages):
        item: dict[str, Any] = {"role": upstream_role(message.role), "content": message.content}
        if message.attachments:
            item["images"] = [
                image_base64(part.source, f"messages[{i}].content")
                for part in message.attachments
                if isinstance(part, ImagePart)
            ]
        if message.tool_calls:
            item["tool_calls"] = [
                {"function": {"name": c.name, "arguments": _arguments(c.arguments, f"messages[{i}].tool_calls[{j}]")}}
                for j, c in enumerate(message.tool_calls)
            ]
            names.update((c.id, c.name) for c in message.tool_calls)
        if message.role == "tool":
            name = message.name or names.get(message.tool_call_id or "")
            if name:
                item["tool_name"] = name
        out.append(item)
    return out


def _arguments(text: str, where: str) -> dict[str, Any]:
    """A call's JSON text as the object Ollama carries."""
    try:
        value = json.loads(text) if text.strip() else {}
    except ValueError:
        value = None
    if not isinstance(value, dict):
        raise UnsupportedParameter(
            f"{where}.function.arguments is not a JSON object, and an Ollama provider takes a call's arguments as one",
            param=f"{where}.function.arguments",
        )
    return value


def image_base64(source: str, where: str) -> str:
    """An image as Ollama takes it: base64 data (a data: URL's payload); it cannot take a URL."""
    if source.startswith("data:"):
        return source.partition(",")[2]
    if source.startswith(("http://", "https://")):
        raise UnsupportedParameter(
            f"{where} has an image URL: an Ollama provider takes images as base64 data "
            "(send a data: URL), and ember does not fetch them",
            param=where,
        )
    return source


def _call_deltas(provider: str, calls: Any, first_index: int) -> tuple[ToolCallDelta, ...]:
    """Ollama's whole calls (arguments as an object) as one delta each, with an id of their own."""
    if not calls:
        return ()
    out = []
    try:
        for n, call in enumerate(calls):
            function = call["function"]
            arguments = function.get("arguments")
            text = arguments if isinstance(arguments, str) else json.dumps(arguments or {}, ensure_ascii=False)
            out.append(
                ToolCallDelta(
                    index=first_index + n,
                    id=call.get("id") or f"call_{secrets.token_hex(12)}",
                    name=str(function["name"]),
                    arguments=text,
                )
            )
    except (KeyError, TypeError, AttributeError) as exc:
        raise broken(provider, f"malformed tool_calls from upstream: {json.dumps(calls)[:200]}") from exc
    return tuple(out)


async def parse_stream(provider: str, body: Body, state: StreamState) -> AsyncGenerator[GenerationEvent, None]:
    """NDJSON lines -> events (text, each whole tool call as one delta, logprobs), then one done
    event from the final line's counts; finish_reason "tool_calls" when calls came (Ollama says
    "stop")."""
    final: dict[str, Any] | None = None
    calls = 0
    async with aclosing(ndjson_lines(body)) as lines:
        async for line in lines:
            item = read_chunk(provider, line, state)
            message = item.get("message")
            if isinstance(message, dict):
                text = message.get("content")
                deltas = _call_deltas(provider, message.get("tool_calls"), calls)
                calls += len(deltas)
            else:
                text, deltas = item.get("response"), ()
            scored = token_logprobs(provider, item.get("logprobs"))
            if text or deltas or scored:
                state.mark_token()
                yield GenerationEvent(text=text or "", tool_calls=deltas, logprobs=scored)
            if item.get("done"):
                final = item  # read on to the end of the body so the connection is reused
    if final is None:
        raise broken(provider, "upstream ended the stream before it was complete")
    prompt_eval, eval_seconds = state.timings()
    stats = GenerationStats(
        prompt_tokens=int(final.get("prompt_eval_count") or 0),
        completion_tokens=int(final.get("eval_count") or 0),
        prompt_eval_seconds=float(final["prompt_eval_duration"]) / _NS
        if final.get("prompt_eval_duration")
        else prompt_eval,
        eval_seconds=float(final["eval_duration"]) / _NS if final.get("eval_duration") else eval_seconds,
    )
    state.prompt_tokens = stats.prompt_tokens
    reason = finish_reason(final.get("done_reason"))
    if calls and reason != "length":
        reason = "tool_calls"
    yield GenerationEvent(text="", done=True, finish_reason=reason, stats=stats)
