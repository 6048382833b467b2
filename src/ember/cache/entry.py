"""What the cache stores for one answer, its byte form, and what a storage backend provides."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Protocol

from ember.engine.types import GenerationStats
from ember.services.types import FinishReason, ToolCall

# Entries written by another layout are ignored (a miss), not misread.
_FORMAT = 2


@dataclass(frozen=True, slots=True)
class CachedAnswer:
    """A whole answer: the text pieces as they streamed, the tool calls it made (whole), how it
    ended, its accounting, and the response headers its provider added (Generation.notes)."""

    model: str
    provider: str
    pieces: tuple[str, ...]
    finish_reason: FinishReason
    stats: GenerationStats
    served_by: str | None = None
    tool_calls: tuple[ToolCall, ...] = ()
    notes: tuple[tuple[str, str], ...] = ()
    stop_sequence: str | None = None  # the stop string that ended it (GenerationEvent.stop_sequence)

    @property
    def text(self) -> str:
        return "".join(self.pieces)

    def encode(self) -> bytes:
        s = self.stats
        return json.dumps(
            {
                "f": _FORMAT,
                "model": self.model,
                "provider": self.provider,
                "served_by": self.served_by,
                "pieces": self.pieces,
                "finish_reason": self.finish_reason,
                "calls": [[c.id, c.name, c.arguments] for c in self.tool_calls],
                "notes": self.notes,
                "stop": self.stop_sequence,
                "stats": [
                    s.prompt_tokens,
                    s.completion_tokens,
                    s.prompt_eval_seconds,
                    s.eval_seconds,
                    s.cached_prompt_tokens,
                ],
            },
            ensure_ascii=False,
            separators=(",", ":"),
        ).encode()

    @classmethod
    def decode(cls, blob: bytes | str) -> CachedAnswer | None:
        """The answer, or None for bytes this version cannot read."""
        try:
            data: dict[str, Any] = json.loads(blob)
            if data.get("f") != _FORMAT:
                return None
            prompt, completion, prompt_s, eval_s, cached = data["stats"]
            return cls(
                model=str(data["model"]),
                provider=str(data["provider"]),
                pieces=tuple(str(p) for p in data["pieces"]),
                finish_reason=data["finish_reason"],
                stats=GenerationStats(
                    prompt_tokens=int(prompt),
                    completion_tokens=int(completion),
                    prompt_eval_seconds=float(prompt_s),
                    eval_seconds=float(eval_s),
                    cached_prompt_tokens=int(cached),
                ),
                served_by=data.get("served_by"),
                tool_calls=tuple(ToolCall(id=str(i), name=str(n), arguments=str(a)) for i, n, a in data["calls"]),
                notes=tuple((str(k), str(v)) for k, v in data["notes"]),
                stop_sequence=None if data.get("stop") is None else str(data["stop"]),
            )
        except (ValueError, KeyError, TypeError):
            return None


class Backend(Protocol):
    """Where entries live. A storage fault may raise: ResponseCache turns it into a miss (get)
    or a skipped store (put); a backend that can do better (Redis backs off) does."""

    name: str

    async def get(self, key: str) -> CachedAnswer | None: ...

    async def put(self, key: str, answer: CachedAnswer, blob: bytes) -> None: ...

    async def aclose(self) -> None: ...
