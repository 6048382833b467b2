"""`ember bench` against a server that requires keys: it sends EMBER_API_KEY, as the CLI does."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from tests.cli.helpers import assert_one_line_error
from tests.guard import make_key

SRC = Path(__file__).resolve().parents[2] / "src"
TINY = ["--concurrency", "1", "--requests", "1", "--max-tokens", "4", "--prompt-tokens", "8"]


def ember_bench(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if k != "EMBER_API_KEY"}
    full.update(env, NO_COLOR="1")
    full["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SRC), full.get("PYTHONPATH", "")]))
    return subprocess.run([sys.executable, "-m", "ember", "bench", *args], env=full, capture_output=True,
                          text=True, timeout=120, stdin=subprocess.DEVNULL)


@pytest.mark.slow  # a server of its own
def test_bench_sends_ember_api_key(fresh_home: Path, server_factory) -> None:
    key = make_key(fresh_home, "bench", scopes="chat")
    srv = server_factory(fresh_home, EMBER_AUTH="required")
    # Without a key: the warm-up is refused, in one line.
    refused = ember_bench(*TINY, env={"EMBER_HOST": srv.host})
    assert_one_line_error(refused, contains="HTTP 401")
    # With EMBER_API_KEY, at the server's own address (EMBER_HOST) and at an explicit --url.
    ran = ember_bench(*TINY, "--no-warmup", "--json", env={"EMBER_HOST": srv.host, "EMBER_API_KEY": key})
    assert ran.returncode == 0, ran.stderr
    ran = ember_bench(*TINY, "--url", srv.url("/v1"), env={"EMBER_API_KEY": key})
    assert ran.returncode == 0, ran.stderr
    # --api-key wins over EMBER_API_KEY.
    wrong = ember_bench(*TINY, "--no-warmup", "--api-key", "wrong", env={"EMBER_HOST": srv.host,
                                                                         "EMBER_API_KEY": key})
    assert_one_line_error(wrong, contains="HTTP 401", ignore=" done, ")  # the progress line aside
