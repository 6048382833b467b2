"""A wrong command line is one `Error: ...` line on stderr and exit 2 on every command, never
click's usage box; help still prints in full."""

from __future__ import annotations

from pathlib import Path

import pytest

from .helpers import Ember, assert_one_line_error


@pytest.mark.parametrize(("args", "says"), [
    (["usage", "--by", "foo"], "Invalid value for '--by': 'foo' is not day, model"),
    (["list", "--bogus"], "No such option: --bogus"),
    (["show"], "Missing argument"),
    (["keys", "create", "--name", "k", "--rpm", "many"], "Invalid value for '--rpm'"),
    (["frobnicate"], "No such command 'frobnicate'"),
], ids=["bad-value", "unknown-option", "missing-argument", "subcommand-bad-int", "unknown-command"])
def test_usage_errors_are_one_line(ember: Ember, tmp_path: Path, dead_host: str, args: list[str], says: str) -> None:
    result = ember(*args, env={"EMBER_HOME": str(tmp_path), "EMBER_HOST": dead_host}, timeout=60)
    assert result.returncode == 2, result.stderr
    assert result.stdout == ""
    assert_one_line_error(result, contains=says)
    assert "--help" in result.stderr  # where to read the usage


def test_help_and_exit_codes_are_kept(ember: Ember, tmp_path: Path, dead_host: str) -> None:
    env = {"EMBER_HOME": str(tmp_path), "EMBER_HOST": dead_host}
    shown = ember("usage", "--help", env=env, timeout=60)
    assert shown.returncode == 0 and "--by" in shown.stdout and shown.stderr == ""
    group = ember("keys", env=env, timeout=60)  # a group with nothing to do shows its help
    assert "create" in group.stdout and "Error" not in group.stderr
    doctor = ember("doctor", env=env, timeout=60)  # a command's own exit status still comes through
    assert doctor.returncode == 1 and "problem" in doctor.stdout
