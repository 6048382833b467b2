"""The response cache on the real server and model, driven by the openai and ollama clients.

Every test asks about a fresh nonce, so entries left by other tests (the session Redis is
shared) never answer for it.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import ollama
import openai
import pytest

from tests.conftest import ServerHandle, free_port, start_server

MODEL = "smollm2:135m"
TOKENS = 6  # tiny answers: the machine is shared


def nonce() -> str:
    return uuid.uuid4().hex[:8]


def oai(base_url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=base_url + "/v1", api_key="unused", max_retries=0, timeout=120)


def ask_chat(client: openai.OpenAI, content: str, **kw: Any) -> tuple[str | None, Any]:
    """(X-Ember-Cache, the parsed reply) for one non-streamed chat."""
    params: dict[str, Any] = {"temperature": 0, "max_tokens": TOKENS, **kw}
    raw = client.chat.completions.with_raw_response.create(
        model=MODEL, messages=[{"role": "user", "content": content}], **params)
    return raw.headers.get("x-ember-cache"), raw.parse()


def summary(reply: Any) -> tuple[str, str, int, int]:
    choice = reply.choices[0]
    return choice.message.content, choice.finish_reason, reply.usage.prompt_tokens, reply.usage.completion_tokens


def post(base_url: str, path: str, body: dict[str, Any], **headers: str) -> httpx.Response:
    reply = httpx.post(base_url + path, json=body, headers=headers, timeout=120)
    assert reply.status_code == 200, reply.text
    return reply


def ollama_chat(content: str, **options: Any) -> dict[str, Any]:
    return {"model": MODEL, "stream": False, "messages": [{"role": "user", "content": content}],
            "options": {"temperature": 0, "num_predict": TOKENS, **options}}


# -- one server with the default cache (memory) -------------------------------------------------


@pytest.fixture(scope="module")
def server(model_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerHandle]:
    """Our own, so the suite's shared server may run with the cache off."""
    handle = start_server(model_home, tmp_path_factory.mktemp("cache-logs"), EMBER_CACHE="memory")
    try:
        yield handle
    finally:
        handle.stop()


def test_openai_hit_equals_miss_for_plain_and_streamed_replies(server) -> None:
    client = oai(server.base_url)
    question = f"Name a colour. ({nonce()})"
    cache, miss = ask_chat(client, question)
    assert cache == "miss"
    cache, hit = ask_chat(client, question)
    assert cache == "hit"
    assert summary(hit) == summary(miss)

    raw = client.chat.completions.with_raw_response.create(
        model=MODEL, messages=[{"role": "user", "content": question}], temperature=0, max_tokens=TOKENS,
        stream=True, stream_options={"include_usage": True})
    assert raw.headers.get("x-ember-cache") == "hit"
    pieces, finish, usage = [], None, None
    for chunk in raw.parse():
        usage = chunk.usage or usage
        for choice in chunk.choices:
            pieces.append(choice.delta.content or "")
            finish = choice.finish_reason or finish
    assert len([p for p in pieces if p]) >= 2  # replayed as a stream, not one lump
    assert ("".join(pieces), finish, usage.prompt_tokens, usage.completion_tokens) == summary(miss)


def test_a_streamed_miss_is_a_plain_hit(server) -> None:
    client = oai(server.base_url)
    prompt = f"Count: one, two, ({nonce()})"
    raw = client.completions.with_raw_response.create(
        model=MODEL, prompt=prompt, temperature=0, max_tokens=TOKENS, stream=True)
    assert raw.headers.get("x-ember-cache") == "miss"
    streamed = "".join(chunk.choices[0].text for chunk in raw.parse() if chunk.choices)
    raw = client.completions.with_raw_response.create(model=MODEL, prompt=prompt, temperature=0, max_tokens=TOKENS)
    assert raw.headers.get("x-ember-cache") == "hit"
    reply = raw.parse()
    assert reply.choices[0].text == streamed


def test_openai_and_ollama_share_an_entry_when_they_mean_the_same(server) -> None:
    prompt = f"The sky is ({nonce()})"
    first = post(server.base_url, "/v1/completions",
                 {"model": MODEL, "prompt": prompt, "temperature": 0, "max_tokens": TOKENS})
    assert first.headers["x-ember-cache"] == "miss"
    same = {"model": MODEL, "prompt": prompt, "raw": True, "stream": False,
            "options": {"temperature": 0, "num_predict": TOKENS}}
    second = post(server.base_url, "/api/generate", same)
    assert second.headers["x-ember-cache"] == "hit"
    assert second.json()["response"] == first.json()["choices"][0]["text"]
    assert second.json()["eval_count"] == first.json()["usage"]["completion_tokens"]
    assert second.json()["prompt_eval_count"] == first.json()["usage"]["prompt_tokens"]
    # Other sampling params, or a chat (templated) prompt instead of a raw one: not the same request.
    other = {**same, "options": {**same["options"], "top_k": 1}}
    assert post(server.base_url, "/api/generate", other).headers["x-ember-cache"] == "miss"
    templated = {**same, "raw": False}
    assert post(server.base_url, "/api/generate", templated).headers["x-ember-cache"] == "miss"


def test_ollama_client_plain_and_streamed_from_the_cache(server) -> None:
    client = ollama.Client(host=server.base_url, timeout=120)
    messages = [{"role": "user", "content": f"Say hi. ({nonce()})"}]
    options = {"temperature": 0, "num_predict": TOKENS}
    miss = client.chat(model=MODEL, messages=messages, options=options)
    chunks = list(client.chat(model=MODEL, messages=messages, options=options, stream=True))
    assert "".join(c.message.content for c in chunks) == miss.message.content
    final = chunks[-1]
    assert final.done and final.done_reason == miss.done_reason
    assert (final.prompt_eval_count, final.eval_count) == (miss.prompt_eval_count, miss.eval_count)
    assert final.load_duration == 0
    again = client.generate(model=MODEL, prompt=messages[0]["content"], options=options)
    # /api/generate without raw is the same chat turn: the same entry.
    assert again.response == miss.message.content
    reply = post(server.base_url, "/api/chat", ollama_chat(messages[0]["content"]))
    assert reply.headers["x-ember-cache"] == "hit"
    assert reply.json()["message"]["content"] == miss.message.content


def test_no_cache_is_served_fresh_and_not_stored(server) -> None:
    question = f"Name a fruit. ({nonce()})"
    fresh = post(server.base_url, "/api/chat", ollama_chat(question), **{"Cache-Control": "no-cache"})
    assert "x-ember-cache" not in fresh.headers
    assert post(server.base_url, "/api/chat", ollama_chat(question)).headers["x-ember-cache"] == "miss"
    assert post(server.base_url, "/api/chat", ollama_chat(question)).headers["x-ember-cache"] == "hit"
    cache, reply = ask_chat(oai(server.base_url), question, extra_headers={"Cache-Control": "no-cache"})
    assert cache is None
    assert reply.choices[0].message.content == fresh.json()["message"]["content"]


def test_sampled_requests_are_cached_only_with_a_seed(server) -> None:
    client = oai(server.base_url)
    question = f"Invent a name. ({nonce()})"
    assert ask_chat(client, question, temperature=0.9)[0] is None
    assert ask_chat(client, question, temperature=0.9)[0] is None
    cache, first = ask_chat(client, question, temperature=0.9, seed=7)
    assert cache == "miss"
    cache, second = ask_chat(client, question, temperature=0.9, seed=7)
    assert cache == "hit" and summary(second) == summary(first)
    assert ask_chat(client, question, temperature=0.9, seed=8)[0] == "miss"


# -- servers of their own ------------------------------------------------------------------------


def test_sqlite_cache_survives_a_restart(fresh_home, server_factory) -> None:
    question = f"Name an animal. ({nonce()})"
    first = server_factory(fresh_home, EMBER_CACHE="sqlite")
    cache, miss = ask_chat(oai(first.base_url), question)
    assert cache == "miss"
    first.stop()
    assert (fresh_home / "state" / "cache.db").is_file()
    second = server_factory(fresh_home, EMBER_CACHE="sqlite")
    cache, hit = ask_chat(oai(second.base_url), question)
    assert cache == "hit"
    assert summary(hit) == summary(miss)


def test_redis_cache_is_shared_by_replicas(fresh_home, server_factory, redis_server) -> None:
    env = {"EMBER_CACHE": "redis", "EMBER_REDIS_URL": redis_server.url}
    one, two = server_factory(fresh_home, **env), server_factory(fresh_home, **env)
    question = f"Name a city. ({nonce()})"
    cache, miss = ask_chat(oai(one.base_url), question)
    assert cache == "miss"
    cache, hit = ask_chat(oai(two.base_url), question)
    assert cache == "hit"
    assert summary(hit) == summary(miss)


def test_redis_down_is_a_miss_never_an_error(fresh_home, server_factory) -> None:
    srv = server_factory(fresh_home, EMBER_CACHE="redis", EMBER_REDIS_URL=f"redis://127.0.0.1:{free_port()}/0")
    question = f"Name a tree. ({nonce()})"
    replies = [ask_chat(oai(srv.base_url), question) for _ in range(2)]
    assert [cache for cache, _ in replies] == ["miss", "miss"]
    assert summary(replies[0][1]) == summary(replies[1][1])
    assert srv.log().count("serving without the cache") == 1  # logged once, not per request


@pytest.mark.slow
def test_entries_expire_after_the_ttl(fresh_home, server_factory) -> None:
    srv = server_factory(fresh_home, EMBER_CACHE="memory", EMBER_CACHE_TTL="1")
    client = oai(srv.base_url)
    question = f"Name a river. ({nonce()})"
    assert ask_chat(client, question)[0] == "miss"
    assert ask_chat(client, question)[0] == "hit"
    time.sleep(1.2)
    assert ask_chat(client, question)[0] == "miss"
