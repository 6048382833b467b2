"""/v1/messages: the Anthropic Messages API over the shared services (the gateway).

`?beta=true` (what the SDK's client.beta adds) and the `anthropic-version` and
`anthropic-beta` headers are accepted and change nothing: ember has one version of this API,
and a beta it does not know is not an error (its fields, if any, are judged by themselves).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response

from ember.api import agent_wire
from ember.api.anthropic import parse, render
from ember.api.anthropic.protocol import CountTokensRequest, MessagesRequest
from ember.api.deps import Services, request_context, services
from ember.api.protocols import ANTHROPIC
from ember.api.streaming import stream_response
from ember.services.generation import Generation

router = APIRouter(prefix="/v1", tags=["Anthropic"])


@router.post("/messages", response_model=None)
async def messages(body: MessagesRequest, http: Request, svc: Services = Depends(services)) -> Response:
    request = parse.text_request(body, request_context(http))
    if not agent_wire.runs_agent(request, svc.gateway.agents):
        agent_wire.check_routed(request)
    ident = render.message_id()
    label = agent_wire.run_label(request, svc.agents)
    if body.stream:
        # Started before the response is, so a bad model or an over-long prompt is still an
        # HTTP error; a failure after that is an `error` event.
        generation = await svc.gateway.start(request)
        return stream_response(
            ANTHROPIC,
            _stream(ident, generation, label),
            headers=generation.response_headers(),
        )
    generation, answer = await svc.gateway.complete(request)
    return JSONResponse(render.message(ident, generation.model, answer, label), headers=generation.response_headers())


async def _stream(ident: str, generation: Generation, label: agent_wire.RunLabel) -> AsyncIterator[dict[str, Any]]:
    try:
        events = render.stream_events(ident, generation.model, generation.prompt_tokens, generation, label)
        async for event in events:
            yield event
    finally:  # the client may have gone away: stop generating and give the model back
        await generation.aclose()


@router.post("/messages/count_tokens")
async def count_tokens(body: CountTokensRequest, http: Request, svc: Services = Depends(services)) -> dict[str, int]:
    request = parse.text_request(body, request_context(http))
    return {"input_tokens": await svc.gateway.count_tokens(request)}
