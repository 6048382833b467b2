"""`ember batch …` against a real server with the real model: tiny batches, a few tokens each.

The CLI runs as a subprocess (stdout a pipe, so progress is plain lines), except one run under a
pseudo-terminal for the live bar. Errors must be one `Error:` line, and a refused create or
schedule must leave no uploaded file behind.
"""

from __future__ import annotations

import json
import os
import pty
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from .conftest import cli_env
from .helpers import MODEL, Ember, assert_one_line_error

CHAT = "/v1/chat/completions"


def _line(custom_id: str, model: str = MODEL, max_tokens: int = 4) -> str:
    body = {"model": model, "messages": [{"role": "user", "content": "Say hi."}], "max_tokens": max_tokens,
            "temperature": 0}
    return json.dumps({"custom_id": custom_id, "method": "POST", "url": CHAT, "body": body})


@pytest.fixture(scope="module")
def batch_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two lines that answer and one whose model does not exist (it fails with a 404)."""
    path = tmp_path_factory.mktemp("batch") / "in.jsonl"
    path.write_text("\n".join([_line("a"), _line("b"), _line("c", model="no-such-model:1b")]) + "\n")
    return path


@pytest.fixture(scope="module")
def finished(batch_file: Path, server) -> dict[str, Any]:
    """One `ember batch create --wait` run, shared by the tests that read its batch."""
    result = subprocess.run([sys.executable, "-m", "ember", "batch", "create", str(batch_file), "--wait"],
                            env=cli_env(server.env), capture_output=True, text=True, timeout=240,
                            stdin=subprocess.DEVNULL)
    return {"result": result, "id": result.stdout.splitlines()[0] if result.stdout else ""}


def _files(server) -> set[str]:
    return {f["id"] for f in httpx.get(server.url("/v1/files"), params={"limit": 10000}, timeout=10).json()["data"]}


def test_create_wait_prints_the_id_plain_progress_and_the_outcome(finished: dict[str, Any]) -> None:
    result = finished["result"]
    assert result.returncode == 0, result.stderr
    first, *progress, last = result.stdout.splitlines()
    assert re.fullmatch(r"batch_[0-9a-f]+", first)
    assert progress and all(re.fullmatch(r"(validating|in_progress|finalizing|completed) \d+/\d+ done \(\d+ failed\)", p)
                            for p in progress), progress
    assert progress[-1] == "completed 3/3 done (1 failed)"
    assert last == (f"batch {first} completed: 2 completed, 1 failed of 3; "
                    f"`ember batch download {first} --errors` for the failures")
    assert result.stderr == ""


def test_list_and_show(ember: Ember, server, finished: dict[str, Any]) -> None:
    listed = ember("batch", "list", env=server.env)
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.split("\n")[0].split() == ["ID", "STATUS", "ENDPOINT", "DONE/FAILED/TOTAL", "CREATED"]
    row = next(line for line in listed.stdout.splitlines() if line.startswith(finished["id"]))
    assert row.split()[1:4] == ["completed", CHAT, "2/1/3"]
    shown = ember("batch", "show", finished["id"], env=server.env)
    assert shown.returncode == 0, shown.stderr
    assert re.search(r"^status +completed$", shown.stdout, re.MULTILINE)
    assert re.search(r"^requests +2 completed, 1 failed, 3 total$", shown.stdout, re.MULTILINE)
    assert re.search(r"^output file +file-", shown.stdout, re.MULTILINE)
    assert re.search(r"^completed +\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC$", shown.stdout, re.MULTILINE)


def test_download_output_and_errors(ember: Ember, server, finished: dict[str, Any], tmp_path: Path) -> None:
    out = ember("batch", "download", finished["id"], env=server.env)
    assert out.returncode == 0, out.stderr
    lines = [json.loads(line) for line in out.stdout.splitlines()]
    assert [line["custom_id"] for line in lines] == ["a", "b"]
    assert all(line["response"]["status_code"] == 200 for line in lines)
    target = tmp_path / "errors.jsonl"
    saved = ember("batch", "download", finished["id"], "--errors", "-o", str(target), env=server.env)
    assert saved.returncode == 0, saved.stderr
    assert saved.stderr.startswith("wrote ") and str(target) in saved.stderr
    failed = [json.loads(line) for line in target.read_text().splitlines()]
    assert [line["custom_id"] for line in failed] == ["c"]
    assert failed[0]["response"]["status_code"] == 404
    assert [p.name for p in tmp_path.iterdir()] == ["errors.jsonl"]  # no partial file left


def test_cancel(ember: Ember, server, tmp_path: Path, finished: dict[str, Any]) -> None:
    path = tmp_path / "long.jsonl"
    path.write_text("\n".join(_line(f"l{i}", max_tokens=16) for i in range(8)) + "\n")
    created = ember("batch", "create", str(path), env=server.env)
    assert created.returncode == 0, created.stderr
    batch_id = created.stdout.strip()
    cancelled = ember("batch", "cancel", batch_id, env=server.env)
    assert cancelled.returncode == 0, cancelled.stderr
    assert re.fullmatch(rf"batch {batch_id} (cancelling|cancelled)\n", cancelled.stdout)
    deadline = time.monotonic() + 120
    while (batch := httpx.get(server.url(f"/v1/batches/{batch_id}"), timeout=10).json())["status"] != "cancelled":
        assert time.monotonic() < deadline, batch
        time.sleep(0.2)
    assert batch["request_counts"]["completed"] < 8
    waited = ember("batch", "show", batch_id, env=server.env)
    assert re.search(r"^status +cancelled$", waited.stdout, re.MULTILINE)
    assert_one_line_error(ember("batch", "cancel", finished["id"], env=server.env), contains="'completed'")


def test_bad_input_is_one_line_and_leaves_no_upload(ember: Ember, server, batch_file: Path, tmp_path: Path) -> None:
    before = _files(server)
    assert_one_line_error(ember("batch", "create", str(batch_file), "--endpoint", "/v1/nope", env=server.env),
                          contains="invalid endpoint '/v1/nope'")
    assert_one_line_error(ember("batch", "schedule", str(batch_file), "--cron", "0 2 * * * *", env=server.env),
                          contains="has 6 fields")
    assert_one_line_error(ember("batch", "schedule", str(batch_file), "--cron", "0 2 * * *", "--endpoint", "/v1/x",
                                env=server.env), contains="invalid endpoint")
    assert _files(server) == before
    assert_one_line_error(ember("batch", "create", str(tmp_path / "missing.jsonl"), env=server.env),
                          contains="no such file")
    assert_one_line_error(ember("batch", "show", "batch_nope", env=server.env), contains="no batch with id")
    assert_one_line_error(ember("batch", "unschedule", "bsched_nope", env=server.env), contains="no batch schedule")


def test_wait_on_a_batch_that_fails_validation_is_one_error_line(ember: Ember, server, tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(_line("a") + "\n{not json\n" + _line("a") + "\n")
    result = ember("batch", "create", str(path), "--wait", env=server.env)
    assert_one_line_error(result, contains="failed: line 2: ")
    assert "(and 1 more: ember batch show batch_" in result.stderr  # the duplicate custom_id on line 3
    first, *progress = result.stdout.splitlines()
    assert first.startswith("batch_") and progress[-1] == "failed 0/0 done (0 failed)"


def test_no_server_is_one_line(ember: Ember, dead_host: str) -> None:
    assert_one_line_error(ember("batch", "list", env={"EMBER_HOST": dead_host}), contains="cannot reach ember")


def test_schedule_list_and_unschedule(ember: Ember, server, batch_file: Path) -> None:
    made = ember("batch", "schedule", str(batch_file), "--cron", "0 2 * * *", env=server.env)
    assert made.returncode == 0, made.stderr
    schedule_id = made.stdout.strip()
    assert schedule_id.startswith("bsched_")
    assert re.fullmatch(r"next run \d{4}-\d\d-\d\d 02:00:00 UTC\n", made.stderr)
    listed = ember("batch", "schedules", env=server.env)
    assert listed.returncode == 0, listed.stderr
    row = next(line for line in listed.stdout.splitlines() if line.startswith(schedule_id))
    assert "0 2 * * *" in row and CHAT in row
    removed = ember("batch", "unschedule", schedule_id, env=server.env)
    assert removed.stdout == f"removed schedule {schedule_id}\n"
    assert schedule_id not in ember("batch", "schedules", env=server.env).stdout


def test_metrics_after_a_batch(server, finished: dict[str, Any]) -> None:
    text = httpx.get(server.url("/metrics"), timeout=10).text
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(text) for s in family.samples}
    assert samples[("ember_batches", (("status", "completed"),))] >= 1
    assert samples[("ember_batch_lines_total", (("outcome", "completed"),))] >= 2
    assert samples[("ember_batch_lines_total", (("outcome", "failed"),))] >= 1
    assert ("ember_batch_lines_waiting", ()) in samples
    assert {status for (name, labels) in samples if name == "ember_batches" for _, status in labels} >= {
        "validating", "in_progress", "completed", "failed", "cancelled", "expired"}


def test_wait_on_a_terminal_draws_a_bar(server, tmp_path: Path) -> None:
    path = tmp_path / "one.jsonl"
    path.write_text(_line("only") + "\n")
    env = {**cli_env(server.env), "COLUMNS": "100", "TERM": "xterm"}
    env.pop("NO_COLOR", None)
    leader, follower = pty.openpty()
    process = subprocess.Popen([sys.executable, "-m", "ember", "batch", "create", str(path), "--wait"], env=env,
                               stdin=subprocess.DEVNULL, stdout=follower, stderr=follower)
    os.close(follower)
    seen = b""
    try:
        while True:
            try:
                chunk = os.read(leader, 4096)
            except OSError:  # the child closed its end
                break
            if not chunk:
                break
            seen += chunk
    finally:
        os.close(leader)
        process.wait(timeout=120)
    text = seen.decode(errors="replace")
    assert process.returncode == 0, text
    assert "━" in text and "1/1" in text and "0 failed" in text  # rich's bar, done/total, failures
    assert "completed: 1 completed, 0 failed of 1" in text
