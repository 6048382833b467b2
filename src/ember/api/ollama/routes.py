"""/api: the Ollama API over the shared services."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response

from ember import __version__
from ember.agents.types import AgentSpec
from ember.api import agent_wire
from ember.api.deps import Services, request_context, services
from ember.api.ollama import parse, render
from ember.api.ollama.protocol import (
    ChatRequest,
    CopyRequest,
    DeleteRequest,
    EmbeddingsRequest,
    EmbedRequest,
    GenerateRequest,
    Options,
    PullRequest,
    ShowRequest,
)
from ember.api.protocols import OLLAMA
from ember.api.streaming import stream_response
from ember.engine.types import GenerationStats, LoadOptions, SamplingParams
from ember.errors import BadRequest, ContextLengthExceeded, ModelNotFound, UnsupportedParameter
from ember.fleet.discovery import fleet_only_models
from ember.runtime.chat_template import template_for
from ember.runtime.scheduler import Runner
from ember.runtime.store import ModelRecord
from ember.services.generation import Generation
from ember.services.types import ChatMessage, FinishReason, TextRequest
from ember.services.validation import validate_request

router = APIRouter(prefix="/api", tags=["Ollama"])

_NEVER = datetime(9999, 1, 1, tzinfo=UTC)
_T = TypeVar("_T")


def _now() -> str:
    return _timestamp(datetime.now(UTC))


def _timestamp(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _ns(seconds: float) -> int:
    return int(seconds * 1e9)


def _or(value: _T | None, default: _T) -> _T:
    return default if value is None else value


def _sampling(options: Options) -> SamplingParams:
    d = SamplingParams()
    return SamplingParams(
        temperature=_or(options.temperature, d.temperature),
        top_k=_or(options.top_k, d.top_k),
        top_p=_or(options.top_p, d.top_p),
        min_p=_or(options.min_p, d.min_p),
        typical_p=_or(options.typical_p, d.typical_p),
        repeat_penalty=_or(options.repeat_penalty, d.repeat_penalty),
        repeat_last_n=_or(options.repeat_last_n, d.repeat_last_n),
        presence_penalty=_or(options.presence_penalty, d.presence_penalty),
        frequency_penalty=_or(options.frequency_penalty, d.frequency_penalty),
        seed=options.seed,
    )


def _load_options(svc: Services, options: Options) -> LoadOptions:
    base = svc.scheduler.default_options()
    return LoadOptions(
        num_ctx=options.num_ctx or base.num_ctx,
        num_thread=options.num_thread or base.num_thread,
        num_gpu=base.num_gpu if options.num_gpu is None else options.num_gpu,
        num_parallel=base.num_parallel,
    )


def _max_tokens(options: Options) -> int | None:
    # Ollama: -1 generates until done, -2 until the context is full; both mean "no cap" here.
    if options.num_predict is None or options.num_predict < 0:
        return None
    return options.num_predict


def _details(record: ModelRecord) -> dict[str, Any]:
    meta = record.metadata
    return {
        "parent_model": "",
        "format": record.format,
        "family": meta.architecture,
        "families": [meta.architecture],
        "parameter_size": meta.parameter_size(),
        "quantization_level": meta.quantization,
    }


def _final_fields(generation: Generation, finish: FinishReason | None, stats: GenerationStats | None) -> dict[str, Any]:
    assert stats is not None, "the final event carries stats"
    return {
        "done": True,
        "done_reason": render.done_reason(finish),
        "total_duration": _ns(time.perf_counter() - generation.started),
        "load_duration": _ns(generation.load_seconds),
        "prompt_eval_count": stats.prompt_tokens,
        "prompt_eval_duration": _ns(stats.prompt_eval_seconds),
        "eval_count": stats.completion_tokens,
        "eval_duration": _ns(stats.eval_seconds),
    }


def _agent_spec(svc: Services, model: str) -> AgentSpec:
    name = model.removeprefix(agent_wire.AGENT_PREFIX)
    spec = next((s for s in svc.agents.specs() if s.name == name), None) if svc.agents is not None else None
    if spec is None:
        raise ModelNotFound(model, f"no agent named '{name}'")
    return spec


def _agent_show(svc: Services, model: str) -> dict[str, Any]:
    """What /api/show can say of an agent: no file, template or parameters of its own."""
    spec = _agent_spec(svc, model)
    return {
        "license": "",
        "modelfile": "",
        "parameters": "",
        "template": "",
        "details": _agent_tag(spec)["details"],
        "model_info": {},
        "capabilities": ["completion"],
        "modified_at": _timestamp(datetime.fromtimestamp(0, UTC)),
    }


def _agent_loaded(svc: Services, model: str) -> dict[str, Any]:
    """An empty chat with an agent (how clients preload a model): nothing to load, its model is
    loaded by its first step."""
    _agent_spec(svc, model)
    message = {"role": "assistant", "content": ""}
    return {"model": model, "created_at": _now(), "message": message, "done": True, "done_reason": "load"}


async def _load_or_unload(
    svc: Services, model: str, body: ChatRequest | GenerateRequest, shape: dict[str, Any]
) -> dict[str, Any]:
    """An empty prompt loads the model; with keep_alive 0 it unloads it (how `ollama stop` works)."""
    started = time.perf_counter()
    timings: dict[str, int] = {}
    if body.keep_alive == 0:
        svc.models.get(model)
        await svc.scheduler.unload(model)
        reason = "unload"
    else:
        lease = await svc.scheduler.load(model, options=_load_options(svc, body.options), keep_alive=body.keep_alive)
        reason = "load"
        timings = {"total_duration": _ns(time.perf_counter() - started), "load_duration": _ns(lease.load_seconds)}
    return {"model": model, "created_at": _now(), **shape, "done": True, "done_reason": reason, **timings}


def _refuse_unsupported(body: ChatRequest | GenerateRequest) -> None:
    """A field that would change the answer but that ember cannot act on is a 400 naming it,
    never a quiet answer to another question (an empty one is as good as none)."""
    if body.think not in (None, False):
        raise UnsupportedParameter(
            f"'think' is not supported: model '{body.model}' does not support thinking", param="think"
        )
    if isinstance(body, ChatRequest):
        for i, message in enumerate(body.messages):
            if message.images:
                raise _no_images(body.model, f"messages[{i}].images")
        return
    if body.images:
        raise _no_images(body.model, "images")
    if body.template:
        raise UnsupportedParameter(
            "'template' is not supported: ember applies the model's own chat template "
            "(Jinja, from the GGUF) and cannot run an Ollama Go template; apply yours "
            "to the prompt and send it with raw: true",
            param="template",
        )
    if body.context:
        raise UnsupportedParameter(
            "'context' is not supported: ember's /api/generate answers carry no context "
            "to send back; keep a conversation as messages on /api/chat",
            param="context",
        )
    if body.suffix:
        raise UnsupportedParameter("'suffix' (fill-in-the-middle) is not supported", param="suffix")


def _no_images(model: str, field: str) -> UnsupportedParameter:
    return UnsupportedParameter(
        f"'{field}' is not supported: model '{model}' does not support images (ember serves text-only models)",
        param=field,
    )


async def _respond(svc: Services, request: TextRequest, body: ChatRequest | GenerateRequest, *, chat: bool) -> Response:
    try:
        return await _start_response(svc, request, body.stream, chat=chat)
    except ContextLengthExceeded as exc:
        if not body.truncate:  # false, or unset: the 400 is what was asked for, or ember's default
            raise
        raise ContextLengthExceeded(
            f"{exc.message} ('truncate': ember does not cut prompts to fit)", param="truncate"
        ) from exc


async def _start_response(svc: Services, request: TextRequest, stream: bool, *, chat: bool) -> Response:
    want_logprobs = request.logprobs is not None
    if not stream:
        done, answer = await svc.gateway.complete(request)
        ember = (
            {"ember": agent_wire.answer_trace(agent_wire.run_label(request, svc.agents), answer)}
            if agent_wire.is_agent_run(answer.run_id, answer.steps, answer.pending)
            else {}
        )
        return JSONResponse(
            {
                "model": done.model,
                "created_at": _now(),
                **render.answer_fields(answer, chat=chat, want_logprobs=want_logprobs),
                **_final_fields(done, answer.finish_reason, answer.stats),
                **ember,
            },
            headers=done.response_headers(),
        )
    generation = await svc.gateway.start(request)
    model = generation.model
    chunks = render.ChunkRenderer(chat=chat, want_logprobs=want_logprobs)
    texts = render.TextFrames(model, chat=chat)

    async def events() -> AsyncIterator[dict[str, Any] | str]:
        stepped = False  # an agent run's stream: its steps came before the end
        async for event in generation:
            if event.step is not None:  # a chunk of no text, as Ollama's clients read any chunk
                stepped = True
                step = {"ember": {"step": agent_wire.step(event.step)}}
                yield {"model": model, "created_at": _now(), **chunks.final(), "done": False, **step}
            if texts.plain(event, want_logprobs):  # most chunks: one token's text, framed without a dict
                yield texts.text(_now(), event.text)
                continue
            for fields in chunks.chunks(event):
                yield {"model": model, "created_at": _now(), **fields, "done": False}
            if event.done:
                ember = (
                    {"ember": agent_wire.event_trace(agent_wire.run_label(request, svc.agents), event)}
                    if stepped or agent_wire.is_agent_run(event.run_id, (), event.pending)
                    else {}
                )
                yield {
                    "model": model,
                    "created_at": _now(),
                    **chunks.final(),
                    **_final_fields(generation, event.finish_reason, event.stats),
                    **ember,
                }

    return stream_response(OLLAMA, events(), headers=generation.response_headers())


@router.post("/chat", response_model=None)
async def chat(body: ChatRequest, http: Request, svc: Services = Depends(services)) -> Response:
    _refuse_unsupported(body)
    if not body.messages and not body.approvals:  # a follow-up with only approvals is a 400 below
        if body.model.startswith(agent_wire.AGENT_PREFIX):
            return JSONResponse(_agent_loaded(svc, body.model))
        return JSONResponse(
            await _load_or_unload(
                svc, svc.gateway.local_model(body.model), body, {"message": {"role": "assistant", "content": ""}}
            )
        )
    agent = agent_wire.agent_fields(body.model, body)
    request = TextRequest(
        model=body.model,
        messages=parse.chat_messages(body.messages),
        max_tokens=_max_tokens(body.options),
        stop=tuple(body.options.stop or ()),
        sampling=_sampling(body.options),
        load_options=_load_options(svc, body.options),
        keep_alive=body.keep_alive,
        tools=parse.tools(body),
        response_format=parse.response_format(body.format),
        logprobs=parse.logprobs(body),
        context=request_context(http),
        mode=agent.mode,
        mode_tools=agent.mode_tools,
        mode_members=agent.mode_members,
        approvals=agent.approvals,
    )
    validate_request(request)
    if not agent_wire.runs_agent(request, svc.gateway.agents):
        agent_wire.check_routed(request)
    return await _respond(svc, request, body, chat=True)


@router.post("/generate", response_model=None)
async def generate(body: GenerateRequest, http: Request, svc: Services = Depends(services)) -> Response:
    _refuse_unsupported(body)
    if body.model.startswith(agent_wire.AGENT_PREFIX):
        raise BadRequest(f"'{body.model}' is an agent, which answers chats: send it to /api/chat", param="model")
    if not body.prompt and not body.system:
        return JSONResponse(await _load_or_unload(svc, svc.gateway.local_model(body.model), body, {"response": ""}))
    if body.raw:
        prompt, messages = body.prompt, None
    else:
        # Ollama applies the model's template to generate prompts: a system + user turn.
        turns = [ChatMessage(role="system", content=body.system)] if body.system else []
        prompt, messages = None, [*turns, ChatMessage(role="user", content=body.prompt)]
    request = TextRequest(
        model=body.model,
        messages=messages,
        prompt=prompt,
        max_tokens=_max_tokens(body.options),
        stop=tuple(body.options.stop or ()),
        sampling=_sampling(body.options),
        load_options=_load_options(svc, body.options),
        keep_alive=body.keep_alive,
        response_format=parse.response_format(body.format),
        logprobs=parse.logprobs(body),
        context=request_context(http),
    )
    validate_request(request)
    return await _respond(svc, request, body, chat=False)


@router.post("/embed")
async def embed(body: EmbedRequest, http: Request, svc: Services = Depends(services)) -> dict[str, Any]:
    inputs = [body.input] if isinstance(body.input, str) else body.input
    outcome = await svc.gateway.embed(
        body.model,
        inputs,
        keep_alive=body.keep_alive,
        load_options=_load_options(svc, body.options),
        dimensions=body.dimensions,
        truncate=body.truncate,
        context=request_context(http),
    )
    return {
        "model": outcome.model,
        "embeddings": outcome.vectors,
        "total_duration": _ns(outcome.total_seconds),
        "load_duration": _ns(outcome.load_seconds),
        "prompt_eval_count": outcome.prompt_tokens,
    }


@router.post("/embeddings")
async def embeddings(body: EmbeddingsRequest, http: Request, svc: Services = Depends(services)) -> dict[str, Any]:
    outcome = await svc.gateway.embed(
        body.model,
        [body.prompt] if body.prompt else [],
        keep_alive=body.keep_alive,
        context=request_context(http),
        load_options=_load_options(svc, body.options),
    )
    return {"embedding": outcome.vectors[0] if outcome.vectors else []}


def _route_tag(name: str) -> dict[str, Any]:
    return {
        "name": name,
        "model": name,
        "modified_at": _timestamp(datetime.fromtimestamp(0, UTC)),
        "size": 0,
        "digest": "",
        "details": {
            "parent_model": "",
            "format": "route",
            "family": "route",
            "families": ["route"],
            "parameter_size": "",
            "quantization_level": "",
        },
    }


def _agent_tag(spec: AgentSpec) -> dict[str, Any]:
    """A configured agent as a tag: its model is the parent, its mode the family."""
    name = agent_wire.AGENT_PREFIX + spec.name
    return {
        **_route_tag(name),
        "details": {
            "parent_model": spec.model,
            "format": "agent",
            "family": spec.mode,
            "families": ["agent", spec.mode],
            "parameter_size": "",
            "quantization_level": "",
        },
    }


@router.get("/tags")
async def tags(svc: Services = Depends(services)) -> dict[str, Any]:
    agents = svc.agents.specs() if svc.agents is not None else []
    listed = (
        [_route_tag(name) for name in svc.gateway.route_names()]
        + [_agent_tag(spec) for spec in agents]
        + [
            {
                "name": str(r.ref),
                "model": str(r.ref),
                "modified_at": _timestamp(r.modified_at),
                "size": r.size,
                "digest": r.digest.removeprefix("sha256:"),
                "details": _details(r),
            }
            for r in svc.models.list()
        ]
    )
    # Models only other nodes of the fleet serve (fleet/discovery.py), after this node's own.
    fleet = fleet_only_models(svc.gateway.fleet, [t["name"] for t in listed])
    return {"models": listed + [_fleet_tag(name) for name in fleet]}


def _fleet_tag(name: str) -> dict[str, Any]:
    """A model another node of the fleet serves: no size or digest here (they are that node's)."""
    tag = _route_tag(name)
    return {**tag, "details": {**tag["details"], "format": "fleet", "family": "fleet", "families": ["fleet"]}}


def _expires(runner: Runner) -> datetime:
    if runner.expires_at is not None:
        return datetime.fromtimestamp(runner.expires_at, UTC)
    if runner.keep_alive < 0:
        return _NEVER
    return datetime.now(UTC) + timedelta(seconds=runner.keep_alive)  # busy: counts from its end


@router.get("/ps")
async def ps(svc: Services = Depends(services)) -> dict[str, Any]:
    return {
        "models": [
            {
                "name": r.key,
                "model": r.key,
                "size": r.engine.memory_bytes,
                "digest": r.record.digest.removeprefix("sha256:"),
                "details": _details(r.record),
                "expires_at": _timestamp(_expires(r)),
                "size_vram": 0,
                "context_length": r.engine.context_length,
                "in_flight": r.in_flight,
                "slots": r.engine.parallel,
                "slots_busy": r.slots_busy,
                "queue": r.queued,
            }
            for r in svc.scheduler.running()
        ]
    }


@router.post("/show")
async def show(body: ShowRequest, svc: Services = Depends(services)) -> dict[str, Any]:
    if body.model.startswith(agent_wire.AGENT_PREFIX):
        return _agent_show(svc, body.model)
    record = svc.models.get(body.model)
    meta = record.metadata
    parameters = "\n".join(f"{k} {v}" for k, v in (("num_ctx", meta.context_length),) if v)
    template = template_for(meta.chat_template, meta.architecture)
    modelfile = f'# Modelfile generated by ember\nFROM {record.path}\nTEMPLATE """{template}"""\n'

    return {
        "license": "",
        "modelfile": modelfile,
        "parameters": parameters,
        "template": template,
        "details": _details(record),
        "model_info": meta.gguf_info(),
        "capabilities": ["completion"],
        "modified_at": _timestamp(record.modified_at),
    }


@router.delete("/delete", response_model=None)
async def delete(body: DeleteRequest, http: Request, svc: Services = Depends(services)) -> Response:
    await svc.models.delete(body.model)
    svc.audit.admin("delete", request_context(http).key_name, {"model": body.model})
    return Response(status_code=200)


@router.post("/copy", response_model=None)
async def copy(body: CopyRequest, http: Request, svc: Services = Depends(services)) -> Response:
    await svc.models.copy(body.source, body.destination)
    svc.audit.admin("copy", request_context(http).key_name, {"source": body.source, "destination": body.destination})
    return Response(status_code=200)


@router.post("/pull", response_model=None)
async def pull(body: PullRequest, http: Request, svc: Services = Depends(services)) -> Response:
    progress = await svc.models.start_pull(body.model, body.destination)
    svc.audit.admin("pull", request_context(http).key_name, {"model": body.model, "destination": body.destination})
    if not body.stream:
        async for _ in progress:
            pass
        return JSONResponse({"status": "success"})

    async def events() -> AsyncIterator[dict[str, Any]]:
        async for p in progress:
            event: dict[str, Any] = {"status": p.status}
            if p.digest:
                event["digest"] = p.digest
            if p.total is not None:
                event["total"] = p.total
            if p.completed is not None:
                event["completed"] = p.completed
            yield event

    return stream_response(OLLAMA, events())


@router.get("/version")
async def version() -> dict[str, str]:
    return {"version": __version__}
