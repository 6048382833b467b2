"""Embeddings for both APIs."""

from __future__ import annotations

import time
from dataclasses import dataclass

from ember.engine.types import LoadOptions
from ember.errors import BadRequest
from ember.runtime.scheduler import Scheduler


@dataclass(frozen=True)
class EmbeddingOutcome:
    model: str
    vectors: list[list[float]]
    prompt_tokens: int
    load_seconds: float
    total_seconds: float


class EmbeddingService:
    def __init__(self, scheduler: Scheduler) -> None:
        self._scheduler = scheduler

    async def embed(
        self,
        model: str,
        inputs: list[str],
        *,
        keep_alive: float | None = None,
        load_options: LoadOptions | None = None,
        dimensions: int | None = None,
        truncate: bool = True,
    ) -> EmbeddingOutcome:
        """One vector per input; an input past the embedding context is cut to fit, or, with
        truncate=False, a ContextLengthExceeded (Ollama's /api/embed `truncate`)."""
        started = time.perf_counter()
        if dimensions is not None and dimensions < 1:
            raise BadRequest("dimensions must be a positive integer", param="dimensions")
        async with self._scheduler.lease(model, options=load_options, keep_alive=keep_alive) as lease:
            result = await lease.runner.engine.embed(inputs, truncate=truncate) if inputs else None
        vectors = result.vectors if result else []
        if dimensions is not None and vectors:
            if dimensions > len(vectors[0]):
                # As OpenAI answers a `dimensions` past the model's: shortening cannot lengthen.
                raise BadRequest(
                    f"dimensions must be at most {len(vectors[0])}, the length of "
                    f"'{lease.runner.key}' embeddings, not {dimensions}",
                    param="dimensions",
                )
            vectors = [shorten(v, dimensions) for v in vectors]
        return EmbeddingOutcome(
            model=lease.runner.key,
            vectors=vectors,
            prompt_tokens=result.prompt_tokens if result else 0,
            load_seconds=lease.load_seconds,
            total_seconds=time.perf_counter() - started,
        )


def shorten(vector: list[float], dimensions: int) -> list[float]:
    """Matryoshka-style shortening, renormalised, as OpenAI's `dimensions` does."""
    short = vector[:dimensions]
    norm = sum(x * x for x in short) ** 0.5 or 1.0
    return [x / norm for x in short]
