"""EMBER_CACHE_MAX_ENTRIES bounds the Redis cache too: least recently used out, across replicas."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import openai
import pytest
import redis.asyncio as aioredis

from ember.cache.entry import CachedAnswer
from ember.cache.redis import RedisBackend
from ember.engine.types import GenerationStats

STATS = GenerationStats(prompt_tokens=3, completion_tokens=1, prompt_eval_seconds=0.0, eval_seconds=0.0)


def answer(text: str) -> tuple[CachedAnswer, bytes]:
    a = CachedAnswer(model="m:1", provider="local", pieces=(text,), finish_reason="stop", stats=STATS)
    return a, a.encode()


def prefix() -> str:
    return f"lru-{uuid.uuid4().hex[:8]}:"


async def entry_keys(url: str, pre: str) -> set[str]:
    client = aioredis.Redis.from_url(url)
    try:
        return {key.decode().removeprefix(pre) async for key in client.scan_iter(match=pre + "*")
                if b"@" not in key}
    finally:
        await client.aclose()


async def test_least_recently_used_go_first_and_a_hit_counts_as_a_use(redis_server) -> None:
    pre = prefix()
    store = RedisBackend(redis_server.url, ttl=None, max_entries=3, prefix=pre)
    for name in "abc":
        await store.put(name, *answer(name))
    hit = await store.get("a")  # a is now used more recently than b
    assert hit is not None and hit.text == "a"
    await store.put("d", *answer("d"))
    assert await entry_keys(redis_server.url, pre) == {"a", "c", "d"}
    assert await store.get("b") is None
    await store.put("a", *answer("a2"))  # a second put of a key replaces it, never adds one
    assert await entry_keys(redis_server.url, pre) == {"a", "c", "d"}
    assert (await store.get("a")).text == "a2"  # type: ignore[union-attr]
    await store.aclose()


async def test_replicas_writing_at_once_never_leave_more_than_the_limit(redis_server) -> None:
    pre = prefix()
    replicas = [RedisBackend(redis_server.url, ttl=60, max_entries=5, prefix=pre) for _ in range(3)]
    await asyncio.gather(*(store.put(f"{i}-{n}", *answer(str(n)))
                           for i, store in enumerate(replicas) for n in range(20)))
    assert len(await entry_keys(redis_server.url, pre)) == 5
    client = aioredis.Redis.from_url(redis_server.url)
    assert await client.zcard(pre + "@lru") == 5  # the ranking is trimmed with the entries
    await client.aclose()
    for store in replicas:
        await store.aclose()


@pytest.mark.slow  # a server of its own
def test_the_server_honours_the_limit(fresh_home, server_factory, redis_server) -> None:
    # A database of its own: a limit of 2 must not evict other tests' entries.
    url = redis_server.url.rsplit("/", 1)[0] + "/3"
    srv = server_factory(fresh_home, EMBER_CACHE="redis", EMBER_REDIS_URL=url, EMBER_CACHE_MAX_ENTRIES="2")
    client = openai.OpenAI(base_url=srv.base_url + "/v1", api_key="unused", max_retries=0, timeout=120)
    tag = uuid.uuid4().hex[:8]

    def ask(n: int) -> str | None:
        raw: Any = client.chat.completions.with_raw_response.create(
            model="smollm2:135m", messages=[{"role": "user", "content": f"Count to {n}. ({tag})"}],
            temperature=0, max_tokens=4)
        return raw.headers.get("x-ember-cache")

    assert [ask(1), ask(2), ask(1)] == ["miss", "miss", "hit"]  # 1 is now newer than 2
    assert ask(3) == "miss"  # a third entry: 2, the least recently used, goes
    assert [ask(1), ask(3), ask(2)] == ["hit", "hit", "miss"]
