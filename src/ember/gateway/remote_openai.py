"""An OpenAI-compatible server as a provider: /chat/completions, /completions, /embeddings over SSE.

base_url is the /v1 base (https://api.openai.com/v1, http://127.0.0.1:8001/v1, another ember's /v1).
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator
from contextlib import aclosing
from functools import partial
from typing import Any

import httpx

from ember.engine.types import GenerationStats
from ember.gateway.config import ProviderConfig
from ember.gateway.remote import RemoteClient, StreamState, broken, finish_reason, read_chunk, sse_data, upstream_role
from ember.services.embeddings import EmbeddingOutcome
from ember.services.generation import Generation
from ember.services.types import GenerationEvent, TextRequest


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
        return await self._remote.stream(path, request_body(request, model),
                                         partial(parse_stream, self.name), model)

    async def embed(self, model: str, inputs: list[str], *, dimensions: int | None = None,
                    truncate: bool = True) -> EmbeddingOutcome:
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
        return EmbeddingOutcome(model=answer.get("model") or model, vectors=vectors,
                                prompt_tokens=int(usage.get("prompt_tokens") or 0), load_seconds=0.0,
                                total_seconds=time.perf_counter() - started)

    async def aclose(self) -> None:
        await self._remote.aclose()


def request_body(request: TextRequest, model: str) -> dict[str, Any]:
    s = request.sampling
    body: dict[str, Any] = {
        "model": model, "stream": True, "stream_options": {"include_usage": True},
        "temperature": s.temperature, "top_p": s.top_p,
        "presence_penalty": s.presence_penalty, "frequency_penalty": s.frequency_penalty,
    }
    if request.messages is not None:
        body["messages"] = [{"role": upstream_role(m.role), "content": m.content} for m in request.messages]
    else:
        body["prompt"] = request.prompt or ""
    if request.max_tokens is not None:
        body["max_tokens"] = request.max_tokens
    if request.stop:
        body["stop"] = list(request.stop)
    if s.seed is not None:
        body["seed"] = s.seed
    return body


async def parse_stream(provider: str, response: httpx.Response,
                       state: StreamState) -> AsyncGenerator[GenerationEvent, None]:
    """SSE chunks -> text events, then one done event once the stream has ended."""
    chunks = 0
    finish: Any = None
    usage: dict[str, Any] | None = None
    done_seen = False
    async with aclosing(sse_data(response)) as data_items:
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
                text = delta.get("content") if isinstance(delta, dict) else choice.get("text")
                if text:
                    chunks += 1
                    state.mark_token()
                    yield GenerationEvent(text=text)
                if choice.get("finish_reason"):
                    finish = choice["finish_reason"]
    if not done_seen and finish is None:
        raise broken(provider, "upstream ended the stream before it was complete")
    prompt_eval, eval_seconds = state.timings()
    if usage:
        details = usage.get("prompt_tokens_details") or {}
        stats = GenerationStats(prompt_tokens=int(usage.get("prompt_tokens") or 0),
                                completion_tokens=int(usage.get("completion_tokens") or 0),
                                prompt_eval_seconds=prompt_eval, eval_seconds=eval_seconds,
                                cached_prompt_tokens=int(details.get("cached_tokens") or 0))
    else:  # an upstream that ignores include_usage: one chunk is about one token
        stats = GenerationStats(prompt_tokens=0, completion_tokens=chunks,
                                prompt_eval_seconds=prompt_eval, eval_seconds=eval_seconds)
    state.prompt_tokens = stats.prompt_tokens
    yield GenerationEvent(text="", done=True, finish_reason=finish_reason(finish), stats=stats)
