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
    assert second["load_duration"] == 0  # already resident: no load at all
    assert srv.log().count("loaded smollm2:135m") == 1
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


def test_queue_bound_answers_503_with_retry_after(fresh_home, server_factory) -> None:
    srv = server_factory(fresh_home, EMBER_MAX_QUEUE="0", EMBER_NUM_PARALLEL="1")
    _ask(srv, MODEL)
    body = {"model": MODEL, "prompt": "1, 2, 3, 4, 5, 6,", "raw": True,
            "options": {"num_predict": 3000, "temperature": 0}}
    with httpx.stream("POST", srv.url("/api/generate"), json=body, timeout=60) as busy:
        lines = busy.iter_lines()  # kept referenced: a dropped iterator closes the connection
        next(lines)  # the only slot is now generating
        chat = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
        refused = httpx.post(srv.url("/v1/chat/completions"), json=chat, timeout=60)
        assert refused.status_code == 503
        assert refused.headers["retry-after"] == "1"
        assert refused.json()["error"]["code"] == "queue_full"
        ollama_refused = httpx.post(srv.url("/api/generate"), timeout=60,
                                    json={**body, "stream": False, "options": {"num_predict": 2}})
        assert ollama_refused.status_code == 503 and "busy" in ollama_refused.json()["error"]
        status = httpx.get(srv.url("/api/ps")).json()["models"][0]
        assert status["slots_busy"] == status["slots"] and status["queue"] == 0


def test_memory_budget(fresh_home, server_factory) -> None:
    tiny = server_factory(fresh_home, EMBER_MAX_MEMORY="50MB")
    response = httpx.post(tiny.url("/api/generate"), json={"model": MODEL, "prompt": "hi"}, timeout=60)
    assert response.status_code == 503 and "memory budget" in response.json()["error"]
    # Room for one copy of the model and its cache, not two: the idle one is evicted.
    one = server_factory(fresh_home, EMBER_MAX_MEMORY="400MB", EMBER_NUM_CTX="2048",
                         EMBER_MAX_LOADED_MODELS="0")
    httpx.post(one.url("/api/copy"), json={"source": MODEL, "destination": "twin:v1"})
    _ask(one, MODEL)
    _ask(one, "twin:v1")
    assert _running(one) == ["twin:v1"]


def test_per_model_parallel_override(fresh_home, server_factory) -> None:
    srv = server_factory(fresh_home, EMBER_NUM_PARALLEL="2", EMBER_MODEL_PARALLEL='{"other:v1": 3}')
    httpx.post(srv.url("/api/copy"), json={"source": MODEL, "destination": "other:v1"})
    _ask(srv, MODEL)
    _ask(srv, "other:v1")
    slots = {m["model"]: m["slots"] for m in httpx.get(srv.url("/api/ps")).json()["models"]}
    assert slots == {MODEL: 2, "other:v1": 3}


def test_concurrent_first_requests_share_one_load(fresh_home, server_factory) -> None:
    import concurrent.futures

    srv = server_factory(fresh_home)
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        replies = list(pool.map(lambda _: _ask(srv, MODEL), range(4)))
    loads = [r["load_duration"] for r in replies]
    assert sum(1 for d in loads if d > 0) == 1, loads
    assert srv.log().count("loaded smollm2:135m") == 1
