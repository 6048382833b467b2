"""FleetRegistry and Announcer against a real Redis (valkey), with no ember servers: admission,
the FleetView's ordering, records stored under another node's key, expiry, and a registry that
stops answering. The clock is the test's, so TTLs pass without waiting."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import redis.asyncio as aioredis

from ember.fleet.announcer import Announcer, LocalStatus
from ember.fleet.config import FleetConfig
from ember.fleet.identity import NodeIdentity
from ember.fleet.registry import FleetRegistry, index_key, node_key
from ember.fleet.types import NodeLoad
from tests.conftest import RedisHandle, free_port


class Clock:
    def __init__(self) -> None:
        self.now = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now


def _run(redis_server: RedisHandle, body: Callable[[aioredis.Redis, FleetConfig, Clock], Awaitable[None]],
         **config: Any) -> None:
    async def main() -> None:
        client = aioredis.Redis.from_url(redis_server.url)
        fleet = FleetConfig(join=redis_server.url, prefix=f"unit-{uuid.uuid4().hex[:8]}:", ttl=10, **config)
        try:
            await body(client, fleet, Clock())
        finally:
            async for key in client.scan_iter(match=fleet.prefix + "*"):
                await client.delete(key)
            await client.aclose()

    asyncio.run(main())


def _member(config: FleetConfig, client: aioredis.Redis, clock: Clock, name: str, *, resident: tuple[str, ...] = (),
            stored: tuple[str, ...] = (), busy: int = 0) -> Announcer:
    identity = NodeIdentity.generate()
    status = LocalStatus(resident=resident, stored=stored + resident, load=NodeLoad(slots=4, busy=busy))
    member = config.model_copy(update={"name": name})
    return Announcer(member, identity, client, base_url=f"http://127.0.0.1:{free_port()}", status=lambda: status,
                     clock=clock)


def test_admission_ordering_and_self(redis_server: RedisHandle, monkeypatch: pytest.MonkeyPatch,
                                     caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("UNIT_FLEET_TOKEN", "tok")

    async def body(client: aioredis.Redis, config: FleetConfig, clock: Clock) -> None:
        tokened = _member(config, client, clock, "tokened", stored=("m",))
        listed = _member(config, client, clock, "listed", resident=("m",))
        myself = _member(config, client, clock, "myself", resident=("m", "own"))
        # A stranger: its own token is another one, and it is in no allowlist.
        stranger_config = config.model_copy(update={"join_token_env": "UNIT_OTHER_TOKEN"})
        monkeypatch.setenv("UNIT_OTHER_TOKEN", "wrong")
        stranger = _member(stranger_config, client, clock, "stranger", resident=("m",))
        for node in (tokened, listed, myself, stranger):
            assert await node.publish()
        gateway = config.model_copy(update={"allowlist": [listed.identity.node_id]})
        registry = FleetRegistry(gateway, client, self_id=myself.identity.node_id, clock=clock)
        with caplog.at_level(logging.WARNING, logger="ember.fleet"):
            await registry.refresh()
            await registry.refresh()
        assert {n.name for n in registry.members()} == {"tokened", "listed", "myself"}
        assert {n.name for n in registry.nodes()} == {"tokened", "listed"}  # not itself
        assert [n.name for n in registry.candidates("m")] == ["listed", "tokened"]  # resident first
        assert registry.models() == ["m"]  # "own" is only this node's
        [refusal] = registry.refused()
        assert refusal.node_id == stranger.identity.node_id and "not admitted" in refusal.reason
        assert sum("refused the record" in r.message for r in caplog.records) == 1  # once, not per refresh

    _run(redis_server, body, join_token_env="UNIT_FLEET_TOKEN")


def test_a_record_under_another_nodes_key_is_refused(redis_server: RedisHandle) -> None:
    async def body(client: aioredis.Redis, config: FleetConfig, clock: Clock) -> None:
        good = _member(config, client, clock, "good")
        other = NodeIdentity.generate()
        assert await good.publish()
        # A valid record copied under another id's key, as if it were that node's.
        raw = await client.get(node_key(config.prefix, good.identity.node_id))
        await client.set(node_key(config.prefix, other.node_id), raw)
        await client.sadd(index_key(config.prefix), other.node_id)
        registry = FleetRegistry(config.model_copy(update={"allowlist": [good.identity.node_id, other.node_id]}),
                                 client, clock=clock)
        await registry.refresh()
        assert [n.name for n in registry.nodes()] == ["good"]
        assert "another node's key" in registry.refused()[0].reason
        # Gone from Redis and not seen for ten minutes: forgotten (a refusal still there stays).
        await client.delete(node_key(config.prefix, other.node_id))
        assert await good.publish()
        clock.now += 601
        assert await good.publish()
        await registry.refresh()
        assert registry.refused() == [] and [n.name for n in registry.nodes()] == ["good"]

    _run(redis_server, body)


def test_nodes_leave_at_their_ttl_and_on_a_clean_leave(redis_server: RedisHandle) -> None:
    async def body(client: aioredis.Redis, config: FleetConfig, clock: Clock) -> None:
        a = _member(config, client, clock, "a", resident=("m",))
        b = _member(config, client, clock, "b", resident=("m",))
        for node in (a, b):
            assert await node.publish()
        allow = [a.identity.node_id, b.identity.node_id]
        registry = FleetRegistry(config.model_copy(update={"allowlist": allow}), client, clock=clock)
        await registry.refresh()
        assert len(registry.nodes()) == 2
        await b.aclose()  # a clean leave deletes its key and its id in the index at once
        assert not await client.exists(node_key(config.prefix, b.identity.node_id))
        await registry.refresh()
        assert [n.name for n in registry.nodes()] == ["a"]
        # a stops heartbeating: its record (still in Redis here) goes stale past its TTL.
        clock.now += 10.5
        await registry.refresh()
        assert registry.nodes() == [] and registry.refused() == []  # an old record is no forgery
        # A new heartbeat brings it back.
        assert await a.publish()
        await registry.refresh()
        assert [n.name for n in registry.nodes()] == ["a"]

    _run(redis_server, body)


def test_a_registry_that_stops_answering_keeps_the_table_until_the_ttl(redis_server: RedisHandle,
                                                                         caplog: pytest.LogCaptureFixture) -> None:
    async def body(client: aioredis.Redis, config: FleetConfig, clock: Clock) -> None:
        a = _member(config, client, clock, "a", resident=("m",))
        assert await a.publish()
        registry = FleetRegistry(config.model_copy(update={"allowlist": [a.identity.node_id]}), client, clock=clock)
        await registry.refresh()
        dead = aioredis.Redis.from_url(f"redis://127.0.0.1:{free_port()}/0", socket_connect_timeout=0.5)
        registry._redis = dead  # the same registry, its Redis gone
        with caplog.at_level(logging.WARNING, logger="ember.fleet"):
            await registry.refresh()
            await registry.refresh()
            assert [n.name for n in registry.nodes()] == ["a"]  # still within its TTL
            clock.now += 11
            await registry.refresh()
        assert registry.nodes() == []
        assert sum("does not answer" in r.message for r in caplog.records) == 1
        await dead.aclose()

    _run(redis_server, body)


def test_an_announcer_without_its_registry_keeps_trying_and_says_so_once(caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        dead = aioredis.Redis.from_url(f"redis://127.0.0.1:{free_port()}/0", socket_connect_timeout=0.5)
        config = FleetConfig(join="redis://127.0.0.1:1/0", ttl=3)
        member = _member(config, dead, Clock(), "lonely")
        with caplog.at_level(logging.INFO, logger="ember.fleet"):
            assert not await member.publish()
            assert not await member.publish()
            await member.aclose()  # a leave that cannot reach the registry is a warning, not a crash
        assert sum("cannot announce" in r.message for r in caplog.records) == 1
        assert member.last is None
        await dead.aclose()

    asyncio.run(main())
