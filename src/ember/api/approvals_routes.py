"""/admin/approvals: the agent tool calls that wait for a human, and their decisions.

    GET  /admin/approvals?status=pending|approved|denied|all&limit=N   newest first
    GET  /admin/approvals/{id}   the approval, and its run (model, status, conversation)
    POST /admin/approvals/{id}   {"approve": true|false, "reason": "..."}

The guard gives every /admin/ path the `admin` scope. A decision here is kept until the
request that resumes the run comes (it need not repeat it); deciding an approval again the same
way changes nothing, the other way is a 409. Each decision is an audit row naming who took it:
the admin key's name, or "cli" / "admin" on a server that takes no keys (the CLI says it is
the CLI with `X-Ember-Client: cli`). Unknown body fields are refused (400), so a misspelt
`approve` never reads as a denial.
"""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, ConfigDict, Field, StrictBool

from ember.agents.approvals import ApprovalService
from ember.api.deps import Services, request_context, services
from ember.errors import ServiceUnavailable

router = APIRouter(prefix="/admin/approvals", tags=["admin"])

MAX_REASON = 2000


class Decide(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # Strict: "yes" or 1 is a 400, a decision is never guessed from a near-boolean.
    approve: StrictBool = Field(description="true runs the tool call, false denies it (the run ends).")
    reason: str | None = Field(None, max_length=MAX_REASON, description="Kept with the decision, shown to the run.")


def _gate(svc: Services) -> ApprovalService:
    if svc.approvals is None:  # the lifespan sets it before the first request
        raise ServiceUnavailable("the approvals store is not open yet")
    return svc.approvals


def decider(http: Request) -> tuple[str, str | None]:
    """(who decided, the key that did): the key's name when keys are on, else cli or admin."""
    key_name = request_context(http).key_name
    if key_name:
        return key_name, key_name
    return ("cli" if http.headers.get("x-ember-client", "").lower() == "cli" else "admin"), None


@router.get("")
async def list_approvals(
    status: Literal["pending", "approved", "denied", "all"] = Query("pending"),
    limit: int = Query(100, ge=1, le=1000),
    svc: Services = Depends(services),
) -> dict[str, Any]:
    records = await _gate(svc).list(None if status == "all" else status, limit)
    return {"object": "list", "data": [r.view() for r in records]}


@router.get("/{approval_id}")
async def get_approval(approval_id: str, svc: Services = Depends(services)) -> dict[str, Any]:
    """The approval and, under `run`, its run's model, status and conversation."""
    gate = _gate(svc)
    record = await gate.get(approval_id)
    return {**record.view(), "run": await gate.context(record)}


@router.post("/{approval_id}")
async def decide(approval_id: str, body: Decide, http: Request, svc: Services = Depends(services)) -> dict[str, Any]:
    by, key_name = decider(http)
    record = await _gate(svc).decide(approval_id, body.approve, body.reason, by, key_name=key_name)
    return record.view()
