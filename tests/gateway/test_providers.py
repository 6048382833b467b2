"""Remote providers end to end: real clients -> ember (gateway) -> a fake upstream or a second ember.

One gateway, one fake upstream and one model node serve the whole module (starting servers
is the slow part); each test leaves the upstream as it found it, and tests that make a target
fail name their own model so breakers of one test do not touch the next.
"""

from __future__ import annotations

import json
import struct
import base64
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import ollama
import openai
import pytest

from ember.bench.upstream import _vector
from tests.conftest import ServerHandle, start_server
from tests.gateway.conftest import UpstreamHandle, write_config

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("clean_fake")]

NODE_MODEL = "smollm2:135m"


@pytest.fixture(scope="module")
def gateway(fake: UpstreamHandle, server: ServerHandle, logs: Path) -> Iterator[ServerHandle]:
    """ember with providers on the fake upstream (both APIs) and on a second, real ember (`server`)."""
    config = write_config(logs, f"""
[[providers]]
name = "fake"
kind = "openai"
base_url = "{fake.v1}"

[[providers]]
name = "fakeollama"
kind = "ollama"
base_url = "{fake.url}"

[[providers]]
name = "slow"
kind = "openai"
base_url = "{fake.v1}"
first_token_timeout = 1

[[providers]]
name = "node"
kind = "ollama"
base_url = "{server.base_url}"

[[providers]]
name = "nodev1"
kind = "openai"
base_url = "{server.base_url}/v1"

[[routes]]
model = "chat"
targets = ["fake/gpt-test"]

[[routes]]
model = "embed"
targets = ["fake/embed-test"]

[[routes]]
model = "node-ollama"
targets = ["node/{NODE_MODEL}"]

[[routes]]
model = "node-openai"
targets = ["nodev1/{NODE_MODEL}"]
""")
    home = logs / "gateway-home"
    home.mkdir()
    handle = start_server(home, logs, EMBER_CONFIG=str(config))
    try:
        yield handle
    finally:
        handle.stop()


def openai_client(gateway: ServerHandle) -> openai.OpenAI:
    # No client retries: each test counts the upstream's requests.
    return openai.OpenAI(base_url=gateway.url("/v1"), api_key="unused", max_retries=0, timeout=60)


def ollama_client(gateway: ServerHandle) -> ollama.Client:
    return ollama.Client(host=gateway.base_url, timeout=60)


MESSAGES: Any = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "say three words"}]


# -- (a) the OpenAI client, an OpenAI-compatible upstream ------------------------------------------


def test_openai_chat_through_a_route_gets_the_upstreams_text_usage_and_headers(
        gateway: ServerHandle, fake: UpstreamHandle) -> None:
    client = openai_client(gateway)
    raw = client.chat.completions.with_raw_response.create(model="chat", messages=MESSAGES, max_tokens=3)
    reply = raw.parse()
    assert raw.headers["x-ember-provider"] == "fake"
    assert raw.headers["x-ember-attempts"] == "1"
    assert reply.choices[0].message.content == "tok0 tok1 tok2 "
    assert reply.choices[0].finish_reason == "length"
    assert reply.usage is not None
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (5, 3)

    with client.chat.completions.with_streaming_response.create(
            model="chat", messages=MESSAGES, max_tokens=4, stream=True,
            stream_options={"include_usage": True}) as response:
        assert response.headers["x-ember-provider"] == "fake"
        assert response.headers["x-ember-attempts"] == "1"
        chunks = list(response.parse())
    texts = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert texts == ["tok0 ", "tok1 ", "tok2 ", "tok3 "]  # one chunk per upstream token
    usage = chunks[-1].usage
    assert usage is not None and (usage.prompt_tokens, usage.completion_tokens) == (5, 4)

    # A plain completion goes to the upstream's /v1/completions; the direct name works as well.
    completion = client.completions.create(model="fake/gpt-test", prompt="one two three four", max_tokens=2)
    assert completion.choices[0].text == "tok0 tok1 "
    assert completion.usage is not None and completion.usage.prompt_tokens == 4
    stats = fake.stats()
    assert stats["by_path"] == {"/v1/chat/completions": 2, "/v1/completions": 1}
    assert stats["completed"] == 3 and stats["active"] == 0


def test_llama_cpp_sampling_knobs_are_named_not_sent_to_an_openai_upstream(
        gateway: ServerHandle, fake: UpstreamHandle) -> None:
    """A cloud refuses fields it does not know: top_k and friends stay here, named in the header."""
    client = openai_client(gateway)
    raw = client.chat.completions.with_raw_response.create(
        model="chat", messages=MESSAGES, max_tokens=2, extra_body={"top_k": 5, "repeat_penalty": 1.0})
    assert raw.headers["x-ember-dropped-fields"] == "top_k, repeat_penalty"
    sent = httpx.get(fake.url + "/_last", timeout=5).json()["body"]
    assert not {"top_k", "repeat_penalty"} & set(sent)
    plain = client.chat.completions.with_raw_response.create(model="chat", messages=MESSAGES, max_tokens=2)
    assert "x-ember-dropped-fields" not in plain.headers


# -- (b) protocol translation both ways --------------------------------------------------------------


def test_ollama_client_on_a_route_served_by_an_openai_upstream(gateway: ServerHandle) -> None:
    client = ollama_client(gateway)
    reply = client.chat(model="chat", messages=MESSAGES, options={"num_predict": 3})
    assert reply.message.content == "tok0 tok1 tok2 "
    assert (reply.prompt_eval_count, reply.eval_count) == (5, 3)
    assert reply.done_reason == "length"

    parts = list(client.chat(model="chat", messages=MESSAGES, options={"num_predict": 2}, stream=True))
    assert "".join(p.message.content or "" for p in parts) == "tok0 tok1 "
    assert parts[-1].done and parts[-1].eval_count == 2

    generated = client.generate(model="fake/gpt-test", prompt="a b c", options={"num_predict": 2})
    assert generated.response == "tok0 tok1 "


def test_openai_client_on_a_route_served_by_an_ollama_node(gateway: ServerHandle) -> None:
    client = openai_client(gateway)
    raw = client.chat.completions.with_raw_response.create(
        model="node-ollama", messages=[{"role": "user", "content": "Hi"}], max_tokens=4, temperature=0)
    reply = raw.parse()
    assert raw.headers["x-ember-provider"] == "node"
    assert isinstance(reply.choices[0].message.content, str) and reply.choices[0].message.content
    assert reply.usage is not None
    assert reply.usage.prompt_tokens > 0 and 0 < reply.usage.completion_tokens <= 4

    # Streaming, and a raw prompt (the node's /api/generate with raw=true).
    stream = client.completions.create(model="node-ollama", prompt="The sky is", max_tokens=3,
                                       stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    assert "".join(c.choices[0].text for c in chunks if c.choices)
    assert chunks[-1].usage is not None and 0 < chunks[-1].usage.completion_tokens <= 3


def test_openai_kind_provider_on_a_second_ember(gateway: ServerHandle) -> None:
    client = ollama_client(gateway)
    reply = client.chat(model="node-openai", messages=[{"role": "user", "content": "Hi"}],
                        options={"num_predict": 3, "temperature": 0})
    assert reply.message.content
    assert reply.eval_count is not None and 0 < reply.eval_count <= 3
    assert reply.prompt_eval_count is not None and reply.prompt_eval_count > 0


# -- (c) an upstream error before the first token ---------------------------------------------------


def test_upstream_500_before_the_first_token_is_a_5xx_in_each_protocol(
        gateway: ServerHandle, fake: UpstreamHandle) -> None:
    fake.control(mode="error", status=500)
    started = time.monotonic()
    with pytest.raises(openai.APIStatusError) as caught:
        openai_client(gateway).chat.completions.create(model="fake/err-openai", messages=MESSAGES)
    assert caught.value.status_code == 502
    assert isinstance(caught.value.body, dict) and "500" in caught.value.body["message"]

    with pytest.raises(openai.APIStatusError) as caught:  # streaming: still an HTTP error, not an event
        list(openai_client(gateway).chat.completions.create(model="fake/err-openai", messages=MESSAGES,
                                                             stream=True))
    assert caught.value.status_code == 502

    with pytest.raises(ollama.ResponseError) as ollama_caught:
        list(ollama_client(gateway).chat(model="fake/err-ollama", messages=MESSAGES, stream=True))
    assert ollama_caught.value.status_code == 502 and "500" in ollama_caught.value.error
    assert time.monotonic() - started < 15
    assert fake.stats()["active"] == 0


def test_upstream_429_keeps_its_status_and_retry_after(gateway: ServerHandle, fake: UpstreamHandle) -> None:
    fake.control(mode="error", status=429, retry_after=1)
    response = httpx.post(gateway.url("/v1/chat/completions"), timeout=30,
                          json={"model": "fake/limited", "messages": MESSAGES})
    assert response.status_code == 429, response.text
    assert response.headers["retry-after"] == "1"
    assert response.json()["error"]["type"] == "rate_limit_error"


# -- (d) a stream that breaks after two tokens -----------------------------------------------------


def test_drop_mid_stream_sends_the_tokens_then_an_error_event(gateway: ServerHandle, fake: UpstreamHandle) -> None:
    fake.control(mode="drop", drop_after=2)
    with httpx.stream("POST", gateway.url("/v1/chat/completions"), timeout=30, json={
            "model": "fake/drop-openai", "messages": MESSAGES, "max_tokens": 6, "stream": True}) as response:
        assert response.status_code == 200
        events = [line.removeprefix("data: ") for line in response.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    texts = [c["choices"][0]["delta"].get("content") for c in chunks if c.get("choices")]
    assert "".join(t for t in texts if t) == "tok0 tok1 "
    assert "error" in chunks[-1] and "finish_reason" not in json.dumps(chunks[-1])
    assert not any(c.get("choices") and c["choices"][0]["finish_reason"] for c in chunks)

    # The OpenAI client: the two tokens, then an APIError (no silent switch to another target).
    received: list[str] = []
    with pytest.raises(openai.APIError):
        for chunk in openai_client(gateway).chat.completions.create(
                model="fake/drop-openai", messages=MESSAGES, max_tokens=6, stream=True):
            if chunk.choices and chunk.choices[0].delta.content:
                received.append(chunk.choices[0].delta.content)
    assert received == ["tok0 ", "tok1 "]
    assert fake.stats()["by_path"] == {"/v1/chat/completions": 2}


def test_drop_mid_stream_of_an_ollama_upstream_ends_the_ndjson_with_an_error(
        gateway: ServerHandle, fake: UpstreamHandle) -> None:
    fake.control(mode="drop", drop_after=2)
    received: list[str] = []
    with pytest.raises(ollama.ResponseError) as caught:
        for part in ollama_client(gateway).chat(model="fakeollama/drop-ollama", messages=MESSAGES,
                                                options={"num_predict": 6}, stream=True):
            received.append(part.message.content or "")
    assert "".join(received) == "tok0 tok1 "
    assert "fakeollama" in caught.value.error
    assert fake.stats()["by_path"] == {"/api/chat": 1}


# -- (e) the first-token timeout ------------------------------------------------------------------------


def test_hanging_upstream_times_out_at_the_first_token(gateway: ServerHandle, fake: UpstreamHandle) -> None:
    fake.control(mode="hang")
    started = time.monotonic()
    response = httpx.post(gateway.url("/v1/chat/completions"), timeout=30,
                          json={"model": "slow/hang", "messages": MESSAGES, "max_tokens": 2})
    elapsed = time.monotonic() - started
    assert response.status_code == 504, response.text
    assert "first token" in response.json()["error"]["message"]
    assert elapsed < 6  # two passes of 1 s each, plus a short backoff
    # Each timed-out attempt closed its connection: the upstream saw its client go away.
    deadline = time.monotonic() + 5
    while fake.stats()["active"] and time.monotonic() < deadline:
        time.sleep(0.05)
    stats = fake.stats()
    assert stats["active"] == 0 and stats["disconnected"] == stats["requests"] >= 1


# -- (f) embeddings ---------------------------------------------------------------------------------------


def test_embeddings_through_an_openai_kind_route(gateway: ServerHandle, fake: UpstreamHandle) -> None:
    client = openai_client(gateway)
    result = client.embeddings.create(model="embed", input=["one two", "three"])
    assert [list(d.embedding) for d in result.data] == [
        pytest.approx(_vector("one two", 8)), pytest.approx(_vector("three", 8))]
    assert result.usage.prompt_tokens == 3

    short = httpx.post(gateway.url("/v1/embeddings"), timeout=30, json={
        "model": "embed", "input": "one two", "dimensions": 4, "encoding_format": "base64"}).json()
    vector = struct.unpack("<4f", base64.b64decode(short["data"][0]["embedding"]))
    assert list(vector) == pytest.approx(_vector("one two", 4), abs=1e-6)

    ollama_result = ollama_client(gateway).embed(model="fakeollama/embed-test", input=["a b c"])
    assert [list(v) for v in ollama_result.embeddings] == [pytest.approx(_vector("a b c", 8))]
    assert fake.stats()["by_path"] == {"/v1/embeddings": 2, "/api/embed": 1}


# -- the providers on their own: cancellation, closing, refused connections, pooling -----------------


def _provider(kind: str, base_url: str, **fields: Any) -> Any:
    from ember.gateway.config import ProviderConfig
    from ember.gateway.gateway import make_provider

    return make_provider(ProviderConfig(name="p", kind=kind, base_url=base_url, **fields))  # type: ignore[arg-type]


def _request(max_tokens: int = 4) -> Any:
    from ember.services.types import ChatMessage, TextRequest

    return TextRequest(model="m", messages=[ChatMessage("user", "hello there")], max_tokens=max_tokens)


async def _wait_for(fake: UpstreamHandle, **expected: int) -> dict[str, Any]:
    import asyncio

    deadline = time.monotonic() + 5
    while True:
        async with httpx.AsyncClient() as client:
            stats = (await client.get(fake.url + "/_stats")).json()
        if all(stats[k] == v for k, v in expected.items()) or time.monotonic() > deadline:
            return stats
        await asyncio.sleep(0.05)


@pytest.mark.parametrize("kind", ["openai", "ollama"])
async def test_a_cancelled_start_closes_the_upstream_connection(fake: UpstreamHandle, kind: str) -> None:
    import asyncio

    fake.control(mode="ok", delay=30)
    provider = _provider(kind, fake.v1 if kind == "openai" else fake.url)
    try:
        task = asyncio.create_task(provider.start(_request(), "m"))
        await _wait_for(fake, active=1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        stats = await _wait_for(fake, disconnected=1)
        assert (stats["requests"], stats["disconnected"], stats["active"]) == (1, 1, 0)
    finally:
        await provider.aclose()


@pytest.mark.parametrize("kind", ["openai", "ollama"])
async def test_aclose_mid_stream_closes_and_a_full_stream_reuses_the_connection(
        fake: UpstreamHandle, kind: str) -> None:
    fake.control(mode="ok", token_delay=0.5)
    provider = _provider(kind, fake.v1 if kind == "openai" else fake.url)
    try:
        generation = await provider.start(_request(max_tokens=8), "m")
        assert generation.provider == "p" and generation.model == "m"
        events = generation.__aiter__()
        assert (await anext(events)).text == "tok0 "
        await generation.aclose()
        stats = await _wait_for(fake, disconnected=1)
        assert (stats["disconnected"], stats["active"]) == (1, 0)

        fake.control(mode="ok")
        for _ in range(3):
            answer = await (await provider.start(_request(max_tokens=3), "m")).collect()
            assert answer.text == "tok0 tok1 tok2 " and answer.finish_reason == "length"
            assert (answer.stats.prompt_tokens, answer.stats.completion_tokens) == (2, 3)
        # The three complete streams went back to the pool: one connection served them all.
        (client,) = provider._remote.pool.clients
        assert sum(map(len, client.connector._conns.values())) == 1  # type: ignore[union-attr]
    finally:
        await provider.aclose()


async def test_refused_and_status_errors_map_to_upstream_errors(fake: UpstreamHandle) -> None:
    from ember.errors import UpstreamError, UpstreamTimeout

    from tests.conftest import free_port

    refused = _provider("openai", f"http://127.0.0.1:{free_port()}/v1")
    try:
        with pytest.raises(UpstreamError) as caught:
            await refused.start(_request(), "m")
        assert caught.value.upstream_status is None and "cannot connect" in caught.value.message
    finally:
        await refused.aclose()

    provider = _provider("openai", fake.v1, first_token_timeout=0.5)
    try:
        fake.control(mode="error", status=503, retry_after=2.5)
        with pytest.raises(UpstreamError) as caught:
            await provider.start(_request(), "m")
        assert (caught.value.upstream_status, caught.value.retry_after) == (503, 2.5)
        assert "fake upstream error 503" in caught.value.message

        fake.control(mode="hang")
        started = time.monotonic()
        with pytest.raises(UpstreamTimeout):
            await provider.start(_request(), "m")
        assert time.monotonic() - started < 2
    finally:
        await provider.aclose()


async def test_total_timeout_and_a_malformed_stream_fail_the_iteration(fake: UpstreamHandle) -> None:
    from ember.errors import UpstreamTimeout

    provider = _provider("ollama", fake.url, total_timeout=1)
    try:
        fake.control(mode="ok", token_delay=0.4)
        generation = await provider.start(_request(max_tokens=8), "m")
        received: list[str] = []
        with pytest.raises(UpstreamTimeout):
            async for event in generation:
                received.append(event.text)
        assert 1 <= len(received) < 8
        stats = await _wait_for(fake, active=0)
        assert stats["disconnected"] == 1
    finally:
        await provider.aclose()



@pytest.mark.parametrize("kind", ["openai", "ollama"])
@pytest.mark.parametrize("mode", ["garbage", "inband"])
async def test_a_malformed_chunk_or_an_inband_error_fails_the_iteration(
        fake: UpstreamHandle, kind: str, mode: str) -> None:
    from ember.errors import UpstreamError

    provider = _provider(kind, fake.v1 if kind == "openai" else fake.url)
    try:
        fake.control(mode=mode, drop_after=2)
        generation = await provider.start(_request(max_tokens=8), "m")
        received: list[str] = []
        with pytest.raises(UpstreamError) as caught:
            async for event in generation:
                received.append(event.text)
        assert received == ["tok0 ", "tok1 "]
        assert ("malformed" if mode == "garbage" else "broke mid-stream") in caught.value.message

        fake.control(mode=mode, drop_after=0)  # before the first token: raised from start()
        with pytest.raises(UpstreamError):
            await provider.start(_request(), "m")
    finally:
        await provider.aclose()


def test_the_client_sends_the_key_from_the_environment_and_extra_headers(monkeypatch: pytest.MonkeyPatch) -> None:
    from ember.gateway.config import ProviderConfig
    from ember.gateway.remote import RemoteClient, client_headers, parse_retry_after

    monkeypatch.setenv("TEST_UPSTREAM_KEY", "sk-test")
    config = ProviderConfig(name="p", kind="openai", base_url="http://127.0.0.1:9/v1",
                            api_key_env="TEST_UPSTREAM_KEY", headers={"X-Team": "a"}, max_connections=3)
    headers = client_headers(config)
    assert headers["Authorization"] == "Bearer sk-test" and headers["X-Team"] == "a"
    assert str(RemoteClient(config).url("chat/completions")) == "http://127.0.0.1:9/v1/chat/completions"
    monkeypatch.delenv("TEST_UPSTREAM_KEY")
    assert "Authorization" not in client_headers(config)  # unset: no header, not "Bearer None"
    assert parse_retry_after("3") == 3.0 and parse_retry_after("soon") is None
    assert 50 < (parse_retry_after(time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 60)))
                 or 0) <= 60
