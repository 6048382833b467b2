"""ApprovalService: the runner's `ApprovalGate`, and what the admin API and CLI decide through.

The runner asks `auto_decision` for each call of a tool marked `require_approval`; the calls
left pending park the run (`park`), the response ends with finish reason "approval", and a
later request carrying the decisions continues it (`resume`). Between the two a human may
decide through `POST /admin/approvals/{id}` or `ember approvals approve|deny` (`decide`).

Invariants:
- every decision is one admin row in the audit chain (guard/audit.py): "approval.auto" for a
  rule's approval, "approval.requested" for each call parked, "approval.approved" /
  "approval.denied" naming who decided (the key's name, "admin" or "cli" when the server takes
  no keys, "request" for a keyless follow-up request); a decision repeated unchanged writes
  no second row;
- the disk work runs in a thread, never on the event loop; the audit rows are queued (the
  audit log writes them in order on its own thread).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ember.agents.approvals.codec import encode_run
from ember.agents.approvals.rules import AutoApproveRule, first_match, parse_rules
from ember.agents.approvals.store import ApprovalRecord, ApprovalStore, Status, Verdict
from ember.agents.types import AgentSpec, Decision, RunState
from ember.errors import NotFound
from ember.guard.audit import AuditLog
from ember.services.message_codec import encode_message
from ember.services.types import ApprovalDecision, ToolCall

log = logging.getLogger("ember.agents")


def new_approval_id() -> str:
    return f"apr_{secrets.token_hex(12)}"


def new_run_id() -> str:
    return f"run_{secrets.token_hex(12)}"


class ApprovalService:
    def __init__(self, store_path: Path, audit: AuditLog) -> None:
        self.store = ApprovalStore(store_path)
        self._audit = audit

    # -- ApprovalGate -----------------------------------------------------------------------

    def auto_decision(self, agent: AgentSpec, call: ToolCall) -> Decision:
        rules = self._rules(agent)
        index = first_match(rules, call.name, call.arguments)
        if index is None:
            return "pending"
        self._audit.admin(
            "approval.auto",
            None,
            {"agent": agent.name, "tool": call.name, "arguments": call.arguments, "call_id": call.id, "rule": index},
        )
        return "approved"

    async def park(self, run: RunState) -> None:
        state = encode_run(run)  # here, so a state that is not JSON fails the park, not a resume
        await asyncio.to_thread(self.store.park, run.run_id, run.key_name, run.agent, state, run.pending)
        for p in run.pending:
            self._audit.admin(
                "approval.requested",
                run.key_name,
                {"id": p.approval_id, "run_id": run.run_id, "agent": p.agent, "tool": p.tool, "arguments": p.arguments},
            )

    async def resume(
        self,
        decisions: Sequence[ApprovalDecision],
        key_name: str | None,
        *,
        model: str | None = None,
        check: Callable[[RunState], None] | None = None,
    ) -> RunState:
        """As ApprovalGate.resume; `model` (the follow-up's model name), when given, must be the
        one the run was parked under, and `check` must pass, both before the run is taken out
        of the parking."""
        verdicts = [Verdict(d.approval_id, d.approve, d.reason) for d in decisions]
        by = key_name or "request"
        run, decided = await asyncio.to_thread(self.store.resume, verdicts, key_name, by, model=model, check=check)
        for record in decided:
            self._audit_decision(record, key_name)
        return run

    def decision_of(self, approval_id: str) -> tuple[Decision, str | None]:
        record = self.store.get(approval_id)
        if record is None:
            raise NotFound(f"no approval {approval_id}")
        return record.status, record.reason

    # -- the admin API and CLI --------------------------------------------------------------

    async def decide(
        self, approval_id: str, approve: bool, reason: str | None, by: str, *, key_name: str | None = None
    ) -> ApprovalRecord:
        """Approve or deny one pending approval ahead of the request that resumes its run;
        `by` is recorded as the decider, `key_name` (the admin's key) on the audit row."""
        record, changed = await asyncio.to_thread(self.store.decide, Verdict(approval_id, approve, reason), by)
        if changed:
            self._audit_decision(record, key_name)
        return record

    async def get(self, approval_id: str) -> ApprovalRecord:
        record = await asyncio.to_thread(self.store.get, approval_id)
        if record is None:
            raise NotFound(f"no approval {approval_id}", param="id")
        return record

    async def context(self, record: ApprovalRecord) -> dict[str, Any]:
        """What a human deciding on `record` wants to see of its run: the model asked for, the
        run's status and its conversation up to the waiting calls (image data left out)."""
        found = await asyncio.to_thread(self.store.run_of, record.run_id)
        if found is None:
            return {"id": record.run_id, "status": "gone"}
        status, run = found
        messages = []
        for message in run.messages:
            shown = encode_message(message)
            if message.attachments:
                shown["attachments"] = len(message.attachments)
            messages.append(shown)
        return {"id": run.run_id, "status": status, "model": run.model, "mode": run.mode, "messages": messages}

    async def list(self, status: Status | None, limit: int = 100) -> list[ApprovalRecord]:
        return await asyncio.to_thread(self.store.list, status, limit)

    def close(self) -> None:
        self.store.close()

    # -- helpers ----------------------------------------------------------------------------

    def _rules(self, agent: AgentSpec) -> tuple[AutoApproveRule, ...]:
        try:
            return parse_rules(agent.options.get("auto_approve"))
        except ValueError as exc:
            # The config loader checks the rules at start (file:line); one that slipped past
            # approves nothing rather than fail the request.
            log.warning("agent %s: auto_approve ignored: %s", agent.name, exc)
            return ()

    def _audit_decision(self, record: ApprovalRecord, key_name: str | None) -> None:
        self._audit.admin(
            f"approval.{record.status}",
            key_name,
            {
                "id": record.id,
                "run_id": record.run_id,
                "agent": record.agent,
                "tool": record.tool,
                "arguments": record.arguments,
                "reason": record.reason,
                "by": record.decided_by,
            },
        )
