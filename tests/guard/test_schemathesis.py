"""Schemathesis over the running server's /openapi.json: no generated request may get a 5xx.

Runs the `st` CLI against a real server on loopback, with a bounded number of examples per
operation. Pull, delete and copy are left out: they change the store or reach the network.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

_EXCLUDED = ("/api/pull", "/api/delete", "/api/copy")


@pytest.mark.slow
def test_no_generated_request_gets_a_server_error(fresh_home: Path, server_factory, tmp_path: Path) -> None:
    handle = server_factory(fresh_home, EMBER_NUM_CTX="256", EMBER_CACHE="off")
    st = Path(sys.executable).with_name("st")
    excluded = [arg for path in _EXCLUDED for arg in ("--exclude-path", path)]
    command = [str(st), "run", handle.url("/openapi.json"), "--checks", "not_a_server_error",
               "--max-examples", "12", "--phases", "examples,coverage,fuzzing", "--workers", "1",
               "--request-timeout", "60", "--seed", "7", "--no-color", "--max-failures", "5",
               "--generation-database", "none", "--suppress-health-check", "all", *excluded]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-8000:] + result.stderr[-2000:] + handle.log()[-4000:]
