"""The `local` provider: this node's own models, through the scheduler."""

from __future__ import annotations

from dataclasses import replace

from ember.gateway.config import ProviderConfig
from ember.gateway.provider import peek_first
from ember.services.embeddings import EmbeddingOutcome, EmbeddingService
from ember.services.generation import Generation, GenerationService
from ember.services.types import TextRequest


class LocalProvider:
    def __init__(self, config: ProviderConfig, generation: GenerationService, embeddings: EmbeddingService) -> None:
        self.config = config
        self._generation = generation
        self._embeddings = embeddings

    @property
    def name(self) -> str:
        return self.config.name

    async def start(self, request: TextRequest, model: str) -> Generation:
        if request.model != model:
            request = _with_model(request, model)
        generation = await self._generation.start(request)
        generation.provider = self.name
        # Until the first token the gateway may still fail over (a worker that died, say).
        return await peek_first(generation)

    async def count_tokens(self, request: TextRequest, model: str) -> int:
        return await self._generation.count_prompt_tokens(_with_model(request, model))

    async def embed(
        self, model: str, inputs: list[str], *, dimensions: int | None = None, truncate: bool = True
    ) -> EmbeddingOutcome:
        return await self._embeddings.embed(model, inputs, dimensions=dimensions, truncate=truncate)

    async def aclose(self) -> None:
        return None


def _with_model(request: TextRequest, model: str) -> TextRequest:
    return replace(request, model=model)
