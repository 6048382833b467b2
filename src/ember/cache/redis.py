"""The cache in Redis: replicas pointed at one Redis share their answers.

At most `max_entries` answers are kept, least recently used first out: a sorted set ranks the
entries by last use (a shared counter, so every replica's uses order alike), and each put and
hit updates it and trims it in one Lua script, so replicas racing each other never leave more
entries than the limit. An entry that expired (TTL) leaves the ranking when it is next missed
or trimmed.

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
# Entries kept when no limit is given (EMBER_CACHE_MAX_ENTRIES's default).
DEFAULT_MAX_ENTRIES = 1024

# KEYS: the entry, the ranking (sorted set), the use counter.
# The entry's value, or nil; a hit moves the entry to the front, a miss drops it from the ranking.
_GET = """
local value = redis.call('GET', KEYS[1])
if value then
  redis.call('ZADD', KEYS[2], redis.call('INCR', KEYS[3]), KEYS[1])
else
  redis.call('ZREM', KEYS[2], KEYS[1])
end
return value
"""

# KEYS: the entry, the ranking, the use counter. ARGV: the value, the TTL in ms ('' for none),
# the most entries to keep. Stores, ranks first, then deletes the least recently used beyond
# the limit, 256 per DEL (Lua's unpack has a stack limit).
_PUT = """
if ARGV[2] == '' then
  redis.call('SET', KEYS[1], ARGV[1])
else
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
end
redis.call('ZADD', KEYS[2], redis.call('INCR', KEYS[3]), KEYS[1])
local surplus = redis.call('ZCARD', KEYS[2]) - tonumber(ARGV[3])
while surplus > 0 do
  local oldest = redis.call('ZRANGE', KEYS[2], 0, math.min(surplus, 256) - 1)
  if #oldest == 0 then break end
  redis.call('DEL', unpack(oldest))
  redis.call('ZREM', KEYS[2], unpack(oldest))
  surplus = surplus - #oldest
end
return 1
"""


class RedisBackend:
    name = "redis"

    def __init__(
        self, url: str, *, ttl: float | None, max_entries: int = DEFAULT_MAX_ENTRIES, prefix: str = KEY_PREFIX
    ) -> None:
        self._client = aioredis.Redis.from_url(url, socket_connect_timeout=_CONNECT_TIMEOUT, socket_timeout=_TIMEOUT)
        self._url = url
        self._ttl_ms = None if ttl is None else max(1, int(ttl * 1000))
        self._max_entries = max_entries
        self._prefix = prefix
        # '@' never appears in an entry's key (hex digests), so these cannot collide with one.
        self._ranking = prefix + "@lru"
        self._counter = prefix + "@uses"
        self._get = self._client.register_script(_GET)
        self._put = self._client.register_script(_PUT)
        self._down_until = 0.0
        self._down = False  # inside an outage (logged once)

    async def get(self, key: str) -> CachedAnswer | None:
        if self._skipping():
            return None
        try:
            blob = await self._get(keys=[self._prefix + key, self._ranking, self._counter])
        except Exception as exc:  # a connection, timeout or protocol fault: a miss
            self._fault(exc)
            return None
        self._recovered()
        return None if blob is None else CachedAnswer.decode(blob)

    async def put(self, key: str, answer: CachedAnswer, blob: bytes) -> None:
        if self._skipping():
            return
        try:
            ttl = "" if self._ttl_ms is None else str(self._ttl_ms)
            await self._put(
                keys=[self._prefix + key, self._ranking, self._counter], args=[blob, ttl, self._max_entries]
            )
        except Exception as exc:
            self._fault(exc)
            return
        self._recovered()

    def _skipping(self) -> bool:
        return self._down and time.monotonic() < self._down_until

    def _fault(self, exc: Exception) -> None:
        if not self._down:
            log.warning(
                "response cache: Redis at %s failed (%s: %s); serving without the cache until it answers again",
                _safe(self._url),
                type(exc).__name__,
                exc,
            )
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
