"""The same admission as limits.py, shared by every replica through Redis.

One Lua script decides and commits a request atomically (budget, tokens, concurrency, requests),
on Redis's clock, so replicas with skewed clocks still agree. Concurrency slots are leases in a
sorted set that expire, so a replica that dies cannot hold its slots forever. Keys carry the key
name as a hash tag, so one script's keys share a cluster slot.

When Redis fails the guard falls back to the in-memory limiter; a probe pings until it is back.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Callable, Coroutine
from contextlib import suppress
from pathlib import Path

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from ember.guard.budgets import Spend, has_budget, judge, spent_in_log, window
from ember.guard.keys import KeyRecord
from ember.guard.limits import Admission, rate_headers

log = logging.getLogger("ember.guard")

LEASE_MS = 600_000  # a request holding a slot longer than this loses it (a dead replica's slots free up)
PROBE_INTERVAL = 1.0

# Reply: {ok, reason, retry_ms, req_remaining, req_reset_ms, tok_remaining, tok_reset_ms}
# reason: 0 ok, 1 token budget, 2 USD budget, 3 tpm, 4 concurrency, 5 rpm.
_ADMIT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local rpm, tpm, conc = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local btok, busd = tonumber(ARGV[4]), tonumber(ARGV[5])
local minute = 60000
if btok >= 0 or busd >= 0 then
  if redis.call('EXISTS', KEYS[4]) == 0 then
    redis.call('HSET', KEYS[4], 'tokens', ARGV[8], 'cost', ARGV[9])
    if tonumber(ARGV[10]) > 0 then redis.call('EXPIRE', KEYS[4], ARGV[10]) end
  end
  local spent = redis.call('HMGET', KEYS[4], 'tokens', 'cost')
  if btok >= 0 and tonumber(spent[1]) >= btok then return {0, 1, 0, -1, 0, -1, 0} end
  if busd >= 0 and tonumber(spent[2]) >= busd then return {0, 2, 0, -1, 0, -1, 0} end
end
local tok_rem, tok_reset = -1, 0
if tpm > 0 then
  local backlog = math.max(0, tonumber(redis.call('GET', KEYS[2]) or '0') - now)
  tok_rem = math.max(0, math.floor((minute - backlog) * tpm / minute))
  tok_reset = math.floor(backlog)
  if backlog >= minute then return {0, 3, math.floor(backlog - minute) + 1, -1, 0, tok_rem, tok_reset} end
end
if conc > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
  if redis.call('ZCARD', KEYS[3]) >= conc then return {0, 4, 1000, -1, 0, tok_rem, tok_reset} end
end
local req_rem, req_reset = -1, 0
if rpm > 0 then
  local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
  local new_tat = math.max(tat, now) + minute / rpm
  if new_tat - now > minute then
    local backlog = math.max(0, tat - now)
    return {0, 5, math.ceil(new_tat - now - minute), math.max(0, math.floor((minute - backlog) * rpm / minute)),
            math.floor(backlog), tok_rem, tok_reset}
  end
  redis.call('SET', KEYS[1], tostring(new_tat), 'PX', math.ceil(new_tat - now) + 1000)
  req_rem = math.max(0, math.floor((minute - (new_tat - now)) * rpm / minute + 1e-9))
  req_reset = math.floor(new_tat - now)
end
if conc > 0 then
  redis.call('ZADD', KEYS[3], now + tonumber(ARGV[7]), ARGV[6])
  redis.call('PEXPIRE', KEYS[3], tonumber(ARGV[7]) + 1000)
end
return {1, 0, 0, req_rem, req_reset, tok_rem, tok_reset}
"""

_RECORD = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local tpm, tokens = tonumber(ARGV[1]), tonumber(ARGV[2])
if tpm > 0 and tokens > 0 then
  local tat = tonumber(redis.call('GET', KEYS[1]) or '0')
  local new_tat = math.max(tat, now) + tokens * 60000 / tpm
  redis.call('SET', KEYS[1], tostring(new_tat), 'PX', math.ceil(new_tat - now) + 1000)
end
if ARGV[5] == '1' then
  redis.call('HINCRBY', KEYS[2], 'tokens', tokens)
  redis.call('HINCRBYFLOAT', KEYS[2], 'cost', ARGV[3])
  if tonumber(ARGV[4]) > 0 and redis.call('TTL', KEYS[2]) < 0 then redis.call('EXPIRE', KEYS[2], ARGV[4]) end
end
return 1
"""

_REASONS = {1: "budget", 2: "budget", 3: "tpm", 4: "concurrency", 5: "rpm"}


def _keys(key: KeyRecord, period_id: str) -> list[str]:
    base = f"ember:guard:{{{key.name}}}"
    return [f"{base}:rpm", f"{base}:tpm", f"{base}:active", f"{base}:budget:{period_id}"]


class RedisLimiter:
    def __init__(self, url: str, usage_db: Path | None = None, on_state: Callable[[bool], None] | None = None) -> None:
        self.url = url
        self.usage_db = usage_db
        self.on_state = on_state
        self.client = aioredis.Redis.from_url(
            url, socket_timeout=0.5, socket_connect_timeout=0.5, retry_on_timeout=False
        )
        self._admit = self.client.register_script(_ADMIT)
        self._record = self.client.register_script(_RECORD)
        self.up = True
        self._probe: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._seeds: dict[tuple[str, str], Spend] = {}

    def _seed(self, key: KeyRecord, period_id: str, start: float) -> Spend:
        seed = self._seeds.get((key.name, period_id))
        if seed is None:
            seed = spent_in_log(self.usage_db, key.name, start) if self.usage_db else Spend()
            self._seeds[(key.name, period_id)] = seed
        return seed

    async def admit(self, key: KeyRecord, wall: float) -> Admission:
        """Raises RedisError when Redis cannot answer; the caller falls back and calls mark_down."""
        win = window(key.budget_period, wall)
        seed = self._seed(key, win.id, win.start) if has_budget(key) else Spend()
        ttl = 0 if win.end is None else int(win.end - wall) + 86400
        lease = secrets.token_hex(8)
        reply = await self._admit(
            keys=_keys(key, win.id),
            args=[
                key.rpm or 0,
                key.tpm or 0,
                key.max_concurrent or 0,
                -1 if key.budget_tokens is None else key.budget_tokens,
                -1 if key.budget_usd is None else key.budget_usd,
                lease,
                LEASE_MS,
                seed.tokens,
                repr(seed.cost),
                ttl,
            ],
        )
        ok, reason, retry_ms, req_rem, req_reset, tok_rem, tok_reset = (int(v) for v in reply)
        req = (req_rem, req_reset / 1000) if req_rem >= 0 else None
        tok = (tok_rem, tok_reset / 1000) if tok_rem >= 0 else None
        headers = rate_headers(key, req, tok)
        if ok:
            return Admission(True, headers=headers, lease=lease if key.max_concurrent else None)
        if reason in (1, 2):
            # The same wording as in memory: judge() builds it from an exhausted spend.
            spent = (
                Spend(tokens=key.budget_tokens or 0, cost=key.budget_usd or 0.0)
                if reason == 1
                else Spend(cost=key.budget_usd or 0.0)
            )
            verdict = judge(key, spent, win, wall)
            return Admission(False, "budget", verdict.message, verdict.retry_after)
        messages = {
            3: f"this key's limit of {key.tpm} tokens per minute is reached",
            4: f"this key's limit of {key.max_concurrent} concurrent requests is reached",
            5: f"this key's limit of {key.rpm} requests per minute is reached",
        }
        return Admission(False, _REASONS[reason], messages[reason], max(retry_ms, 1) / 1000, headers)

    def release(self, key: KeyRecord, lease: str) -> None:
        self._spawn(self._release(key, lease))

    async def _release(self, key: KeyRecord, lease: str) -> None:
        with suppress(RedisError):  # the lease expires by itself
            await self.client.zrem(_keys(key, "")[2], lease)

    def record(self, key: KeyRecord, tokens: int, cost: float, wall: float, fallback: Callable[[], None]) -> None:
        """Count a finished request's usage in Redis, in the background; `fallback` if Redis fails."""
        win = window(key.budget_period, wall)
        ttl = 0 if win.end is None else int(win.end - wall) + 86400
        keys = _keys(key, win.id)

        async def run() -> None:
            try:
                await self._record(
                    keys=[keys[1], keys[3]],
                    args=[key.tpm or 0, tokens, repr(cost), ttl, "1" if has_budget(key) else "0"],
                )
            except RedisError as exc:
                self.mark_down(exc)
                fallback()

        self._spawn(run())

    def _spawn(self, coro: Coroutine[object, object, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def mark_down(self, exc: BaseException) -> None:
        if self.up:
            self.up = False
            log.warning(
                "Redis at %s is unreachable (%s): limits and budgets are local to this replica until it is back",
                self.url,
                exc,
            )
            if self.on_state:
                self.on_state(False)
        if self._probe is None or self._probe.done():
            self._probe = asyncio.get_running_loop().create_task(self._wait_until_up())

    async def _wait_until_up(self) -> None:
        while not self.up:
            await asyncio.sleep(PROBE_INTERVAL)
            try:
                await self.client.ping()
            except RedisError:
                continue
            self.up = True
            log.warning("Redis at %s is back: limits and budgets are shared again", self.url)
            if self.on_state:
                self.on_state(True)

    async def aclose(self) -> None:
        if self._probe is not None:
            self._probe.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.client.aclose()
