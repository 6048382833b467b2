"""Per-key limits over HTTP: exact rpm under concurrency, concurrency slots, tpm, budgets; headers."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import ollama
import openai
import pytest

from ember.gateway.usage import UsageLog, UsageRecord
from ember.guard.keys import KeyRecord
from ember.guard.limits import MemoryLimiter, format_reset
from tests.conftest import DEFAULT_MODEL, ServerHandle, start_server

from . import copy_home, eventually_ok, make_key, read_head

HI = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def limited(model_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerHandle]:
    base = tmp_path_factory.mktemp("limits")
    home = copy_home(model_home, base / "home")
    config = base / "ember.toml"
    # $0.001 a token, so one tiny chat spends a cent or more.
    config.write_text('[[providers]]\nname = "local"\nkind = "local"\nprice_in = 1000.0\nprice_out = 1000.0\n')
    handle = start_server(home, base, EMBER_AUTH="required", EMBER_CONFIG=str(config))
    try:
        yield handle
    finally:
        handle.stop()


async def burst(server: ServerHandle, key: str, count: int, path: str = "/v1/models") -> list[httpx.Response]:
    async with httpx.AsyncClient(headers={"Authorization": f"Bearer {key}"}, timeout=30,
                                 limits=httpx.Limits(max_connections=count)) as client:
        return list(await asyncio.gather(*(client.get(server.url(path)) for _ in range(count))))


def test_rpm_is_exact_under_concurrency(limited: ServerHandle) -> None:
    key = make_key(limited.home, "five", scopes="models", rpm=5)
    responses = asyncio.run(burst(limited, key, 20))
    ok = [r for r in responses if r.status_code == 200]
    refused = [r for r in responses if r.status_code == 429]
    assert len(ok) == 5 and len(refused) == 15
    assert sorted(int(r.headers["x-ratelimit-remaining-requests"]) for r in ok) == [0, 1, 2, 3, 4]
    assert all(r.headers["x-ratelimit-limit-requests"] == "5" for r in ok)
    first = refused[0]
    assert int(first.headers["retry-after"]) >= 1 and first.headers["x-ratelimit-remaining-requests"] == "0"
    assert first.json()["error"] == {"message": "this key's limit of 5 requests per minute is reached",
                                     "type": "rate_limit_error", "param": None, "code": "rate_limit_exceeded"}
    with pytest.raises(openai.RateLimitError):
        openai.OpenAI(base_url=limited.url("/v1"), api_key=key, max_retries=0).models.list()
    with pytest.raises(ollama.ResponseError) as caught:
        ollama.Client(host=limited.base_url, headers={"x-api-key": key}).list()
    assert caught.value.status_code == 429


def test_concurrency_slots(limited: ServerHandle) -> None:
    key = make_key(limited.home, "single", scopes="models", max_concurrent=1)
    host, port = limited.host.split(":")
    body = b'{"model": "nothing:here"}'
    with socket.create_connection((host, int(port)), timeout=10) as slow:
        # A request whose body is still on its way holds the key's only slot. The server says
        # "100 Continue" when it first reads the body, which is after admission: the slot is held.
        slow.sendall(b"POST /api/show HTTP/1.1\r\nhost: x\r\nexpect: 100-continue\r\nx-api-key: " +
                     key.encode() + b"\r\ncontent-length: " + str(len(body)).encode() + b"\r\n\r\n")
        assert read_head(slow).startswith(b"HTTP/1.1 100 ")
        busy = httpx.get(limited.url("/api/tags"), headers={"x-api-key": key})
        assert busy.status_code == 429 and "1 concurrent requests" in busy.json()["error"]
        slow.sendall(body)
        assert read_head(slow).startswith(b"HTTP/1.1 404")
    # The slot is given back once the request has ended (just after its answer was sent).
    assert eventually_ok(limited.url("/api/tags"), key)


def test_tokens_per_minute(limited: ServerHandle) -> None:
    key = make_key(limited.home, "tokens", scopes="chat", tpm=10)
    client = openai.OpenAI(base_url=limited.url("/v1"), api_key=key, max_retries=0)
    first = client.chat.completions.with_raw_response.create(model=DEFAULT_MODEL, messages=HI, max_tokens=2)
    assert first.headers["x-ratelimit-limit-tokens"] == "10"
    with pytest.raises(openai.RateLimitError) as caught:
        client.chat.completions.create(model=DEFAULT_MODEL, messages=HI, max_tokens=2)
    response = caught.value.response
    assert response.headers["x-ratelimit-remaining-tokens"] == "0" and int(response.headers["retry-after"]) >= 1
    assert "10 tokens per minute" in response.json()["error"]["message"]


@pytest.mark.parametrize("budget", [{"budget_tokens": 10}, {"budget_usd": 0.005}])
def test_budget_exhausted_is_insufficient_quota(limited: ServerHandle, budget: dict[str, float]) -> None:
    name = "budget-" + next(iter(budget))
    key = make_key(limited.home, name, scopes="chat", budget_period="day", **budget)
    client = openai.OpenAI(base_url=limited.url("/v1"), api_key=key, max_retries=0)
    client.chat.completions.create(model=DEFAULT_MODEL, messages=HI, max_tokens=2)
    with pytest.raises(openai.RateLimitError) as caught:
        client.chat.completions.create(model=DEFAULT_MODEL, messages=HI, max_tokens=2)
    error = caught.value.response.json()["error"]
    assert error["code"] == "insufficient_quota" and "per day is spent" in error["message"]
    with pytest.raises(ollama.ResponseError) as refused:
        ollama.Client(host=limited.base_url, headers={"x-api-key": key}).chat(model=DEFAULT_MODEL, messages=HI)
    assert refused.value.status_code == 429


def test_budget_survives_a_restart(tmp_path: Path) -> None:
    """Spend starts from the usage log, so a new process does not hand out a fresh budget."""
    usage = UsageLog(tmp_path / "usage.db")
    usage.add(UsageRecord(ts=time.time(), endpoint="/v1/chat/completions", protocol="openai", model="m",
                          key="k", tokens_in=7, tokens_out=5, cost=0.5))
    usage.close()
    key = KeyRecord(name="k", prefix="ember-", hash="h", scopes=frozenset({"chat"}), budget_tokens=20,
                    budget_period="total")
    limiter = MemoryLimiter(tmp_path / "usage.db")
    assert limiter.admit(key).ok
    limiter.record(key, 8, 0.0)
    refused = limiter.admit(key)
    assert not refused.ok and refused.reason == "budget" and refused.retry_after is None


def test_reset_format() -> None:
    assert [format_reset(s) for s in (0, 0.02, 1, 12.5, 360)] == ["0s", "20ms", "1s", "13s", "6m0s"]
