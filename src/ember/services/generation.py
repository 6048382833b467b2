"""Text generation for both APIs: load the model, build the prompt, stream the answer.

Everything that can fail because of the request (unknown model, bad messages,
prompt too long) fails in `start`, before any byte of a response is sent, so
the API layer can still answer with a proper error status.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from typing import Any

from ember.engine.types import GenerationEvent, GenerationRequest, LoadOptions, SamplingParams
from ember.errors import BadRequest, ContextLengthExceeded
from ember.runtime.chat_template import render_chat, template_for
from ember.runtime.scheduler import Lease, Scheduler

CHAT_ROLES = frozenset({"system", "user", "assistant", "tool", "developer"})


@dataclass(frozen=True)
class ChatMessage:
    role: str
    content: str


@dataclass(frozen=True)
class RequestContext:
    """Who asked and how: what the gateway, guard, cache and usage log need beyond the text."""

    protocol: str = "openai"  # "openai" or "ollama": the wire format the client spoke
    endpoint: str = ""  # the path, e.g. /v1/chat/completions
    key_name: str | None = None  # the API key's name, once the guard has checked it
    priority: str | None = None  # X-Ember-Priority
    has_tools: bool = False  # the request carried tools / functions
    no_cache: bool = False  # Cache-Control: no-cache


@dataclass(frozen=True)
class TextRequest:
    """A chat (messages) or a plain completion (prompt); exactly one is set."""

    model: str
    messages: list[ChatMessage] | None = None
    prompt: str | None = None
    max_tokens: int | None = None
    stop: tuple[str, ...] = ()
    sampling: SamplingParams = field(default_factory=SamplingParams)
    load_options: LoadOptions | None = None
    keep_alive: float | None = None
    context: RequestContext = field(default_factory=RequestContext)


@dataclass
class Generation:
    """A started generation: the prompt is accepted, text is ready to stream."""

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

    def response_headers(self) -> dict[str, str]:
        headers = {"X-Ember-Provider": self.provider, "X-Ember-Attempts": str(self.attempts)}
        if self.cache:
            headers["X-Ember-Cache"] = self.cache
        return headers

    def __aiter__(self) -> AsyncIterator[GenerationEvent]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[GenerationEvent]:
        try:
            async for event in self._events:
                yield event
        finally:
            await self.aclose()

    async def aclose(self) -> None:
        """Stop generating (a client went away) and give the model back."""
        await self._resources.aclose()

    async def collect(self) -> tuple[str, GenerationEvent]:
        parts: list[str] = []
        final: GenerationEvent | None = None
        async for event in self:
            parts.append(event.text)
            if event.done:
                final = event
        assert final is not None, "an engine stream always ends with a done event"
        return "".join(parts), final


class GenerationService:
    def __init__(self, scheduler: Scheduler) -> None:
        self._scheduler = scheduler

    async def start(self, request: TextRequest) -> Generation:
        started = time.perf_counter()
        if request.max_tokens is not None and request.max_tokens < 0:
            raise BadRequest("max_tokens must be at least 0", param="max_tokens")
        resources = AsyncExitStack()
        try:
            lease: Lease = await resources.enter_async_context(
                self._scheduler.lease(request.model, options=request.load_options,
                                      keep_alive=request.keep_alive)
            )
            engine = lease.runner.engine
            tokens = await self._prompt_tokens(lease, request)
            if len(tokens) >= engine.context_length:
                raise ContextLengthExceeded(
                    f"the prompt is {len(tokens)} tokens, but the model's context is "
                    f"{engine.context_length} tokens; shorten the prompt or raise num_ctx",
                    param="messages" if request.messages is not None else "prompt",
                )
            events = engine.generate(GenerationRequest(
                prompt_tokens=tokens, max_tokens=request.max_tokens,
                stop=request.stop, sampling=request.sampling,
            ))
            resources.push_async_callback(events.aclose)
        except BaseException:
            await resources.aclose()
            raise
        return Generation(model=lease.runner.key, prompt_tokens=len(tokens),
                          load_seconds=lease.load_seconds, started=started,
                          _events=events, _resources=resources)

    async def _prompt_tokens(self, lease: Lease, request: TextRequest) -> list[int]:
        engine = lease.runner.engine
        if request.messages is None:
            return await engine.tokenize(request.prompt or "", add_special=True)
        meta = lease.runner.record.metadata
        text = render_chat(
            template_for(meta.chat_template, meta.architecture),
            [_message_dict(m) for m in request.messages],
            bos_token=meta.bos_token,
            eos_token=meta.eos_token,
        )
        # Templates that write the BOS token themselves must not get a second one.
        starts_with_bos = bool(meta.bos_token) and text.startswith(meta.bos_token or "")
        return await engine.tokenize(text, add_special=not starts_with_bos)


def validate_messages(messages: list[ChatMessage]) -> None:
    if not messages:
        raise BadRequest("messages must contain at least one message", param="messages")
    for i, message in enumerate(messages):
        if message.role not in CHAT_ROLES:
            raise BadRequest(
                f"messages[{i}].role '{message.role}' is not one of "
                f"{', '.join(sorted(CHAT_ROLES))}",
                param=f"messages[{i}].role",
            )


def _message_dict(message: ChatMessage) -> dict[str, Any]:
    # "developer" is OpenAI's newer name for the system role; templates know "system".
    role = "system" if message.role == "developer" else message.role
    return {"role": role, "content": message.content}
