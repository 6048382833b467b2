"""The cache's parts without a server: key normalization, recording, replay and each backend.

The real server tests (test_cache.py) cover the feature end to end; these pin the rules.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from dataclasses import replace
from pathlib import Path

import pytest

from ember.cache import ResponseCache, build_cache
from ember.cache.entry import CachedAnswer
from ember.cache.keys import cache_key, cacheable, normalized
from ember.cache.memory import MemoryBackend
from ember.cache.redis import RedisBackend
from ember.cache.sqlite import SQLiteBackend
from ember.config import Settings
from ember.engine.types import GenerationStats, LoadOptions, SamplingParams, TokenLogprob
from ember.errors import UpstreamError
from ember.services.generation import Generation
from ember.services.types import (
    AnswerBuilder,
    ChatMessage,
    GenerationEvent,
    ImagePart,
    LogprobOptions,
    RequestContext,
    ResponseFormat,
    TextRequest,
    Tool,
    ToolCall,
    ToolCallDelta,
    ToolChoice,
)

GREEDY = SamplingParams(temperature=0.0)
DIGEST = "sha256:abc"
STATS = GenerationStats(prompt_tokens=7, completion_tokens=3, prompt_eval_seconds=0.01,
                        eval_seconds=0.02, cached_prompt_tokens=2)


def chat(content: str = "hi", **kw: object) -> TextRequest:
    fields: dict[str, object] = {"model": "m:1", "messages": [ChatMessage("user", content)],
                                 "max_tokens": 8, "sampling": GREEDY}
    fields.update(kw)
    return TextRequest(**fields)  # type: ignore[arg-type]


class Clock:
    """A clock the test moves by hand: TTLs are checked without waiting for them."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def key(request: TextRequest, digest: str = DIGEST) -> str | None:
    return cache_key(request, lambda: digest, default_num_ctx=4096)


# -- keys -------------------------------------------------------------------------------------


def test_protocol_does_not_change_the_key_but_no_cache_bypasses() -> None:
    openai = chat(context=RequestContext(protocol="openai", endpoint="/v1/chat/completions"))
    ollama = chat(context=RequestContext(protocol="ollama", endpoint="/api/chat", key_name="k"))
    assert key(openai) == key(ollama) is not None
    assert key(chat(context=RequestContext(no_cache=True))) is None


def test_only_deterministic_requests_are_cacheable() -> None:
    assert key(chat(sampling=SamplingParams(temperature=0.8))) is None
    seeded = key(chat(sampling=SamplingParams(temperature=0.8, seed=1)))
    assert seeded is not None
    assert seeded != key(chat(sampling=SamplingParams(temperature=0.8, seed=2)))
    # What an entry does not keep (logprobs) is never cached; tool requests are.
    assert cacheable(chat(tools=(Tool(name="lookup"),)))
    assert not cacheable(chat(logprobs=LogprobOptions(top=2)))


def test_the_response_format_is_part_of_the_key() -> None:
    plain = key(chat())
    json_mode = key(chat(response_format=ResponseFormat(type="json_object")))
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    schema_a = key(chat(response_format=ResponseFormat(type="json_schema", schema=schema)))
    schema_b = key(chat(response_format=ResponseFormat(type="json_schema", schema={**schema, "required": ["a"]})))
    assert len({plain, json_mode, schema_a, schema_b}) == 4


def test_tools_how_they_may_be_used_and_the_tool_history_are_part_of_the_key() -> None:
    weather = Tool(name="weather", parameters={"type": "object", "properties": {"city": {"type": "string"}}})
    clock = Tool(name="clock")
    call = ToolCall(id="call_1", name="weather", arguments='{"city":"Oslo"}')
    history = [ChatMessage("user", "hi"), ChatMessage("assistant", tool_calls=(call,)),
               ChatMessage("tool", "sunny", tool_call_id="call_1")]
    variants = [
        chat(), chat(tools=(weather,)), chat(tools=(weather, clock)), chat(tools=(clock, weather)),
        chat(tools=(replace(weather, description="the weather"),)), chat(tools=(replace(weather, strict=True),)),
        chat(tools=(replace(weather, parameters={"type": "object", "properties": {}}),)),
        chat(tools=(weather,), tool_choice=ToolChoice(mode="required")),
        chat(tools=(weather,), tool_choice=ToolChoice(mode="none")),
        chat(tools=(weather, clock), tool_choice=ToolChoice(mode="function", name="weather")),
        chat(tools=(weather, clock), tool_choice=ToolChoice(mode="function", name="clock")),
        chat(tools=(weather,), parallel_tool_calls=False),
        chat(messages=history), chat(messages=[*history[:2], replace(history[2], content="rain")]),
        chat(messages=[history[0], ChatMessage("assistant", tool_calls=(replace(call, arguments="{}"),)),
                       history[2]]),
        chat(messages=[ChatMessage("user", "hi", attachments=(ImagePart("data:image/png;base64,AA=="),))]),
        chat(response_format=ResponseFormat(type="json_schema", schema={"type": "object"})),
        chat(response_format=ResponseFormat(type="json_schema", schema={"type": "object"}, strict=True)),
        chat(response_format=ResponseFormat(type="json_schema", schema={"type": "object"}, name="answer")),
    ]
    keys = [key(v) for v in variants]
    assert None not in keys
    assert len(set(keys)) == len(keys)
    # Without tools, tool_choice can only be auto or none: the same answer, the same key.
    assert key(chat(tool_choice=ToolChoice(mode="none"))) == key(chat())


def test_digest_is_asked_only_when_cacheable() -> None:
    def digest() -> str:
        raise AssertionError("digest() was called for an uncacheable request")

    assert cache_key(chat(sampling=SamplingParams()), digest, default_num_ctx=4096) is None
    assert cache_key(chat(context=RequestContext(no_cache=True)), digest, default_num_ctx=4096) is None


def test_every_answer_deciding_field_changes_the_key() -> None:
    base = chat()
    variants = [
        chat("hello"), chat(model="m:2"), chat(max_tokens=9), chat(stop=("x",)),
        TextRequest(model="m:1", prompt="hi", max_tokens=8, sampling=GREEDY),  # completion, not chat
        chat(messages=[ChatMessage("system", "hi")]),
    ]
    for name, value in [("top_k", 1), ("top_p", 0.5), ("min_p", 0.1), ("typical_p", 0.9),
                        ("repeat_penalty", 1.0), ("repeat_last_n", 8), ("presence_penalty", 0.5),
                        ("frequency_penalty", 0.5), ("seed", 3), ("temperature", -1.0)]:
        variants.append(chat(sampling=replace(GREEDY, **{name: value})))
    keys = [key(base)] + [key(v) for v in variants]
    assert None not in keys
    assert len(set(keys)) == len(keys)
    assert key(base, "sha256:other") != key(base)


def test_normalization_equates_what_means_the_same() -> None:
    # 0 (a JSON int) and 0.0, stop order and repeats, "developer" rendered as "system".
    assert key(chat(sampling=SamplingParams(temperature=0))) == key(chat(sampling=SamplingParams(temperature=0.0)))
    assert key(chat(stop=("b", "a", "b"))) == key(chat(stop=("a", "b")))
    dev = chat(messages=[ChatMessage("developer", "be brief"), ChatMessage("user", "hi")])
    sys = chat(messages=[ChatMessage("system", "be brief"), ChatMessage("user", "hi")])
    assert key(dev) == key(sys)
    # Load options other than the context size do not decide the answer.
    assert key(chat(load_options=LoadOptions(num_thread=2))) == key(chat())


def test_context_size_matters_only_without_max_tokens() -> None:
    capped = normalized(chat(load_options=LoadOptions(num_ctx=512)), DIGEST, default_num_ctx=4096)
    assert "num_ctx" not in capped
    open_ended = chat(max_tokens=None)
    assert key(open_ended) == key(chat(max_tokens=None, load_options=LoadOptions(num_ctx=4096)))
    assert key(open_ended) != key(chat(max_tokens=None, load_options=LoadOptions(num_ctx=512)))


# -- recording and replay -----------------------------------------------------------------------


def live(events: list[GenerationEvent], fail: bool = False) -> Generation:
    async def stream() -> AsyncIterator[GenerationEvent]:
        for event in events:
            yield event
        if fail:
            raise UpstreamError("boom")

    gen = stream()
    resources = AsyncExitStack()
    resources.push_async_callback(gen.aclose)
    return Generation(model="m:1", prompt_tokens=7, load_seconds=0.5, started=time.perf_counter(),
                      _events=gen, _resources=resources, provider="local")


ANSWER = [GenerationEvent("Hel"), GenerationEvent("lo"),
          GenerationEvent("!", done=True, finish_reason="length", stats=STATS)]


def memory_cache(**kw: int) -> ResponseCache:
    return ResponseCache(MemoryBackend(max_entries=kw.pop("max_entries", 8), ttl=None), default_num_ctx=4096, **kw)


async def test_a_recorded_answer_replays_the_same() -> None:
    cache = memory_cache()
    request = chat()
    k = key(request)
    assert k is not None and await cache.get(k, request) is None
    answer = await cache.record(k, live(ANSWER)).collect()
    hit = await cache.get(k, request)
    assert hit is not None
    events = [event async for event in hit]
    assert [e.text for e in events if not e.done] == ["Hel", "lo", "!"]  # pieces stay separate events
    assert "".join(e.text for e in events) == answer.text == "Hello!"
    assert events[-1].done and events[-1].finish_reason == answer.finish_reason == "length"
    assert events[-1].stats == STATS
    replayed = (hit.model, hit.provider, hit.attempts, hit.load_seconds, hit.prompt_tokens)
    assert replayed == ("m:1", "local", 0, 0.0, 7)
    assert cache.stats.hits == 1 and cache.stats.misses == 1 and cache.stats.stores == 1


async def test_failed_cancelled_or_abandoned_streams_store_nothing() -> None:
    cache = memory_cache()
    request = chat()
    k = key(request)
    assert k is not None
    with pytest.raises(UpstreamError):
        await cache.record(k, live(ANSWER[:2], fail=True)).collect()
    cut = [GenerationEvent("a"), GenerationEvent("", done=True, finish_reason="cancelled", stats=STATS)]
    await cache.record(k, live(cut)).collect()
    abandoned = cache.record(k, live(ANSWER))
    async for _ in abandoned:
        break  # the client went away after the first piece
    await abandoned.aclose()
    # An answer with logprobs is served but not stored.
    scored = [GenerationEvent("a", logprobs=(TokenLogprob(token="a", logprob=-0.1, bytes=(97,)),)),
              GenerationEvent(done=True, finish_reason="stop", stats=STATS)]
    await cache.record(k, live(scored)).collect()
    assert await cache.get(k, request) is None
    assert cache.stats.stores == 0


async def test_tool_calls_are_stored_whole_and_replayed_with_the_providers_notes() -> None:
    cache = memory_cache()
    request = chat(tools=(Tool(name="weather"), Tool(name="clock")))
    k = key(request)
    assert k is not None
    streamed = [
        GenerationEvent("Let me look."),
        GenerationEvent(tool_calls=(ToolCallDelta(index=0, id="call_a", name="weather", arguments='{"ci'),)),
        GenerationEvent(tool_calls=(ToolCallDelta(index=0, arguments='ty":"Oslo"}'),
                                    ToolCallDelta(index=1, id="call_b", name="clock", arguments=""))),
        GenerationEvent(tool_calls=(ToolCallDelta(index=1, arguments="{}"),)),
        GenerationEvent(done=True, finish_reason="tool_calls", stats=STATS),
    ]
    generation = live(streamed)
    generation.notes["X-Ember-Dropped-Fields"] = "tool_choice"
    answer = await cache.record(k, generation).collect()
    hit = await cache.get(k, request)
    assert hit is not None and cache.stats.stores == 1
    assert hit.response_headers()["X-Ember-Dropped-Fields"] == "tool_choice"
    events = [event async for event in hit]
    # The text as it streamed, then each call as one delta with its id, name and whole arguments.
    assert [e.text for e in events if e.text] == ["Let me look."]
    assert [d for e in events for d in e.tool_calls] == [
        ToolCallDelta(index=0, id="call_a", name="weather", arguments='{"city":"Oslo"}'),
        ToolCallDelta(index=1, id="call_b", name="clock", arguments="{}")]
    assert events[-1].done and events[-1].finish_reason == "tool_calls" and events[-1].stats == STATS
    builder = AnswerBuilder()
    for event in events:
        builder.add(event)
    assert builder.answer() == answer


async def test_an_answer_over_the_entry_cap_is_served_but_not_stored() -> None:
    cache = memory_cache(max_entry_bytes=64)
    request = chat()
    k = key(request)
    assert k is not None
    big = [GenerationEvent("x" * 40), GenerationEvent("y" * 40),
           GenerationEvent("", done=True, finish_reason="stop", stats=STATS)]
    answer = await cache.record(k, live(big)).collect()
    assert len(answer.text) == 80
    assert await cache.get(k, request) is None
    # Under the character cap, but over in bytes once encoded: skipped at encode time.
    wide = [GenerationEvent("é" * 30), GenerationEvent("", done=True, finish_reason="stop", stats=STATS)]
    await cache.record(k, live(wide)).collect()
    assert await cache.get(k, request) is None
    assert cache.stats.skipped_large == 1


def test_entry_bytes_round_trip_and_reject_other_formats() -> None:
    answer = CachedAnswer(model="m:1", provider="p", pieces=("a", "ü", "\n"), finish_reason="stop",
                          stats=STATS, served_by="gpt")
    assert CachedAnswer.decode(answer.encode()) == answer
    called = replace(answer, finish_reason="tool_calls", notes=(("X-Ember-Dropped-Fields", "tool_choice"),),
                     tool_calls=(ToolCall(id="call_1", name="f", arguments='{"a": "ü"}'),))
    assert CachedAnswer.decode(called.encode()) == called
    assert CachedAnswer.decode(answer.encode().replace(b'"f":2', b'"f":1')) is None  # the layout before calls
    assert CachedAnswer.decode(b'{"f": 99}') is None
    assert CachedAnswer.decode(b"not json") is None


# -- backends ---------------------------------------------------------------------------------


def answer(text: str) -> tuple[CachedAnswer, bytes]:
    a = CachedAnswer(model="m:1", provider="local", pieces=(text,), finish_reason="stop", stats=STATS)
    return a, a.encode()


async def test_memory_is_an_lru_with_a_ttl() -> None:
    lru = MemoryBackend(max_entries=2, ttl=None)
    for name in "abc":
        if name == "c":
            assert await lru.get("a") is not None  # a is now newer than b
        await lru.put(name, *answer(name))
    assert await lru.get("b") is None
    assert [await lru.get(n) is not None for n in "ac"] == [True, True]
    clock = Clock()
    short = MemoryBackend(max_entries=2, ttl=5, clock=clock)
    await short.put("a", *answer("a"))
    clock.now += 4
    assert await short.get("a") is not None
    clock.now += 1  # the TTL is up
    assert await short.get("a") is None and len(short) == 0
    by_bytes = MemoryBackend(max_entries=100, ttl=None, max_bytes=300)
    for name in "abcdef":
        await by_bytes.put(name, *answer(name * 60))
    assert 0 < len(by_bytes) < 6


async def test_sqlite_persists_expires_and_prunes(tmp_path: Path) -> None:
    path = tmp_path / "cache.db"
    first = SQLiteBackend(path, ttl=None, max_entries=3)
    await first.put("k", *answer("kept"))
    await first.aclose()
    clock = Clock()
    again = SQLiteBackend(path, ttl=5, max_entries=3, clock=clock)
    got = await again.get("k")
    assert got is not None and got.text == "kept"
    await again.put("short", *answer("x"))
    clock.now += 4
    assert await again.get("short") is not None
    clock.now += 1
    assert await again.get("short") is None
    assert await again.get("k") is not None  # stored without a TTL: never expires
    again._prune()  # an expired row is deleted, not only hidden
    assert again._reader.execute("SELECT key FROM response_cache").fetchall() == [("k",)]
    await again.aclose()
    pruned = SQLiteBackend(path, ttl=None, max_entries=3)  # start-up prunes expired and surplus
    for i in range(5):
        await pruned.put(f"n{i}", *answer(str(i)))
    pruned._prune()
    count = pruned._reader.execute("SELECT count(*) FROM response_cache").fetchone()[0]
    assert count == 3
    assert await pruned.get("n4") is not None and await pruned.get("n0") is None
    await pruned.aclose()


async def test_redis_round_trip_ttl_and_outage(redis_server) -> None:
    # Redis expires keys on its own clock: check the TTL it was given, then wait for a short one
    # to lapse (a deadline, not a sleep that a loaded machine could outrun).
    store = RedisBackend(redis_server.url, ttl=30, prefix="units:")
    await store.put("k", *answer("shared"))
    got = await store.get("k")
    assert got is not None and got.text == "shared"
    assert 20_000 < await store._client.pttl("units:k") <= 30_000
    await store.aclose()
    brief = RedisBackend(redis_server.url, ttl=0.001, prefix="units:")  # 1 ms, the least Redis takes
    await brief.put("gone", *answer("x"))
    deadline = time.monotonic() + 5
    while await brief.get("gone") is not None:
        assert time.monotonic() < deadline, "a 1 ms entry outlived 5 s"
        await asyncio.sleep(0.01)
    await brief.aclose()
    # Nothing listens on port 1: every call is a quick miss, never an exception.
    down = RedisBackend("redis://127.0.0.1:1/0", ttl=None)
    started = time.perf_counter()
    assert await down.get("k") is None
    await down.put("k", *answer("x"))
    assert await down.get("k") is None
    assert time.perf_counter() - started < 2.0
    await down.aclose()


async def test_build_cache_follows_the_settings(tmp_path: Path) -> None:
    assert build_cache(Settings(home=tmp_path, cache="off")) is None
    assert build_cache(Settings(home=tmp_path, cache="memory", cache_ttl=0)) is None
    memory = build_cache(Settings(home=tmp_path))
    assert memory is not None and memory.backend.name == "memory"
    sqlite = build_cache(Settings(home=tmp_path, cache="sqlite"))
    assert sqlite is not None and (tmp_path / "state" / "cache.db").is_file()
    await sqlite.aclose()
