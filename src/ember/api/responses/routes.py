"""/v1/responses: create (whole or streamed), retrieve and delete responses, through the gateway.

A created response is stored (unless `store: false`) with the conversation it ends, so that a
later request with `previous_response_id` is that conversation plus its new input; the prompt
then starts with the tokens the earlier request left in the KV cache, which prefix reuse skips.
"""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from typing import Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse, Response

from ember.api import agent_wire
from ember.api.deps import Services, request_context, services
from ember.api.protocols import RESPONSES
from ember.api.responses import parse, render
from ember.api.responses.protocol import ResponseCreateRequest, ToolChoiceIn
from ember.api.responses.store import ResponseStore, StoredResponse
from ember.api.streaming import stream_response
from ember.engine.grammar import GrammarError
from ember.engine.types import SamplingParams
from ember.errors import BadRequest, EmberError, NotFound, UnsupportedParameter
from ember.gateway.gateway import AgentHost
from ember.services.generation import DROPPED_FIELDS, Generation
from ember.services.types import Answer, ChatMessage, GenerationEvent, TextRequest, ToolCall, ToolChoice
from ember.services.validation import validate_request

router = APIRouter(prefix="/v1", tags=["OpenAI Responses"])
_MESSAGE_PARAM = re.compile(r"messages\[(\d+)\](.*)")


def _sampling(body: ResponseCreateRequest) -> SamplingParams:
    # As /v1/chat/completions: unset fields keep ember's defaults (repeat penalty included), so
    # the same messages at the same settings get the same answer on both endpoints.
    defaults = SamplingParams()
    return SamplingParams(
        temperature=body.temperature if body.temperature is not None else defaults.temperature,
        top_p=body.top_p if body.top_p is not None else defaults.top_p,
        top_k=defaults.top_k,
        min_p=defaults.min_p,
    )


def _not_found(response_id: str, param: str | None = None) -> NotFound:
    code = "previous_response_not_found" if param == "previous_response_id" else "not_found"
    return NotFound(f"Response with id '{response_id}' not found.", param=param, code=code)


def _echo(body: ResponseCreateRequest, request: TextRequest, store: bool) -> dict[str, Any]:
    """What the response object repeats of the request, as OpenAI's does."""
    text: dict[str, Any] = {"format": {"type": request.response_format.type}}
    form = request.response_format
    if form.type == "json_schema":
        spec = body.text.format if body.text is not None else None
        text["format"] = {
            "type": "json_schema",
            "name": form.name,
            "schema": form.schema,
            "strict": form.strict,
            "description": spec.description if spec is not None else None,
        }
    if body.text is not None and body.text.verbosity is not None:
        text["verbosity"] = body.text.verbosity
    choice = request.tool_choice
    return {
        "instructions": body.instructions,
        "max_output_tokens": body.max_output_tokens,
        "metadata": body.metadata or {},
        "parallel_tool_calls": request.parallel_tool_calls,
        "previous_response_id": body.previous_response_id,
        "reasoning": {"effort": None, "summary": None},
        "service_tier": body.service_tier or "default",
        "store": store,
        "temperature": request.sampling.temperature,
        "text": text,
        "tool_choice": _tool_choice_echo(body, choice),
        "tools": [
            {
                "type": "function",
                "name": t.name,
                "description": t.description or None,
                "parameters": t.parameters,
                "strict": t.strict,
            }
            for t in parse.tools(body, narrowed=False)  # all of them, as the request declared
        ],
        "top_p": request.sampling.top_p,
        "truncation": "disabled",
        "user": body.user,
        "background": False,
    }


def _tool_choice_echo(body: ResponseCreateRequest, choice: ToolChoice) -> Any:
    given = body.tool_choice
    if isinstance(given, ToolChoiceIn) and given.type == "allowed_tools":
        return given.model_dump(exclude_none=True)
    return {"type": "function", "name": choice.name} if choice.mode == "function" else choice.mode


def _turn(items: list[dict[str, Any]]) -> ChatMessage:
    """The output items as the assistant message a continuation sends back to the model."""
    calls = tuple(
        ToolCall(id=i["call_id"], name=i["name"], arguments=i["arguments"])
        for i in items
        if i["type"] == "function_call"
    )
    return ChatMessage(role="assistant", content=render.output_text(items), tool_calls=calls)


class _Plan:
    """One create request, parsed: the neutral request, the conversation so far, the ids."""

    def __init__(
        self, body: ResponseCreateRequest, http: Request, store: ResponseStore, agents: AgentHost | None
    ) -> None:
        parse.refuse_unsupported(body)
        context = request_context(http)
        history: tuple[ChatMessage, ...] = ()
        if body.previous_response_id is not None:
            previous = store.get(body.previous_response_id, context.key_name)
            if previous is None:
                raise _not_found(body.previous_response_id, "previous_response_id")
            history = previous.conversation
        earlier_calls = {c.id: c.name for m in history for c in m.tool_calls}
        new, origins = parse.input_messages(body, earlier_calls)
        approvals = parse.approval_decisions(body)
        agent = agent_wire.agent_fields(body.model, body, approvals)
        if approvals and not history and not new:
            raise BadRequest(
                "input holds only mcp_approval_response items: send them with previous_response_id (the response "
                "that asked for them) or with the conversation",
                param="input",
            )
        self.inputs = [*history, *new]
        system = [ChatMessage(role="system", content=body.instructions)] if body.instructions else []
        # Where each neutral message came from, so the service's "messages[3]" reads "input[1]".
        self.origins = ["instructions"] * len(system) + ["previous_response_id"] * len(history) + origins
        self.request = TextRequest(
            model=body.model,
            messages=system + self.inputs,
            max_tokens=body.max_output_tokens,
            sampling=_sampling(body),
            tools=parse.tools(body),
            tool_choice=parse.tool_choice(body),
            parallel_tool_calls=body.parallel_tool_calls is not False,
            response_format=parse.response_format(body),
            context=context,
            mode=agent.mode,
            mode_tools=agent.mode_tools,
            mode_members=agent.mode_members,
            approvals=agent.approvals,
        )
        with self.named_fields():
            validate_request(self.request)
        if not agent_wire.runs_agent(self.request, agents):
            agent_wire.check_routed(self.request, approvals_field="input")
        self.key = context.key_name
        self.keep = body.store is not False
        self.id = render.new_id("resp")
        self.created_at = int(time.time())
        self.echo = _echo(body, self.request, self.keep)
        self.input_items = tuple(render.input_items(body)) if self.keep else ()
        self.dropped = ["text.verbosity"] if body.text is not None and body.text.verbosity is not None else []

    @contextmanager
    def named_fields(self) -> Iterator[None]:
        """Errors about the neutral request's messages, named by the Responses fields they came from."""
        try:
            yield
        except GrammarError as exc:  # the grammar compiler names chat's response_format
            message = exc.message.removeprefix("response_format: ")
            raise GrammarError(
                f"text.format.schema: {message}", keyword=exc.keyword, path=exc.path, param="text.format.schema"
            ) from None
        except EmberError as exc:
            param = exc.param or ""
            found = _MESSAGE_PARAM.match(param)
            if found is not None and int(found[1]) < len(self.origins):
                where = self.origins[int(found[1])]
                exc.param = where + found[2]
                exc.message = exc.message.replace(f"messages[{found[1]}]", where)
            elif param == "messages":
                exc.param = "input"
            raise

    def base(self, generation: Generation) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "response",
            "created_at": self.created_at,
            "model": generation.model,
            **self.echo,
        }

    def headers(self, generation: Generation) -> dict[str, str]:
        headers = generation.response_headers()
        # The service names chat's field; here a JSON format is text.format.
        named = (headers.get(DROPPED_FIELDS) or "").replace("response_format", "text.format")
        dropped = [d for d in (named, *self.dropped) if d]
        if dropped:
            headers[DROPPED_FIELDS] = ", ".join(dropped)
        return headers

    def save(self, store: ResponseStore, response: dict[str, Any]) -> None:
        if self.keep:
            conversation = (*self.inputs, _turn(response["output"]))
            if response.get("ember", {}).get("finish_reason") == "approval":
                # A paused run's text is ember's note that it waits, not a turn of the model's:
                # the run that resumes from here gives the turn.
                conversation = tuple(self.inputs)
            store.put(StoredResponse(self.id, self.key, self.created_at, response, conversation, self.input_items))


async def _complete(svc: Services, plan: _Plan) -> tuple[Generation, Answer]:
    with plan.named_fields():
        return await svc.gateway.complete(plan.request)


async def _start(svc: Services, plan: _Plan) -> Generation:
    with plan.named_fields():
        return await svc.gateway.start(plan.request)


@router.post("/responses", response_model=None)
async def create_response(body: ResponseCreateRequest, http: Request, svc: Services = Depends(services)) -> Response:
    plan = _Plan(body, http, svc.responses, svc.gateway.agents)
    if body.stream:
        # Started before the response is, so a bad model or an over-long prompt is an HTTP error.
        generation = await _start(svc, plan)
        return stream_response(RESPONSES, _stream(svc, plan, generation), headers=plan.headers(generation))
    generation, answer = await _complete(svc, plan)
    output = render.output_items(answer)
    status = render.status_of(answer.finish_reason)
    ember = (
        agent_wire.answer_trace(agent_wire.run_label(plan.request, svc.agents), answer)
        if agent_wire.is_agent_run(answer.run_id, answer.steps, answer.pending)
        else None
    )
    response = render.response_object(
        plan.base(generation), status=status, output=output, stats=answer.stats, ember=ember
    )
    plan.save(svc.responses, response)
    return JSONResponse(response, headers=plan.headers(generation))


async def _stream(svc: Services, plan: _Plan, generation: Generation) -> AsyncIterator[dict[str, Any]]:
    renderer = render.StreamRenderer(plan.base(generation))
    try:
        for event in renderer.start():
            yield event
        final: GenerationEvent | None = None
        async for piece in generation:
            for event in renderer.feed(piece):
                yield event
            if piece.done:
                final = piece
        if final is None:
            raise EmberError("the answer ended without its final event")
        ember = None
        if agent_wire.is_agent_run(final.run_id, renderer.steps, final.pending):
            ember = agent_wire.trace(
                agent_wire.run_label(plan.request, svc.agents),
                run_id=final.run_id,
                finish_reason=final.finish_reason,
                steps=renderer.steps,
                pending=final.pending,
            )
        closing, response = renderer.finish(final, ember)
        plan.save(svc.responses, response)  # before response.completed: a follow-up may come at once
        for event in closing:
            yield event
    except EmberError as exc:  # the stream has begun: the failure goes in-band
        for event in renderer.fail(exc):
            yield event
    finally:
        await generation.aclose()


@router.get("/responses/{response_id}")
async def get_response(
    response_id: str, http: Request, stream: bool = False, svc: Services = Depends(services)
) -> dict[str, Any]:
    if stream:
        raise UnsupportedParameter("streaming a stored response again is not supported", param="stream")
    stored = svc.responses.get(response_id, request_context(http).key_name)
    if stored is None:
        raise _not_found(response_id)
    return stored.body


@router.get("/responses/{response_id}/input_items")
async def list_input_items(
    response_id: str,
    http: Request,
    limit: int = Query(20, ge=1, le=100),
    order: Literal["asc", "desc"] = "desc",
    after: str | None = None,
    svc: Services = Depends(services),
) -> dict[str, Any]:
    """The items of the response's own input (not of the conversation it continued), as OpenAI lists them."""
    stored = svc.responses.get(response_id, request_context(http).key_name)
    if stored is None:
        raise _not_found(response_id)
    items = list(stored.input_items if order == "asc" else reversed(stored.input_items))
    if after is not None:
        ids = [item["id"] for item in items]
        if after not in ids:
            raise BadRequest(f"no input item with id '{after}' in response '{response_id}'", param="after")
        items = items[ids.index(after) + 1 :]
    page = items[:limit]
    return {
        "object": "list",
        "data": page,
        "first_id": page[0]["id"] if page else None,
        "last_id": page[-1]["id"] if page else None,
        "has_more": len(items) > limit,
    }


@router.delete("/responses/{response_id}")
async def delete_response(response_id: str, http: Request, svc: Services = Depends(services)) -> dict[str, Any]:
    if not svc.responses.delete(response_id, request_context(http).key_name):
        raise _not_found(response_id)
    return {"id": response_id, "object": "response", "deleted": True}
