"""The one interface the rest of ember sees of an inference engine.

The scheduler loads engines through an EngineLoader and serves requests through
Engine; what runs behind it (in-process llama.cpp now, worker processes later)
is invisible to the API layer.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from pathlib import Path
from typing import Protocol

from ember.engine.types import EmbeddingResult, GenerationEvent, GenerationRequest, LoadOptions


class Engine(Protocol):
    @property
    def context_length(self) -> int:
        """Tokens of context this instance was loaded with."""

    @property
    def memory_bytes(self) -> int:
        """Estimated resident size (weights + KV cache)."""

    @property
    def parallel(self) -> int:
        """Requests it generates for at once; more wait in its queue."""

    @property
    def alive(self) -> bool:
        """False once the engine can no longer serve (its worker died, or it was closed)."""

    async def tokenize(self, text: str, *, add_special: bool = True, parse_special: bool = True) -> list[int]:
        """Tokens of text. `add_special`: the BOS token (and EOS) the model wants around a text.
        `parse_special`: the text of a special token ("<|im_end|>") becomes that token, as a
        chat template's own markup must; False tokenizes it as plain text, as a message's must."""

    def generate(self, request: GenerationRequest) -> AsyncGenerator[GenerationEvent, None]:
        """Stream text; closing the generator early (aclose) cancels the generation."""

    async def embed(self, texts: list[str], *, truncate: bool = True) -> EmbeddingResult:
        """One L2-normalised vector per text. A text past the embedding context is cut to fit;
        with truncate=False it raises ContextLengthExceeded instead, before any decoding."""

    async def close(self) -> None:
        """Free the model. Safe to call twice."""


class EngineLoader(Protocol):
    async def load(self, path: Path, options: LoadOptions, *, name: str | None = None) -> Engine:
        """Load a model file; raises ember.errors.ModelLoadFailed when it cannot.

        `name` (the model's name in the store) only labels log and error messages.
        """

    async def close(self) -> None:
        """Release what the loader holds itself (not the engines it loaded)."""
