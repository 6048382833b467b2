"""The agent extension on every wire protocol: the request fields (`mode`, `mode_tools`,
`mode_members`, `approvals`) and the trace an agent run leaves (`ember` objects).

Each protocol package declares `ModeFields` (or `AgentFields`, which adds `approvals`) on its
request model, checks them with `agent_fields`, and renders the run in its own place: chat
completions and Ollama an `ember` field (streams: one step per chunk), Messages an `ember`
field and `ember_step` events, Responses `mcp_call` / `mcp_approval_request` output items and
an `ember` field. What they share is here, so a step reads the same on every protocol.

Invariants:
- a request without the fields is the same TextRequest as before they existed;
- a field that would be ignored (`mode_tools` without a mode, approvals that no agent run would
  see) is a 400 naming it, never a quiet answer to another question; what only the runtime
  knows (an unknown mode, agent, tool or approval) is its 400 (agents/service.py);
- `ember` appears only on the answer of an agent run (a run id, steps or pending approvals);
- finish reasons only agents have ("approval", "max_steps", "deadline") are mapped by each
  protocol to one its clients know, and the exact reason is `ember.finish_reason`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StrictBool

from ember.agents.config import AGENT_PREFIX
from ember.agents.modes import MODES
from ember.errors import BadRequest
from ember.services.message_codec import encode_step
from ember.services.types import (
    AgentStep,
    Answer,
    ApprovalDecision,
    FinishReason,
    GenerationEvent,
    PendingApproval,
    TextRequest,
)

if TYPE_CHECKING:  # the render modules import this one; the gateway and agents are only types here
    from ember.agents.service import AgentService
    from ember.gateway.gateway import AgentHost

_Name = Annotated[str, Field(min_length=1, max_length=128)]


class ApprovalIn(BaseModel):
    """A decision on a pending approval, as chat completions, Ollama and Messages carry it."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(min_length=1, max_length=128)
    approve: StrictBool  # "true" or 1 is a 400: a decision is not guessed
    reason: str | None = Field(None, max_length=2000)


class ModeFields(BaseModel):
    """ember's extension fields for running a plain model in an agent mode. No model config of
    its own, so a protocol's request model that mixes it in keeps its own extra-field policy."""

    mode: str | None = Field(None, min_length=1, max_length=64)
    mode_tools: list[_Name] | None = None
    mode_members: list[_Name] | None = None


class AgentFields(ModeFields):
    approvals: list[ApprovalIn] | None = None


@dataclass(frozen=True)
class AgentRequest:
    """The extension fields, checked: what TextRequest takes."""

    mode: str | None = None
    mode_tools: tuple[str, ...] = ()
    mode_members: tuple[str, ...] = ()
    approvals: tuple[ApprovalDecision, ...] = ()


def decisions(approvals: Sequence[ApprovalIn]) -> tuple[ApprovalDecision, ...]:
    """The decisions, each id once (two answers to one approval cannot both be meant)."""
    seen: set[str] = set()
    out = []
    for i, approval in enumerate(approvals):
        if approval.id in seen:
            raise BadRequest(f"approvals[{i}].id '{approval.id}' is answered twice", param=f"approvals[{i}].id")
        seen.add(approval.id)
        out.append(ApprovalDecision(approval_id=approval.id, approve=approval.approve, reason=approval.reason))
    return tuple(out)


def agent_fields(model: str, fields: ModeFields, approvals: tuple[ApprovalDecision, ...] = ()) -> AgentRequest:
    """The extension fields of a request for `model`; `approvals` where the protocol carries
    them elsewhere than an `approvals` field (Responses: input items)."""
    if isinstance(fields, AgentFields) and fields.approvals is not None:
        approvals = decisions(fields.approvals)
    for name, value in (("mode_tools", fields.mode_tools), ("mode_members", fields.mode_members)):
        if value is None:
            continue
        if len(set(value)) != len(value):
            raise BadRequest(f"'{name}' names one entry twice", param=name)
        # Without a mode a plain model's request is no agent run, and the field would be dropped
        # (an agent's own refusal of them is the runtime's).
        if fields.mode is None and not model.startswith(AGENT_PREFIX):
            raise BadRequest(f"'{name}' needs a 'mode' (one of: {', '.join(sorted(MODES))})", param=name)
    return AgentRequest(
        mode=fields.mode,
        mode_tools=tuple(fields.mode_tools or ()),
        mode_members=tuple(fields.mode_members or ()),
        approvals=approvals,
    )


def runs_agent(request: TextRequest, agents: AgentHost | None) -> bool:
    """Whether the gateway hands this request to the agent runtime (gateway.agents)."""
    return agents is not None and agents.handles(request)


def check_routed(request: TextRequest, approvals_field: str = "approvals") -> None:
    """For a request the agent runtime does not take: its agent fields would be ignored (no
    agents are configured, or approvals came with a plain model and no mode), so they are a 400.
    `approvals_field`: where the protocol carries approvals ("input" on Responses)."""
    if request.mode is None and not request.approvals:
        return
    if request.mode is not None:
        raise BadRequest(f"'mode' is not available: this server runs no agents ('{request.mode}')", param="mode")
    what = "mcp_approval_response items" if approvals_field == "input" else f"'{approvals_field}'"
    raise BadRequest(
        f"{what} resume a paused agent run: send them with the run's model (agent/NAME, or the plain model "
        "and the 'mode' it was started with)",
        param=approvals_field,
    )


# -- the trace ----------------------------------------------------------------------------------


def is_agent_run(run_id: str | None, steps: Sequence[AgentStep], pending: Sequence[PendingApproval]) -> bool:
    return run_id is not None or bool(steps) or bool(pending)


def step(s: AgentStep) -> dict[str, Any]:
    return {**encode_step(s), "seconds": round(s.seconds, 6)}


def pending_approval(p: PendingApproval) -> dict[str, Any]:
    return {"id": p.approval_id, "tool": p.tool, "arguments": p.arguments, "call_id": p.call_id, "agent": p.agent}


@dataclass(frozen=True)
class RunLabel:
    """Which agent a request runs, in which mode, as the trace names them."""

    agent: str  # NAME of agent/NAME; "mode:MODE" for a plain model in a mode (as AgentSpec names it)
    mode: str | None


def run_label(request: TextRequest, agents: AgentService | None) -> RunLabel:
    if request.model.startswith(AGENT_PREFIX):
        name = request.model.removeprefix(AGENT_PREFIX)
        spec = next((s for s in agents.specs() if s.name == name), None) if agents is not None else None
        return RunLabel(agent=name, mode=spec.mode if spec is not None else request.mode)
    return RunLabel(agent=f"mode:{request.mode}", mode=request.mode)


def trace(
    label: RunLabel,
    *,
    run_id: str | None,
    finish_reason: FinishReason | None,
    steps: Sequence[AgentStep] | None,
    pending: Sequence[PendingApproval],
) -> dict[str, Any]:
    """The `ember` object of an agent run's answer. `steps` None: a stream's closing summary,
    whose steps went out one by one as they finished."""
    out: dict[str, Any] = {
        "run_id": run_id,
        "agent": label.agent,
        "mode": label.mode,
        "finish_reason": finish_reason or "stop",
    }
    if steps is not None:
        out["steps"] = [step(s) for s in steps]
    out["pending_approvals"] = [pending_approval(p) for p in pending]
    return out


def answer_trace(label: RunLabel, answer: Answer) -> dict[str, Any]:
    """The whole run's `ember` object, for an answer that was not streamed."""
    return trace(
        label, run_id=answer.run_id, finish_reason=answer.finish_reason, steps=answer.steps, pending=answer.pending
    )


def event_trace(label: RunLabel, done: GenerationEvent) -> dict[str, Any]:
    """A stream's closing `ember` object (its steps were sent as they finished)."""
    return trace(label, run_id=done.run_id, finish_reason=done.finish_reason, steps=None, pending=done.pending)
