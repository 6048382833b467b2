"""Redis going away under a real server: /metrics says `ember_redis_up 0`, a chat still gets its
answer, and the key's limits go on in this replica's memory (enforced, not dropped)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from tests.conftest import DEFAULT_MODEL, start_redis
from tests.guard.test_redis_shared import start_redis_on

from . import make_key

pytestmark = pytest.mark.slow


def redis_up(base_url: str, admin: str) -> float:
    response = httpx.get(base_url + "/metrics", headers={"x-api-key": admin}, timeout=10)
    assert response.status_code == 200, response.text
    (sample,) = [s for f in text_string_to_metric_families(response.text) for s in f.samples
                 if s.name == "ember_redis_up"]
    return sample.value


def wait_for_redis_up(base_url: str, admin: str, expected: float, seconds: float = 15) -> None:
    deadline = time.monotonic() + seconds
    while (value := redis_up(base_url, admin)) != expected:
        assert time.monotonic() < deadline, f"ember_redis_up stayed {value}, expected {expected}"
        time.sleep(0.1)


def test_redis_down_reports_0_and_serves_under_local_limits(
        tmp_path: Path, fresh_home: Path, server_factory: Any) -> None:
    redis = start_redis(tmp_path)
    try:
        key = make_key(fresh_home, "steady", scopes="chat,models", rpm=3)
        admin = make_key(fresh_home, "ops", scopes="admin")  # no limits: scraping never asks Redis
        server = server_factory(fresh_home, EMBER_AUTH="required", EMBER_REDIS_URL=redis.url)
        headers = {"x-api-key": key}
        body = {"model": DEFAULT_MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}

        def chat() -> httpx.Response:
            return httpx.post(server.url("/v1/chat/completions"), headers=headers, json=body, timeout=120)

        assert redis_up(server.base_url, admin) == 1
        for remaining in ("2", "1"):  # counted in Redis
            response = chat()
            assert response.status_code == 200, response.text
            assert response.headers["x-ratelimit-remaining-requests"] == remaining

        redis.stop()
        response = chat()
        assert response.status_code == 200, response.text
        assert response.json()["choices"][0]["message"]["content"]
        # Counted in this replica's memory now, which starts from a full minute's allowance.
        assert response.headers["x-ratelimit-remaining-requests"] == "2"
        wait_for_redis_up(server.base_url, admin, 0)
        assert server.log().count("is unreachable") == 1

        # The local limit holds: two more, then 429 (the key allows 3 a minute).
        for remaining in ("1", "0"):
            models = httpx.get(server.url("/v1/models"), headers=headers, timeout=30)
            assert models.status_code == 200 and models.headers["x-ratelimit-remaining-requests"] == remaining
        refused = httpx.get(server.url("/v1/models"), headers=headers, timeout=30)
        assert refused.status_code == 429 and "3 requests per minute" in refused.json()["error"]["message"]

        # Redis back on its port: the probe finds it and the gauge says so.
        redis = start_redis_on(tmp_path, redis.port)
        wait_for_redis_up(server.base_url, admin, 1)
    finally:
        redis.stop()
