"""Models load on first use, unload after keep_alive, and EMBER_MAX_LOADED_MODELS evicts the LRU."""

from __future__ import annotations

import time

import httpx

MODEL = "smollm2:135m"


def _running(server) -> list[str]:
    return [m["model"] for m in httpx.get(server.url("/api/ps")).json()["models"]]


def _ask(server, model: str, **extra) -> dict:
    response = httpx.post(server.url("/api/generate"), timeout=60,
                          json={"model": model, "prompt": "hi", "stream": False,
                                "options": {"num_predict": 2}, **extra})
    assert response.status_code == 200, response.text
    return response.json()


def test_load_on_first_use_then_keep_alive_expiry(fresh_home, server_factory) -> None:
    srv = server_factory(fresh_home, EMBER_KEEP_ALIVE="2s")
    assert _running(srv) == []
    first = _ask(srv, MODEL)
    assert first["load_duration"] > 0
    assert _running(srv) == [MODEL]
    second = _ask(srv, MODEL)
    assert second["load_duration"] < first["load_duration"]  # already resident: no load
    deadline = time.monotonic() + 10
    while _running(srv) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _running(srv) == []


def test_request_keep_alive_overrides_default(fresh_home, server_factory) -> None:
    srv = server_factory(fresh_home, EMBER_KEEP_ALIVE="1h")
    _ask(srv, MODEL, keep_alive=0)
    deadline = time.monotonic() + 5
    while _running(srv) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _running(srv) == []
    _ask(srv, MODEL, keep_alive=-1)
    expires = httpx.get(srv.url("/api/ps")).json()["models"][0]["expires_at"]
    assert expires.startswith("9999")


def test_max_loaded_models_one_keeps_the_most_recent(fresh_home, server_factory) -> None:
    srv = server_factory(fresh_home, EMBER_MAX_LOADED_MODELS="1")
    assert httpx.post(srv.url("/api/copy"), json={"source": MODEL, "destination": "other:v1"}).status_code == 200
    _ask(srv, MODEL)
    assert _running(srv) == [MODEL]
    _ask(srv, "other:v1")
    assert _running(srv) == ["other:v1"]
    _ask(srv, MODEL)
    assert _running(srv) == [MODEL]


def test_deleting_a_loaded_model_unloads_it(fresh_home, server_factory) -> None:
    srv = server_factory(fresh_home)
    httpx.post(srv.url("/api/copy"), json={"source": MODEL, "destination": "temp:v1"})
    _ask(srv, "temp:v1")
    assert "temp:v1" in _running(srv)
    assert httpx.request("DELETE", srv.url("/api/delete"), json={"model": "temp:v1"}).status_code == 200
    assert "temp:v1" not in _running(srv)
