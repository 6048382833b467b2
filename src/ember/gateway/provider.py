"""What every provider offers the gateway: start a generation, embed, close.

A provider's `start` returns once the upstream has sent its first token (or finished),
so every failure the gateway may still hide from the client (refused, 5xx, 429, a
timeout before the first token) is raised from `start` as an UpstreamError. After
that the Generation streams, and a failure mid-stream ends the stream with an error.
"""

from __future__ import annotations

from typing import Protocol

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

    async def embed(
        self, model: str, inputs: list[str], *, dimensions: int | None = None, truncate: bool = True
    ) -> EmbeddingOutcome:
        """One vector per input; truncate=False: an input over the model's limit is a 400, not cut."""
        ...

    async def aclose(self) -> None: ...


async def peek_first(generation: Generation) -> Generation:
    """Wait for the first event, so a failure before the first token is raised here (and the
    generation closed); the event stays at the front of the stream."""
    await generation.prefetch()
    return generation
