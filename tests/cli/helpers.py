"""Constants and assertions shared by the CLI tests."""

from __future__ import annotations

import subprocess
from collections.abc import Callable

MODEL = "smollm2:135m"
# Short, deterministic generations keep the suite fast.
FAST = ["--num-predict", "16", "--temperature", "0"]

Ember = Callable[..., subprocess.CompletedProcess[str]]


def assert_one_line_error(result: subprocess.CompletedProcess[str], *, contains: str = "", ignore: str | None = None) -> None:
    """Failed, with exactly one `Error: ...` line on stderr (lines containing `ignore` aside)."""
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.strip().splitlines() if not (ignore and ignore in line)]
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    assert contains in lines[0], lines[0]


def doctor_checks(stdout: str) -> dict[str, str]:
    """`ember doctor` output as {first word of the check's name: its whole line}."""
    checks = {}
    for line in stdout.splitlines():
        status, rest = line.split(None, 1)
        assert status in ("ok", "problem"), line
        if status == "problem":
            assert "fix:" in line, line
        checks[rest.split(":", 1)[0].split()[0]] = line
    return checks
