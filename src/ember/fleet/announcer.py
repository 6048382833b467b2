"""The member side of a fleet: this node's signed record in the registry, kept fresh by heartbeats.

Invariants:
- The record is published once at start (before the server takes requests) and again every
  `heartbeat` seconds (ttl / 3 by default) with the node's live load, each time with a higher
  sequence number and a new signature; its Redis key carries the TTL, so a node that dies
  silently drops out of every gateway's table within it.
- On a clean shutdown the key is deleted at once, so gateways stop routing here before the TTL.
- A registry that does not answer is logged once (and once again when it answers); the node
  keeps serving and keeps trying every heartbeat.
- The load is read from this node's own parts (scheduler, store, recent stats) when the
  heartbeat is built: nothing extra runs per request.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from ember.fleet.config import FleetConfig, redacted_url
from ember.fleet.identity import NodeIdentity
from ember.fleet.periodic import Periodic
from ember.fleet.record import NodeRecord, Sequencer, join_proof
from ember.fleet.registry import index_key, node_key
from ember.fleet.types import NodeLoad
from ember.recent_stats import RecentStats
from ember.runtime.scheduler import Scheduler
from ember.services.models import ModelService

log = logging.getLogger("ember.fleet")


@dataclass(frozen=True)
class LocalStatus:
    resident: tuple[str, ...]
    stored: tuple[str, ...]
    load: NodeLoad


class LocalLoad:
    """What this node announces about itself, read from the scheduler, the store and the recent
    stats. Tokens per second are the completion tokens of the requests that ended since the last
    reading, over the time since then."""

    def __init__(
        self,
        scheduler: Scheduler,
        models: ModelService,
        recent: RecentStats,
        num_parallel: int,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._scheduler = scheduler
        self._models = models
        self._recent = recent
        self._num_parallel = num_parallel
        self._clock = clock
        self._last = (clock(), recent.totals.tokens_out)

    def __call__(self) -> LocalStatus:
        runners = self._scheduler.running()
        now, tokens = self._clock(), self._recent.totals.tokens_out
        then, before = self._last
        self._last = (now, tokens)
        rate = (tokens - before) / (now - then) if now > then else None
        return LocalStatus(
            resident=tuple(sorted({str(r.record.ref) for r in runners})),
            stored=tuple(str(r.ref) for r in self._models.list()),
            load=NodeLoad(
                # With nothing loaded, the slots the first model will get: the node is free.
                slots=sum(r.engine.parallel for r in runners) or self._num_parallel,
                busy=sum(r.slots_busy for r in runners),
                queue=sum(r.queued for r in runners),
                tokens_per_s=None if rate is None else round(rate, 2),
            ),
        )


class Announcer:
    def __init__(
        self,
        config: FleetConfig,
        identity: NodeIdentity,
        redis: aioredis.Redis,
        *,
        base_url: str,
        status: Callable[[], LocalStatus],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.identity = identity
        self._redis = redis
        self._base_url = base_url
        self._status = status
        self._clock = clock
        self._seq = Sequencer()
        token = config.join_token()
        self._proof = join_proof(token, identity.public_key) if token else None
        self._failing = False
        self._heartbeat = Periodic(
            "fleet-announcer", config.heartbeat_s, self.publish, "building this node's heartbeat"
        )
        self.last: NodeRecord | None = None  # the last record the registry took

    def record(self) -> NodeRecord:
        status = self._status()
        now = self._clock()
        return NodeRecord(
            node_id=self.identity.node_id,
            public_key=self.identity.public_key,
            name=self.config.node_name(),
            base_url=self._base_url,
            labels=dict(self.config.labels),
            resident=status.resident,
            stored=status.stored,
            load=status.load,
            seq=self._seq.next(now),
            ts=now,
            ttl=self.config.ttl,
            join_proof=self._proof,
        )

    async def publish(self) -> bool:
        """Write this node's record now; False (logged once) if the registry does not answer."""
        prefix = self.config.prefix
        record = self.record()
        value = record.signed(self.identity)
        try:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.set(node_key(prefix, self.identity.node_id), value, px=int(self.config.ttl * 1000))
                pipe.sadd(index_key(prefix), self.identity.node_id)
                await pipe.execute()
        except (RedisError, OSError) as exc:
            if not self._failing:
                log.warning(
                    "fleet: cannot announce this node to %s (%s); retrying every %g s",
                    redacted_url(self.config.join),
                    exc,
                    self.config.heartbeat_s,
                )
                self._failing = True
            return False
        if self._failing:
            log.info("fleet: announcing this node again")
            self._failing = False
        self.last = record
        return True

    async def start(self) -> None:
        if await self.publish():
            log.info(
                "fleet: announced node %s (%s) at %s",
                self.config.node_name(),
                self.identity.node_id[:16],
                self._base_url,
            )
        self._heartbeat.start()

    async def aclose(self) -> None:
        """Stop heartbeating and take the record out of the registry (a clean leave)."""
        await self._heartbeat.stop()
        prefix = self.config.prefix
        try:
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.delete(node_key(prefix, self.identity.node_id))
                pipe.srem(index_key(prefix), self.identity.node_id)
                await pipe.execute()
        except (RedisError, OSError) as exc:
            log.warning(
                "fleet: could not remove this node from the registry (%s); it drops out in %g s", exc, self.config.ttl
            )
