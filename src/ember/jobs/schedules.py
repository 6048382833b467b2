"""Batch schedules: a batch created from the same input file on a cron expression.

A schedule is a row in SQLite (state_dir/schedules.db, WAL), so it survives restarts. The
server's `ScheduleRunner` wakes every few seconds and fires each schedule whose `next_run_at`
has passed; the clock is passed in, so tests move time instead of waiting for it.

Rules chosen here:
- Cron expressions are the standard five fields (minute hour day month weekday) or croniter's
  `@hourly`-style aliases, read in UTC. A six-field (seconds) expression is refused: a batch a
  second is not a schedule anyone means.
- Missed runs coalesce: a server that was down across several due times fires once when it is
  back, and the next run is the first due time after *now*, not after the missed one.
- At most once per due time: a schedule's next run moves forward (committed) before its batch is
  created, so a crash between the two loses that run rather than creating it twice.
- A run that fails (its input file deleted since, say) is kept on the row as `last_error`; the
  schedule stays and fires again at its next time.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import sqlite3
import threading
import time
from collections.abc import Awaitable, Callable
from contextlib import suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from croniter import croniter

from ember.config import Settings
from ember.errors import BadRequest, EmberError, NotFound

if TYPE_CHECKING:
    from ember.jobs.batches import BatchService

log = logging.getLogger("ember.jobs")

ID_PREFIX = "bsched_"
# How often the runner looks for due schedules; cron's unit is the minute.
DEFAULT_INTERVAL = 5.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS schedules (
    id TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    cron TEXT NOT NULL,
    input_file_id TEXT NOT NULL,
    endpoint TEXT NOT NULL,
    completion_window TEXT NOT NULL,
    metadata TEXT,
    output_seconds INTEGER,
    created_at INTEGER NOT NULL,
    next_run_at INTEGER NOT NULL,
    last_run_at INTEGER,
    last_batch_id TEXT,
    last_error TEXT,
    runs INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS schedules_due ON schedules (next_run_at);
"""
_COLUMNS = (
    "id, owner, cron, input_file_id, endpoint, completion_window, metadata, output_seconds, created_at, "
    "next_run_at, last_run_at, last_batch_id, last_error, runs"
)


def check_cron(expression: str) -> str:
    """The expression, trimmed, if croniter reads it as five fields or an alias; else a 400."""
    text = " ".join(expression.split())
    fields = text.split(" ")
    if not text:
        raise BadRequest(
            "cron is empty: give five fields, e.g. '0 2 * * *' (02:00 UTC daily)", param="cron", code="invalid_value"
        )
    if not text.startswith("@") and len(fields) != 5:
        raise BadRequest(
            f"cron {expression!r} has {len(fields)} field{'' if len(fields) == 1 else 's'}: give five "
            "(minute hour day month weekday), e.g. '0 2 * * *'",
            param="cron",
            code="invalid_value",
        )
    if not croniter.is_valid(text):
        raise BadRequest(
            f"cron {expression!r} is not a valid cron expression: five fields such as '0 2 * * *' (02:00 UTC daily) "
            "or @hourly, @daily, @weekly, @monthly, @yearly",
            param="cron",
            code="invalid_value",
        )
    return text


def next_run(expression: str, after: float) -> int:
    """The first due time strictly after `after` (Unix seconds, UTC), whole seconds."""
    start = datetime.fromtimestamp(after, UTC)
    return int(croniter(expression, start).get_next(float))


@dataclass(frozen=True)
class Schedule:
    """One schedule as stored; `to_dict` is its HTTP body."""

    id: str
    owner: str
    cron: str
    input_file_id: str
    endpoint: str
    completion_window: str
    metadata: dict[str, str] | None
    output_seconds: int | None
    created_at: int
    next_run_at: int
    last_run_at: int | None = None
    last_batch_id: str | None = None
    last_error: str | None = None
    runs: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "batch_schedule",
            "cron": self.cron,
            "timezone": "UTC",
            "input_file_id": self.input_file_id,
            "endpoint": self.endpoint,
            "completion_window": self.completion_window,
            "metadata": self.metadata,
            "output_expires_after": (
                {"anchor": "created_at", "seconds": self.output_seconds} if self.output_seconds else None
            ),
            "created_at": self.created_at,
            "next_run_at": self.next_run_at,
            "last_run_at": self.last_run_at,
            "last_batch_id": self.last_batch_id,
            "last_error": self.last_error,
            "runs": self.runs,
        }


@dataclass(frozen=True)
class NewSchedule:
    """What a caller asks for; the store adds the id and the times."""

    cron: str
    input_file_id: str
    endpoint: str
    completion_window: str = "24h"
    metadata: dict[str, str] | None = field(default=None)
    output_seconds: int | None = None


def _row(values: tuple[Any, ...]) -> Schedule:
    (sid, owner, cron, file_id, endpoint, window, metadata, output, created, next_at, last_at, batch, error, runs) = (
        values
    )
    return Schedule(
        id=sid,
        owner=owner,
        cron=cron,
        input_file_id=file_id,
        endpoint=endpoint,
        completion_window=window,
        metadata=json.loads(metadata) if metadata else None,
        output_seconds=output,
        created_at=created,
        next_run_at=next_at,
        last_run_at=last_at,
        last_batch_id=batch,
        last_error=error,
        runs=runs,
    )


class ScheduleStore:
    """Schedules in SQLite. Each belongs to the key that made it: another key gets a 404."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, check_same_thread=False, timeout=30, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(_SCHEMA)
        self._lock = threading.Lock()

    def create(self, owner: str, new: NewSchedule, now: float) -> Schedule:
        cron = check_cron(new.cron)
        schedule = Schedule(
            id=ID_PREFIX + secrets.token_hex(12),
            owner=owner,
            cron=cron,
            input_file_id=new.input_file_id,
            endpoint=new.endpoint,
            completion_window=new.completion_window,
            metadata=new.metadata,
            output_seconds=new.output_seconds,
            created_at=int(now),
            next_run_at=next_run(cron, now),
        )
        with self._lock:
            self._db.execute(
                f"INSERT INTO schedules ({_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, NULL, NULL, NULL, 0)",
                (
                    schedule.id,
                    owner,
                    cron,
                    new.input_file_id,
                    new.endpoint,
                    new.completion_window,
                    json.dumps(new.metadata) if new.metadata is not None else None,
                    new.output_seconds,
                    schedule.created_at,
                    schedule.next_run_at,
                ),
            )
        return schedule

    def all(self, owner: str) -> list[Schedule]:
        with self._lock:
            rows = self._db.execute(
                f"SELECT {_COLUMNS} FROM schedules WHERE owner = ? ORDER BY created_at, id", (owner,)
            ).fetchall()
        return [_row(row) for row in rows]

    def get(self, owner: str, schedule_id: str) -> Schedule:
        with self._lock:
            row = self._db.execute(
                f"SELECT {_COLUMNS} FROM schedules WHERE id = ? AND owner = ?", (schedule_id, owner)
            ).fetchone()
        if row is None:
            raise NotFound(f"no batch schedule {schedule_id!r}", param="schedule_id")
        return _row(row)

    def delete(self, owner: str, schedule_id: str) -> None:
        with self._lock:
            deleted = self._db.execute(
                "DELETE FROM schedules WHERE id = ? AND owner = ?", (schedule_id, owner)
            ).rowcount
        if not deleted:
            raise NotFound(f"no batch schedule {schedule_id!r}", param="schedule_id")

    def due(self, now: float) -> list[Schedule]:
        with self._lock:
            rows = self._db.execute(
                f"SELECT {_COLUMNS} FROM schedules WHERE next_run_at <= ? ORDER BY next_run_at, id", (int(now),)
            ).fetchall()
        return [_row(row) for row in rows]

    def advance(self, schedule: Schedule, now: float) -> bool:
        """Move a due schedule's next run past `now`; False when it was removed or moved meanwhile."""
        with self._lock:
            moved = self._db.execute(
                "UPDATE schedules SET next_run_at = ?, last_run_at = ?, runs = runs + 1 "
                "WHERE id = ? AND next_run_at = ?",
                (next_run(schedule.cron, now), int(now), schedule.id, schedule.next_run_at),
            ).rowcount
        return bool(moved)

    def record(self, schedule_id: str, *, batch_id: str | None, error: str | None) -> None:
        with self._lock:
            self._db.execute(
                "UPDATE schedules SET last_batch_id = COALESCE(?, last_batch_id), last_error = ? WHERE id = ?",
                (batch_id, error, schedule_id),
            )

    def close(self) -> None:
        with self._lock:
            self._db.close()


# Creates the schedule's batch and returns its id; an EmberError is the run's recorded error.
Fire = Callable[[Schedule], Awaitable[str]]
# The metadata key a scheduled batch carries, naming its schedule (when the caller's 16 pairs leave room).
SCHEDULE_KEY = "ember_schedule_id"


def batch_fire(batches: BatchService, wake: Callable[[], None]) -> Fire:
    """Fire by creating the batch as its owner would with POST /v1/batches."""

    async def fire(schedule: Schedule) -> str:
        metadata = dict(schedule.metadata or {})
        if len(metadata) < 16:
            metadata.setdefault(SCHEDULE_KEY, schedule.id)
        record = batches.create(
            schedule.owner,
            input_file_id=schedule.input_file_id,
            endpoint=schedule.endpoint,
            completion_window=schedule.completion_window,
            metadata=metadata,
            output_seconds=schedule.output_seconds,
        )
        wake()
        return record.id

    return fire


class ScheduleRunner:
    """Fires due schedules: `tick` once (tests), or `start` a loop that ticks every `interval`."""

    def __init__(
        self,
        store: ScheduleStore,
        fire: Fire,
        *,
        clock: Callable[[], float] = time.time,
        interval: float = DEFAULT_INTERVAL,
    ) -> None:
        self.store = store
        self._fire = fire
        self._clock = clock
        self._interval = interval
        self._task: asyncio.Task[None] | None = None

    async def tick(self) -> list[str]:
        """Fire every schedule due now, once each; the ids of the batches created."""
        now = self._clock()
        created: list[str] = []
        for schedule in self.store.due(now):
            if not self.store.advance(schedule, now):
                continue
            try:
                batch_id = await self._fire(schedule)
            except EmberError as exc:
                log.warning("batch schedule %s could not create its batch: %s", schedule.id, exc.message)
                self.store.record(schedule.id, batch_id=None, error=exc.message)
                continue
            except Exception as exc:  # a bug must not stop every other schedule
                log.exception("batch schedule %s failed", schedule.id)
                self.store.record(schedule.id, batch_id=None, error=f"internal error: {type(exc).__name__}")
                continue
            log.info("batch schedule %s created %s", schedule.id, batch_id)
            self.store.record(schedule.id, batch_id=batch_id, error=None)
            created.append(batch_id)
        return created

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._loop(), name="ember-batch-schedules")

    async def _loop(self) -> None:
        while True:
            try:
                await self.tick()
            except Exception:  # SQLite busy or gone: try again next time
                log.exception("batch schedules: tick failed")
            await asyncio.sleep(self._interval)

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self.store.close()


def start_schedules(settings: Settings, batches: BatchService, wake: Callable[[], None]) -> ScheduleRunner:
    """The app's schedules (state_dir/schedules.db), firing through `batches`; started."""
    runner = ScheduleRunner(ScheduleStore(settings.state_dir / "schedules.db"), batch_fire(batches, wake))
    runner.start()
    return runner
