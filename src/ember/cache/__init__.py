"""The response cache for deterministic requests: memory LRU, SQLite or Redis.

A request is cached when its answer is fixed by the request (temperature 0, or a seed) and the
client did not send `Cache-Control: no-cache`. The key is the normalized request and the
model's content digest (keys.py); the value is the whole answer (entry.py), replayed as a
stream of events on a hit (replay.py). The gateway asks `key_for`, then `get`, and on a miss
wraps the live generation with `record`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from ember.cache.entry import Backend, CachedAnswer
from ember.cache.keys import cache_key
from ember.cache.replay import recording, replay
from ember.config import Settings
from ember.errors import ConfigError
from ember.services.generation import Generation
from ember.services.types import TextRequest

__all__ = ["CacheStats", "CachedAnswer", "ResponseCache", "build_cache"]

log = logging.getLogger("ember.cache")

# One answer larger than this is served but not stored.
MAX_ENTRY_BYTES = 1024**2


@dataclass
class CacheStats:
    """Counters for /metrics and `ember` status pages."""

    backend: str
    hits: int = 0
    misses: int = 0
    stores: int = 0
    skipped_large: int = 0  # answers over MAX_ENTRY_BYTES
    errors: int = 0  # storage faults, each served as a miss or a skipped store


class ResponseCache:
    def __init__(self, backend: Backend, *, default_num_ctx: int, max_entry_bytes: int = MAX_ENTRY_BYTES) -> None:
        self.backend = backend
        self._default_num_ctx = default_num_ctx
        self._max_entry_bytes = max_entry_bytes
        self.stats = CacheStats(backend=backend.name)

    def key_for(self, request: TextRequest, digest: Callable[[], str]) -> str | None:
        return cache_key(request, digest, default_num_ctx=self._default_num_ctx)

    async def get(self, key: str, request: TextRequest) -> Generation | None:
        try:
            answer = await self.backend.get(key)
        except Exception:  # a storage fault must never fail the request
            self._fault("read")
            answer = None
        if answer is None:
            self.stats.misses += 1
            return None
        self.stats.hits += 1
        return replay(answer)

    def record(self, key: str, generation: Generation) -> Generation:
        async def store(answer: CachedAnswer) -> None:
            blob = answer.encode()
            if len(blob) > self._max_entry_bytes:
                self.stats.skipped_large += 1
                return
            try:
                await self.backend.put(key, answer, blob)
            except Exception:
                self._fault("write")
                return
            self.stats.stores += 1

        return recording(generation, store, max_chars=self._max_entry_bytes)

    def _fault(self, what: str) -> None:
        if self.stats.errors == 0:  # the first with its traceback; counted after that
            log.exception("response cache (%s): %s failed; serving without it", self.backend.name, what)
        self.stats.errors += 1

    def describe(self) -> dict[str, Any]:
        return asdict(self.stats)

    async def aclose(self) -> None:
        await self.backend.aclose()


def build_cache(settings: Settings, telemetry: Any = None) -> ResponseCache | None:
    """The cache the settings ask for, or None when it is off.

    telemetry is accepted for the app's wiring; metrics read `ResponseCache.stats` at scrape time.
    """
    if settings.cache == "off" or settings.cache_ttl == 0:  # a zero TTL keeps nothing
        return None
    ttl = None if settings.cache_ttl < 0 else settings.cache_ttl  # negative: forever
    backend: Backend
    if settings.cache == "memory":
        from ember.cache.memory import MemoryBackend

        backend = MemoryBackend(max_entries=settings.cache_max_entries, ttl=ttl)
    elif settings.cache == "sqlite":
        from ember.cache.sqlite import SQLiteBackend

        backend = SQLiteBackend(settings.state_dir / "cache.db", ttl=ttl, max_entries=settings.cache_max_entries)
    else:
        if not settings.redis_url:
            raise ConfigError('cache = "redis" needs redis_url (EMBER_REDIS_URL)')
        from ember.cache.redis import RedisBackend

        backend = RedisBackend(settings.redis_url, ttl=ttl, max_entries=settings.cache_max_entries)
    log.debug("response cache: %s, ttl %s", backend.name, ttl)
    return ResponseCache(backend, default_num_ctx=settings.num_ctx)
