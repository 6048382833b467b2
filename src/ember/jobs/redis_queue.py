"""RedisLineQueue: batch lines in Redis Streams, so several ember nodes work one batch together.

Where things live (KEY = prefix + "{batch_id}", the braces a cluster hash tag):
- KEY:lines     a stream per batch, one entry per line; consumer group "ember". An entry is
                waiting until a node reads it (XREADGROUP), then pending in that node's consumer
                until `complete` acks and deletes it. So waiting = XLEN - pending.
- KEY:results   a hash, line index -> [custom_id, failed, text]: written with HSETNX, so the
                first finished copy of a line is the one kept, whichever node ran it.
- KEY:meta      a hash: total, completed, failed. Its existence means "enqueued whole".
- prefix + "active"  a sorted set of the batches with lines, by enqueue time: claim reads the
                oldest batch first.

The nodes share nothing else: the batch record, its files and its output stay on the node that
created it (its own EMBER_HOME), which builds the output from `results` at finalizing. Another
node only runs lines; it never sees the batch in its own /v1/batches.

A node that dies leaves its lines pending in its consumer. `reclaim` moves lines pending longer
than `min_idle` back to waiting (XAUTOCLAIM, then a fresh entry with attempts + 1), and a live
node keeps its own claims fresh: every `min_idle / 3` it re-claims what it holds to itself
(XCLAIM JUSTID resets their idle time), so only a silent node's lines go idle, however long a
line takes to run. The idle time a caller asks for never goes below `min_idle`: the runner's
"every claim is a dead process's" at start holds for one node, not for a node among others.
Both happen in the queue's own background task (started by the first `claim`), so the take-over
needs nothing of the runner beyond claiming: every node that claims also reclaims.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Sequence
from contextlib import suppress
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from ember.jobs.records import Claim, Line, LineCounts, LineResult

log = logging.getLogger("ember.jobs")

KEY_PREFIX = "ember:batch:"
GROUP = "ember"
RECLAIMER = "ember-reclaim"  # the consumer XAUTOCLAIM hands idle lines to, for a moment
DEFAULT_MIN_IDLE = 60.0
_ENQUEUE_CHUNK = 500
_RECLAIM_COUNT = 200

# KEYS: lines, results, meta. ARGV: entry id, index, result JSON, 'completed' or 'failed'.
# 1 when this result was stored; 0 when the line had a result already or the batch is gone.
_COMPLETE = """
if redis.call('EXISTS', KEYS[3]) == 0 then return 0 end
local added = redis.call('HSETNX', KEYS[2], ARGV[2], ARGV[3])
redis.call('XACK', KEYS[1], 'ember', ARGV[1])
redis.call('XDEL', KEYS[1], ARGV[1])
if added == 1 then redis.call('HINCRBY', KEYS[3], ARGV[4], 1) end
return added
"""

# KEYS: lines. ARGV: min idle ms, count. Lines pending longer than that become fresh waiting
# entries (attempts + 1); the old entries are acked and deleted. Returns how many.
_RECLAIM = """
local moved = 0
local cursor = '0-0'
repeat
  local r = redis.call('XAUTOCLAIM', KEYS[1], 'ember', 'ember-reclaim', ARGV[1], cursor, 'COUNT', ARGV[2])
  cursor = r[1]
  for _, entry in ipairs(r[2]) do
    local id, fields = entry[1], entry[2]
    redis.call('XACK', KEYS[1], 'ember', id)
    redis.call('XDEL', KEYS[1], id)
    if fields then
      local copy = {}
      for i = 1, #fields, 2 do
        local value = fields[i + 1]
        if fields[i] == 'attempts' then value = tostring(tonumber(value) + 1) end
        copy[#copy + 1] = fields[i]
        copy[#copy + 1] = value
      end
      redis.call('XADD', KEYS[1], '*', unpack(copy))
      moved = moved + 1
    end
  end
until cursor == '0-0' or moved >= tonumber(ARGV[2]) * 10
return moved
"""

# KEYS: lines. Deletes every entry no node holds (the waiting ones); returns how many.
_DROP = """
local held = {}
local pending = redis.call('XPENDING', KEYS[1], 'ember', '-', '+', 1000000)
for _, p in ipairs(pending) do held[p[1]] = true end
local dropped = 0
for _, entry in ipairs(redis.call('XRANGE', KEYS[1], '-', '+')) do
  if not held[entry[1]] then
    redis.call('XDEL', KEYS[1], entry[1])
    dropped = dropped + 1
  end
end
return dropped
"""


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class RedisLineQueue:
    name = "redis"

    def __init__(self, url: str, *, min_idle: float = DEFAULT_MIN_IDLE, prefix: str = KEY_PREFIX) -> None:
        self._redis = aioredis.Redis.from_url(url, socket_connect_timeout=2.0, socket_timeout=10.0)
        self.prefix = prefix
        self._active = prefix + "active"
        self.min_idle = min_idle
        self._complete = self._redis.register_script(_COMPLETE)
        self._reclaim = self._redis.register_script(_RECLAIM)
        self._drop = self._redis.register_script(_DROP)
        # Claims this process holds: (lines key, entry id) -> consumer, refreshed by the heartbeat.
        self._held: dict[tuple[str, str], str] = {}
        self._heartbeat: asyncio.Task[None] | None = None

    def _key(self, batch_id: str, part: str) -> str:
        return f"{self.prefix}{{{batch_id}}}:{part}"

    async def _batches(self) -> list[str]:
        members: Any = await self._redis.zrange(self._active, 0, -1)
        return [_text(member) for member in members]

    # -- LineQueue ------------------------------------------------------------------------------

    async def enqueue(self, batch_id: str, lines: Sequence[Line]) -> None:
        lines_key, meta = self._key(batch_id, "lines"), self._key(batch_id, "meta")
        if not await self._redis.exists(meta):
            # A stream without meta is what a crash mid-enqueue leaves: no node reads it (the
            # batch is not active yet), so it is safe to start again.
            await self._redis.delete(lines_key, self._key(batch_id, "results"))
            for start in range(0, len(lines), _ENQUEUE_CHUNK):
                async with self._redis.pipeline(transaction=True) as pipe:
                    for line in lines[start : start + _ENQUEUE_CHUNK]:
                        pipe.xadd(lines_key, _fields(line))
                    await pipe.execute()
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.xgroup_create(lines_key, GROUP, id="0", mkstream=True)
                pipe.hset(meta, mapping={"total": len(lines), "completed": 0, "failed": 0})
                await pipe.execute()
        # ZADD NX: a second enqueue keeps the batch's place in line.
        await self._redis.zadd(self._active, {batch_id: time.time()}, nx=True)

    async def claim(self, worker: str, count: int) -> list[Claim]:
        self._start_heartbeat()
        claims: list[Claim] = []
        for batch_id in await self._batches():
            if len(claims) >= count:
                break
            lines_key = self._key(batch_id, "lines")
            try:
                reply: Any = await self._redis.xreadgroup(GROUP, worker, {lines_key: ">"}, count=count - len(claims))
            except ResponseError as exc:
                if "NOGROUP" in str(exc):
                    continue  # forgotten between ZRANGE and here
                raise
            entries: list[tuple[bytes, dict[bytes, bytes]]] = [entry for _, batch in reply or [] for entry in batch]
            for entry_id, fields in entries:
                token = _text(entry_id)
                claims.append(_claim(batch_id, token, fields))
                self._held[(lines_key, token)] = worker
        return claims

    async def complete(self, claim: Claim, result: LineResult) -> bool:
        batch_id = claim.line.batch_id
        lines_key = self._key(batch_id, "lines")
        self._held.pop((lines_key, claim.token), None)
        stored = json.dumps([result.custom_id, result.failed, result.text])
        added = await self._complete(
            keys=[lines_key, self._key(batch_id, "results"), self._key(batch_id, "meta")],
            args=[claim.token, result.index, stored, "failed" if result.failed else "completed"],
        )
        return bool(added)

    async def reclaim(self, idle_seconds: float) -> int:
        idle_ms = int(max(idle_seconds, self.min_idle) * 1000)
        moved = 0
        for batch_id in await self._batches():
            try:
                moved += int(await self._reclaim(keys=[self._key(batch_id, "lines")], args=[idle_ms, _RECLAIM_COUNT]))
            except ResponseError as exc:
                if "NOGROUP" not in str(exc):
                    raise
        if moved:
            log.info("took over %d batch lines another node left unfinished", moved)
        return moved

    async def counts(self, batch_id: str) -> LineCounts:
        lines_key = self._key(batch_id, "lines")
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hmget(self._key(batch_id, "meta"), ["completed", "failed"])
            pipe.xlen(lines_key)
            pipe.xpending(lines_key, GROUP)
            try:
                (completed, failed), length, pending = await pipe.execute()
            except ResponseError:  # no group: never enqueued, or forgotten
                return LineCounts()
        running = int(pending["pending"]) if pending else 0
        return LineCounts(
            waiting=max(0, int(length) - running),
            running=running,
            completed=int(completed or 0),
            failed=int(failed or 0),
        )

    async def waiting(self) -> int:
        total = 0
        for batch_id in await self._batches():
            total += (await self.counts(batch_id)).waiting
        return total

    async def results(self, batch_id: str) -> list[LineResult]:
        stored = await self._redis.hgetall(self._key(batch_id, "results"))
        results = []
        for index, value in stored.items():
            custom_id, failed, text = json.loads(value)
            results.append(LineResult(batch_id, int(index), custom_id, bool(failed), text))
        results.sort(key=lambda result: result.index)
        return results

    async def drop(self, batch_id: str) -> int:
        try:
            return int(await self._drop(keys=[self._key(batch_id, "lines")]))
        except ResponseError as exc:
            if "NOGROUP" in str(exc):
                return 0
            raise

    async def forget(self, batch_id: str) -> None:
        await self._redis.zrem(self._active, batch_id)
        await self._redis.delete(*(self._key(batch_id, part) for part in ("lines", "results", "meta")))
        lines_key = self._key(batch_id, "lines")
        self._held = {key: worker for key, worker in self._held.items() if key[0] != lines_key}

    async def aclose(self) -> None:
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            with suppress(asyncio.CancelledError):
                await self._heartbeat
            self._heartbeat = None
        await self._redis.aclose()
        self._held.clear()

    # -- keeping this node's claims fresh, taking over a dead node's ------------------------------------------

    def _start_heartbeat(self) -> None:
        if self._heartbeat is None or self._heartbeat.done():
            self._heartbeat = asyncio.create_task(self._beat(), name="ember-batch-heartbeat")

    async def _beat(self) -> None:
        while True:
            await asyncio.sleep(self.min_idle / 3)
            try:
                await self.refresh()
                await self.reclaim(self.min_idle)
            except Exception as exc:  # Redis away: the claims may go idle; another node then runs them
                log.warning("could not refresh or reclaim batch lines: %s", exc)

    async def refresh(self) -> None:
        """Reset the idle time of every line this process holds (XCLAIM to its own consumer)."""
        by_owner: dict[tuple[str, str], list[str | bytes | int | memoryview[int]]] = {}
        for (lines_key, entry_id), worker in list(self._held.items()):
            by_owner.setdefault((lines_key, worker), []).append(entry_id)
        for (lines_key, worker), ids in by_owner.items():
            with suppress(ResponseError):  # the batch was forgotten meanwhile
                await self._redis.xclaim(lines_key, GROUP, worker, 0, ids, justid=True)


def _fields(line: Line) -> dict[Any, Any]:
    return {
        "index": line.index,
        "custom_id": line.custom_id,
        "owner": line.owner,
        "url": line.url,
        "body": line.body,
        "deadline": line.deadline,
        "attempts": 0,
    }


def _claim(batch_id: str, token: str, raw: dict[bytes, bytes]) -> Claim:
    fields = {_text(key): _text(value) for key, value in raw.items()}
    line = Line(
        batch_id=batch_id,
        index=int(fields["index"]),
        custom_id=fields["custom_id"],
        owner=fields["owner"],
        url=fields["url"],
        body=fields["body"],
        deadline=float(fields["deadline"]),
    )
    return Claim(line=line, token=token, attempts=int(fields.get("attempts", "0")))
