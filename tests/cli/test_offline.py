"""The CLI with no server: one-line errors, the local store, and `run`'s private server."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from ember.gateway.usage import UsageLog

from .helpers import FAST, MODEL, Ember, assert_one_line_error, doctor_checks, greedy_chat


@pytest.mark.parametrize(
    "args",
    [["list"], ["ps"], ["show", MODEL], ["rm", "x"], ["cp", "a", "b"], ["stop", MODEL]],
    ids=lambda args: args[0],
)
def test_commands_say_the_server_is_unreachable(ember: Ember, dead_host: str, tmp_path: Path, args: list[str]) -> None:
    result = ember(*args, env={"EMBER_HOST": dead_host, "EMBER_HOME": str(tmp_path)})
    assert_one_line_error(result, contains=f"cannot reach ember at http://{dead_host}")


def test_version_without_server(ember: Ember, dead_host: str, tmp_path: Path) -> None:
    result = ember("version", env={"EMBER_HOST": dead_host, "EMBER_HOME": str(tmp_path)})
    assert result.returncode == 0
    assert result.stdout.startswith("ember version ")
    assert "Traceback" not in result.stderr


def test_run_without_server_answers_in_process(
    ember: Ember, dead_host: str, fresh_home: Path, model_home: Path, server_factory, tmp_path: Path
) -> None:
    # The same model's answer from a real server that, like the CLI's, has nothing cached yet: a
    # prompt read on from a cached prefix can differ in the last bits of its logits, enough to
    # flip a near-tie of greedy decoding (the session's server may hold this very prompt).
    other = tmp_path / "other-home"
    shutil.copytree(model_home, other, ignore=shutil.ignore_patterns("state"))
    expected = greedy_chat(server_factory(other).base_url, "Say hello.")
    result = ember("run", MODEL, "Say hello.", *FAST, env={"EMBER_HOST": dead_host, "EMBER_HOME": str(fresh_home)})
    assert result.returncode == 0, result.stderr
    assert result.stdout == expected + "\n"
    assert "Traceback" not in result.stderr
    # Nothing listens at dead_host: the server inside the CLI answered, and logged the request
    # in this home's usage (a private home: nobody else writes there).
    usage = UsageLog(fresh_home / "state" / "usage.db")
    try:
        rows = usage.totals("model")
    finally:
        usage.close()
    assert [(r["model"], r["requests"], r["tokens_out"]) for r in rows] == [(MODEL, 1, 16)]


def test_doctor_without_server_reports_problems(ember: Ember, dead_host: str, tmp_path: Path) -> None:
    result = ember("doctor", env={"EMBER_HOST": dead_host, "EMBER_HOME": str(tmp_path / "home")})
    assert result.returncode == 1
    checks = doctor_checks(result.stdout)
    assert len(checks) == 7
    assert checks["server"].startswith("problem") and "ember serve" in checks["server"]
    assert checks["default"].startswith("problem") and f"ember pull {MODEL}" in checks["default"]


def test_import_of_a_text_file_is_one_line(ember: Ember, tmp_path: Path) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("not a model\n" * 100)
    result = ember("import", str(text), "--name", "notes", env={"EMBER_HOME": str(tmp_path / "home")})
    assert_one_line_error(result)


def test_import_of_a_missing_file_is_one_line(ember: Ember, tmp_path: Path) -> None:
    result = ember("import", str(tmp_path / "nope.gguf"), "--name", "nope", env={"EMBER_HOME": str(tmp_path / "home")})
    assert_one_line_error(result, contains="no such file")


def test_import_of_a_gguf(ember: Ember, tmp_path: Path, model_path: Path) -> None:
    result = ember("import", str(model_path), "--name", "mine:q4", env={"EMBER_HOME": str(tmp_path / "home")})
    assert result.returncode == 0, result.stderr
    assert "mine:q4" in result.stdout


def test_pull_without_server_uses_the_store(ember: Ember, dead_host: str, tmp_path: Path) -> None:
    result = ember("pull", "no-such-model:1b", env={"EMBER_HOST": dead_host, "EMBER_HOME": str(tmp_path)})
    assert "pulling into" in result.stderr
    assert_one_line_error(result, ignore="pulling into")


def test_bad_setting_is_one_line(ember: Ember, tmp_path: Path) -> None:
    result = ember("list", env={"EMBER_HOME": str(tmp_path), "EMBER_KEEP_ALIVE": "soon"})
    assert_one_line_error(result, contains="EMBER_KEEP_ALIVE")


def test_pull_without_server_fills_the_local_store(ember: Ember, dead_host: str, tmp_path: Path) -> None:
    home = tmp_path / "home"
    result = ember("pull", MODEL, env={"EMBER_HOST": dead_host, "EMBER_HOME": str(home)}, timeout=300)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "pulling manifest" and lines[-1] == "success"
    # Piped output is thinned: no flood of progress lines however many chunks arrive.
    assert len(lines) <= 40, lines
    checks = doctor_checks(ember("doctor", env={"EMBER_HOST": dead_host, "EMBER_HOME": str(home)}).stdout)
    assert checks["default"].startswith("ok")
