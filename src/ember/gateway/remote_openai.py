"""An OpenAI-compatible server as a provider: /chat/completions, /completions, /embeddings over SSE.

base_url is the /v1 base (https://api.openai.com/v1, http://127.0.0.1:8001/v1, another ember's /v1).
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import AsyncGenerator
from contextlib import aclosing
from functools import partial
from typing import Any

from ember.engine.types import GenerationStats, SamplingParams, TokenLogprob, TopLogprob
from ember.gateway.config import ProviderConfig
from ember.gateway.provider import count_by_generating
from ember.gateway.remote import (
    Body,
    RemoteClient,
    StreamState,
    broken,
    finish_reason,
    read_chunk,
    sse_data,
    token_logprobs,
    upstream_role,
)
from ember.services.embeddings import EmbeddingOutcome
from ember.services.generation import Generation
from ember.services.types import (
    ChatMessage,
    GenerationEvent,
    ImagePart,
    ResponseFormat,
    TextRequest,
    Tool,
    ToolCallDelta,
    ToolChoice,
)


class OpenAIProvider:
    def __init__(self, config: ProviderConfig) -> None:
        self.config = config
        self._remote = RemoteClient(config)

    @property
    def name(self) -> str:
        return self.config.name

    async def start(self, request: TextRequest, model: str) -> Generation:
        chat = request.messages is not None
        path = "chat/completions" if chat else "completions"
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
        # OpenAI's API has no truncate: its servers refuse an input over the model's limit, as
        # truncate=False asks; one that cuts inputs (some do) cannot be told not to.
        started = time.perf_counter()
        body: dict[str, Any] = {"model": model, "input": inputs, "encoding_format": "float"}
        if dimensions is not None:
            body["dimensions"] = dimensions
        answer = await self._remote.post_json("embeddings", body)
        try:
            rows = sorted(answer["data"], key=lambda row: row.get("index", 0))
            vectors = [[float(x) for x in row["embedding"]] for row in rows]
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise broken(self.name, "embeddings answer without data[].embedding") from exc
        usage = answer.get("usage") or {}
        return EmbeddingOutcome(
            model=answer.get("model") or model,
            vectors=vectors,
            prompt_tokens=int(usage.get("prompt_tokens") or 0),
            load_seconds=0.0,
            total_seconds=time.perf_counter() - started,
        )

    async def aclose(self) -> None:
        await self._remote.aclose()


_DEFAULTS = SamplingParams()


def dropped_fields(request: TextRequest) -> list[str]:
    """llama.cpp's sampling knobs, which OpenAI's API has no field for (a cloud refuses unknown
    fields, so they are not sent): named when the request moved them off ember's defaults."""
    s = request.sampling
    knobs = ("top_k", "min_p", "typical_p", "repeat_penalty", "repeat_last_n")
    return [name for name in knobs if getattr(s, name) != getattr(_DEFAULTS, name)]


def request_body(request: TextRequest, model: str) -> dict[str, Any]:
    """The neutral request as OpenAI's: tools, tool_choice, response_format, logprobs, tool calls,
    tool results and image parts go as OpenAI spells them (what ember parsed, sent on unchanged)."""
    s = request.sampling
    body: dict[str, Any] = {
        "model": model,
        "stream": True,
        "stream_options": {"include_usage": True},
        "temperature": s.temperature,
        "top_p": s.top_p,
        "presence_penalty": s.presence_penalty,
        "frequency_penalty": s.frequency_penalty,
    }
    if request.messages is not None:
        body["messages"] = [_message(m) for m in request.messages]
        if request.tools:
            body["tools"] = [_tool(t) for t in request.tools]
            body["tool_choice"] = _tool_choice(request.tool_choice)
            if not request.parallel_tool_calls:  # true is the default: sent only when it says no
                body["parallel_tool_calls"] = False
        if request.logprobs is not None:
            body["logprobs"] = True
            body["top_logprobs"] = request.logprobs.top
    else:
        body["prompt"] = request.prompt or ""
        if request.logprobs is not None:
            body["logprobs"] = request.logprobs.top  # the legacy API's alternatives per token
    form = response_format(request.response_format)
    if form is not None:
        body["response_format"] = form
    if request.max_tokens is not None:
        body["max_tokens"] = request.max_tokens
    if request.stop:
        body["stop"] = list(request.stop)
    if s.seed is not None:
        body["seed"] = s.seed
    return body


def _message(message: ChatMessage) -> dict[str, Any]:
    out: dict[str, Any] = {"role": upstream_role(message.role)}
    if message.attachments:
        parts: list[dict[str, Any]] = [{"type": "text", "text": message.content}] if message.content else []
        parts += [
            {"type": "image_url", "image_url": {"url": image_url(part.source)}}
            for part in message.attachments
            if isinstance(part, ImagePart)
        ]
        out["content"] = parts
    else:
        # An assistant turn that only calls tools has no content (null, as OpenAI writes it).
        out["content"] = None if message.tool_calls and not message.content else message.content
    if message.tool_calls:
        out["tool_calls"] = [
            {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
            for c in message.tool_calls
        ]
    if message.tool_call_id is not None:
        out["tool_call_id"] = message.tool_call_id
    return out


def _tool(tool: Tool) -> dict[str, Any]:
    function: dict[str, Any] = {"name": tool.name, "parameters": tool.parameters}
    if tool.description:
        function["description"] = tool.description
    if tool.strict:
        function["strict"] = True
    return {"type": "function", "function": function}


def _tool_choice(choice: ToolChoice) -> str | dict[str, Any]:
    if choice.mode == "function":
        return {"type": "function", "function": {"name": choice.name}}
    return choice.mode


def response_format(form: ResponseFormat) -> dict[str, Any] | None:
    if form.type == "text":
        return None
    if form.type == "json_object":
        return {"type": "json_object"}
    spec: dict[str, Any] = {"name": form.name or "response", "schema": form.schema}
    if form.strict:
        spec["strict"] = True
    return {"type": "json_schema", "json_schema": spec}


# Ollama sends images as bare base64: OpenAI wants a URL, so they go as data: URLs of their type.
_IMAGE_MAGIC = (("iVBOR", "image/png"), ("/9j/", "image/jpeg"), ("R0lGOD", "image/gif"), ("UklGR", "image/webp"))


def image_url(source: str) -> str:
    if source.startswith(("http://", "https://", "data:")):
        return source
    kind = next((mime for magic, mime in _IMAGE_MAGIC if source.startswith(magic)), "image/png")
    return f"data:{kind};base64,{source}"


class _Calls:
    """Tool-call deltas as the neutral stream has them: a call's id and name on its first delta
    only (an upstream that repeats them, or sends no id, is evened out), arguments as they came."""

    def __init__(self, provider: str) -> None:
        self._provider = provider
        self._seen: set[int] = set()

    def deltas(self, delta: dict[str, Any]) -> tuple[ToolCallDelta, ...]:
        entries = delta.get("tool_calls")
        if not entries and isinstance(delta.get("function_call"), dict):  # the legacy single call
            entries = [{"index": 0, "function": delta["function_call"]}]
        if not isinstance(entries, list):
            return ()
        out = []
        for position, entry in enumerate(entries):
            if not isinstance(entry, dict) or not isinstance(entry.get("function", {}), dict):
                raise broken(self._provider, f"malformed tool call from upstream: {json.dumps(entry)[:200]}")
            function = entry.get("function") or {}
            index = int(entry.get("index", position))
            arguments = function.get("arguments") or ""
            if not isinstance(arguments, str):  # an object where JSON text belongs
                arguments = json.dumps(arguments, ensure_ascii=False)
            if index in self._seen:
                out.append(ToolCallDelta(index=index, arguments=arguments))
                continue
            self._seen.add(index)
            out.append(
                ToolCallDelta(
                    index=index,
                    id=entry.get("id") or f"call_{secrets.token_hex(12)}",
                    name=function.get("name") or None,
                    arguments=arguments,
                )
            )
        return tuple(out)


def legacy_logprobs(provider: str, value: Any) -> tuple[TokenLogprob, ...]:
    """The completions API's parallel lists: tokens, token_logprobs, top_logprobs ({token: logprob})."""
    if not isinstance(value, dict) or not isinstance(value.get("tokens"), list):
        return ()
    tops = value.get("top_logprobs") or []
    out = []
    try:
        for i, (token, logprob) in enumerate(zip(value["tokens"], value.get("token_logprobs") or [], strict=False)):
            alternatives = tops[i] if i < len(tops) and isinstance(tops[i], dict) else {}
            top = [
                TopLogprob(token=str(t), logprob=float(lp), bytes=tuple(str(t).encode()))
                for t, lp in alternatives.items()
            ]
            top.sort(key=lambda t: -t.logprob)
            out.append(
                TokenLogprob(
                    token=str(token),
                    logprob=float(logprob if logprob is not None else 0.0),
                    bytes=tuple(str(token).encode()),
                    top=tuple(top),
                )
            )
    except (TypeError, ValueError) as exc:
        raise broken(provider, f"malformed logprobs from upstream: {json.dumps(value)[:200]}") from exc
    return tuple(out)


async def parse_stream(provider: str, body: Body, state: StreamState) -> AsyncGenerator[GenerationEvent, None]:
    """SSE chunks -> events (text, tool-call deltas, logprobs), then one done event once the
    stream has ended."""
    chunks = 0
    finish: Any = None
    usage: dict[str, Any] | None = None
    done_seen = False
    calls = _Calls(provider)
    async with aclosing(sse_data(body)) as data_items:
        async for data in data_items:
            if data.strip() == "[DONE]":
                # Read on to the end of the body so the connection goes back to the pool.
                done_seen = True
                continue
            chunk = read_chunk(provider, data, state)
            if chunk.get("usage"):
                usage = chunk["usage"]
            for choice in chunk.get("choices") or ():
                if choice.get("index", 0) != 0:
                    continue  # n > 1 is never asked for
                delta = choice.get("delta")
                logprobs = choice.get("logprobs")
                if isinstance(delta, dict):
                    text = delta.get("content")
                    deltas = calls.deltas(delta)
                    scored = token_logprobs(provider, logprobs.get("content")) if isinstance(logprobs, dict) else ()
                else:
                    text, deltas, scored = choice.get("text"), (), legacy_logprobs(provider, logprobs)
                if text or deltas or scored:
                    chunks += 1
                    state.mark_token()
                    yield GenerationEvent(text=text or "", tool_calls=deltas, logprobs=scored)
                if choice.get("finish_reason"):
                    finish = choice["finish_reason"]
    if not done_seen and finish is None:
        raise broken(provider, "upstream ended the stream before it was complete")
    prompt_eval, eval_seconds = state.timings()
    if usage:
        details = usage.get("prompt_tokens_details") or {}
        stats = GenerationStats(
            prompt_tokens=int(usage.get("prompt_tokens") or 0),
            completion_tokens=int(usage.get("completion_tokens") or 0),
            prompt_eval_seconds=prompt_eval,
            eval_seconds=eval_seconds,
            cached_prompt_tokens=int(details.get("cached_tokens") or 0),
        )
    else:  # an upstream that ignores include_usage: one chunk is about one token
        stats = GenerationStats(
            prompt_tokens=0, completion_tokens=chunks, prompt_eval_seconds=prompt_eval, eval_seconds=eval_seconds
        )
    state.prompt_tokens = stats.prompt_tokens
    yield GenerationEvent(text="", done=True, finish_reason=finish_reason(finish), stats=stats)
