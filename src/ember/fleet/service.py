"""A node's part in a fleet, built from its config in the app's lifespan: the announcer (member),
the registry reader and the enrolled nodes (gateway), and their start and stop in order.

Invariants:
- Nothing here exists unless the fleet is configured (`[fleet]` with `join` or `[[fleet.nodes]]`,
  or `ember serve --join`); a node that is not in a fleet opens no Redis connection.
- Start: the registry's first read and the first announcement happen before the server takes
  requests, so `/v1/models` lists the fleet from the first request. Stop: the announcer leaves
  first (the key is deleted while the node still serves the requests in flight), then the reader.
"""

from __future__ import annotations

import ipaddress
import logging
from dataclasses import dataclass
from urllib.parse import urlsplit

import redis.asyncio as aioredis

from ember.config import Settings
from ember.fleet.announcer import Announcer, LocalLoad
from ember.fleet.config import FleetConfig
from ember.fleet.enrolled import EnrolledNodes
from ember.fleet.identity import NodeIdentity, load_or_create
from ember.fleet.registry import FleetRegistry, connect
from ember.fleet.types import NodeInfo
from ember.recent_stats import RecentStats
from ember.runtime.scheduler import Scheduler
from ember.services.models import ModelService

log = logging.getLogger("ember.fleet")


@dataclass
class Fleet:
    config: FleetConfig
    registry: FleetRegistry
    identity: NodeIdentity
    announcer: Announcer | None
    redis: aioredis.Redis | None

    def members(self) -> list[NodeInfo]:
        """Every node to list: the registry's table, and this node's own last record when it
        announces but reads no registry (a member only), so it can see what it announced."""
        nodes = self.registry.members()
        last = self.announcer.last if self.announcer is not None else None
        if last is not None and all(n.node_id != last.node_id for n in nodes):
            nodes.insert(0, last.info())
        return nodes

    async def aclose(self) -> None:
        if self.announcer is not None:
            await self.announcer.aclose()
        await self.registry.aclose()
        if self.redis is not None:
            await self.redis.aclose()


async def start_fleet(
    settings: Settings, config: FleetConfig, scheduler: Scheduler, models: ModelService, recent: RecentStats
) -> Fleet:
    identity = load_or_create(settings.home)
    redis = connect(config.join) if config.join is not None else None
    enrolled = EnrolledNodes(config.nodes, config.scrape) if config.nodes else None
    registry = FleetRegistry(config, redis, self_id=identity.node_id, enrolled=enrolled)
    announcer = None
    if redis is not None and config.announces:
        status = LocalLoad(scheduler, models, recent, settings.num_parallel)
        base_url = config.advertised(settings)
        if _loopback(base_url) and config.join is not None and not _loopback(config.join):
            log.warning(
                "fleet: this node advertises %s, a loopback address, to a registry on another host: "
                "other machines cannot reach it (set advertise_url or EMBER_FLEET_ADVERTISE_URL)",
                base_url,
            )
        announcer = Announcer(config, identity, redis, base_url=base_url, status=status)
        await announcer.start()
    await registry.start()  # after the announcement: a node that is its own gateway sees itself
    return Fleet(config=config, registry=registry, identity=identity, announcer=announcer, redis=redis)


def _loopback(url: str) -> bool:
    """Whether a URL's host is this machine only (a Unix socket counts: it is local too)."""
    parts = urlsplit(url)
    if parts.scheme == "unix":
        return True
    host = parts.hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
