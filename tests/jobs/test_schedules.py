"""Batch schedules: cron parsing, firing on a moved clock, missed runs, and the HTTP surface.

The runner's firing is tested with its real SQLite store and a clock the test moves, so a
"* * * * *" schedule fires without waiting a minute. Then a real server: the schedules API with
its 400s and 404s, and a run missed while the server was down firing once when it is back.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from ember.errors import BadRequest, NotFound
from ember.jobs.schedules import NewSchedule, Schedule, ScheduleRunner, ScheduleStore, check_cron, next_run
from tests.conftest import DEFAULT_MODEL, ServerHandle, start_server
from tests.guard import copy_home

CHAT = "/v1/chat/completions"
# A Unix time on a minute boundary (2027-01-15 08:00:00 UTC), so cron arithmetic reads plainly.
T0 = 1_800_000_000 - 1_800_000_000 % 3600


@pytest.mark.parametrize("expression", ["0 2 * * *", "* * * * *", "*/15 9-17 * * 1-5", "  0  2 * * * ", "@daily"])
def test_five_field_expressions_and_aliases_are_taken(expression: str) -> None:
    assert check_cron(expression) == " ".join(expression.split())


@pytest.mark.parametrize(
    ("expression", "says"),
    [
        ("", "empty"),
        ("* * * * * *", "has 6 fields"),
        ("0 2 * *", "has 4 fields"),
        ("nightly", "has 1 field:"),
        ("61 * * * *", "not a valid cron expression"),
        ("0 2 * * mon-xyz", "not a valid cron expression"),
        ("@reboot", "not a valid cron expression"),
    ],
)
def test_a_bad_expression_is_a_400_naming_cron(expression: str, says: str) -> None:
    with pytest.raises(BadRequest) as caught:
        check_cron(expression)
    assert caught.value.param == "cron"
    assert says in caught.value.message


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def store(tmp_path: Path) -> Iterator[ScheduleStore]:
    schedules = ScheduleStore(tmp_path / "schedules.db")
    yield schedules
    schedules.close()


def _runner(store: ScheduleStore, clock: Clock, fired: list[Schedule], fail: Exception | None = None) -> ScheduleRunner:
    async def fire(schedule: Schedule) -> str:
        if fail is not None:
            raise fail
        fired.append(schedule)
        return f"batch_{len(fired)}"

    return ScheduleRunner(store, fire, clock=clock)


def _new(cron: str) -> NewSchedule:
    return NewSchedule(cron=cron, input_file_id="file-1", endpoint=CHAT, metadata={"team": "eval"})


async def test_every_minute_fires_at_the_minute_once(store: ScheduleStore) -> None:
    clock, fired = Clock(T0 + 10), []
    runner = _runner(store, clock, fired)
    schedule = store.create("", _new("* * * * *"), clock.now)
    assert schedule.next_run_at == T0 + 60
    clock.now = T0 + 59
    assert await runner.tick() == []
    clock.now = T0 + 60
    assert await runner.tick() == ["batch_1"]
    assert await runner.tick() == []  # the same minute again: nothing more
    after = store.get("", schedule.id)
    assert (after.runs, after.last_run_at, after.last_batch_id, after.next_run_at) == (1, T0 + 60, "batch_1", T0 + 120)
    assert fired[0].input_file_id == "file-1" and fired[0].metadata == {"team": "eval"}
    clock.now = T0 + 125
    assert await runner.tick() == ["batch_2"]


async def test_runs_missed_while_down_fire_once(store: ScheduleStore) -> None:
    clock, fired = Clock(T0), []
    schedule = store.create("", _new("0 * * * *"), clock.now)
    clock.now = T0 + 5 * 3600 + 1200  # five hourly runs missed, twenty minutes into the sixth hour
    runner = _runner(store, clock, fired)
    assert await runner.tick() == ["batch_1"]
    assert await runner.tick() == []
    after = store.get("", schedule.id)
    assert after.runs == 1
    assert after.next_run_at == T0 + 6 * 3600  # the first due time after now, not after the missed one


async def test_a_failed_run_is_recorded_and_the_schedule_goes_on(store: ScheduleStore) -> None:
    clock = Clock(T0)
    schedule = store.create("", _new("* * * * *"), clock.now)
    clock.now = T0 + 60
    assert await _runner(store, clock, [], fail=NotFound("no file with id 'file-1'")).tick() == []
    after = store.get("", schedule.id)
    assert (after.runs, after.last_error, after.next_run_at) == (1, "no file with id 'file-1'", T0 + 120)
    clock.now = T0 + 120
    assert await _runner(store, clock, []).tick() == ["batch_1"]
    assert store.get("", schedule.id).last_error is None


def test_schedules_belong_to_their_key(store: ScheduleStore) -> None:
    mine = store.create("alice", _new("@daily"), T0)
    store.create("bob", _new("@daily"), T0)
    assert [s.id for s in store.all("alice")] == [mine.id]
    with pytest.raises(NotFound):
        store.get("bob", mine.id)
    with pytest.raises(NotFound):
        store.delete("bob", mine.id)
    store.delete("alice", mine.id)
    assert store.all("alice") == []


def test_next_run_is_utc() -> None:
    assert next_run("0 2 * * *", T0) - T0 == (2 - 8) % 24 * 3600  # T0 is 08:00 UTC


# -- through a real server ---------------------------------------------------------------------


class Node:
    """The module's server, which a test may restart on the same home."""

    def __init__(self, home: Path, logs: Path) -> None:
        self.home, self.logs = home, logs
        self.handle = start_server(home, logs)

    def restart(self) -> None:
        self.handle.stop()
        self.handle = start_server(self.home, self.logs)

    def url(self, path: str) -> str:
        return self.handle.url(path)


@pytest.fixture(scope="module")
def node(model_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    base = tmp_path_factory.mktemp("schedules")
    running = Node(copy_home(model_home, base / "home"), base)
    try:
        yield running
    finally:
        running.handle.stop()


def _upload(node: Node, purpose: str = "batch") -> str:
    line = {"custom_id": "a", "method": "POST", "url": CHAT,
            "body": {"model": DEFAULT_MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}}
    reply = httpx.post(node.url("/v1/files"), timeout=30, data={"purpose": purpose},
                       files={"file": ("in.jsonl", json.dumps(line).encode() + b"\n")})
    reply.raise_for_status()
    return str(reply.json()["id"])


def _create(node: Node, **body: Any) -> httpx.Response:
    return httpx.post(node.url("/v1/ember/batch_schedules"), json={"endpoint": CHAT, **body}, timeout=30)


def test_the_schedules_api(node: Node) -> None:
    file_id = _upload(node)
    reply = _create(node, cron="0 2 * * *", input_file_id=file_id, metadata={"team": "eval"})
    assert reply.status_code == 200, reply.text
    created = reply.json()
    assert created["object"] == "batch_schedule" and created["id"].startswith("bsched_")
    assert (created["cron"], created["timezone"], created["runs"], created["last_batch_id"]) == (
        "0 2 * * *", "UTC", 0, None)
    assert created["next_run_at"] > time.time() and time.gmtime(created["next_run_at"]).tm_hour == 2
    listed = httpx.get(node.url("/v1/ember/batch_schedules"), timeout=10).json()
    assert created["id"] in [item["id"] for item in listed["data"]]
    assert httpx.get(node.url(f"/v1/ember/batch_schedules/{created['id']}"), timeout=10).json() == created
    deleted = httpx.delete(node.url(f"/v1/ember/batch_schedules/{created['id']}"), timeout=10)
    assert deleted.json() == {"id": created["id"], "object": "batch_schedule.deleted", "deleted": True}
    gone = httpx.get(node.url(f"/v1/ember/batch_schedules/{created['id']}"), timeout=10)
    assert gone.status_code == 404 and gone.json()["error"]["param"] == "schedule_id"


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        ({"cron": "* * * * * *"}, 400, "cron"),
        ({"cron": "61 * * * *"}, 400, "cron"),
        ({}, 400, "cron"),
        ({"cron": "@daily", "endpoint": "/v1/nope"}, 400, "endpoint"),
        ({"cron": "@daily", "completion_window": "99d"}, 400, "completion_window"),
        ({"cron": "@daily", "input_file_id": "file-nope"}, 404, "input_file_id"),
        ({"cron": "@daily", "every": "day"}, 400, "every"),
    ],
)
def test_bad_schedules_are_refused_in_openais_format(node: Node, body: dict[str, Any], status: int, param: str) -> None:
    reply = _create(node, **{"input_file_id": _upload(node), **body})
    assert reply.status_code == status, reply.text
    error = reply.json()["error"]
    assert error["param"] == param and error["message"]


def test_a_file_of_another_purpose_is_refused(node: Node) -> None:
    reply = _create(node, cron="@daily", input_file_id=_upload(node, purpose="user_data"))
    assert reply.status_code == 400 and "purpose 'batch'" in reply.json()["error"]["message"]


@pytest.mark.slow
def test_a_run_missed_while_the_server_was_down_fires_once_at_start(node: Node) -> None:
    created = _create(node, cron="0 * * * *", input_file_id=_upload(node)).json()
    node.handle.stop()
    # The server was down across three hourly runs.
    with sqlite3.connect(node.home / "state" / "schedules.db") as db:
        db.execute("UPDATE schedules SET next_run_at = ? WHERE id = ?", (int(time.time()) - 3 * 3600, created["id"]))
    node.restart()
    deadline = time.monotonic() + 30
    while (now := httpx.get(node.url(f"/v1/ember/batch_schedules/{created['id']}"), timeout=10).json())["runs"] == 0:
        assert time.monotonic() < deadline, "the missed run never fired"
        time.sleep(0.2)
    assert now["last_batch_id"] and now["last_error"] is None
    assert now["next_run_at"] > time.time()
    time.sleep(6)  # past the runner's next look: still one run
    assert httpx.get(node.url(f"/v1/ember/batch_schedules/{created['id']}"), timeout=10).json()["runs"] == 1
    batches = httpx.get(node.url("/v1/batches"), params={"limit": 100}, timeout=10).json()["data"]
    made = [b for b in batches if (b["metadata"] or {}).get("ember_schedule_id") == created["id"]]
    assert [b["id"] for b in made] == [now["last_batch_id"]]
    assert made[0]["input_file_id"] == created["input_file_id"] and made[0]["endpoint"] == CHAT
