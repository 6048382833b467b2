"""The per-token stream path, without a server: a Generation's one loop and its observers, and the
pre-encoded text chunks, which must be byte for byte what framing the chunk dict gives.

The real servers' tests (tests/api/, tests/cache/, tests/gateway/) stream through the same code
with the real clients; these pin the edges those cannot reach cheaply."""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator
from contextlib import AsyncExitStack

import pytest

from ember.api.ollama import render as ollama_render
from ember.api.openai import render as openai_render
from ember.engine.types import GenerationStats
from ember.errors import ServiceUnavailable
from ember.services.generation import Generation
from ember.services.types import GenerationEvent, ToolCallDelta

STATS = GenerationStats(prompt_tokens=3, completion_tokens=2, prompt_eval_seconds=0.0, eval_seconds=0.0)
TEXTS = ["hi", " ", 'quote " back\\slash', "line\nbreak\ttab", "ünï cødé ✓ 😀", "\u2028\x00\x1f"]


class Watcher:
    def __init__(self, log: list[str], name: str) -> None:
        self.log, self.name = log, name

    def event(self, event: GenerationEvent) -> None:
        self.log.append(f"{self.name}:event:{event.text}")

    async def done(self, event: GenerationEvent) -> None:
        self.log.append(f"{self.name}:done")

    def closed(self, error: BaseException | None) -> None:
        self.log.append(f"{self.name}:closed:{type(error).__name__ if error else None}")


def generation(events: list[GenerationEvent], *, fail: BaseException | None = None) -> tuple[Generation, list[str]]:
    log: list[str] = []

    async def source() -> AsyncGenerator[GenerationEvent, None]:
        try:
            for event in events:
                yield event
            if fail is not None:
                raise fail
        finally:
            log.append("source closed")

    stream = source()
    resources = AsyncExitStack()
    resources.push_async_callback(stream.aclose)
    made = Generation(
        model="m", prompt_tokens=3, load_seconds=0.0, started=time.perf_counter(), _events=stream, _resources=resources
    )
    made.observe(Watcher(log, "a"))
    made.observe(Watcher(log, "b"))
    return made, log


ANSWER = [
    GenerationEvent(text="x"),
    GenerationEvent(text="y"),
    GenerationEvent(done=True, finish_reason="stop", stats=STATS),
]


async def test_observers_see_every_event_in_order_and_the_end_once() -> None:
    made, log = generation(ANSWER)
    await made.prefetch()  # the first event is held back, not lost
    answer = await made.collect()
    assert answer.text == "xy"
    assert log == [
        "a:event:x", "b:event:x", "a:event:y", "b:event:y", "a:event:", "b:event:", "a:done", "b:done",
        "source closed", "a:closed:None", "b:closed:None",  # the source ended by itself first
    ]  # fmt: skip


async def test_a_consumer_that_leaves_is_told_to_the_observers_and_closes_the_source() -> None:
    made, log = generation(ANSWER)
    stream = aiter(made)
    assert (await anext(stream)).text == "x"
    await stream.aclose()  # type: ignore[attr-defined]
    assert log[-3:] == ["a:closed:GeneratorExit", "b:closed:GeneratorExit", "source closed"]


async def test_a_generation_closed_unread_still_ends_its_observers() -> None:
    made, log = generation(ANSWER)
    await made.prefetch()
    await made.aclose()
    await made.aclose()  # twice: told once
    assert log == ["a:closed:GeneratorExit", "b:closed:GeneratorExit", "source closed"]


async def test_an_error_mid_stream_reaches_the_observers_and_the_consumer() -> None:
    made, log = generation(ANSWER[:1], fail=ServiceUnavailable("worker died"))
    with pytest.raises(ServiceUnavailable):
        await made.collect()
    assert log[-3:] == ["source closed", "a:closed:ServiceUnavailable", "b:closed:ServiceUnavailable"]


@pytest.mark.parametrize("chat", [True, False])
@pytest.mark.parametrize("include_usage", [True, False])
def test_openai_text_frames_are_the_framed_chunk(chat: bool, include_usage: bool) -> None:
    obj = "chat.completion.chunk" if chat else "text_completion"
    base = {"id": "chatcmpl-1", "object": obj, "created": 1, "model": 'odd "name" ü\\', "system_fingerprint": "ember"}
    frames = openai_render.TextFrames(base, include_usage=include_usage, chat=chat)
    for index in (0, 3):
        for text in TEXTS:
            event = GenerationEvent(text=text)
            choice = (
                openai_render.chat_delta(index, event, False)
                if chat
                else openai_render.completion_delta(index, event, False)
            )
            chunk = {**base, "choices": [choice], **({"usage": None} if include_usage else {})}
            assert frames.text(index, text) == openai_render.frame(chunk)


@pytest.mark.parametrize("chat", [True, False])
def test_ollama_text_frames_are_the_framed_chunk(chat: bool) -> None:
    frames = ollama_render.TextFrames('odd "name" ü', chat=chat)
    renderer = ollama_render.ChunkRenderer(chat=chat, want_logprobs=False)
    stamp = "2026-12-01T15:00:00.123456Z"
    for text in TEXTS:
        event = GenerationEvent(text=text)
        assert ollama_render.TextFrames.plain(event, want_logprobs=False)
        [fields] = renderer.chunks(event)
        chunk = {"model": 'odd "name" ü', "created_at": stamp, **fields, "done": False}
        assert frames.text(stamp, text) == ollama_render.frame(chunk)


def test_ollama_only_plain_text_takes_the_short_path() -> None:
    plain = ollama_render.TextFrames.plain
    assert not plain(GenerationEvent(text=""), want_logprobs=False)
    assert not plain(GenerationEvent(text="a", done=True, finish_reason="stop", stats=STATS), want_logprobs=False)
    assert not plain(
        GenerationEvent(text="a", tool_calls=(ToolCallDelta(index=0, arguments="{"),)), want_logprobs=False
    )
