"""The approval gate on its real parts: the SQLite store on disk and the real audit chain.

Parking, resuming, deciding and auto-approving, as the runner, the admin API and the CLI use
them; the chain must still verify after every decision row.
"""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import pytest

from ember.agents.approvals import ApprovalService, new_approval_id, new_run_id
from ember.agents.approvals.codec import decode_run, encode_run
from ember.agents.approvals.rules import parse_rules
from ember.agents.types import AgentSpec, RunState
from ember.config import Settings
from ember.errors import BadRequest, Conflict, NotFound
from ember.guard.audit import AuditLog, connect, rows, verify
from ember.services.types import (
    AgentStep,
    ApprovalDecision,
    ChatMessage,
    ImagePart,
    PendingApproval,
    ToolCall,
)


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"


@pytest.fixture
def audit(home: Path):
    log = AuditLog(Settings(home=home))
    yield log
    log.close()


@pytest.fixture
def gate(home: Path, audit: AuditLog):
    service = ApprovalService(home / "state" / "approvals.db", audit)
    yield service
    service.close()


def make_run(key: str | None = None, calls: int = 1, run_id: str | None = None) -> RunState:
    run_id = run_id or new_run_id()
    tool_calls = tuple(ToolCall(f"call_{i}", "shell", f'{{"cmd": "echo {i}"}}') for i in range(calls))
    return RunState(
        run_id=run_id,
        agent="ops",
        active="ops",
        mode="tools",
        model="agent/ops",
        messages=[
            ChatMessage("system", "be careful"),
            ChatMessage("user", "look", attachments=(ImagePart("data:image/png;base64,AAAA"),)),
            ChatMessage("assistant", "", tool_calls=tool_calls),
        ],
        mode_state={"round": 2, "scores": [0.5, 0.25], "plan": {"steps": ["a", "b"]}},
        steps=[AgentStep(index=0, kind="model", agent="ops", name="up/gpt", result="", tokens_in=12, detail={"x": 1})],
        tool_calls_used=3,
        key_name=key,
        pending=[
            PendingApproval(new_approval_id(), run_id, "ops", c.name, c.arguments, c.id) for c in tool_calls
        ],
        created=time.time(),
        elapsed=1.25,
    )


def audit_rows(home: Path, audit: AuditLog) -> list[dict]:
    audit.flush()
    db = connect(home / "state" / "audit.db")
    try:
        _, problems = verify(db)
        assert problems == [], problems
        return [r.fields() or {} for r in rows(db)]
    finally:
        db.close()


def test_codec_round_trips_a_run() -> None:
    run = make_run(key="k", calls=2)
    assert decode_run(encode_run(run)) == run
    with pytest.raises(ValueError):  # not JSON: fails while parking, never at resume
        encode_run(RunState(**{**run.__dict__, "mode_state": {"x": float("nan")}}))


async def test_park_resume_approve(gate: ApprovalService, home: Path, audit: AuditLog) -> None:
    run = make_run(calls=2)
    await gate.park(run)
    pending = await gate.list("pending")
    assert [p.id for p in reversed(pending)] == [p.approval_id for p in run.pending]
    first, second = run.pending
    # One decided, one not: the resume names the undecided one and writes nothing.
    with pytest.raises(BadRequest, match=second.approval_id):
        await gate.resume([ApprovalDecision(first.approval_id, True)], None)
    assert gate.decision_of(first.approval_id) == ("pending", None)
    back = await gate.resume(
        [ApprovalDecision(first.approval_id, True, "fine"), ApprovalDecision(second.approval_id, False, "no")], None
    )
    assert back == run
    assert gate.decision_of(first.approval_id) == ("approved", "fine")
    assert gate.decision_of(second.approval_id) == ("denied", "no")
    # Resume once: the same follow-up again must not run the tools a second time.
    with pytest.raises(Conflict, match="already resumed"):
        await gate.resume([ApprovalDecision(first.approval_id, True, "fine")], None)
    actions = [r.get("action") for r in audit_rows(home, audit)]
    assert actions == ["approval.requested", "approval.requested", "approval.approved", "approval.denied"]


async def test_admin_decision_then_resume(gate: ApprovalService, home: Path, audit: AuditLog) -> None:
    run = make_run(key="alice")
    await gate.park(run)
    approval = run.pending[0].approval_id
    record = await gate.decide(approval, True, "looks safe", "cli")
    assert (record.status, record.reason, record.decided_by) == ("approved", "looks safe", "cli")
    # The same answer again changes nothing (a retried click); the other answer is a conflict.
    again = await gate.decide(approval, True, "other words", "admin")
    assert (again.reason, again.decided_by) == ("looks safe", "cli")
    with pytest.raises(Conflict, match="already approved"):
        await gate.decide(approval, False, None, "admin")
    # The follow-up request need not repeat what the admin decided, but must carry an id of the run.
    with pytest.raises(Conflict, match="already approved"):
        await gate.resume([ApprovalDecision(approval, False)], "alice")
    back = await gate.resume([ApprovalDecision(approval, True)], "alice")
    assert back.run_id == run.run_id
    decided = [r for r in audit_rows(home, audit) if r.get("action") == "approval.approved"]
    assert len(decided) == 1 and decided[0]["detail"]["by"] == "cli"


async def test_other_keys_and_unknown_ids(gate: ApprovalService) -> None:
    run = make_run(key="alice")
    await gate.park(run)
    approval = run.pending[0].approval_id
    for key in ("mallory", None):
        with pytest.raises(NotFound, match=approval):
            await gate.resume([ApprovalDecision(approval, True)], key)
    with pytest.raises(NotFound, match="apr_nope"):
        await gate.resume([ApprovalDecision("apr_nope", True)], "alice")
    with pytest.raises(NotFound):
        await gate.decide("apr_nope", True, None, "admin")
    with pytest.raises(BadRequest, match="both approved and denied"):
        await gate.resume([ApprovalDecision(approval, True), ApprovalDecision(approval, False)], "alice")
    other = make_run(key="alice")
    await gate.park(other)
    with pytest.raises(BadRequest, match="different runs"):
        await gate.resume(
            [ApprovalDecision(approval, True), ApprovalDecision(other.pending[0].approval_id, True)], "alice"
        )
    assert gate.decision_of(approval) == ("pending", None)  # nothing half-written


async def test_parked_run_survives_a_new_process_view(home: Path, audit: AuditLog) -> None:
    path = home / "state" / "approvals.db"
    first = ApprovalService(path, audit)
    run = make_run()
    await first.park(run)
    first.close()
    second = ApprovalService(path, audit)
    try:
        assert [r.id for r in await second.list("pending")] == [run.pending[0].approval_id]
        assert await second.resume([ApprovalDecision(run.pending[0].approval_id, True)], None) == run
    finally:
        second.close()


async def test_two_resumes_at_once_only_one_wins(home: Path, audit: AuditLog) -> None:
    path = home / "state" / "approvals.db"
    setup = ApprovalService(path, audit)
    run = make_run()
    await setup.park(run)
    decision = [ApprovalDecision(run.pending[0].approval_id, True)]
    # Two stores on one file, as two ember processes on one home would have.
    gates = [ApprovalService(path, audit) for _ in range(2)]
    results: list[object] = []
    barrier = threading.Barrier(2)

    def attempt(gate: ApprovalService) -> None:
        barrier.wait()
        try:
            results.append(asyncio.run(gate.resume(decision, None)))
        except Conflict as exc:
            results.append(exc)

    threads = [threading.Thread(target=attempt, args=(g,)) for g in gates]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(type(r).__name__ for r in results) == ["Conflict", "RunState"]
    for g in (setup, *gates):
        g.close()


async def test_a_resumed_run_parks_again(gate: ApprovalService) -> None:
    run = make_run()
    await gate.park(run)
    await gate.resume([ApprovalDecision(run.pending[0].approval_id, True)], None)
    again = make_run(run_id=run.run_id)
    await gate.park(again)
    assert {r.id for r in await gate.list("pending")} == {again.pending[0].approval_id}
    with pytest.raises(Conflict, match="already parked"):
        await gate.park(make_run(run_id=run.run_id))
    statuses = {r.id: r.status for r in await gate.list(None)}
    assert statuses[run.pending[0].approval_id] == "approved"


def test_auto_approve_rules(gate: ApprovalService, home: Path, audit: AuditLog) -> None:
    rules = [
        {"tool": "fs_read", "arguments": ".*"},
        {"tool": "sh*", "arguments": r'^\{"cmd":"echo [a-z ]*"\}$'},
    ]
    agent = AgentSpec(name="ops", model="up/gpt-test", options={"auto_approve": rules})

    def decide(name: str, arguments: str) -> str:
        return gate.auto_decision(agent, ToolCall("c", name, arguments))

    assert decide("fs_read", '{"path": "anything"}') == "approved"
    assert decide("shell", '{ "cmd" :  "echo hi there" }') == "approved"  # spacing does not matter
    assert decide("shell", '{"cmd": "echo hi; rm -rf /"}') == "pending"
    assert decide("shell", '{"cmd": "echo hi", "env": "x"}') == "pending"  # anchored: the whole call
    assert decide("shell", "not json") == "pending"
    assert decide("fs_write", '{"path": "a"}') == "pending"
    assert gate.auto_decision(AgentSpec(name="bare", model="m"), ToolCall("c", "fs_read", "{}")) == "pending"
    autos = [r for r in audit_rows(home, audit) if r.get("action") == "approval.auto"]
    assert [a["detail"]["tool"] for a in autos] == ["fs_read", "shell"]


def test_bad_rules_are_refused_with_what_is_wrong() -> None:
    with pytest.raises(ValueError, match=r"auto_approve\[0\].arguments: bad regex"):
        parse_rules([{"tool": "x", "arguments": "("}])
    with pytest.raises(ValueError, match=r"auto_approve\[1\].tool"):
        parse_rules([{"tool": "x"}, {"arguments": ".*"}])


async def test_a_follow_up_for_another_model_leaves_the_run_parked(gate: ApprovalService) -> None:
    run = make_run()
    await gate.park(run)
    decision = [ApprovalDecision(run.pending[0].approval_id, True)]
    with pytest.raises(BadRequest, match="a run of agent/ops, not of agent/opz"):
        await gate.resume(decision, None, model="agent/opz")
    assert (await gate.resume(decision, None, model="agent/ops")).run_id == run.run_id


async def test_a_row_this_ember_cannot_read_stays_parked(gate: ApprovalService, home: Path) -> None:
    import sqlite3

    from ember.errors import EmberError

    run = make_run()
    await gate.park(run)
    db = sqlite3.connect(home / "state" / "approvals.db")
    with db:
        db.execute("UPDATE runs SET state = replace(state, '\"version\": 1', '\"version\": 99')")
    with pytest.raises(EmberError, match="format version 99"):
        await gate.resume([ApprovalDecision(run.pending[0].approval_id, True)], None)
    with db:
        db.execute("UPDATE runs SET state = replace(state, '\"version\": 99', '\"version\": 1')")
    db.close()
    assert gate.decision_of(run.pending[0].approval_id) == ("pending", None)
    assert await gate.resume([ApprovalDecision(run.pending[0].approval_id, True)], None) == run
