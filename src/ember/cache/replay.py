"""Turning a live generation into a stored answer, and a stored answer back into a generation."""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from contextlib import AsyncExitStack

from ember.cache.entry import CachedAnswer
from ember.services.generation import Generation
from ember.services.types import AnswerBuilder, GenerationEvent, ToolCallDelta

Store = Callable[[CachedAnswer], Awaitable[None]]


def replay(answer: CachedAnswer) -> Generation:
    """A generation that streams the stored pieces, then each stored tool call as one delta (id,
    name and the whole arguments), then the stored end, with no model behind it."""

    async def events() -> AsyncGenerator[GenerationEvent, None]:
        for piece in answer.pieces:
            yield GenerationEvent(text=piece)
        for index, call in enumerate(answer.tool_calls):
            yield GenerationEvent(
                tool_calls=(ToolCallDelta(index=index, id=call.id, name=call.name, arguments=call.arguments),)
            )
        yield GenerationEvent(
            done=True, finish_reason=answer.finish_reason, stats=answer.stats, stop_sequence=answer.stop_sequence
        )

    stream = events()
    resources = AsyncExitStack()
    resources.push_async_callback(stream.aclose)
    generation = Generation(
        model=answer.model,
        prompt_tokens=answer.stats.prompt_tokens,
        load_seconds=0.0,
        started=time.perf_counter(),
        _events=stream,
        _resources=resources,
        provider=answer.provider,
        attempts=0,  # no target was tried
        notes=dict(answer.notes),
    )
    generation.served_by = answer.served_by
    return generation


def recording(generation: Generation, store: Store, *, max_chars: int) -> Generation:
    """Watch the generation's events so a whole, normal answer is handed to `store`.

    The store runs when the done event arrives, before it is passed on, so the answer is
    stored by the time the client has it. Tool calls are kept whole (their deltas merged). A
    stream that errors, is cancelled, grows past max_chars, or carries what an entry does not
    keep (logprobs) stores nothing.
    """
    generation.observe(_Recorder(generation, store, max_chars))
    return generation


class _Recorder:
    """The StreamObserver that gathers one answer for the cache (no generator layer of its own)."""

    def __init__(self, generation: Generation, store: Store, max_chars: int) -> None:
        self._generation = generation
        self._store = store
        self._max_chars = max_chars
        self._pieces: list[str] = []
        self._whole = AnswerBuilder()  # merges the tool-call deltas by index
        self._size = 0
        self._storable = True

    def event(self, event: GenerationEvent) -> None:
        if not self._storable:
            return
        if event.logprobs:
            self._storable = False
            return
        if event.text or event.tool_calls:
            self._size += len(event.text) + sum(len(d.arguments) + len(d.name or "") for d in event.tool_calls)
            if self._size > self._max_chars:  # a char is at least a byte: over in chars is over in bytes
                self._storable = False
                self._pieces.clear()
                self._whole = AnswerBuilder()
                return
            if event.text:
                self._pieces.append(event.text)
        self._whole.add(event)

    async def done(self, event: GenerationEvent) -> None:
        # Only answers that ended on their own are worth replaying: "cancelled" is cut off.
        if not (self._storable and event.stats and event.finish_reason in ("stop", "length", "tool_calls")):
            return
        generation = self._generation
        await self._store(
            CachedAnswer(
                model=generation.model,
                provider=generation.provider,
                pieces=tuple(self._pieces),
                finish_reason=event.finish_reason,
                stats=event.stats,
                served_by=generation.served_by,
                tool_calls=self._whole.answer().tool_calls,
                notes=tuple(generation.notes.items()),
                stop_sequence=event.stop_sequence,
            )
        )

    def closed(self, error: BaseException | None) -> None:
        return None
