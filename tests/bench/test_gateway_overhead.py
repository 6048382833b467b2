"""bench/gateway_overhead.py end to end with tiny numbers: the fake upstream, ember in front of it.

LiteLLM is left out (--skip-litellm): it lives in a venv of its own that CI does not build.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "bench" / "gateway_overhead.py"


@pytest.mark.slow
def test_gateway_overhead_smoke(tmp_path: Path) -> None:
    out = tmp_path / "overhead.json"
    env = {**os.environ, "NO_COLOR": "1"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT / "src"), env.get("PYTHONPATH", "")]))
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--skip-litellm", "--requests", "5", "--warmup", "2",
         "--duration", "1", "--concurrency", "4", "--stream-tokens", "4", "--json", str(out)],
        env=env, capture_output=True, text=True, timeout=180, stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stdout + result.stderr
    document: dict[str, Any] = json.loads(out.read_text())
    assert document["schema"] == "ember-gateway-overhead/1"
    assert set(document["targets"]) == {"direct", "ember"}
    assert any("LiteLLM left out" in note for note in document["notes"])
    for kind in ("json", "stream"):
        section = document["latency"][kind]
        for name in ("direct", "ember"):
            figures = section[name]
            assert figures["n"] == 5 and figures["errors"] == 0
            assert 0 < figures["p50_ms"] <= figures["p95_ms"]
            assert "added_p50_ms" in figures and "paired_added_p50_ms" in figures
        assert section["direct"]["added_p50_ms"] == 0
    for name in ("direct", "ember"):
        figures = document["throughput"][name]
        assert figures["errors"] == 0 and figures["completed"] > 0
        assert figures["tokens"] == 4 * figures["completed"]
        assert figures["requests_per_s"] > 0 and figures["tokens_per_s"] > 0
    # The markdown table went to stdout.
    assert "| upstream direct | ember |" in result.stdout
    assert "added p50 vs direct" in result.stdout
