"""Text generation for both APIs: load the model, build the prompt, stream the answer.

Everything that can fail because of the request (unknown model, bad messages,
prompt too long, a tool schema the grammar cannot enforce) fails in `start`,
before any byte of a response is sent, so the API layer can still answer with a
proper error status. Tool calling (services/tools/) changes three things for a
chat with tools or a tool history: the messages the template gets, the grammar
the answer must match, and a parser that reads the calls out of the answer.
"""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from typing import Any, Protocol

from ember.engine import types as engine_types
from ember.errors import BadRequest, ContextLengthExceeded, UnsupportedParameter
from ember.runtime.chat_template import template_for
from ember.runtime.scheduler import Lease, Scheduler
from ember.services.formats import format_grammar
from ember.services.prompt import chat_prompt_tokens
from ember.services.tools.base import ToolParser
from ember.services.tools.plan import ToolPlan, plan_tools
from ember.services.types import (
    Answer,
    AnswerBuilder,
    ChatMessage,
    GenerationEvent,
    TextRequest,
)


class StreamObserver(Protocol):
    """Watches a generation's events from inside the one loop that streams them (Generation's own
    iterator), instead of wrapping the stream in a generator layer of its own: a token then
    crosses one loop whatever watches it (the response cache's recorder, the gateway's usage)."""

    def event(self, event: GenerationEvent) -> None:
        """Each event, before the consumer has it."""
        ...

    async def done(self, event: GenerationEvent) -> None:
        """The final event (done=True), awaited before the consumer has it."""
        ...

    def closed(self, error: BaseException | None) -> None:
        """The stream is over: error None when it ran to its end; what ended it otherwise (an
        EmberError, or GeneratorExit / CancelledError for a consumer that left). Called exactly
        once, also for a generation closed before it was read."""
        ...


@dataclass
class Generation:
    """A started generation: the prompt is accepted, events are ready to stream.

    Invariants: its events come from `_events` in one loop (`_iterate`): the first one held back
    by `prefetch` (so a failure before the first token is raised in start), then the rest. The
    observers (`observe`: the cache's recorder, then the gateway's usage) see each event in the
    order they were added, inside that loop, and each is told once how the stream ended. Closing
    the generation tells the observers (if the stream had not ended), then closes the source's
    resources and gives the model back.
    """

    model: str
    prompt_tokens: int
    load_seconds: float
    started: float  # perf_counter at request start
    _events: AsyncIterator[GenerationEvent]
    _resources: AsyncExitStack
    provider: str = "local"  # the provider that served it (X-Ember-Provider)
    attempts: int = 1  # targets tried, this one included (X-Ember-Attempts)
    cache: str | None = None  # "hit" or "miss" when the response cache was asked (X-Ember-Cache)
    route: str | None = None  # the gateway route, when the model name was one
    served_by: str | None = None  # the provider's model name, when a route chose the target
    notes: dict[str, str] = field(default_factory=dict)  # more response headers (X-Ember-*)
    _first: GenerationEvent | None = None  # held back by prefetch, streamed first
    _observers: list[StreamObserver] = field(default_factory=list)
    _ended: bool = False  # the observers were told how the stream ended

    def response_headers(self) -> dict[str, str]:
        headers = {"X-Ember-Provider": self.provider, "X-Ember-Attempts": str(self.attempts), **self.notes}
        if self.cache:
            headers["X-Ember-Cache"] = self.cache
        return headers

    def observe(self, observer: StreamObserver) -> None:
        """Have `observer` see the events (after those observing already) and the stream's end."""
        self._observers.append(observer)

    async def prefetch(self) -> None:
        """Wait for the first event, so a failure before the first token is raised here; the
        event is held back and streamed first. On failure the generation is closed."""
        if self._first is not None:
            return
        try:
            self._first = await anext(aiter(self._events))
        except StopAsyncIteration:
            return
        except BaseException:
            await self.aclose()
            raise

    def __aiter__(self) -> AsyncIterator[GenerationEvent]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[GenerationEvent]:
        observers = self._observers
        error: BaseException | None = None
        try:
            if self._first is not None:
                first, self._first = self._first, None
                await self._see(first)
                yield first
            if observers:
                async for event in self._events:
                    for observer in observers:  # inline, not _see: this runs once per token
                        observer.event(event)
                    if event.done:
                        for observer in observers:
                            await observer.done(event)
                    yield event
            else:
                async for event in self._events:
                    yield event
        except BaseException as exc:  # GeneratorExit and cancellation too: the consumer left
            error = exc
            raise
        finally:
            self._end(error)
            await self.aclose()

    async def _see(self, event: GenerationEvent) -> None:
        """Show the observers one event: each sees it, then, for the final one, each's `done`."""
        for observer in self._observers:
            observer.event(event)
        if event.done:
            for observer in self._observers:
                await observer.done(event)

    def _end(self, error: BaseException | None) -> None:
        if self._ended:
            return
        self._ended = True
        for observer in self._observers:
            observer.closed(error)

    async def aclose(self) -> None:
        """Stop generating (a client went away) and give the model back."""
        self._end(_NOT_READ)
        await self._resources.aclose()

    async def collect(self) -> Answer:
        builder = AnswerBuilder()
        async for event in self:
            builder.add(event)
        return builder.answer()


# What the observers of a generation closed before its stream ended are told.
_NOT_READ = GeneratorExit("the generation was closed before its stream ended")


class GenerationService:
    def __init__(self, scheduler: Scheduler) -> None:
        self._scheduler = scheduler

    async def start(self, request: TextRequest) -> Generation:
        started = time.perf_counter()
        if request.max_tokens is not None and request.max_tokens < 0:
            raise BadRequest("max_tokens must be at least 0", param="max_tokens")
        _refuse_attachments(request)
        # Pure and cached: a schema the grammar cannot enforce is a 400 before any model work.
        format_gbnf = format_grammar(request.response_format)
        resources = AsyncExitStack()
        try:
            lease: Lease = await resources.enter_async_context(
                self._scheduler.lease(request.model, options=request.load_options, keep_alive=request.keep_alive)
            )
            engine = lease.runner.engine
            tokens, plan = await self._prompt_tokens(lease, request)
            if len(tokens) >= engine.context_length:
                raise ContextLengthExceeded(
                    f"the prompt is {len(tokens)} tokens, but the model's context is "
                    f"{engine.context_length} tokens; shorten the prompt or raise num_ctx",
                    param="messages" if request.messages is not None else "prompt",
                )
            produced = engine.generate(
                engine_types.GenerationRequest(
                    prompt_tokens=tokens,
                    max_tokens=request.max_tokens,
                    stop=request.stop,
                    sampling=request.sampling,
                    logprobs=None if request.logprobs is None else request.logprobs.top,
                    grammar=plan.grammar if plan is not None and plan.grammar is not None else format_gbnf,
                )
            )
            resources.push_async_callback(produced.aclose)
        except BaseException:
            await resources.aclose()
            raise
        # Only an answer read for tool calls has a parser: the plain path stays as cheap as it was.
        parser = plan.parser() if plan is not None else None
        events = _neutral(produced) if parser is None else _tool_calls(produced, parser)
        generation = Generation(
            model=lease.runner.key,
            prompt_tokens=len(tokens),
            load_seconds=lease.load_seconds,
            started=started,
            _events=events,
            _resources=resources,
        )
        unenforced = _unenforced(request, tool_grammar=plan is not None and plan.grammar is not None)
        if unenforced:
            generation.notes[DROPPED_FIELDS] = ", ".join(unenforced)
        return generation

    async def count_prompt_tokens(self, request: TextRequest) -> int:
        """How many tokens `request`'s prompt is, exactly as `start` would feed it to the model
        (chat template, tools and tool instructions included); nothing is generated."""
        _refuse_attachments(request)
        async with self._scheduler.lease(
            request.model, options=request.load_options, keep_alive=request.keep_alive
        ) as lease:
            tokens, _ = await self._prompt_tokens(lease, request)
        return len(tokens)

    async def _prompt_tokens(self, lease: Lease, request: TextRequest) -> tuple[list[int], ToolPlan | None]:
        """The prompt's tokens, and the tool plan of a chat with tools or a tool history (a tool
        schema the grammar cannot enforce is a 400 raised here, naming the tool)."""
        engine = lease.runner.engine
        if request.messages is None:
            return await engine.tokenize(request.prompt or "", add_special=True), None
        meta = lease.runner.record.metadata
        template = template_for(meta.chat_template, meta.architecture)
        plan = plan_tools(request, template)
        messages = plan.messages if plan is not None else [_message_dict(m) for m in request.messages]
        # The messages' text is tokenized as plain text, the template's markup with its special tokens.
        tokens = await chat_prompt_tokens(
            engine,
            template,
            messages,
            bos_token=meta.bos_token,
            eos_token=meta.eos_token,
            tools=plan.tools if plan is not None else None,
        )
        return tokens, plan


# The response header that names request fields a server could not act on (the gateway's
# providers use it for what an upstream's API cannot say).
DROPPED_FIELDS = "X-Ember-Dropped-Fields"


def _unenforced(request: TextRequest, *, tool_grammar: bool) -> list[str]:
    """What a local answer does not act on, named in DROPPED_FIELDS rather than lost without a
    word: a JSON response format when a tool grammar constrains the answer instead."""
    return ["response_format"] if tool_grammar and request.response_format.type != "text" else []


def _refuse_attachments(request: TextRequest) -> None:
    """ember's engine reads text only: an image is a 400 naming where it is, never dropped."""
    for i, message in enumerate(request.messages or ()):
        if message.attachments:
            raise UnsupportedParameter(
                f"messages[{i}] has an image, but model '{request.model}' does not "
                "support images (ember serves text-only models)",
                param=f"messages[{i}].content",
            )


def _message_dict(message: ChatMessage) -> dict[str, Any]:
    # "developer" is OpenAI's newer name for the system role; templates know "system".
    role = "system" if message.role == "developer" else message.role
    return {"role": role, "content": message.content}


async def _neutral(produced: AsyncIterator[engine_types.GenerationEvent]) -> AsyncGenerator[GenerationEvent, None]:
    """The engine's token-level events as the neutral events every API renders."""
    async for event in produced:
        yield GenerationEvent(
            text=event.text,
            logprobs=event.logprobs,
            done=event.done,
            finish_reason=event.finish_reason,
            stats=event.stats,
            stop_sequence=event.stop_sequence,
        )


async def _tool_calls(
    produced: AsyncIterator[engine_types.GenerationEvent], parser: ToolParser
) -> AsyncGenerator[GenerationEvent, None]:
    """The neutral events of an answer read for tool calls: content and call deltas from the
    parser; finish_reason "tool_calls" when the answer ended by itself with calls in it."""
    async for event in produced:
        text, calls = parser.feed(event.text)
        if event.done:
            rest, more = parser.finish()
            text, calls = text + rest, calls + more
        if text or calls or event.logprobs:
            yield GenerationEvent(text=text, tool_calls=calls, logprobs=event.logprobs)
        if event.done:
            reason = "tool_calls" if parser.calls and event.finish_reason == "stop" else event.finish_reason
            yield GenerationEvent(done=True, finish_reason=reason, stats=event.stats, stop_sequence=event.stop_sequence)
