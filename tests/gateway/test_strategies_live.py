"""Strategies and the top-level [retry] and [breaker] defaults, on real servers on loopback.

Three `ember.bench.upstream` processes (real HTTP servers whose latency and failures are set
over HTTP) and one gateway serve the whole module. Each strategy has its own route and its own
target names, so the live figures (TTFT, in flight) one test leaves behind do not touch the
next; the upstreams are reset around each test. Who served a request is read from the
X-Ember-Provider header and checked against the upstreams' own request counts.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from tests.conftest import ServerHandle, start_server
from tests.gateway.conftest import UpstreamHandle, start_upstream, write_config
from tests.gateway.test_routing import chat, provider, route, routes_health

pytestmark = pytest.mark.slow

CONFIG_DEFAULTS = """
[retry]
passes = 3
backoff = 0.01
max_backoff = 0.02

[breaker]
failures = 3
cooldown = 60

"""


@pytest.fixture(scope="module")
def logs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("strategy-logs")


@pytest.fixture(scope="module")
def ups(logs: Path) -> Iterator[dict[str, UpstreamHandle]]:
    started = {name: start_upstream(logs) for name in ("a", "b", "bad")}
    try:
        yield started
    finally:
        for handle in started.values():
            handle.stop()


@pytest.fixture(autouse=True)
def _clean(ups: dict[str, UpstreamHandle]) -> Iterator[None]:
    for handle in ups.values():
        handle.reset()
    yield
    for handle in ups.values():
        handle.reset()


@pytest.fixture(scope="module")
def gateway(ups: dict[str, UpstreamHandle], logs: Path) -> Iterator[ServerHandle]:
    a, b, bad = ups["a"], ups["b"], ups["bad"]
    config = write_config(logs, CONFIG_DEFAULTS
                          + provider("a", a) + provider("b", b) + provider("bad", bad)
                          + route("weighted", ["a/w", "b/w"], strategy="weighted", weights=[3, 1])
                          + route("fastest", ["a/f", "b/f"], strategy="fastest")
                          + route("least-busy", ["a/l", "b/l"], strategy="least-busy")
                          # No retry or breaker of their own: the top-level tables apply.
                          + route("inherits", ["bad/inherit"])
                          + route("inherits-retry", ["bad/retried"])
                          # Their own tables win over the top-level ones.
                          + route("own", ["bad/own"], retry={"passes": 4, "backoff": 0.01, "max_backoff": 0.02},
                                  breaker={"failures": 4, "cooldown": 60}))
    home = logs / "gateway-home"
    home.mkdir()
    handle = start_server(home, logs, EMBER_CONFIG=str(config))
    try:
        yield handle
    finally:
        handle.stop()


def served_by(response: httpx.Response) -> str:
    assert response.status_code == 200, response.text
    return response.headers["x-ember-provider"]


# -- weighted -------------------------------------------------------------------------------------------


def test_weighted_3_to_1_splits_about_3_to_1(gateway: ServerHandle, ups: dict[str, UpstreamHandle]) -> None:
    # The strategy draws the leader at random by weight (not a round robin), so the split is
    # binomial: of 160 requests the weight-3 target leads ~120 (sd 5.5). 95..142 holds with
    # odds of failing under 1e-5, while an even split (80) or 2:1 (107) would mostly miss it.
    total = 160

    async def run() -> list[str]:
        limit = asyncio.Semaphore(8)
        async with httpx.AsyncClient(base_url=gateway.base_url, timeout=60) as client:
            async def one(i: int) -> str:
                async with limit:
                    response = await client.post("/v1/chat/completions", json={
                        "model": "weighted", "messages": [{"role": "user", "content": f"n {i}"}],
                        "max_tokens": 1})
                return served_by(response)

            return await asyncio.gather(*(one(i) for i in range(total)))

    counts = Counter(asyncio.run(run()))
    assert set(counts) <= {"a", "b"} and sum(counts.values()) == total
    assert 95 <= counts["a"] <= 142, counts
    # Every request went to its leader only (nothing failed): the upstreams agree.
    assert ups["a"].stats()["requests"] == counts["a"]
    assert ups["b"].stats()["requests"] == counts["b"]


# -- fastest --------------------------------------------------------------------------------------------


def test_fastest_tries_each_then_prefers_the_lower_latency_upstream(
        gateway: ServerHandle, ups: dict[str, UpstreamHandle]) -> None:
    a, b = ups["a"], ups["b"]
    a.control(mode="ok", delay=0.5)  # a answers its first token half a second late
    order = [served_by(chat(gateway.base_url, "fastest", max_tokens=2)) for _ in range(5)]
    # Untried targets go first (in the route's order), then the lower moving-average TTFT.
    assert order == ["a", "b", "b", "b", "b"]
    health = routes_health(gateway.base_url)
    assert health["a/f"]["ttft_ms"] >= 450 > health["b/f"]["ttft_ms"]

    # b turns slow: one slow answer lifts its average above a's, and the next request goes to a.
    a.control(mode="ok")
    b.control(mode="ok", delay=2.5)
    assert served_by(chat(gateway.base_url, "fastest", max_tokens=2)) == "b"
    assert [served_by(chat(gateway.base_url, "fastest", max_tokens=2)) for _ in range(2)] == ["a", "a"]
    assert (a.stats()["requests"], b.stats()["requests"]) == (3, 5)


# -- least-busy -----------------------------------------------------------------------------------------


def test_least_busy_sends_to_the_idle_upstream_while_the_other_is_held(
        gateway: ServerHandle, ups: dict[str, UpstreamHandle]) -> None:
    a, b = ups["a"], ups["b"]
    a.control(mode="ok", delay=3.0, times=1)  # the next request to a is held for 3 s
    held: dict[str, Any] = {}

    def hold() -> None:
        held["response"] = chat(gateway.base_url, "least-busy", max_tokens=2)

    thread = threading.Thread(target=hold)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while routes_health(gateway.base_url)["a/l"]["in_flight"] != 1:
            assert time.monotonic() < deadline, "the held request never reached a"
            time.sleep(0.02)
        assert a.stats()["active"] == 1
        # a holds one request, b none: each new request goes to b (fallback would pick a).
        assert [served_by(chat(gateway.base_url, "least-busy", max_tokens=2)) for _ in range(3)] == ["b"] * 3
        assert a.stats()["active"] == 1  # still held while b served the three
    finally:
        thread.join(timeout=30)
    assert served_by(held["response"]) == "a"
    # Both idle again: the tie keeps the route's order.
    assert served_by(chat(gateway.base_url, "least-busy", max_tokens=2)) == "a"
    assert (a.stats()["requests"], b.stats()["requests"]) == (2, 3)


# -- the top-level [retry] and [breaker] tables ------------------------------------------------------


def failed(response: httpx.Response, attempts: int) -> None:
    assert response.status_code == 502, response.text
    assert f"failed after {attempts} attempts" in response.json()["error"]["message"]


def test_a_route_without_its_own_tables_takes_the_top_level_retry_and_breaker(
        gateway: ServerHandle, ups: dict[str, UpstreamHandle]) -> None:
    bad = ups["bad"]
    # Retry: two failures, then an answer on the third pass (the default of 2 passes would give up).
    bad.control(mode="error", status=500, times=2)
    response = chat(gateway.base_url, "inherits-retry")
    assert served_by(response) == "bad"
    assert response.headers["x-ember-attempts"] == "3"
    assert bad.stats()["requests"] == 3
    assert routes_health(gateway.base_url)["bad/retried"]["state"] == "closed"

    # Breaker: three failures in a row open it (the default is 5), so the third pass was the last.
    bad.reset()
    bad.control(mode="error", status=500)
    failed(chat(gateway.base_url, "inherits"), attempts=3)
    assert bad.stats()["requests"] == 3
    health = routes_health(gateway.base_url)["bad/inherit"]
    assert (health["state"], health["consecutive_failures"]) == ("open", 3)
    skipped = chat(gateway.base_url, "inherits")
    assert skipped.status_code == 503 and skipped.json()["error"]["code"] == "no_healthy_target"
    assert bad.stats()["requests"] == 3  # open: not asked again


def test_a_routes_own_retry_and_breaker_override_the_top_level_ones(
        gateway: ServerHandle, ups: dict[str, UpstreamHandle]) -> None:
    bad = ups["bad"]
    bad.control(mode="error", status=500)
    # Four passes, and a breaker that holds for four failures: with either top-level table
    # (3 passes, or open after 3) the upstream would have seen only three requests.
    failed(chat(gateway.base_url, "own"), attempts=4)
    assert bad.stats()["requests"] == 4
    health = routes_health(gateway.base_url)["bad/own"]
    assert (health["state"], health["consecutive_failures"]) == ("open", 4)
