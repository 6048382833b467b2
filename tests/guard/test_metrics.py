"""GET /metrics on a real server: Prometheus text whose counters move with requests, and
scrape-time gauges for loaded models and slots; Telemetry's own counters in-process."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from ember.config import Settings
from ember.gateway.usage import UsageRecord
from ember.telemetry import Telemetry
from tests.conftest import start_server

MODEL = "smollm2:135m"

@pytest.fixture(scope="module")
def metrics_server(tmp_path_factory: pytest.TempPathFactory, model_home: Path) -> Iterator[str]:
    handle = start_server(model_home, tmp_path_factory.mktemp("metrics"))
    try:
        yield handle.base_url
    finally:
        handle.stop()


def _scrape(base: str) -> dict[tuple[str, frozenset], float]:
    response = httpx.get(base + "/metrics", timeout=10)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(response.text) for s in family.samples}


def _value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def test_counters_rise_with_a_completion(metrics_server: str) -> None:
    before = _scrape(metrics_server)
    client = openai.OpenAI(base_url=metrics_server + "/v1", api_key="unused")
    reply = client.chat.completions.create(model=MODEL, max_tokens=2,
                                           messages=[{"role": "user", "content": "Hi"}])
    labels = {"endpoint": "/v1/chat/completions", "model": MODEL, "route": "", "provider": "local",
              "status": "200"}
    deadline = time.monotonic() + 5
    while True:  # observers run as the stream closes, a moment after the reply
        after = _scrape(metrics_server)
        if _value(after, "ember_requests_total", **labels) > _value(before, "ember_requests_total", **labels) \
                or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert _value(after, "ember_requests_total", **labels) == _value(before, "ember_requests_total", **labels) + 1
    for direction, used in (("in", reply.usage.prompt_tokens), ("out", reply.usage.completion_tokens)):
        rose = _value(after, "ember_tokens_total", direction=direction, model=MODEL) \
            - _value(before, "ember_tokens_total", direction=direction, model=MODEL)
        assert rose == used > 0
    assert _value(after, "ember_request_latency_seconds_count", model=MODEL) \
        == _value(before, "ember_request_latency_seconds_count", model=MODEL) + 1
    assert _value(after, "ember_ttft_seconds_count", model=MODEL) \
        == _value(before, "ember_ttft_seconds_count", model=MODEL) + 1
    # Scrape-time gauges: the model is loaded, with its slots, and idle now.
    assert _value(after, "ember_models_loaded") >= 1
    assert _value(after, "ember_slots", model=MODEL) >= 1
    assert _value(after, "ember_slots_busy", model=MODEL) == 0
    assert _value(after, "ember_queue_depth", model=MODEL) == 0
    assert _value(after, "ember_model_memory_bytes", model=MODEL) > 0
    assert ("ember_redis_up", frozenset()) in after


def test_telemetry_counts_in_process() -> None:
    """Two Telemetry objects in one process do not clash (each has its own registry)."""
    first, second = Telemetry(Settings()), Telemetry(Settings())
    record = UsageRecord(ts=time.time(), endpoint="/v1/completions", protocol="openai", model="m",
                         provider="cloud", route="r", tokens_in=3, tokens_out=5, cost=0.25, ttft_ms=12.0,
                         latency_ms=40.0, cache="hit")
    first.observe(record)
    first.observe(UsageRecord(ts=time.time(), endpoint="/v1/completions", protocol="openai",
                              model="no-such-model", status=404))
    first.count_rejection("rpm")
    first.set_redis_up(True)
    text = first.render().decode()
    samples = {(s.name, frozenset(s.labels.items())): s.value
               for family in text_string_to_metric_families(text) for s in family.samples}
    assert _value(samples, "ember_requests_total", endpoint="/v1/completions", model="m", route="r",
                  provider="cloud", status="200") == 1
    assert _value(samples, "ember_requests_total", endpoint="/v1/completions", model="(unknown)",
                  route="", provider="local", status="404") == 1
    assert _value(samples, "ember_cost_usd_total", model="m", provider="cloud") == 0.25
    assert _value(samples, "ember_cache_requests_total", result="hit") == 1
    assert _value(samples, "ember_ratelimit_rejections_total", reason="rpm") == 1
    assert _value(samples, "ember_redis_up") == 1
    assert _value(samples, "ember_models_loaded") == 0  # not bound: no scheduler to read
    first.bind(SimpleNamespace(scheduler=SimpleNamespace(running=list), gateway=SimpleNamespace(targets={
        f"t-{state}": SimpleNamespace(breaker=SimpleNamespace(state=state))
        for state in ("closed", "half-open", "open")})))
    text = first.render().decode()
    samples = {(s.name, frozenset(s.labels.items())): s.value
               for family in text_string_to_metric_families(text) for s in family.samples}
    assert [_value(samples, "ember_breaker_state", target=f"t-{state}")
            for state in ("closed", "half-open", "open")] == [0, 1, 2]
    assert "ember_requests_total{" not in second.render().decode()
