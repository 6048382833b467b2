"""`ember bench` as a user runs it, against the real server with the real model."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

SRC = Path(__file__).resolve().parents[2] / "src"
# The conftest's server fixture (a ServerHandle); not imported, conftest modules are pytest's.
ServerHandle = Any


def free_port() -> int:
    """A loopback port nothing listens on (bound, read, released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def ember_bench(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "NO_COLOR": "1"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SRC), env.get("PYTHONPATH", "")]))
    return subprocess.run([sys.executable, "-m", "ember", "bench", *args], env=env, capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def test_bench_json_against_the_server(server: ServerHandle) -> None:
    result = ember_bench("--url", server.url("/v1"), "--concurrency", "1,2", "--requests", "2",
                         "--max-tokens", "8", "--memory-pid", str(server.process.pid), "--label", "ember",
                         "--seed", "fixed", "--json")
    assert result.returncode == 0, result.stderr
    document: dict[str, Any] = json.loads(result.stdout)
    assert document["ok"] and document["errors"] == 0 and document["label"] == "ember"
    assert document["settings"]["seed"] == "fixed"
    assert [level["concurrency"] for level in document["levels"]] == [1, 2]
    for level in document["levels"]:
        assert level["requests"] == 2 and level["errors"] == 0
        assert 0 < level["ttft_p50_s"] <= level["ttft_p95_s"] < 30
        assert 0 < level["completion_tokens"] <= 2 * 8
        assert level["aggregate_tps"] > 0 and level["stream_tps_median"] > 0
        assert level["prompt_tokens_mean"] > 30  # ~64 asked for, plus the chat template
        assert sum(level["finish_reasons"].values()) == 2
        # Streams that ended by length got every token asked for.
        assert level["full_length"] == level["finish_reasons"].get("length", 0)
        assert level["short_length"] == 0
    # The server and its worker processes hold the model: tens of MiB at least.
    assert document["memory"]["peak_rss_mib"] > 50
    # Progress goes to stderr, so stdout is the JSON document alone.
    assert "concurrency 2" in result.stderr


def test_shared_prefix_times_a_cold_request_and_prints_a_table(server: ServerHandle) -> None:
    result = ember_bench("--url", server.url("/v1"), "--concurrency", "1", "--requests", "1", "--max-tokens", "4",
                         "--prompt-tokens", "16", "--shared-prefix", "64")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[1].split()[:3] == ["CONC", "REQS", "ERRORS"]
    assert lines[2].split()[:3] == ["1", "1", "0"]
    prefix_line = next(line for line in lines if line.startswith("shared prefix ~64 tokens"))
    assert "cold TTFT" in prefix_line and "error" not in prefix_line


def test_bench_against_a_dead_port_fails_in_one_line() -> None:
    url = f"http://127.0.0.1:{free_port()}/v1"
    result = ember_bench("--url", url, "--concurrency", "1", "--requests", "1", "--json")
    assert result.returncode != 0
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"Error: cannot reach {url}"), result.stderr


def test_every_failed_request_is_reported_and_fails_the_run() -> None:
    # Without the warm-up nothing stops the run early: each request fails and is counted.
    result = ember_bench("--url", f"http://127.0.0.1:{free_port()}/v1", "--concurrency", "1,2",
                         "--requests", "2", "--no-warmup", "--json")
    assert result.returncode == 1
    document = json.loads(result.stdout)
    assert document["errors"] == 4 and not document["ok"]
    assert all(level["error_kinds"] == {"connect failed": 2} for level in document["levels"])
    assert result.stderr.strip().splitlines()[-1] == "Error: 4 of 4 requests failed (connect failed)"


def test_unknown_model_is_one_line(server: ServerHandle) -> None:
    result = ember_bench("--url", server.url("/v1"), "--model", "no-such-model:1b", "--concurrency", "1")
    assert result.returncode != 0
    assert result.stderr.strip().splitlines()[-1].startswith("Error: warm-up request")
    assert "404" in result.stderr
