"""Pulling a real GGUF over HTTP through the API with NDJSON progress; the OpenAPI docs."""

from __future__ import annotations

import functools
import http.server
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import ollama
import openai
import pytest


@pytest.fixture
def served_dir(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A plain stdlib HTTP server on loopback serving a directory."""
    root = tmp_path / "www"
    root.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *args: None  # type: ignore[method-assign]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", root
    finally:
        server.shutdown()
        server.server_close()


def test_pull_url_through_api_with_progress(fresh_home, model_path, server_factory, served_dir) -> None:
    base, root = served_dir
    shutil.copy(model_path, root / "tiny-chat.gguf")
    srv = server_factory(fresh_home)
    client = ollama.Client(host=srv.base_url, timeout=120)
    events = list(client.pull(f"{base}/tiny-chat.gguf", stream=True))
    statuses = [e.status for e in events]
    assert statuses[0] == "pulling manifest" and statuses[-1] == "success"
    sized = [e for e in events if e.total]
    assert sized and sized[-1].completed == sized[-1].total == model_path.stat().st_size
    assert "tiny-chat:latest" in [m.model for m in client.list().models]
    reply = openai.OpenAI(base_url=srv.url("/v1"), api_key="x").chat.completions.create(
        model="tiny-chat", messages=[{"role": "user", "content": "hi"}], max_tokens=4)
    assert reply.choices[0].message.content


def test_pull_under_another_name(fresh_home, model_path, server_factory, served_dir) -> None:
    base, root = served_dir
    shutil.copy(model_path, root / "m.gguf")
    srv = server_factory(fresh_home)
    response = httpx.post(srv.url("/api/pull"), timeout=120,
                          json={"model": f"{base}/m.gguf", "destination": "mine:v2", "stream": False})
    assert response.json() == {"status": "success"}
    assert "mine:v2" in [m["name"] for m in httpx.get(srv.url("/api/tags")).json()["models"]]


def test_pull_of_a_missing_url_is_a_clear_error(fresh_home, server_factory, served_dir) -> None:
    base, _ = served_dir
    srv = server_factory(fresh_home)
    response = httpx.post(srv.url("/api/pull"), json={"model": f"{base}/absent.gguf", "stream": False}, timeout=60)
    # The source answered 404: ember could not fetch what it was sent for, a bad gateway (502).
    assert response.status_code == 502
    error = response.json()["error"]
    assert "absent.gguf" in error and "HTTP 404" in error
    assert not (fresh_home / "manifests" / "absent").exists()


def test_openapi_docs(server) -> None:
    spec = httpx.get(server.url("/openapi.json")).json()
    for path in ("/v1/chat/completions", "/v1/embeddings", "/api/chat", "/api/pull", "/health"):
        assert path in spec["paths"]
    assert "swagger" in httpx.get(server.url("/docs")).text.lower()
