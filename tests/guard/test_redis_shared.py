"""Two ember replicas on one Redis share limits; without Redis each keeps serving on local limits."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx

from tests.conftest import RedisHandle, start_redis, start_server

from . import eventually_ok, make_key, read_head


async def spread(urls: list[str], key: str, count: int) -> list[int]:
    async with httpx.AsyncClient(headers={"x-api-key": key}, timeout=30) as client:
        calls = [client.get(urls[i % len(urls)] + "/v1/models") for i in range(count)]
        return [r.status_code for r in await asyncio.gather(*calls)]


def test_two_replicas_share_limits(tmp_path: Path, redis_server: RedisHandle) -> None:
    home = tmp_path / "home"  # one EMBER_HOME: both replicas read the same keys.db
    rpm = make_key(home, "shared-rpm", scopes="models", rpm=6)
    one = make_key(home, "shared-slot", scopes="models", max_concurrent=1)
    env = {"EMBER_AUTH": "required", "EMBER_REDIS_URL": redis_server.url}
    servers = [start_server(home, tmp_path, **env) for _ in range(2)]
    try:
        statuses = asyncio.run(spread([s.base_url for s in servers], rpm, 24))
        assert statuses.count(200) == 6 and statuses.count(429) == 18
        # Replica B sees the count A made.
        after = httpx.get(servers[1].url("/v1/models"), headers={"x-api-key": rpm})
        assert after.status_code == 429 and after.headers["x-ratelimit-remaining-requests"] == "0"

        # A concurrency slot taken through replica A is taken on replica B too.
        import socket

        host, port = servers[0].host.split(":")
        with socket.create_connection((host, int(port)), timeout=10) as slow:
            slow.sendall(b"POST /api/show HTTP/1.1\r\nhost: x\r\nexpect: 100-continue\r\nx-api-key: " +
                         one.encode() + b"\r\ncontent-length: 20\r\n\r\n")
            # "100 Continue" comes when A first reads the body, after admission: the slot is held.
            assert read_head(slow).startswith(b"HTTP/1.1 100 ")
            busy = httpx.get(servers[1].url("/api/tags"), headers={"x-api-key": one})
            assert busy.status_code == 429 and "concurrent" in busy.json()["error"]
        # The slot is given back when A's request ends (the client hung up before its body).
        assert eventually_ok(servers[1].url("/api/tags"), one)
    finally:
        for server in servers:
            server.stop()


def test_redis_going_away_keeps_serving(tmp_path: Path) -> None:
    redis = start_redis(tmp_path)
    home = tmp_path / "home"
    key = make_key(home, "steady", scopes="models", rpm=1000)
    server = start_server(home, tmp_path, EMBER_AUTH="required", EMBER_REDIS_URL=redis.url)
    try:
        headers = {"x-api-key": key}
        assert httpx.get(server.url("/v1/models"), headers=headers).status_code == 200
        redis.stop()
        for _ in range(5):
            response = httpx.get(server.url("/v1/models"), headers=headers)
            assert response.status_code == 200 and response.headers["x-ratelimit-limit-requests"] == "1000"
        log = server.log()
        assert log.count("is unreachable") == 1, log
        # Redis back on the same port: the probe finds it and limits are shared again.
        redis = start_redis_on(tmp_path, redis.port)
        deadline = time.monotonic() + 10
        while "is back" not in server.log() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert "is back" in server.log()
        assert httpx.get(server.url("/v1/models"), headers=headers).status_code == 200
    finally:
        server.stop()
        redis.stop()


def start_redis_on(workdir: Path, port: int) -> RedisHandle:
    """start_redis, but on a given port (the one the server was told about)."""
    import tests.conftest as conftest

    real = conftest.free_port
    conftest.free_port = lambda: port  # type: ignore[assignment]
    try:
        return start_redis(workdir)
    finally:
        conftest.free_port = real
