"""The fleet registry in Redis, and the gateway's table of live nodes read from it.

Layout (all keys under the fleet's prefix, `ember:fleet:` by default):
- `<prefix>node:<node id>`: a node's signed record (fleet/record.py), SET with the node's TTL,
  so Redis itself forgets a node that stopped heartbeating;
- `<prefix>nodes`: a set of the node ids that have announced, so a gateway reads the fleet with
  one SMEMBERS and one MGET instead of SCANning a keyspace it may share with limits and caches.
  Ids whose key expired are taken out of the set by the gateway that notices.

Invariants:
- `FleetRegistry` is the `FleetView` the router reads: `nodes()`, `candidates()` and `models()`
  do no I/O; a background task re-reads Redis every `refresh` seconds and swaps the table whole.
- Only a record that verified (signature, id = key fingerprint, fresh, sequence not older than
  the last accepted) and whose node is admitted (its id in the allowlist, a valid join proof, or
  this node's own id) becomes a NodeInfo. Everything else is logged once per (id, reason) and
  kept in `refused()` for GET /admin/fleet; it never reaches the router.
- A node leaves the table when its key expires or its last heartbeat is older than its TTL,
  whichever the gateway sees first, also while Redis cannot be reached.
- The table the router sees leaves out this node itself (its own models are served by the
  local provider; routing to itself over HTTP would come back to the same gateway). `members()`
  has every node, itself included, for listing.
- Enrolled nodes (fleet/enrolled.py) are trusted by config: they join the table while they answer
  and leave it when they do not.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from ember.fleet.config import FleetConfig, redacted_url
from ember.fleet.enrolled import EnrolledNodes
from ember.fleet.periodic import Periodic
from ember.fleet.record import NodeRecord, Refused, proves_token, verify
from ember.fleet.types import NodeInfo

log = logging.getLogger("ember.fleet")

MAX_REFUSALS = 256  # refusals remembered (for the log's once-only rule and /admin/fleet)
REFUSAL_MEMORY_S = 600.0  # a refused record not seen again for this long is forgotten


def node_key(prefix: str, node_id: str) -> str:
    return f"{prefix}node:{node_id}"


def index_key(prefix: str) -> str:
    return f"{prefix}nodes"


def connect(url: str) -> aioredis.Redis:
    # Short timeouts: a registry that does not answer must not stall a heartbeat or a refresh
    # for longer than a TTL is worth.
    return aioredis.Redis.from_url(url, socket_timeout=2.0, socket_connect_timeout=2.0)


@dataclass(frozen=True)
class Refusal:
    node_id: str
    reason: str
    at: float


class FleetRegistry:
    def __init__(
        self,
        config: FleetConfig,
        redis: aioredis.Redis | None,
        *,
        self_id: str | None = None,
        enrolled: EnrolledNodes | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self._redis = redis
        self.self_id = self_id
        self._enrolled = enrolled
        self._clock = clock
        self._token = config.join_token()
        self._allowed = frozenset(config.allowlist)
        self._members: dict[str, NodeInfo] = {}  # verified ember nodes, this one included
        self._expires: dict[str, float] = {}  # node id -> when its last heartbeat runs out
        self._last_seq: dict[str, int] = {}  # node id -> the last sequence number accepted
        self._accepted_raw: dict[str, bytes | str] = {}  # node id -> its accepted record's bytes, while a member
        self._refusals: dict[tuple[str, str], Refusal] = {}
        self._redis_down = False
        self._refresher = Periodic("fleet-registry", config.refresh, self.refresh, "refreshing the registry")
        if config.reads_registry and not self._allowed and self._token is None:
            log.warning(
                "fleet: no allowlist and no join token (%s is not set): only this node itself will be accepted",
                config.join_token_env,
            )

    # -- FleetView ------------------------------------------------------------------------------

    def nodes(self) -> Sequence[NodeInfo]:
        now = self._clock()
        own = [n for i, n in self._members.items() if i != self.self_id and self._expires.get(i, 0) >= now]
        return own + (self._enrolled.live() if self._enrolled is not None else [])

    def candidates(self, model: str) -> Sequence[NodeInfo]:
        serving = [n for n in self.nodes() if n.serves(model)]
        return sorted(serving, key=lambda n: model not in n.resident)  # stable: resident first

    def models(self) -> Sequence[str]:
        return sorted({m for n in self.nodes() for m in n.resident | n.stored})

    # -- for listing and for the router's requests ----------------------------------------------

    def members(self) -> list[NodeInfo]:
        """Every live node, this one included, ember nodes first, then enrolled ones."""
        now = self._clock()
        own = sorted(
            (n for i, n in self._members.items() if self._expires.get(i, 0) >= now), key=lambda n: (n.name, n.node_id)
        )
        return own + (self._enrolled.live() if self._enrolled is not None else [])

    def enrolled_down(self) -> list[tuple[str, str]]:
        """(name, why) of each enrolled node that does not answer now."""
        return self._enrolled.down() if self._enrolled is not None else []

    def refused(self) -> list[Refusal]:
        return sorted(self._refusals.values(), key=lambda r: r.at, reverse=True)

    def api_key(self, node: NodeInfo) -> str | None:
        """The key to send to `node`: an enrolled node's own, or the fleet's key for its members."""
        if self._enrolled is not None and node.node_id.startswith("enrolled:"):
            return self._enrolled.api_key(node.node_id)
        return self.config.node_api_key()

    # -- running --------------------------------------------------------------------------------

    async def start(self) -> None:
        if self._enrolled is not None:
            await self._enrolled.start()
        if self._redis is not None and self.config.reads_registry:
            await self.refresh()  # a first table before the server takes requests
            self._refresher.start()

    async def aclose(self) -> None:
        await self._refresher.stop()
        if self._enrolled is not None:
            await self._enrolled.aclose()

    async def refresh(self) -> None:
        """Read every record, keep the ones that verify and are admitted, drop the expired."""
        assert self._redis is not None
        prefix = self.config.prefix
        try:
            members = await self._redis.smembers(index_key(prefix))
            ids = sorted(m.decode(errors="replace") if isinstance(m, bytes) else str(m) for m in members)
            values = await self._redis.mget([node_key(prefix, i) for i in ids]) if ids else []
        except (RedisError, OSError) as exc:
            if not self._redis_down:
                log.warning(
                    "fleet: the registry at %s does not answer (%s); nodes drop out as their TTL ends",
                    redacted_url(self.config.join),
                    exc,
                )
                self._redis_down = True
            self._drop_expired()
            return
        if self._redis_down:
            log.info("fleet: the registry answers again")
            self._redis_down = False
        now = self._clock()
        gone = []
        for key_id, raw in zip(ids, values, strict=True):
            if raw is None:
                gone.append(key_id)
                continue
            if key_id in self._members and self._accepted_raw.get(key_id) == raw:
                # The very bytes accepted last time (no heartbeat since): its signature and
                # admission stand, and its age is _expires' to judge. Verifying costs ~0.2 ms.
                continue
            outcome = verify(raw, now=now, last_seq=self._last_seq.get(key_id))
            if isinstance(outcome, NodeRecord) and outcome.node_id != key_id:
                outcome = Refused(key_id, f"stored under another node's key (its record says {outcome.node_id[:16]})")
            if isinstance(outcome, NodeRecord) and not self._admitted(outcome):
                outcome = Refused(key_id, "not admitted: not in the allowlist and no valid join token")
            if isinstance(outcome, Refused):
                # A node's last good record still counts until its TTL: one bad read (or a
                # forger writing under its id) must not pull it out of the table early. An
                # out-of-date record of a node that was live is its last one (it stopped); one
                # that never was is worth saying (its clock may be off by more than the TTL).
                if not outcome.expired or key_id not in self._last_seq:
                    self._refuse(key_id, outcome.reason, now)
                continue
            self._last_seq[key_id] = outcome.seq
            self._expires[key_id] = outcome.ts + outcome.ttl
            self._accepted_raw[key_id] = raw
            if key_id not in self._members:
                log.info("fleet: node %s (%s) joined at %s", outcome.name, key_id[:16], outcome.base_url)
            self._members[key_id] = outcome.info()
        if gone:
            with contextlib.suppress(RedisError, OSError):
                await self._redis.srem(index_key(prefix), *gone)
        for key in [k for k, r in self._refusals.items() if r.at < now - REFUSAL_MEMORY_S]:
            del self._refusals[key]
        # A node whose key is gone left cleanly (or Redis expired it): out now, not at its TTL.
        present = {key_id for key_id, raw in zip(ids, values, strict=True) if raw is not None}
        for node_id in [i for i in self._members if i not in present]:
            self._expires[node_id] = 0.0
        self._drop_expired()

    def _admitted(self, record: NodeRecord) -> bool:
        if record.node_id == self.self_id or record.node_id in self._allowed:
            return True
        return self._token is not None and proves_token(record.join_proof, self._token, record.public_key)

    def _refuse(self, node_id: str, reason: str, now: float) -> None:
        key = (node_id, reason)
        if key not in self._refusals:
            log.warning("fleet: refused the record under node id %s: %s", node_id[:16], reason)
            if len(self._refusals) >= MAX_REFUSALS:
                oldest = min(self._refusals.values(), key=lambda r: r.at)
                del self._refusals[(oldest.node_id, oldest.reason)]
        self._refusals[key] = Refusal(node_id, reason, now)

    def _drop_expired(self) -> None:
        now = self._clock()
        for node_id in [i for i, until in self._expires.items() if until < now]:
            node = self._members.pop(node_id, None)
            del self._expires[node_id]
            self._accepted_raw.pop(node_id, None)
            if node is not None:
                log.info("fleet: node %s (%s) left the table", node.name, node_id[:16])
