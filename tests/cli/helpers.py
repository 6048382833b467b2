"""Constants and assertions shared by the CLI tests."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable

import httpx
from prometheus_client.parser import text_string_to_metric_families

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


def greedy_chat(base_url: str, prompt: str) -> str:
    """What the model answers the prompt over the HTTP API with FAST's options (greedy: fixed)."""
    reply = httpx.post(f"{base_url}/api/chat", timeout=120, json={
        "model": MODEL, "messages": [{"role": "user", "content": prompt}], "stream": False,
        "options": {"num_predict": 16, "temperature": 0}})
    reply.raise_for_status()
    return reply.json()["message"]["content"]


def chats_served(base_url: str) -> float:
    """How many /api/chat requests the server at base_url has finished (its /metrics)."""
    text = httpx.get(f"{base_url}/metrics", timeout=10).text
    return sum(sample.value for family in text_string_to_metric_families(text)
               for sample in family.samples
               if sample.name == "ember_requests_total" and sample.labels.get("endpoint") == "/api/chat")


def wait_for_chats(base_url: str, count: float, within: float = 10.0) -> float:
    """chats_served once it reaches count (a request is counted just after its last byte)."""
    deadline = time.monotonic() + within
    while (served := chats_served(base_url)) < count and time.monotonic() < deadline:
        time.sleep(0.05)
    return served
