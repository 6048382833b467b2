"""Proxied requests through a real ember to an upstream that closes keep-alive connections at the
worst moment, and streams that break after their first token.

Two fake upstreams (`ember.bench.upstream`): one closes connections idle for KEEP_ALIVE seconds
(provider "idle"); the other keeps them, and in mode "close_reused" closes every kept-alive
connection a request arrives on, without a byte of answer (what a server whose keep-alive timer
fires just as the client sends looks like; providers "up", "ol", "an", one of each kind).
ember's providers here keep idle connections far longer (keepalive_expiry = 60), so reuse races.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Iterator
from pathlib import Path

import anthropic
import ollama
import openai
import pytest

from tests.conftest import ServerHandle, start_server
from tests.gateway.conftest import UpstreamHandle, start_upstream, write_config

KEEP_ALIVE = 0.25
MODELS = ("up/gpt-test", "ol/gpt-test", "an/gpt-test")  # one provider of each kind, one upstream


@pytest.fixture(scope="module")
def proxied(logs: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[UpstreamHandle, ServerHandle]]:
    upstream, idle = start_upstream(logs), start_upstream(logs, keep_alive=KEEP_ALIVE)
    home = tmp_path_factory.mktemp("keepalive-home")
    providers = "".join(
        f'[[providers]]\nname = "{name}"\nkind = "{kind}"\nbase_url = "{url}"\nkeepalive_expiry = 60\n\n'
        for name, kind, url in (("up", "openai", upstream.v1), ("ol", "ollama", upstream.url),
                                ("an", "anthropic", upstream.url), ("idle", "openai", idle.v1))
    )
    server = start_server(home, logs, EMBER_CONFIG=str(write_config(home, providers)))
    try:
        yield upstream, server
    finally:
        server.stop()
        upstream.stop()
        idle.stop()


@pytest.fixture
def clean(proxied: tuple[UpstreamHandle, ServerHandle]) -> Iterator[tuple[UpstreamHandle, ServerHandle]]:
    proxied[0].reset()
    yield proxied
    proxied[0].reset()


def _text(client: openai.OpenAI, model: str, stream: bool) -> str:
    messages: list[openai.types.chat.ChatCompletionMessageParam] = [{"role": "user", "content": "hi"}]
    if not stream:
        return client.chat.completions.create(model=model, messages=messages, max_tokens=3).choices[0].message.content or ""
    chunks = client.chat.completions.create(model=model, messages=messages, max_tokens=3, stream=True)
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


def test_requests_on_connections_the_upstream_closes_unanswered_all_succeed(
    clean: tuple[UpstreamHandle, ServerHandle],
) -> None:
    upstream, server = clean
    client = openai.OpenAI(base_url=server.base_url + "/v1", api_key="unused", max_retries=0)
    for model in MODELS:  # warm a connection to each provider
        assert _text(client, model, stream=True) == "tok0 tok1 tok2 "
    upstream.control(mode="close_reused")
    for i in range(9):
        assert _text(client, MODELS[i % 3], stream=i % 2 == 0) == "tok0 tok1 tok2 "

    async def concurrent() -> list[str]:
        aclient = openai.AsyncOpenAI(base_url=server.base_url + "/v1", api_key="unused", max_retries=0)
        messages: list[openai.types.chat.ChatCompletionMessageParam] = [{"role": "user", "content": "hi"}]

        async def one(i: int) -> str:
            answer = await aclient.chat.completions.create(model=MODELS[i % 3], messages=messages, max_tokens=3)
            return answer.choices[0].message.content or ""

        try:
            return await asyncio.gather(*(one(i) for i in range(24)))
        finally:
            await aclient.close()

    for _ in range(2):  # the second burst reuses the connections the first one left
        assert asyncio.run(concurrent()) == ["tok0 tok1 tok2 "] * 24
    # One at a time with many kept connections: the second try must not take another kept one
    # (the upstream closes those as well, as an idle timeout closes every connection of its age).
    for i in range(6):
        assert _text(client, MODELS[i % 3], stream=i % 2 == 0) == "tok0 tok1 tok2 "
    stats = upstream.stats()
    # Sequentially every other request found its connection closed unanswered (and was sent again
    # on a new one); so did the second burst's requests on the connections the first one left.
    assert stats["dropped"] >= 9 and stats["completed"] == stats["requests"] - stats["dropped"]


def test_requests_sent_as_the_upstream_closes_idle_connections_all_succeed(
    clean: tuple[UpstreamHandle, ServerHandle],
) -> None:
    _, server = clean
    client = openai.OpenAI(base_url=server.base_url + "/v1", api_key="unused", max_retries=0)
    rng = random.Random(12)
    for i in range(8):
        assert _text(client, "idle/gpt-test", stream=i % 2 == 0) == "tok0 tok1 tok2 "
        time.sleep(KEEP_ALIVE + rng.uniform(-0.02, 0.02))  # around the moment the upstream closes it


def test_a_stream_broken_after_its_first_token_ends_with_the_protocols_error_event(
    clean: tuple[UpstreamHandle, ServerHandle],
) -> None:
    upstream, server = clean
    # The upstream closes the connection right after its third token; the tokens are spaced so that
    # ember has passed the first on (the status is sent) before the break. A token that arrives
    # with the close itself may be lost (aiohttp raises before handing over what it buffered).
    upstream.control(mode="drop", drop_after=3, token_delay=0.05)
    sent = ("tok0 tok1 ", "tok0 tok1 tok2 ")
    messages: list[openai.types.chat.ChatCompletionMessageParam] = [{"role": "user", "content": "hi"}]

    client = openai.OpenAI(base_url=server.base_url + "/v1", api_key="unused", max_retries=0)
    got: list[str] = []
    with pytest.raises(openai.APIError) as caught:
        for chunk in client.chat.completions.create(model=MODELS[0], messages=messages, max_tokens=6, stream=True):
            got.extend(c.delta.content or "" for c in chunk.choices)
    assert not isinstance(caught.value, openai.APIConnectionError), caught.value  # an error event, not a cut
    assert "".join(got) in sent and "connection broken" in caught.value.message

    claude = anthropic.Anthropic(base_url=server.base_url, api_key="unused", max_retries=0)
    texts: list[str] = []
    with pytest.raises(anthropic.APIStatusError) as status:
        with claude.messages.stream(model=MODELS[2], max_tokens=6, messages=[{"role": "user", "content": "hi"}]) as s:
            texts.extend(s.text_stream)
    assert "".join(texts) in sent and "connection broken" in str(status.value)

    lines: list[str] = []
    with pytest.raises(ollama.ResponseError) as error:
        for part in ollama.Client(host=server.base_url).chat(
            model=MODELS[1], messages=[{"role": "user", "content": "hi"}], stream=True, options={"num_predict": 6}
        ):
            lines.append(part.message.content or "")
    assert "".join(lines) in sent and "connection broken" in str(error.value)
