"""The in-process cache: an LRU of decoded answers, bounded in entries and in bytes."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from ember.cache.entry import CachedAnswer

# Entries times the per-entry cap could be a gigabyte; the bytes budget bounds the worst case.
DEFAULT_MAX_BYTES = 256 * 1024**2


@dataclass(slots=True)
class _Slot:
    answer: CachedAnswer
    expires: float | None  # when it expires, on the backend's clock; None: never
    size: int


class MemoryBackend:
    name = "memory"

    def __init__(
        self,
        *,
        max_entries: int,
        ttl: float | None,
        max_bytes: int = DEFAULT_MAX_BYTES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._clock = clock  # seconds; tests pass one they can advance
        self._slots: OrderedDict[str, _Slot] = OrderedDict()  # oldest use first
        self._max_entries = max_entries
        self._max_bytes = max_bytes
        self._ttl = ttl
        self._bytes = 0

    def __len__(self) -> int:
        return len(self._slots)

    async def get(self, key: str) -> CachedAnswer | None:
        slot = self._slots.get(key)
        if slot is None:
            return None
        if slot.expires is not None and slot.expires <= self._clock():
            self._drop(key)
            return None
        self._slots.move_to_end(key)
        return slot.answer

    async def put(self, key: str, answer: CachedAnswer, blob: bytes) -> None:
        if key in self._slots:
            self._drop(key)
        expires = None if self._ttl is None else self._clock() + self._ttl
        self._slots[key] = _Slot(answer, expires, len(blob))
        self._bytes += len(blob)
        while len(self._slots) > self._max_entries or self._bytes > self._max_bytes:
            self._drop(next(iter(self._slots)))

    def _drop(self, key: str) -> None:
        self._bytes -= self._slots.pop(key).size

    async def aclose(self) -> None:
        self._slots.clear()
        self._bytes = 0
