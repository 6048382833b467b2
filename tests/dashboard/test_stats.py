"""GET /admin/stats, what the dashboard's overview polls: its shape, that its counters move with
requests, and that it needs the admin scope. Against the real server and the real model."""

from __future__ import annotations

import time
from typing import Any

import httpx
from tests.conftest import DEFAULT_MODEL, ServerHandle
from tests.dashboard.conftest import Dashboard

from ember.gateway.usage import UsageRecord
from ember.recent_stats import RecentStats, percentiles


def _stats(server: ServerHandle) -> dict:
    response = httpx.get(server.url("/admin/stats"), timeout=10)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/json")
    return response.json()


def _chat(server: ServerHandle, model: str = DEFAULT_MODEL) -> httpx.Response:
    return httpx.post(
        server.url("/v1/chat/completions"),
        json={"model": model, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3},
        timeout=60,
    )


def test_shape(server: ServerHandle) -> None:
    s = _stats(server)
    assert isinstance(s["version"], str) and s["version"]
    assert s["uptime_s"] >= 0 and s["now"] >= s["started_at"]
    assert {"slots", "slots_busy", "queue"} <= s.keys()
    assert s["memory"]["budget_bytes"] > 0 and s["memory"]["resident_bytes"] >= 0
    assert set(s["totals"]) == {"requests", "errors", "server_errors", "tokens_in", "tokens_out"}
    assert s["window"]["seconds"] > 0
    assert set(s["window"]["ttft_ms"]) == {"count", "p50", "p95"}


def test_counters_move_after_a_request(server: ServerHandle) -> None:
    before = _stats(server)
    answer = _chat(server)
    assert answer.status_code == 200, answer.text
    usage = answer.json()["usage"]
    after = _stats(server)

    moved = {k: after["totals"][k] - before["totals"][k] for k in before["totals"]}
    # Other tests of the session may run requests on this server too: at least ours counted.
    assert moved["requests"] >= 1
    assert moved["tokens_out"] >= usage["completion_tokens"] >= 1
    assert moved["tokens_in"] >= usage["prompt_tokens"] >= 1
    assert after["window"]["requests"] >= 1
    ttft = after["window"]["ttft_ms"]
    assert ttft["count"] >= 1 and 0 < ttft["p50"] <= ttft["p95"]
    assert after["uptime_s"] > before["uptime_s"]

    model = next(m for m in after["models"] if m["name"] == DEFAULT_MODEL)
    assert model["slots"] >= 1 and 0 <= model["slots_busy"] <= model["slots"]
    assert model["queue"] == 0 and model["memory_bytes"] > 0 and model["context_length"] > 0
    assert after["memory"]["resident_bytes"] >= model["memory_bytes"]
    if model["in_flight"] == 0 and model["keep_alive_s"] >= 0:
        assert 0 <= model["keep_alive_left_s"] <= model["keep_alive_s"]


def test_a_running_request_holds_a_slot(server: ServerHandle) -> None:
    """While an answer streams its model shows a busy slot and no keep-alive count (it starts
    when the request ends); once the client goes the slot is free again."""
    body = {  # greedy counting: a long answer, so it is still running when looked at
        "model": DEFAULT_MODEL,
        "messages": [{"role": "user", "content": "Count from 1 to 100, one number per line."}],
        "max_tokens": 300,
        "temperature": 0,
        "stream": True,
    }
    seen: list[dict[str, Any]] = []
    with httpx.stream("POST", server.url("/v1/chat/completions"), json=body, timeout=60) as response:
        assert response.status_code == 200
        lines = response.iter_lines()
        next(lines)  # the first chunk: the request holds its slot
        # Looked at a few times while it streams: a loaded machine may be slow to answer /admin/stats.
        for _ in range(5):
            next(lines)
            seen.append(next(m for m in _stats(server)["models"] if m["name"] == DEFAULT_MODEL))
            if seen[-1]["slots_busy"] >= 1:
                break
    during = seen[-1]
    assert during["slots_busy"] >= 1 and during["in_flight"] >= 1, seen
    assert during["keep_alive_left_s"] is None
    for _ in range(50):  # the server sees the disconnect and cancels within moments
        after = next(m for m in _stats(server)["models"] if m["name"] == DEFAULT_MODEL)
        if after["in_flight"] == 0:
            break
        time.sleep(0.1)
    assert after["in_flight"] == 0 and after["slots_busy"] == 0


def test_an_error_counts_as_an_error_not_a_server_error(server: ServerHandle) -> None:
    before = _stats(server)["totals"]
    assert _chat(server, "no-such-model:1b").status_code == 404
    after = _stats(server)["totals"]
    assert after["errors"] - before["errors"] >= 1
    # Only this test's 404 in between, unless another test made a 5xx meanwhile (none do on purpose).
    assert after["server_errors"] == before["server_errors"]


def test_needs_the_admin_scope(dashboard: Dashboard) -> None:
    url = dashboard.url("/admin/stats")
    assert httpx.get(url, timeout=10).status_code == 401
    with dashboard.client(dashboard.user_key) as user:
        refused = user.get("/admin/stats")
    assert refused.status_code == 403 and "admin" in refused.text
    with dashboard.client() as admin:
        assert admin.get("/admin/stats").status_code == 200


# -- the observer itself (plain data, a fake clock) -----------------------------------------------


def test_percentiles_nearest_rank() -> None:
    assert percentiles([]).p50 is None
    p = percentiles([float(v) for v in range(1, 101)])
    assert (p.count, p.p50, p.p95) == (100, 50.0, 95.0)
    one = percentiles([7.0])
    assert one.p50 == one.p95 == 7.0


def test_window_forgets_old_requests_but_totals_do_not() -> None:
    now = [1000.0]
    recent = RecentStats(window_s=60, clock=lambda: now[0])

    def record(status: int, ttft: float | None) -> UsageRecord:
        return UsageRecord(
            ts=now[0],
            endpoint="/v1/chat/completions",
            protocol="openai",
            model="m",
            tokens_in=5,
            tokens_out=2,
            ttft_ms=ttft,
            status=status,
        )

    recent.observe(record(200, 100.0))
    recent.observe(record(503, None))
    now[0] += 61
    recent.observe(record(429, 300.0))
    snap = recent.snapshot()
    assert snap["totals"] == {"requests": 3, "errors": 2, "server_errors": 1, "tokens_in": 15, "tokens_out": 6}
    assert snap["window"]["requests"] == 1
    assert snap["window"]["ttft_ms"] == {"count": 1, "p50": 300.0, "p95": 300.0}
    now[0] += 120
    assert recent.snapshot()["window"]["ttft_ms"]["count"] == 0
