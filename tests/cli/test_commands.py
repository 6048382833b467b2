"""The CLI against a real `ember serve` with the real default model."""

from __future__ import annotations

import re
from pathlib import Path



from .helpers import (
    FAST,
    MODEL,
    Ember,
    assert_one_line_error,
    chats_served,
    doctor_checks,
    greedy_chat,
    wait_for_chats,
)


def test_list_shows_the_model(ember: Ember, server) -> None:
    result = ember("list", env=server.env)
    assert result.returncode == 0, result.stderr
    header, *rows = result.stdout.splitlines()
    assert header.split() == ["NAME", "ID", "SIZE", "MODIFIED"]
    row = next(r for r in rows if r.startswith(MODEL))
    assert re.search(r"\b[0-9a-f]{12}\b", row)
    assert re.search(r"\d+ MB", row)
    assert "ago" in row or "now" in row
    alias = ember("ls", env=server.env)
    assert [line.split()[:2] for line in alias.stdout.splitlines()] == [line.split()[:2] for line in result.stdout.splitlines()]


def test_show_prints_architecture(ember: Ember, server) -> None:
    result = ember("show", MODEL, env=server.env)
    assert result.returncode == 0, result.stderr
    assert re.search(r"architecture\s+llama", result.stdout)
    assert re.search(r"context length\s+\d+", result.stdout)
    assert "quantization" in result.stdout


def test_show_unknown_model_is_one_line(ember: Ember, server) -> None:
    assert_one_line_error(ember("show", "no-such-model:1b", env=server.env), contains="no-such-model")


def test_run_streams_an_answer(ember: Ember, server) -> None:
    expected = greedy_chat(server.base_url, "Say hello.")
    before = chats_served(server.base_url)
    result = ember("run", MODEL, "Say hello.", *FAST, env=server.env)
    assert result.returncode == 0, result.stderr
    # The model's own answer, then a newline, and nothing else on stdout.
    assert result.stdout == expected + "\n"
    # Served by the running server (one chat more there), not by an in-process one.
    assert wait_for_chats(server.base_url, before + 1) == before + 1


def test_run_reads_the_prompt_from_stdin(ember: Ember, server) -> None:
    question = "What is 2+2?\n"  # all of stdin is the prompt, newline included
    expected = greedy_chat(server.base_url, question)
    before = chats_served(server.base_url)
    result = ember("run", MODEL, *FAST, input=question, env=server.env)
    assert result.returncode == 0, result.stderr
    # Exactly the answer: an interactive session would have printed ">>> " prompts around it.
    assert result.stdout == expected + "\n"
    assert ">>>" not in result.stdout + result.stderr
    assert wait_for_chats(server.base_url, before + 1) == before + 1


def test_run_ps_stop(ember: Ember, model_home: Path, server_factory) -> None:
    # A private server: stopping models must not disturb tests sharing the session server.
    own = server_factory(model_home)
    assert ember("run", MODEL, "Hi", *FAST, "--keep-alive", "5m", env=own.env).returncode == 0

    ps = ember("ps", env=own.env)
    assert ps.returncode == 0, ps.stderr
    header, *rows = ps.stdout.splitlines()
    assert header.split()[:5] == ["NAME", "ID", "SIZE", "PROCESSOR", "UNTIL"]
    row = next(r for r in rows if r.startswith(MODEL))
    assert "100% CPU" in row
    assert "from now" in row

    stop = ember("stop", MODEL, env=own.env)
    assert stop.returncode == 0, stop.stderr
    after = ember("ps", env=own.env)
    assert after.returncode == 0
    assert MODEL not in after.stdout

    assert_one_line_error(ember("stop", MODEL, env=own.env), contains="not running")


def test_cp_then_rm(ember: Ember, server) -> None:
    copy = "cli-copy:test"
    result = ember("cp", MODEL, copy, env=server.env)
    assert result.returncode == 0, result.stderr
    assert copy in ember("list", env=server.env).stdout

    result = ember("rm", copy, env=server.env)
    assert result.returncode == 0, result.stderr
    listing = ember("list", env=server.env).stdout
    assert copy not in listing and MODEL in listing

    assert_one_line_error(ember("rm", copy, env=server.env))


def test_pull_unknown_name_is_one_line(ember: Ember, server) -> None:
    result = ember("pull", "no-such-model:1b", env=server.env)
    assert result.returncode == 1
    assert_one_line_error(result)


def test_pull_known_model_reports_success(ember: Ember, server) -> None:
    # Already in the store: the server verifies it and says so, without a second download.
    result = ember("pull", MODEL, env=server.env, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "success"


def test_version_shows_client_and_server(ember: Ember, server) -> None:
    result = ember("version", env=server.env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("ember version ")
    assert "server version" in result.stdout


def test_doctor_prints_a_line_per_check(ember: Ember, server) -> None:
    result = ember("doctor", env=server.env)
    checks = doctor_checks(result.stdout)
    assert list(checks) == ["python", "llama-cpp-python", "home", "disk", "port", "default", "server"]
    problems = [line for line in checks.values() if line.startswith("problem")]
    assert result.returncode == (1 if problems else 0)
    assert checks["port"].startswith("ok") and "ember server" in checks["port"]
    assert checks["server"].startswith("ok")
    assert checks["default"].startswith("ok")


def test_run_pulls_a_missing_model_first(ember: Ember, tmp_path: Path, server_factory) -> None:
    own = server_factory(tmp_path / "empty-home")
    result = ember("run", MODEL, "Hi", *FAST, env=own.env, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip()
    # Progress went to stderr, so stdout holds only the answer.
    assert "pulling manifest" in result.stderr and "success" in result.stderr
    assert "pulling" not in result.stdout
