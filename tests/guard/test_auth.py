"""API keys over HTTP: 401 vs 403 in each protocol's format, scopes, revocation seen at once, fail closed."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import ollama
import openai
import pytest

from ember.config import Settings
from ember.guard import auth_enabled, required_scope
from tests.conftest import DEFAULT_MODEL, ServerHandle, start_server

from . import CLI_ARGV, copy_home, make_key

UNAUTHORIZED = "invalid or missing API key"


@pytest.fixture(scope="module")
def locked(model_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerHandle]:
    """A server with EMBER_AUTH=required over its own copy of the model home."""
    base = tmp_path_factory.mktemp("auth")
    home = copy_home(model_home, base / "home")
    handle = start_server(home, base, EMBER_AUTH="required")
    try:
        yield handle
    finally:
        handle.stop()


def oai(server: ServerHandle, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url("/v1"), api_key=key, max_retries=0)


def oll(server: ServerHandle, key: str | None) -> ollama.Client:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return ollama.Client(host=server.base_url, headers=headers)


def test_auth_decision() -> None:
    def enabled(host: str, auth: str = "auto") -> bool:
        return auth_enabled(Settings(host=host, auth=auth))  # type: ignore[arg-type]

    assert not enabled("127.0.0.1:11434") and not enabled("localhost:1") and not enabled("[::1]:9")
    assert not enabled("127.0.0.2:8080")
    assert enabled("0.0.0.0:11434") and enabled("[::]:1") and enabled("192.168.1.5:80")
    assert enabled("myhost.example:80")  # a name could resolve to any interface
    assert not enabled("0.0.0.0:11434", "off")
    assert enabled("127.0.0.1:11434", "required")


def test_scope_table() -> None:
    assert required_scope("/v1/chat/completions") == "chat" and required_scope("/api/generate") == "chat"
    assert required_scope("/v1/embeddings") == "embed" and required_scope("/api/embeddings") == "embed"
    assert required_scope("/v1/models/smollm2:135m") == "models" and required_scope("/api/version") == "models"
    assert required_scope("/api/pull") == "admin" and required_scope("/admin/usage") == "admin"
    assert required_scope("/metrics") == "admin"
    assert required_scope("/health") == "open" and required_scope("/docs") == "open"
    assert required_scope("/v1/unknown") == ""  # a valid key, then the 404


def test_missing_wrong_expired_revoked_are_one_401(locked: ServerHandle) -> None:
    home = locked.home
    expired = make_key(home, "expired", expires=time.time() - 1)
    revoked = make_key(home, "revoked")
    assert oai(locked, revoked).models.list().data is not None  # works until revoked...
    env = {**os.environ, "EMBER_HOME": str(home)}
    subprocess.run([*CLI_ARGV, "keys", "revoke", "revoked"], env=env, check=True, timeout=60)
    wrong = "ember-" + "x" * 40
    for key in (wrong, expired, revoked):
        with pytest.raises(openai.AuthenticationError) as caught:
            oai(locked, key).models.list()  # ... and refused on the very next request
        body = caught.value.response.json()
        assert body["error"]["message"] == UNAUTHORIZED and body["error"]["code"] == "invalid_api_key"
        with pytest.raises(ollama.ResponseError) as refused:
            oll(locked, key).list()
        assert refused.value.status_code == 401 and refused.value.error == UNAUTHORIZED
    missing = httpx.get(locked.url("/api/tags"))
    assert missing.status_code == 401 and missing.json() == {"error": UNAUTHORIZED}
    missing = httpx.get(locked.url("/v1/models"))
    assert missing.status_code == 401 and missing.json()["error"]["type"] == "invalid_request_error"


def test_key_made_by_cli_works_at_once(locked: ServerHandle) -> None:
    env = {**os.environ, "EMBER_HOME": str(locked.home)}
    made = subprocess.run([*CLI_ARGV, "keys", "create", "--name", "fresh", "--scopes", "models"],
                          env=env, capture_output=True, text=True, check=True, timeout=60)
    key = made.stdout.strip()
    assert httpx.get(locked.url("/v1/models"), headers={"Authorization": f"Bearer {key}"}).status_code == 200
    assert httpx.get(locked.url("/api/tags"), headers={"x-api-key": key}).status_code == 200


def test_scopes(locked: ServerHandle) -> None:
    chat = make_key(locked.home, "chatter", scopes="chat")
    models = make_key(locked.home, "lister", scopes="models")
    admin = make_key(locked.home, "boss", scopes="admin")
    with pytest.raises(ollama.ResponseError) as refused:
        oll(locked, chat).pull("nothing:here")
    assert refused.value.status_code == 403 and refused.value.error == "this key lacks the 'admin' scope"
    with pytest.raises(openai.PermissionDeniedError) as denied:
        oai(locked, models).chat.completions.create(model=DEFAULT_MODEL, messages=[{"role": "user", "content": "hi"}])
    assert denied.value.response.json()["error"]["message"] == "this key lacks the 'chat' scope"
    with pytest.raises(openai.PermissionDeniedError):
        oai(locked, chat).embeddings.create(model=DEFAULT_MODEL, input="x")
    with pytest.raises(openai.PermissionDeniedError):
        oai(locked, chat).models.list()
    assert [m.id for m in oai(locked, models).models.list().data]
    # /metrics: admin only when keys are on; the basics stay open.
    assert httpx.get(locked.url("/metrics")).status_code == 401
    assert httpx.get(locked.url("/metrics"), headers={"x-api-key": models}).status_code == 403
    scraped = httpx.get(locked.url("/metrics"), headers={"x-api-key": admin})
    assert scraped.status_code == 200, scraped.text
    assert scraped.headers["content-type"].startswith("text/plain")
    assert "# TYPE ember_requests_total counter" in scraped.text
    for path in ("/", "/health", "/openapi.json", "/docs"):
        assert httpx.get(locked.url(path)).status_code == 200, path
    assert httpx.get(locked.url("/v1/nothing")).status_code == 401
    assert httpx.get(locked.url("/v1/nothing"), headers={"x-api-key": chat}).status_code == 404
    # A chat key chats, in both protocols; the reply is tiny.
    reply = oai(locked, chat).chat.completions.create(
        model=DEFAULT_MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=2)
    assert reply.usage is not None and reply.usage.completion_tokens <= 2
    answer = oll(locked, chat).generate(model=DEFAULT_MODEL, prompt="hi", options={"num_predict": 2})
    assert answer.done


def test_fail_closed_when_the_store_is_unreadable(tmp_path: Path) -> None:
    home = tmp_path / "home"
    (home / "state").mkdir(parents=True)
    (home / "state" / "keys.db").write_bytes(b"this is not a database" * 100)
    handle = start_server(home, tmp_path, EMBER_AUTH="required")
    try:
        refused = httpx.get(handle.url("/v1/models"), headers={"x-api-key": "ember-" + "a" * 40})
        assert refused.status_code == 503 and refused.json()["error"]["code"] == "key_store_unavailable"
        assert httpx.get(handle.url("/api/tags"), headers={"x-api-key": "k"}).status_code == 503
        assert httpx.get(handle.url("/health")).status_code == 200
    finally:
        handle.stop()


async def test_guard_in_process_admits_a_limited_key(tmp_path: Path) -> None:
    """The guard in front of the app (ASGI transport): a limited key passes and is counted.

    What it costs per request is measured by bench/guard_overhead.py, not asserted here.
    """
    from ember.app import build_app

    home = tmp_path / "home"
    # 10 a minute: one more every 6 s, so the count below holds however slow the machine is.
    key = make_key(home, "bench", scopes="models", rpm=10, tpm=10**6, max_concurrent=100)
    for auth in ("off", "required"):
        app = build_app(Settings(home=home, auth=auth))  # type: ignore[arg-type]
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
                remaining = []
                for _ in range(10):
                    response = await client.get("/v1/models", headers={"x-api-key": key})
                    assert response.status_code == 200, response.text
                    assert response.json()["object"] == "list"
                    remaining.append(response.headers.get("x-ratelimit-remaining-requests"))
                over = await client.get("/v1/models", headers={"x-api-key": key})
                anonymous = await client.get("/v1/models")
        if auth == "off":
            assert remaining == [None] * 10  # no guard work: no limit headers
            assert over.status_code == anonymous.status_code == 200
        else:
            assert remaining == [str(n) for n in range(9, -1, -1)]  # each request counted once
            assert over.status_code == 429
            assert anonymous.status_code == 401
