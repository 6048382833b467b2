"""/v1: the OpenAI API over the shared services."""

from __future__ import annotations

import base64
import struct
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any, TypeVar

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response

from ember.api import agent_wire
from ember.api.deps import Services, request_context, services
from ember.api.openai import parse, render
from ember.api.openai.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    EmbeddingRequest,
    _Sampling,
)
from ember.api.protocols import OPENAI
from ember.api.streaming import stream_response
from ember.engine.types import GenerationStats, SamplingParams
from ember.errors import BadRequest, ModelNotFound, UnsupportedParameter
from ember.fleet.discovery import fleet_only_models
from ember.runtime.store import ModelRecord
from ember.services.generation import Generation
from ember.services.types import TextRequest
from ember.services.validation import validate_request

router = APIRouter(prefix="/v1", tags=["OpenAI"])
_T = TypeVar("_T")


def _pick(value: _T | None, default: _T) -> _T:
    return default if value is None else value


def _sampling(body: _Sampling) -> SamplingParams:
    # Unset fields keep ember's defaults (repeat penalty included), as Ollama's
    # OpenAI layer does: small models loop without it.
    d = SamplingParams()
    try:
        repeat_penalty = body.repeat_penalty_value()
    except ValueError as exc:
        raise BadRequest(str(exc), param="repetition_penalty") from exc

    return SamplingParams(
        temperature=_pick(body.temperature, d.temperature),
        top_p=_pick(body.top_p, d.top_p),
        top_k=_pick(body.top_k, d.top_k),
        min_p=_pick(body.min_p, d.min_p),
        typical_p=_pick(body.typical_p, d.typical_p),
        repeat_penalty=_pick(repeat_penalty, d.repeat_penalty),
        repeat_last_n=_pick(body.repeat_last_n, d.repeat_last_n),
        presence_penalty=body.presence_penalty or 0.0,
        frequency_penalty=body.frequency_penalty or 0.0,
        seed=body.seed,
    )


def _model_card(record: ModelRecord) -> dict[str, Any]:
    return {
        "id": str(record.ref),
        "object": "model",
        "created": int(record.modified_at.timestamp()),
        "owned_by": "ember",
    }


def _route_card(name: str) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": 0, "owned_by": "ember-gateway"}


def _agent_card(name: str) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": 0, "owned_by": "ember-agent"}


def _agent_names(svc: Services) -> list[str]:
    return svc.agents.names() if svc.agents is not None else []


def _fleet_card(name: str) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": 0, "owned_by": "ember-fleet"}


@router.get("/models")
async def list_models(svc: Services = Depends(services)) -> dict[str, Any]:
    cards = [_route_card(name) for name in svc.gateway.route_names()]
    cards += [_agent_card(name) for name in _agent_names(svc)]
    cards += [_model_card(r) for r in svc.models.list()]
    # Models only other nodes of the fleet serve (fleet/discovery.py), after this node's own.
    cards += [_fleet_card(name) for name in fleet_only_models(svc.gateway.fleet, [c["id"] for c in cards])]
    return {"object": "list", "data": cards}


@router.get("/models/{model_id:path}")
async def get_model(model_id: str, svc: Services = Depends(services)) -> dict[str, Any]:
    if model_id in svc.gateway.route_names():
        return _route_card(model_id)
    if model_id in _agent_names(svc):
        return _agent_card(model_id)
    try:
        return _model_card(svc.models.get(model_id))
    except ModelNotFound:
        if svc.gateway.fleet is not None and model_id in svc.gateway.fleet.models():
            return _fleet_card(model_id)
        raise


def _refuse_unsupported(body: _Sampling) -> None:
    """A field that would change the answer but that ember cannot act on is a 400 naming it
    (OpenAI's unsupported_parameter), never a quiet answer to another question."""
    if body.logit_bias:
        raise UnsupportedParameter("'logit_bias' is not supported", param="logit_bias")
    if isinstance(body, ChatCompletionRequest):
        if body.audio is not None or any(m != "text" for m in body.modalities or ()):
            field = "audio" if body.audio is not None else "modalities"
            raise UnsupportedParameter(
                f"'{field}' is not supported: model '{body.model}' answers in text only", param=field
            )
        if body.reasoning_effort not in (None, "none"):
            raise UnsupportedParameter(
                f"'reasoning_effort' is not supported: model '{body.model}' does not reason", param="reasoning_effort"
            )
    if isinstance(body, CompletionRequest):
        if body.suffix:
            raise UnsupportedParameter("'suffix' (fill-in-the-middle) is not supported", param="suffix")
        if body.best_of is not None and body.best_of > body.n:
            raise UnsupportedParameter(
                "'best_of' larger than 'n' is not supported: ember does not rank candidate answers", param="best_of"
            )


@router.post("/chat/completions", response_model=None)
async def chat_completions(body: ChatCompletionRequest, http: Request, svc: Services = Depends(services)) -> Response:
    _refuse_unsupported(body)
    agent = agent_wire.agent_fields(body.model, body)
    request = TextRequest(
        model=body.model,
        messages=parse.chat_messages(body.messages),
        max_tokens=body.token_limit(),
        stop=body.stop_list(),
        sampling=_sampling(body),
        tools=parse.tools(body),
        tool_choice=parse.tool_choice(body),
        parallel_tool_calls=body.parallel_tool_calls is not False,
        response_format=parse.response_format(body.response_format),
        logprobs=parse.chat_logprobs(body),
        context=request_context(http),
        mode=agent.mode,
        mode_tools=agent.mode_tools,
        mode_members=agent.mode_members,
        approvals=agent.approvals,
    )
    validate_request(request)
    if agent_wire.runs_agent(request, svc.gateway.agents):
        if body.n != 1:  # each answer would be a run of its own, its tools run again
            raise BadRequest("an agent run gives one answer: n must be 1", param="n")
    else:
        agent_wire.check_routed(request)
    return await _serve(svc, [request], body, chat=True)


@router.post("/completions", response_model=None)
async def completions(body: CompletionRequest, http: Request, svc: Services = Depends(services)) -> Response:
    _refuse_unsupported(body)
    if body.model.startswith(agent_wire.AGENT_PREFIX):
        raise BadRequest(
            f"'{body.model}' is an agent, which answers chats: send it to /v1/chat/completions", param="model"
        )
    prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
    if not prompts:
        raise BadRequest("prompt must not be empty", param="prompt")
    if len(prompts) > 1 and body.stream:
        raise BadRequest("streaming takes a single prompt", param="prompt")
    context = request_context(http)
    requests = [
        TextRequest(
            model=body.model,
            prompt=p,
            max_tokens=body.max_tokens,
            stop=body.stop_list(),
            sampling=_sampling(body),
            logprobs=parse.completion_logprobs(body),
            context=context,
        )
        for p in prompts
    ]
    for request in requests:
        validate_request(request)
    return await _serve(svc, requests, body, chat=False, echo=body.echo)


def _stats(stats: GenerationStats | None) -> GenerationStats:
    assert stats is not None, "the final event carries stats"
    return stats


async def _serve(
    svc: Services, requests: list[TextRequest], body: _Sampling, *, chat: bool, echo: bool = False
) -> Response:
    """`n` answers to each request (a streamed response takes exactly one request)."""
    ident = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex[:24]}"
    created = int(time.time())
    logprobs = requests[0].logprobs is not None
    if body.stream:
        # The generation starts before the response does, so a bad model or an over-long
        # prompt is still an HTTP error rather than an error event.
        first = await svc.gateway.start(requests[0])
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return stream_response(
            OPENAI,
            _stream(svc, requests[0], first, body.n, ident, created, chat, include_usage, logprobs),
            headers=first.response_headers(),
        )
    choices: list[dict[str, Any]] = []
    prompt_tokens = completion_tokens = cached_tokens = 0
    served: Generation | None = None
    ember: dict[str, Any] = {}
    for request in requests:
        for _ in range(body.n):
            generation, answer = await svc.gateway.complete(request)
            served = served or generation
            cached_tokens = max(cached_tokens, answer.stats.cached_prompt_tokens)
            completion_tokens += answer.stats.completion_tokens
            if chat:
                choices.append(render.chat_choice(len(choices), answer, logprobs))
                if agent_wire.is_agent_run(answer.run_id, answer.steps, answer.pending):
                    ember = {"ember": agent_wire.answer_trace(agent_wire.run_label(request, svc.agents), answer)}
            else:
                prefix = (request.prompt or "") if echo else ""
                choices.append(render.completion_choice(len(choices), answer, logprobs, prefix))
        prompt_tokens += answer.stats.prompt_tokens  # each prompt counts once, however many answers it got
    assert served is not None, "requests and n are never empty"
    return JSONResponse(
        {
            "id": ident,
            "object": "chat.completion" if chat else "text_completion",
            "created": created,
            "model": served.model,
            "system_fingerprint": "ember",
            "choices": choices,
            "usage": render.usage(prompt_tokens, completion_tokens, cached_tokens),
            **ember,
        },
        headers=served.response_headers(),
    )


async def _stream(
    svc: Services,
    request: TextRequest,
    first: Generation,
    n: int,
    ident: str,
    created: int,
    chat: bool,
    include_usage: bool,
    logprobs: bool,
) -> AsyncIterator[dict[str, Any] | str]:
    obj = "chat.completion.chunk" if chat else "text_completion"
    base = {"id": ident, "object": obj, "created": created, "model": first.model, "system_fingerprint": "ember"}
    extra = {"usage": None} if include_usage else {}

    texts = render.TextFrames(base, include_usage=include_usage, chat=chat)

    def chunk(choice: dict[str, Any]) -> dict[str, Any]:
        return {**base, "choices": [choice], **extra}

    prompt_tokens = completion_tokens = cached_tokens = 0
    stepped = False  # an agent run's stream: its steps came before the end
    generation: Generation | None = first
    try:
        for index in range(n):
            if generation is None:
                generation = await svc.gateway.start(request)
            if chat:
                yield chunk(render.chat_delta(index, None, logprobs, role=True))
            async for event in generation:
                if event.step is not None:  # an agent run's step: a chunk of no choice, as usage's is
                    stepped = True
                    yield {**base, "choices": [], **extra, "ember": {"step": agent_wire.step(event.step)}}
                if not (event.done or event.tool_calls or event.logprobs):
                    if event.text:  # most chunks: one token's text, framed without a dict
                        yield texts.text(index, event.text)
                    continue
                closing: dict[str, Any] = {}
                if event.done:
                    stats = _stats(event.stats)
                    prompt_tokens = stats.prompt_tokens
                    cached_tokens = max(cached_tokens, stats.cached_prompt_tokens)
                    completion_tokens += stats.completion_tokens
                    if stepped or agent_wire.is_agent_run(event.run_id, (), event.pending):
                        closing = {"ember": agent_wire.event_trace(agent_wire.run_label(request, svc.agents), event)}
                yield {
                    **chunk(
                        render.chat_delta(index, event, logprobs)
                        if chat
                        else render.completion_delta(index, event, logprobs)
                    ),
                    **closing,
                }
            generation = None
        if include_usage:
            yield {**base, "choices": [], "usage": render.usage(prompt_tokens, completion_tokens, cached_tokens)}
    finally:
        if generation is not None:
            await generation.aclose()


@router.post("/embeddings")
async def embeddings(body: EmbeddingRequest, http: Request, svc: Services = Depends(services)) -> dict[str, Any]:
    inputs = [body.input] if isinstance(body.input, str) else body.input
    if not inputs:
        raise BadRequest("input must not be empty", param="input")
    if not all(isinstance(item, str) for item in inputs):
        raise BadRequest("token arrays are not supported as input; send text", param="input")
    if any(item == "" for item in inputs):
        raise BadRequest("input must not contain empty strings", param="input")
    outcome = await svc.gateway.embed(
        body.model, [str(i) for i in inputs], dimensions=body.dimensions, context=request_context(http)
    )
    data = [
        {"object": "embedding", "index": i, "embedding": _encode(v, body.encoding_format)}
        for i, v in enumerate(outcome.vectors)
    ]
    return {
        "object": "list",
        "data": data,
        "model": outcome.model,
        "usage": {"prompt_tokens": outcome.prompt_tokens, "total_tokens": outcome.prompt_tokens},
    }


def _encode(vector: list[float], encoding: str) -> list[float] | str:
    if encoding == "base64":
        return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")
    return vector
