"""Units of the batch machinery without a server: the SQLite queue's contract, input validation,
and the rule that keeps a slot for interactive requests."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ember.jobs.batches import BatchLimits, parse_input, window_seconds
from ember.jobs.records import BatchRecord, Line, LineResult
from ember.jobs.runner import INTERACTIVE_GRACE, BatchRunner, RunnerConfig
from ember.jobs.sqlite_queue import SqliteLineQueue


def lines(batch_id: str, count: int) -> list[Line]:
    return [Line(batch_id, i, f"c{i}", "", "/v1/chat/completions", "{}", time.time() + 60) for i in range(count)]


async def test_sqlite_queue_finishes_each_line_once(tmp_path: Path) -> None:
    queue = SqliteLineQueue(tmp_path / "jobs.db")
    await queue.enqueue("b", lines("b", 5))
    await queue.enqueue("b", lines("b", 5))  # a restart enqueues again: nothing doubles
    first = await queue.claim("w1", 3)
    assert [c.line.index for c in first] == [0, 1, 2] and (await queue.counts("b")).waiting == 2
    assert await queue.complete(first[0], LineResult("b", 0, "c0", False, "a"))
    assert not await queue.complete(first[0], LineResult("b", 0, "c0", False, "again"))
    assert await queue.reclaim(0) == 2  # the worker died: its two unfinished claims come back
    assert not await queue.complete(first[1], LineResult("b", 1, "c1", False, "late"))  # its claim is void
    second = await queue.claim("w2", 10)
    assert sorted(c.line.index for c in second) == [1, 2, 3, 4] and second[0].attempts == 1
    for claim in second:
        line = claim.line
        assert await queue.complete(claim, LineResult("b", line.index, line.custom_id, line.index == 3, "x"))
    counts = await queue.counts("b")
    assert (counts.completed, counts.failed, counts.unfinished) == (4, 1, 0)
    assert [r.index for r in await queue.results("b")] == [0, 1, 2, 3, 4]
    await queue.forget("b")
    assert await queue.results("b") == [] and await queue.waiting() == 0
    await queue.aclose()


async def test_drop_removes_only_waiting_lines(tmp_path: Path) -> None:
    queue = SqliteLineQueue(tmp_path / "jobs.db")
    await queue.enqueue("b", lines("b", 4))
    running = await queue.claim("w", 1)
    assert await queue.drop("b") == 3
    assert await queue.complete(running[0], LineResult("b", 0, "c0", False, "kept"))
    assert [r.text for r in await queue.results("b")] == ["kept"]
    await queue.aclose()


def _batch() -> BatchRecord:
    return BatchRecord(id="batch_x", owner="", endpoint="/v1/chat/completions", input_file_id="file-x",
                       completion_window="24h", window_seconds=86400, status="validating", created_at=0,
                       expires_at=86400)


def test_parse_input_names_every_bad_line() -> None:
    good = {"custom_id": "a", "method": "POST", "url": "/v1/chat/completions", "body": {"model": "m"}}
    text = "\n".join([json.dumps(good), "", json.dumps({**good, "method": "GET", "custom_id": "b"}),
                      json.dumps(good), "[1]"]) + "\n"
    found, errors = parse_input(text.encode(), _batch(), BatchLimits())
    assert [(e.code, e.line, e.param) for e in errors] == [
        ("invalid_value", 3, "method"), ("duplicate_custom_id", 4, "custom_id"), ("invalid_json_line", 5, None)]
    assert [x.custom_id for x in found] == ["a"]
    many = "".join(json.dumps({**good, "custom_id": str(i)}) + "\n" for i in range(4)).encode()
    assert parse_input(many, _batch(), BatchLimits(max_lines=3))[1][0].code == "too_many_requests"
    assert parse_input(b"", _batch(), BatchLimits())[1][0].code == "empty_file"
    assert parse_input(b"\xff\n", _batch(), BatchLimits())[1][0].code == "invalid_file"


def test_completion_windows() -> None:
    assert window_seconds("24h") == 86400 and window_seconds("90s") == 90
    for bad in ("0s", "8d", "forever", "-1h"):
        try:
            window_seconds(bad)
        except Exception as exc:
            assert getattr(exc, "param", None) == "completion_window"
        else:
            raise AssertionError(bad)


@dataclass
class _Engine:
    parallel: int


@dataclass
class _Runner:
    engine: _Engine
    in_flight: int


class _Scheduler:
    def __init__(self) -> None:
        self.runners = [_Runner(_Engine(4), 0)]

    def running(self) -> list[Any]:
        return self.runners


def test_the_batch_keeps_a_slot_for_interactive_requests() -> None:
    scheduler = _Scheduler()
    runner = BatchRunner.__new__(BatchRunner)  # only room()'s state: no queue, no app
    runner._scheduler = scheduler  # type: ignore[assignment]
    runner.config = RunnerConfig()
    runner._running = set()
    runner._last_interactive = -INTERACTIVE_GRACE
    assert runner.room() == 4  # idle: every slot
    runner._running = {object(), object(), object(), object()}  # type: ignore[assignment]
    scheduler.runners[0].in_flight = 5  # the batch's four and one interactive request
    assert runner.room() == -2  # 4 - 1 kept free - 1 interactive = 2 lines allowed, 4 running
    scheduler.runners[0].in_flight = 4 + 4  # interactive traffic fills the model: the batch still gets 1
    assert runner.room() == 1 - 4
    scheduler.runners[0].in_flight = 4  # the interactive requests ended: one slot stays kept a while
    assert runner.room() == 3 - 4
    runner._last_interactive -= INTERACTIVE_GRACE
    assert runner.room() == 0  # and then the batch has them all again
