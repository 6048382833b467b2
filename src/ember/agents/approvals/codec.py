"""A parked run (`RunState`) as JSON text and back, for state/approvals.db.

Invariants:
- `decode_run(encode_run(run)) == run` for every RunState whose `mode_state` and step
  `detail`s are JSON-able (the mode's contract); a value that is not fails at `encode_run`,
  while the run is being parked, not later when it is read back;
- the text carries a format version; a row of a version this code does not know is refused
  with a clear error rather than resumed half-understood.
"""

from __future__ import annotations

import json
from typing import Any

from ember.agents.types import RunState
from ember.errors import EmberError
from ember.services.message_codec import decode_message, decode_step, encode_message, encode_step
from ember.services.types import PendingApproval

VERSION = 1


def encode_pending(p: PendingApproval) -> dict[str, Any]:
    return {
        "approval_id": p.approval_id,
        "run_id": p.run_id,
        "agent": p.agent,
        "tool": p.tool,
        "arguments": p.arguments,
        "call_id": p.call_id,
    }


def decode_pending(data: dict[str, Any]) -> PendingApproval:
    return PendingApproval(
        approval_id=str(data["approval_id"]),
        run_id=str(data["run_id"]),
        agent=str(data["agent"]),
        tool=str(data["tool"]),
        arguments=str(data["arguments"]),
        call_id=str(data["call_id"]),
    )


def encode_run(run: RunState) -> str:
    """The run as JSON text; raises TypeError when the mode's state is not JSON-able."""
    data = {
        "version": VERSION,
        "run_id": run.run_id,
        "agent": run.agent,
        "active": run.active,
        "mode": run.mode,
        "model": run.model,
        "messages": [encode_message(m) for m in run.messages],
        "mode_state": run.mode_state,
        "steps": [encode_step(s) for s in run.steps],
        "tool_calls_used": run.tool_calls_used,
        "key_name": run.key_name,
        "pending": [encode_pending(p) for p in run.pending],
        "created": run.created,
        "elapsed": run.elapsed,
    }
    # allow_nan=False: NaN is not JSON, and another reader (the dashboard) would choke on it.
    return json.dumps(data, ensure_ascii=False, allow_nan=False)


def decode_run(text: str) -> RunState:
    data: dict[str, Any] = json.loads(text)
    if data.get("version") != VERSION:
        raise EmberError(f"parked run has format version {data.get('version')!r}; this ember reads {VERSION}")
    return RunState(
        run_id=str(data["run_id"]),
        agent=str(data["agent"]),
        active=str(data["active"]),
        mode=str(data["mode"]),
        model=str(data["model"]),
        messages=[decode_message(m) for m in data["messages"]],
        mode_state=dict(data["mode_state"]),
        steps=[decode_step(s) for s in data["steps"]],
        tool_calls_used=int(data["tool_calls_used"]),
        key_name=data["key_name"],
        pending=[decode_pending(p) for p in data["pending"]],
        created=float(data["created"]),
        elapsed=float(data["elapsed"]),
    )
