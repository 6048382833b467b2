"""An Ollama (or ember) node as a provider: /api/chat, /api/generate, /api/embed over NDJSON.

base_url is the node's root (http://127.0.0.1:11434).
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
from ember.gateway.remote import (
    RemoteClient,
    StreamState,
    broken,
    finish_reason,
    ndjson_lines,
    read_chunk,
    upstream_role,
)
from ember.services.embeddings import EmbeddingOutcome, shorten
from ember.services.generation import Generation
from ember.services.types import GenerationEvent, TextRequest

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
        return await self._remote.stream(path, request_body(request, model),
                                         partial(parse_stream, self.name), model)

    async def embed(self, model: str, inputs: list[str], *, dimensions: int | None = None,
                    truncate: bool = True) -> EmbeddingOutcome:
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
        return EmbeddingOutcome(model=answer.get("model") or model, vectors=vectors,
                                prompt_tokens=int(answer.get("prompt_eval_count") or 0),
                                load_seconds=float(answer.get("load_duration") or 0) / _NS,
                                total_seconds=time.perf_counter() - started)

    async def aclose(self) -> None:
        await self._remote.aclose()


def request_body(request: TextRequest, model: str) -> dict[str, Any]:
    s = request.sampling
    options: dict[str, Any] = {
        "temperature": s.temperature, "top_p": s.top_p, "top_k": s.top_k, "min_p": s.min_p,
        "typical_p": s.typical_p, "repeat_penalty": s.repeat_penalty, "repeat_last_n": s.repeat_last_n,
        "presence_penalty": s.presence_penalty, "frequency_penalty": s.frequency_penalty,
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
        body["messages"] = [{"role": upstream_role(m.role), "content": m.content} for m in request.messages]
    else:
        # raw: the prompt is already what the model should see (no template on top).
        body["prompt"] = request.prompt or ""
        body["raw"] = True
    if request.keep_alive is not None:
        body["keep_alive"] = request.keep_alive
    return body


async def parse_stream(provider: str, response: httpx.Response,
                       state: StreamState) -> AsyncGenerator[GenerationEvent, None]:
    """NDJSON lines -> text events, then one done event from the final line's counts."""
    final: dict[str, Any] | None = None
    async with aclosing(ndjson_lines(response)) as lines:
        async for line in lines:
            item = read_chunk(provider, line, state)
            message = item.get("message")
            text = message.get("content") if isinstance(message, dict) else item.get("response")
            if text:
                state.mark_token()
                yield GenerationEvent(text=text)
            if item.get("done"):
                final = item  # read on to the end of the body so the connection is reused
    if final is None:
        raise broken(provider, "upstream ended the stream before it was complete")
    prompt_eval, eval_seconds = state.timings()
    stats = GenerationStats(
        prompt_tokens=int(final.get("prompt_eval_count") or 0),
        completion_tokens=int(final.get("eval_count") or 0),
        prompt_eval_seconds=float(final["prompt_eval_duration"]) / _NS
        if final.get("prompt_eval_duration") else prompt_eval,
        eval_seconds=float(final["eval_duration"]) / _NS if final.get("eval_duration") else eval_seconds,
    )
    state.prompt_tokens = stats.prompt_tokens
    yield GenerationEvent(text="", done=True, finish_reason=finish_reason(final.get("done_reason")), stats=stats)

