"""ApprovalStore: parked agent runs and their approvals in state/approvals.db (SQLite, WAL).

Invariants:
- a run is parked in one transaction with all of its pending approvals, so a reader never
  sees a run without its approvals or an approval without its run;
- an approval's status goes pending -> approved | denied once; deciding it again the same way
  changes nothing, the other way is a Conflict;
- a run is resumed at most once: the check that every approval is decided and the switch of
  the run to "resumed" are one BEGIN IMMEDIATE transaction, so two follow-up requests (or two
  ember processes on one home) cannot both continue it and run its tools twice; a resume that
  fails writes nothing (the request's decisions included);
- an approval belongs to the key that made its run (`key`, NULL when the server takes no keys);
  a resume with another key finds nothing, the same NotFound as an unknown id. The admin calls
  (`get`, `list`, `decide`) see every key's approvals.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from ember.agents.approvals.codec import decode_run
from ember.agents.types import RunState
from ember.errors import BadRequest, Conflict, NotFound
from ember.services.types import PendingApproval

Status = Literal["pending", "approved", "denied"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY,
    key TEXT,
    agent TEXT NOT NULL,
    status TEXT NOT NULL,            -- parked | resumed
    parked_at REAL NOT NULL,
    resumed_at REAL,
    state TEXT NOT NULL              -- the RunState as JSON (codec.py)
);
CREATE TABLE IF NOT EXISTS approvals (
    id TEXT PRIMARY KEY,
    run_id TEXT NOT NULL REFERENCES runs (id),
    seq INTEGER NOT NULL,            -- the order the model made the calls in, within the run
    key TEXT,
    agent TEXT NOT NULL,
    tool TEXT NOT NULL,
    arguments TEXT NOT NULL,
    call_id TEXT NOT NULL,
    status TEXT NOT NULL,
    reason TEXT,
    created_at REAL NOT NULL,
    decided_at REAL,
    decided_by TEXT
);
CREATE INDEX IF NOT EXISTS approvals_run ON approvals (run_id, seq);
CREATE INDEX IF NOT EXISTS approvals_status ON approvals (status, created_at);
"""

_COLUMNS = "id, run_id, key, agent, tool, arguments, call_id, status, reason, created_at, decided_at, decided_by"


@dataclass(frozen=True)
class ApprovalRecord:
    id: str
    run_id: str
    key: str | None
    agent: str
    tool: str
    arguments: str  # JSON text, as the model wrote it
    call_id: str
    status: Status
    reason: str | None
    created_at: float
    decided_at: float | None
    decided_by: str | None

    def view(self) -> dict[str, Any]:
        """The approval as the admin API shows it."""
        return {
            "id": self.id,
            "run_id": self.run_id,
            "agent": self.agent,
            "tool": self.tool,
            "arguments": self.arguments,
            "call_id": self.call_id,
            "key": self.key,
            "status": self.status,
            "reason": self.reason,
            "created_at": int(self.created_at),
            "decided_at": None if self.decided_at is None else int(self.decided_at),
            "decided_by": self.decided_by,
        }


@dataclass(frozen=True)
class Verdict:
    """One decision to apply: approve or deny approval `approval_id`."""

    approval_id: str
    approve: bool
    reason: str | None = None

    @property
    def status(self) -> Status:
        return "approved" if self.approve else "denied"


def _record(row: Sequence[Any]) -> ApprovalRecord:
    return ApprovalRecord(*row)


class ApprovalStore:
    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        # Autocommit mode: every write opens BEGIN IMMEDIATE itself (see `_write`).
        self._db = sqlite3.connect(path, check_same_thread=False, timeout=30, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        # NORMAL under WAL: a parked run survives the process being killed; only a power cut
        # may lose the newest, whose client then has no approval id to come back with.
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        self._lock = threading.Lock()

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        # The write lock before the first read: another process cannot decide or resume the
        # same run between our check and our update.
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    # -- writes -----------------------------------------------------------------------------

    def park(self, run_id: str, key: str | None, agent: str, state: str, pending: Sequence[PendingApproval]) -> None:
        now = time.time()
        with self._write() as db:
            row = db.execute("SELECT status FROM runs WHERE id = ?", (run_id,)).fetchone()
            if row is not None and row[0] == "parked":
                raise Conflict(f"run {run_id} is already parked")
            # A resumed run that stops for approval again is parked again under its own id;
            # its earlier approvals stay as they were decided.
            db.execute(
                "INSERT OR REPLACE INTO runs (id, key, agent, status, parked_at, resumed_at, state)"
                " VALUES (?, ?, ?, 'parked', ?, NULL, ?)",
                (run_id, key, agent, now, state),
            )
            base = db.execute("SELECT coalesce(max(seq), -1) + 1 FROM approvals WHERE run_id = ?", (run_id,)).fetchone()
            for offset, p in enumerate(pending):
                db.execute(
                    f"INSERT INTO approvals ({_COLUMNS}, seq) VALUES (?,?,?,?,?,?,?,'pending',NULL,?,NULL,NULL,?)",
                    (p.approval_id, run_id, key, p.agent, p.tool, p.arguments, p.call_id, now, int(base[0]) + offset),
                )

    def decide(self, verdict: Verdict, by: str) -> tuple[ApprovalRecord, bool]:
        """Apply one decision (admin API, CLI); the record after it and whether it changed."""
        with self._write() as db:
            record = self._get(db, verdict.approval_id, None, any_key=True)
            if record is None:
                raise NotFound(f"no approval {verdict.approval_id}", param="id")
            run_status = db.execute("SELECT status FROM runs WHERE id = ?", (record.run_id,)).fetchone()
            changed = self._apply(db, record, verdict, by, resumed=run_status is not None and run_status[0] != "parked")
            after = self._get(db, verdict.approval_id, None, any_key=True)
        assert after is not None
        return after, changed

    def resume(
        self,
        verdicts: Sequence[Verdict],
        key: str | None,
        by: str,
        *,
        model: str | None = None,
        check: Callable[[RunState], None] | None = None,
    ) -> tuple[RunState, list[ApprovalRecord]]:
        """Apply a follow-up request's decisions and take its run out of the parking: the run's
        saved state and the approvals this call decided. With `model`, a run that another
        model name parked is a BadRequest and stays parked (a typo must not use the run up);
        `check` raising leaves it parked too."""
        if not verdicts:
            raise BadRequest("no approval decisions to resume a run with", param="approvals")
        seen: dict[str, Verdict] = {}
        for verdict in verdicts:
            earlier = seen.get(verdict.approval_id)
            if earlier is not None and earlier.approve != verdict.approve:
                raise BadRequest(f"approval {verdict.approval_id} is both approved and denied", param="approvals")
            seen[verdict.approval_id] = verdict
        with self._write() as db:
            records = []
            for verdict in seen.values():
                record = self._get(db, verdict.approval_id, key, any_key=False)
                if record is None:
                    raise NotFound(f"no approval {verdict.approval_id}", param="approvals")
                records.append(record)
            run_ids = sorted({r.run_id for r in records})
            if len(run_ids) > 1:
                raise BadRequest(
                    f"the approvals belong to different runs ({', '.join(run_ids)}): answer one run per request",
                    param="approvals",
                )
            run_id = run_ids[0]
            run = db.execute("SELECT status, state FROM runs WHERE id = ?", (run_id,)).fetchone()
            if run is None:  # an approval row outlived its run: nothing to continue
                raise NotFound(f"no parked run {run_id}", param="approvals")
            if run[0] != "parked":
                raise Conflict(f"run {run_id} was already resumed", param="approvals")
            # Read back before the run leaves the parking: a row this ember cannot read fails
            # here and stays parked for one that can.
            state = decode_run(str(run[1]))
            if model is not None and state.model != model:
                raise BadRequest(
                    f"these approvals answer a run of {state.model}, not of {model}: send them with that model",
                    param="approvals",
                )
            if check is not None:
                check(state)
            decided = [
                r for r, v in zip(records, seen.values(), strict=True) if self._apply(db, r, v, by, resumed=False)
            ]
            undecided = [
                row[0]
                for row in db.execute(
                    "SELECT id FROM approvals WHERE run_id = ? AND status = 'pending' ORDER BY seq", (run_id,)
                )
            ]
            if undecided:
                raise BadRequest(
                    f"run {run_id} still waits for a decision on {', '.join(undecided)}: approve or deny each",
                    param="approvals",
                )
            db.execute("UPDATE runs SET status = 'resumed', resumed_at = ? WHERE id = ?", (time.time(), run_id))
            after = [self._get(db, r.id, None, any_key=True) for r in decided]
        return state, [r for r in after if r is not None]

    def _apply(
        self, db: sqlite3.Connection, record: ApprovalRecord, verdict: Verdict, by: str, *, resumed: bool
    ) -> bool:
        if record.status == verdict.status:
            return False  # the same answer twice (a retried request): nothing new to record
        if record.status != "pending":
            raise Conflict(f"approval {record.id} was already {record.status}", param="approvals")
        if resumed:
            raise Conflict(f"run {record.run_id} was already resumed", param="approvals")
        db.execute(
            "UPDATE approvals SET status = ?, reason = ?, decided_at = ?, decided_by = ? WHERE id = ?",
            (verdict.status, verdict.reason, time.time(), by, record.id),
        )
        return True

    # -- reads ------------------------------------------------------------------------------

    def _get(
        self, db: sqlite3.Connection, approval_id: str, key: str | None, *, any_key: bool
    ) -> ApprovalRecord | None:
        if any_key:
            row = db.execute(f"SELECT {_COLUMNS} FROM approvals WHERE id = ?", (approval_id,)).fetchone()
        else:
            row = db.execute(
                f"SELECT {_COLUMNS} FROM approvals WHERE id = ? AND key IS ?", (approval_id, key)
            ).fetchone()
        return None if row is None else _record(row)

    def get(self, approval_id: str) -> ApprovalRecord | None:
        with self._lock:
            return self._get(self._db, approval_id, None, any_key=True)

    def run_of(self, run_id: str) -> tuple[str, RunState] | None:
        """A run's status ("parked" or "resumed") and its state as it was parked."""
        with self._lock:
            row = self._db.execute("SELECT status, state FROM runs WHERE id = ?", (run_id,)).fetchone()
        return None if row is None else (str(row[0]), decode_run(str(row[1])))

    def list(self, status: Status | None, limit: int) -> list[ApprovalRecord]:
        """The newest first; `status` None lists every status."""
        where, args = ("WHERE status = ?", [status]) if status else ("", [])
        with self._lock:
            rows = self._db.execute(
                f"SELECT {_COLUMNS} FROM approvals {where} ORDER BY created_at DESC, seq DESC LIMIT ?",
                (*args, limit),
            ).fetchall()
        return [_record(r) for r in rows]

    def close(self) -> None:
        with self._lock:
            self._db.close()
