"""Routes over real servers on loopback: fallback, retries, breakers, racing, strategies, usage.

The upstreams are `ember.bench.upstream` processes (a real HTTP server that answers
deterministically and fails on request); the local target is the real model.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.gateway.conftest import write_config

pytestmark = pytest.mark.slow


def toml_value(value: object) -> str:
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + " }"
    return json.dumps(value)


def provider(name: str, upstream: Any, **fields: object) -> str:
    extra = "".join(f"{k} = {toml_value(v)}\n" for k, v in fields.items())
    return f'[[providers]]\nname = "{name}"\nkind = "openai"\nbase_url = "{upstream.v1}"\n{extra}\n'


def route(model: str, targets: list[str], strategy: str = "fallback", **fields: object) -> str:
    extra = "".join(f"{k} = {toml_value(v)}\n" for k, v in fields.items())
    return (f'[[routes]]\nmodel = "{model}"\ntargets = {json.dumps(targets)}\n'
            f'strategy = "{strategy}"\n{extra}\n')


def chat(base_url: str, model: str, text: str = "say something", max_tokens: int = 4,
         headers: dict[str, str] | None = None, timeout: float = 60) -> httpx.Response:
    return httpx.post(f"{base_url}/v1/chat/completions", timeout=timeout, headers=headers, json={
        "model": model, "messages": [{"role": "user", "content": text}], "max_tokens": max_tokens})


def routes_health(base_url: str) -> dict[str, dict[str, Any]]:
    described = httpx.get(f"{base_url}/admin/routes", timeout=10).json()["routes"]
    return {t["target"]: t for r in described for t in r["targets"]}


@pytest.fixture
def gateway_home(tmp_path: Path) -> Path:
    home = tmp_path / "gw-home"
    home.mkdir()
    return home


def test_fallback_skips_dead_failing_and_rate_limited_targets(
        tmp_path: Path, gateway_home: Path, upstream_factory: Any, server_factory: Any) -> None:
    dead, failing, limited, healthy = (upstream_factory() for _ in range(4))
    dead.stop()  # nothing listens there any more: connection refused
    failing.control(mode="error", status=500)
    limited.control(mode="error", status=429, retry_after=30)
    config = write_config(tmp_path, provider("dead", dead) + provider("failing", failing)
                          + provider("limited", limited) + provider("healthy", healthy)
                          + route("chat", ["dead/m", "failing/m", "limited/m", "healthy/m"]))
    server = server_factory(gateway_home, EMBER_CONFIG=str(config))

    response = chat(server.base_url, "chat")
    assert response.status_code == 200, response.text
    assert response.headers["x-ember-provider"] == "healthy"
    assert response.headers["x-ember-attempts"] == "4"
    assert response.json()["choices"][0]["message"]["content"] == "tok0 tok1 tok2 tok3 "
    assert failing.stats()["requests"] == 1 and limited.stats()["requests"] == 1

    # The rate-limited target asked for 30 s: the next request does not knock on its door.
    response = chat(server.base_url, "chat")
    assert response.status_code == 200
    assert limited.stats()["requests"] == 1
    assert response.headers["x-ember-attempts"] == "3"


def test_no_healthy_target_is_a_clear_error_in_each_protocol(
        tmp_path: Path, gateway_home: Path, upstream_factory: Any, server_factory: Any) -> None:
    a, b = upstream_factory(), upstream_factory()
    a.control(mode="error", status=500)
    b.control(mode="error", status=503)
    config = write_config(tmp_path, provider("a", a) + provider("b", b)
                          + route("chat", ["a/m", "b/m"], retry={"passes": 2, "backoff": 0.05}))
    server = server_factory(gateway_home, EMBER_CONFIG=str(config))

    client = openai.OpenAI(base_url=server.url("/v1"), api_key="unused", max_retries=0)
    with pytest.raises(openai.APIStatusError) as caught:
        client.chat.completions.create(model="chat", messages=[{"role": "user", "content": "hi"}])
    # Every target answered a 5xx: a bad gateway, not "unavailable" (no target was skipped).
    assert caught.value.status_code == 502
    error = caught.value.body
    assert isinstance(error, dict) and "route 'chat' failed after 4 attempts" in error["message"]
    assert error["code"] == "all_targets_failed" and error["type"] == "server_error"
    assert a.stats()["requests"] == 2 and b.stats()["requests"] == 2  # two passes over the chain

    response = httpx.post(server.url("/api/chat"), timeout=30, json={
        "model": "chat", "messages": [{"role": "user", "content": "hi"}], "stream": False})
    assert response.status_code == 502
    assert set(response.json()) == {"error"}
    assert "route 'chat' failed after 4 attempts" in response.json()["error"]


def test_breaker_opens_then_half_opens_and_closes(
        tmp_path: Path, gateway_home: Path, upstream_factory: Any, server_factory: Any) -> None:
    flaky, steady = upstream_factory(), upstream_factory()
    flaky.control(mode="error", status=500)
    config = write_config(tmp_path, provider("flaky", flaky) + provider("steady", steady)
                          + route("chat", ["flaky/m", "steady/m"], breaker={"failures": 2, "cooldown": 2.0}))
    server = server_factory(gateway_home, EMBER_CONFIG=str(config))

    for _ in range(2):
        response = chat(server.base_url, "chat")
        assert response.headers["x-ember-provider"] == "steady"
        assert response.headers["x-ember-attempts"] == "2"
    assert routes_health(server.base_url)["flaky/m"]["state"] == "open"

    # Open: flaky is skipped without a request.
    response = chat(server.base_url, "chat")
    assert response.headers["x-ember-attempts"] == "1"
    assert flaky.stats()["requests"] == 2

    # After the cool-down one probe goes through; flaky has recovered, so it closes.
    flaky.control(mode="ok")
    time.sleep(2.2)
    assert routes_health(server.base_url)["flaky/m"]["state"] == "half-open"
    response = chat(server.base_url, "chat")
    assert response.headers["x-ember-provider"] == "flaky"
    assert routes_health(server.base_url)["flaky/m"]["state"] == "closed"

    # A failed probe opens it again.
    flaky.control(mode="error", status=500)
    for _ in range(2):
        chat(server.base_url, "chat")
    time.sleep(2.2)
    response = chat(server.base_url, "chat")
    assert response.headers["x-ember-provider"] == "steady"
    assert routes_health(server.base_url)["flaky/m"]["state"] == "open"


def test_race_takes_the_first_token_and_cancels_the_loser(
        tmp_path: Path, gateway_home: Path, upstream_factory: Any, server_factory: Any) -> None:
    slow, fast = upstream_factory(), upstream_factory()
    slow.control(mode="ok", delay=5.0)
    config = write_config(tmp_path, provider("slow", slow) + provider("fast", fast)
                          + route("chat", ["slow/m", "fast/m"], strategy="race"))
    server = server_factory(gateway_home, EMBER_CONFIG=str(config))

    started = time.monotonic()
    response = chat(server.base_url, "chat")
    elapsed = time.monotonic() - started
    assert response.status_code == 200
    assert response.headers["x-ember-provider"] == "fast"
    assert elapsed < 4.0
    deadline = time.monotonic() + 5
    while slow.stats()["disconnected"] < 1 and time.monotonic() < deadline:
        time.sleep(0.1)
    stats = slow.stats()
    assert stats["requests"] == 1 and stats["disconnected"] == 1 and stats["completed"] == 0


def test_no_client_error_when_a_node_is_killed_mid_run(
        tmp_path: Path, gateway_home: Path, upstream_factory: Any, server_factory: Any) -> None:
    first, second = upstream_factory(), upstream_factory()
    for node in (first, second):
        node.control(mode="ok", token_delay=0.02)
    config = write_config(tmp_path, provider("first", first) + provider("second", second)
                          + route("chat", ["first/m", "second/m"]))
    server = server_factory(gateway_home, EMBER_CONFIG=str(config))

    async def run() -> list[int]:
        statuses: list[int] = []
        async with httpx.AsyncClient(base_url=server.base_url, timeout=60) as client:
            async def one(i: int) -> None:
                response = await client.post("/v1/chat/completions", json={
                    "model": "chat", "messages": [{"role": "user", "content": f"n {i}"}], "max_tokens": 16})
                statuses.append(response.status_code)

            async def killer() -> None:
                await asyncio.sleep(0.4)
                first.kill()

            tasks = [one(i) for i in range(60)]
            await asyncio.gather(killer(), *[asyncio.gather(*tasks[i::6]) for i in range(6)])
        return statuses

    statuses = asyncio.run(run())
    assert statuses == [200] * 60
    assert second.stats()["completed"] > 0


def test_cheapest_and_auto_pick_the_expected_target(
        tmp_path: Path, gateway_home: Path, upstream_factory: Any, server_factory: Any) -> None:
    small, big = upstream_factory(), upstream_factory()
    config = write_config(
        tmp_path,
        provider("small", small, price_in=0.1, price_out=0.2) + provider("big", big, price_in=5, price_out=15)
        + route("cheap", ["big/m", "small/m"], strategy="cheapest")
        + route("smart", ["small/m", "big/m"], strategy="auto")
        + '[routes.auto]\nsmall = "small/m"\nstrong = "big/m"\nmax_prompt_chars = 200\nmax_tokens = 64\n')
    server = server_factory(gateway_home, EMBER_CONFIG=str(config))

    assert chat(server.base_url, "cheap").headers["x-ember-provider"] == "small"
    assert chat(server.base_url, "smart", "short").headers["x-ember-provider"] == "small"
    assert chat(server.base_url, "smart", "long " * 100).headers["x-ember-provider"] == "big"
    assert chat(server.base_url, "smart", "short",
                headers={"X-Ember-Priority": "high"}).headers["x-ember-provider"] == "big"
    listed = {m["id"] for m in httpx.get(server.url("/v1/models")).json()["data"]}
    assert {"cheap", "smart"} <= listed
    tags = {m["name"] for m in httpx.get(server.url("/api/tags")).json()["models"]}
    assert {"cheap", "smart"} <= tags


def test_costs_add_up_exactly(tmp_path: Path, gateway_home: Path, upstream_factory: Any,
                              server_factory: Any) -> None:
    up = upstream_factory()
    config = write_config(tmp_path, provider("paid", up, price_in=1.5, price_out=2.0)
                          + route("chat", ["paid/m"]))
    server = server_factory(gateway_home, EMBER_CONFIG=str(config), EMBER_CACHE="off")
    expected_in = expected_out = 0
    for i in range(1, 8):
        text = " ".join(["word"] * i)
        response = chat(server.base_url, "chat", text, max_tokens=i)
        usage = response.json()["usage"]
        assert usage["completion_tokens"] == i
        expected_in += usage["prompt_tokens"]
        expected_out += i
    with httpx.stream("POST", server.url("/v1/chat/completions"), timeout=30, json={
            "model": "chat", "messages": [{"role": "user", "content": "one two three"}], "max_tokens": 5,
            "stream": True, "stream_options": {"include_usage": True}}) as stream:
        lines = [line for line in stream.iter_lines() if line.startswith("data: {")]
    final = json.loads(lines[-1][6:])["usage"]
    expected_in += final["prompt_tokens"]
    expected_out += final["completion_tokens"]
    expected_cost = (expected_in * 1.5 + expected_out * 2.0) / 1e6

    totals = httpx.get(server.url("/admin/usage"), params={"by": "route"}, timeout=10).json()
    (row,) = totals["rows"]
    assert row["route"] == "chat" and row["requests"] == 8
    assert (row["tokens_in"], row["tokens_out"]) == (expected_in, expected_out)
    assert row["cost"] == pytest.approx(expected_cost, abs=1e-12)

    by_provider = httpx.get(server.url("/admin/usage"), params={"by": "provider"}, timeout=10).json()
    assert by_provider["rows"][0]["provider"] == "paid"

    cli = subprocess.run([sys.executable, "-m", "ember", "usage", "--by", "model", "--json"],
                         capture_output=True, text=True, timeout=60,
                         env={**server.env, "PATH": "/usr/bin:/bin"})
    assert cli.returncode == 0, cli.stderr
    assert json.loads(cli.stdout)["total"]["cost"] == pytest.approx(expected_cost, abs=1e-12)


def test_routes_command_shows_targets_and_health(tmp_path: Path, gateway_home: Path,
                                                 upstream_factory: Any, server_factory: Any) -> None:
    up = upstream_factory()
    config = write_config(tmp_path, provider("up", up) + route("chat", ["up/m", "local/smollm2:135m"]))
    server = server_factory(gateway_home, EMBER_CONFIG=str(config))
    chat(server.base_url, "chat")
    env = {**server.env, "PATH": "/usr/bin:/bin", "COLUMNS": "200"}
    shown = subprocess.run([sys.executable, "-m", "ember", "routes"], capture_output=True, text=True,
                           timeout=60, env=env)
    assert shown.returncode == 0, shown.stderr
    assert "chat" in shown.stdout and "up/m" in shown.stdout and "closed" in shown.stdout
    as_json = json.loads(subprocess.run([sys.executable, "-m", "ember", "routes", "--json"],
                                        capture_output=True, text=True, timeout=60, env=env).stdout)
    (described,) = as_json["routes"]
    assert described["targets"][0]["requests"] == 1


def test_a_route_falls_back_from_a_missing_local_model_and_to_the_local_one(
        tmp_path: Path, fresh_home: Path, upstream_factory: Any, server_factory: Any) -> None:
    up = upstream_factory()
    up.control(mode="error", status=500)
    config = write_config(tmp_path, provider("up", up)
                          + route("missing-first", ["local/not-pulled:1b", "up/m", "local/smollm2:135m"]))
    server = server_factory(fresh_home, EMBER_CONFIG=str(config))
    response = chat(server.base_url, "missing-first", max_tokens=3, timeout=120)
    assert response.status_code == 200, response.text
    assert response.headers["x-ember-provider"] == "local"
    assert response.headers["x-ember-attempts"] == "3"
    assert response.json()["choices"][0]["message"]["content"]
