"""What every provider offers the gateway: start a generation, embed, close.

A provider's `start` returns once the upstream has sent its first token (or finished),
so every failure the gateway may still hide from the client (refused, 5xx, 429, a
timeout before the first token) is raised from `start` as an UpstreamError. After
that the Generation streams, and a failure mid-stream ends the stream with an error.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Protocol

from ember.errors import UpstreamError
from ember.gateway.config import ProviderConfig
from ember.services.embeddings import EmbeddingOutcome
from ember.services.generation import Generation
from ember.services.types import TextRequest


class Provider(Protocol):
    config: ProviderConfig

    @property
    def name(self) -> str: ...

    async def start(self, request: TextRequest, model: str) -> Generation:
        """Begin generating `request` with the provider's `model` (the part after "provider/")."""
        ...

    async def count_tokens(self, request: TextRequest, model: str) -> int:
        """How many tokens the prompt of `request` is for the provider's `model`, as its usage
        would report them (cached prompt tokens included)."""
        ...

    async def embed(
        self, model: str, inputs: list[str], *, dimensions: int | None = None, truncate: bool = True
    ) -> EmbeddingOutcome:
        """One vector per input; truncate=False: an input over the model's limit is a 400, not cut."""
        ...

    async def aclose(self) -> None: ...


async def count_by_generating(provider: Provider, request: TextRequest, model: str) -> int:
    """For an API with no way to count a prompt (OpenAI's, Ollama's): generate one token and
    read the prompt's size from the usage. Exact, as the upstream's tokenizer and template
    count it, at the price of one token and a prompt evaluation."""
    generation = await provider.start(replace(request, max_tokens=1), model)
    answer = await generation.collect()
    if answer.stats.prompt_tokens <= 0:
        raise UpstreamError(f"provider '{provider.name}' did not say how many tokens the prompt was")
    return answer.stats.prompt_tokens


async def peek_first(generation: Generation) -> Generation:
    """Wait for the first event, so a failure before the first token is raised here (and the
    generation closed); the event stays at the front of the stream."""
    await generation.prefetch()
    return generation
