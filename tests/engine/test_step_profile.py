"""At debug level each model worker logs every decode step: where the step's time went."""

from __future__ import annotations

import re
from pathlib import Path

import httpx

STEP = re.compile(
    r"step (\d+): decode ([0-9.]+) ms, sample ([0-9.]+) ms, python ([0-9.]+) ms, "
    r"(\d+) tokens \((\d+) prompt\), (\d+) generating, (\d+) waiting"
)


def test_debug_level_logs_each_decode_step(fresh_home: Path, server_factory, server) -> None:
    debug = server_factory(fresh_home, EMBER_LOG_LEVEL="debug")
    body = {"model": "smollm2:135m", "prompt": "Hello", "max_tokens": 5, "temperature": 0}
    usage = httpx.post(debug.url("/v1/completions"), json=body, timeout=120).json()["usage"]
    steps = [m.groups() for m in STEP.finditer(debug.log())]
    assert len(steps) == 5  # the prompt's step samples the first token; four more decode one each
    first = steps[0]
    assert int(first[4]) == int(first[5]) == usage["prompt_tokens"] and first[6] == "0"  # the prompt, alone
    assert all((s[4], s[5], s[6]) == ("1", "0", "1") for s in steps[1:])  # then one token of one sequence
    assert all(float(s[1]) > 0 for s in steps)
    # Off by default: the session's server (info level) logs no steps.
    httpx.post(server.url("/v1/completions"), json=body, timeout=120).raise_for_status()
    assert not STEP.search(server.log())
