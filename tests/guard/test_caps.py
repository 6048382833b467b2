"""Request caps: body size (declared or streamed) -> 413, messages and max_tokens -> 400; never a 500."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import ollama
import openai
import pytest

from tests.conftest import ServerHandle, start_server


@pytest.fixture(scope="module")
def capped(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerHandle]:
    base = tmp_path_factory.mktemp("caps")
    handle = start_server(base / "home", base, EMBER_MAX_BODY_BYTES="2000", EMBER_MAX_MESSAGES="3",
                          EMBER_MAX_TOKENS_LIMIT="16")
    try:
        yield handle
    finally:
        handle.stop()


def test_body_size(capped: ServerHandle) -> None:
    big = {"model": "m", "messages": [{"role": "user", "content": "x" * 3000}]}
    declared = httpx.post(capped.url("/v1/chat/completions"), json=big)
    assert declared.status_code == 413 and declared.json()["error"]["code"] == "request_too_large"
    assert httpx.post(capped.url("/api/chat"), json=big).json() == {
        "error": "request body larger than this server's limit of 2000 bytes"}

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted as it arrives
        yield b'{"model": "m", "prompt": "'
        for _ in range(10):
            yield b"y" * 500
        yield b'"}'

    streamed = httpx.post(capped.url("/api/generate"), content=chunks())
    assert streamed.status_code == 413


def test_messages_and_max_tokens(capped: ServerHandle) -> None:
    client = openai.OpenAI(base_url=capped.url("/v1"), api_key="unused", max_retries=0)
    four = [{"role": "user", "content": "hi"}] * 4
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="m", messages=four)  # type: ignore[arg-type]
    assert caught.value.response.json()["error"]["param"] == "messages"
    for field in ("max_tokens", "max_completion_tokens"):
        with pytest.raises(openai.BadRequestError) as caught:
            client.chat.completions.create(model="m", messages=four[:1], **{field: 17})  # type: ignore[arg-type]
        assert "above this server's limit of 16" in caught.value.response.json()["error"]["message"]
    with pytest.raises(ollama.ResponseError) as refused:
        ollama.Client(host=capped.base_url).generate(model="m", prompt="hi", options={"num_predict": 17})
    assert refused.value.status_code == 400 and "num_predict 17" in refused.value.error
    # Within the caps the request reaches the route (no such model here: 404).
    within = httpx.post(capped.url("/api/chat"), json={"model": "m", "messages": four[:3], "options": {"num_predict": 16}})
    assert within.status_code == 404


@pytest.mark.parametrize("body", [b"not json", b"[1, 2]", b'{"messages": 5, "max_tokens": "many"}', b""])
def test_odd_bodies_are_never_500(capped: ServerHandle, body: bytes) -> None:
    for path in ("/v1/chat/completions", "/api/generate"):
        status = httpx.post(capped.url(path), content=body).status_code
        assert 400 <= status < 500, (path, body, status)
