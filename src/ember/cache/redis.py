"""The cache in Redis: replicas pointed at one Redis share their answers.

Redis being down must cost a request nothing but the cache: a fault is a miss, logged once per
outage, and for a short while afterwards Redis is not asked at all, so requests do not each
wait out a connect timeout.
"""

from __future__ import annotations

import logging
import time

import redis.asyncio as aioredis

from ember.cache.entry import CachedAnswer

log = logging.getLogger("ember.cache")

KEY_PREFIX = "ember:cache:"
# Short timeouts: a cache that answers slowly is worse than none.
_CONNECT_TIMEOUT = 0.5
_TIMEOUT = 1.0
# After a fault, skip Redis this long before trying again.
_RETRY_AFTER = 2.0


class RedisBackend:
    name = "redis"

    def __init__(self, url: str, *, ttl: float | None, prefix: str = KEY_PREFIX) -> None:
        self._client = aioredis.Redis.from_url(url, socket_connect_timeout=_CONNECT_TIMEOUT,
                                               socket_timeout=_TIMEOUT)
        self._url = url
        self._ttl_ms = None if ttl is None else max(1, int(ttl * 1000))
        self._prefix = prefix
        self._down_until = 0.0
        self._down = False  # inside an outage (logged once)

    async def get(self, key: str) -> CachedAnswer | None:
        if self._skipping():
            return None
        try:
            blob = await self._client.get(self._prefix + key)
        except Exception as exc:  # a connection, timeout or protocol fault: a miss
            self._fault(exc)
            return None
        self._recovered()
        return None if blob is None else CachedAnswer.decode(blob)

    async def put(self, key: str, answer: CachedAnswer, blob: bytes) -> None:
        if self._skipping():
            return
        try:
            await self._client.set(self._prefix + key, blob, px=self._ttl_ms)
        except Exception as exc:
            self._fault(exc)
            return
        self._recovered()

    def _skipping(self) -> bool:
        return self._down and time.monotonic() < self._down_until

    def _fault(self, exc: Exception) -> None:
        if not self._down:
            log.warning("response cache: Redis at %s failed (%s: %s); serving without the cache "
                        "until it answers again", _safe(self._url), type(exc).__name__, exc)
        self._down = True
        self._down_until = time.monotonic() + _RETRY_AFTER

    def _recovered(self) -> None:
        if self._down:
            log.info("response cache: Redis at %s answers again", _safe(self._url))
            self._down = False

    async def aclose(self) -> None:
        await self._client.aclose()


def _safe(url: str) -> str:
    """The URL without a password, for logs."""
    scheme, sep, rest = url.partition("://")
    if "@" in rest:
        rest = "***@" + rest.rpartition("@")[2]
    return scheme + sep + rest
