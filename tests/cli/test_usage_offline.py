"""`ember usage` with no server: it reads EMBER_HOME/state/usage.db, filters by day, prints JSON,
and totals the same rows the way the server's /admin/usage does."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from ember.gateway.usage import UsageLog, UsageRecord

from .helpers import Ember


def ts(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


# Three days; the last seconds of 2026-01-02 and the first of 2026-01-03 test the day edges.
ROWS = [
    UsageRecord(ts=ts("2026-01-01T08:00:00"), endpoint="/v1/chat/completions", protocol="openai",
                model="alpha", tokens_in=10, tokens_out=5, cost=0.1, latency_ms=100.0),
    UsageRecord(ts=ts("2026-01-01T20:00:00"), endpoint="/api/chat", protocol="ollama",
                model="beta", tokens_in=1, tokens_out=2, cost=0.0, latency_ms=300.0),
    UsageRecord(ts=ts("2026-01-02T00:00:00"), endpoint="/api/generate", protocol="ollama",
                model="alpha", tokens_in=3, tokens_out=4, cost=0.2, latency_ms=50.0),
    UsageRecord(ts=ts("2026-01-02T23:59:59"), endpoint="/v1/embeddings", protocol="openai",
                model="beta", tokens_in=7, cost=0.0, latency_ms=10.0, status=503, error="busy"),
    UsageRecord(ts=ts("2026-01-03T00:00:00"), endpoint="/v1/chat/completions", protocol="openai",
                model="alpha", tokens_in=100, tokens_out=50, cost=0.4, latency_ms=70.0),
]


@pytest.fixture
def usage_home(tmp_path: Path) -> Path:
    home = tmp_path / "home"
    log = UsageLog(home / "state" / "usage.db")
    for row in ROWS:
        log.add(row)
    log.close()  # writes what is pending
    return home


def usage(ember: Ember, home: Path, host: str, *args: str) -> dict:
    result = ember("usage", *args, "--json", env={"EMBER_HOME": str(home), "EMBER_HOST": host})
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    return json.loads(result.stdout)


def by_day(result: dict) -> dict[str, tuple[int, int, int, int]]:
    return {r["day"]: (r["requests"], r["tokens_in"], r["tokens_out"], r["errors"]) for r in result["rows"]}


def test_all_days_newest_first(ember: Ember, usage_home: Path, dead_host: str) -> None:
    result = usage(ember, usage_home, dead_host)
    assert result["by"] == "day"
    assert [r["day"] for r in result["rows"]] == ["2026-01-03", "2026-01-02", "2026-01-01"]
    assert by_day(result) == {"2026-01-01": (2, 11, 7, 0), "2026-01-02": (2, 10, 4, 1),
                              "2026-01-03": (1, 100, 50, 0)}
    total = result["total"]
    assert (total["requests"], total["tokens_in"], total["tokens_out"], total["errors"]) == (5, 121, 61, 1)
    assert total["cost"] == pytest.approx(0.7)
    assert result["rows"][2]["avg_latency_ms"] == pytest.approx(200.0)


@pytest.mark.parametrize(("args", "days"), [
    (["--since", "2026-01-02", "--until", "2026-01-02"], ["2026-01-02"]),  # both edges of one day
    (["--since", "2026-01-02"], ["2026-01-03", "2026-01-02"]),
    (["--until", "2026-01-01"], ["2026-01-01"]),
    (["--since", "2026-01-03", "--until", "2026-01-03"], ["2026-01-03"]),
    (["--since", "2026-01-04"], []),
])
def test_since_and_until_filter_by_day(ember: Ember, usage_home: Path, dead_host: str,
                                       args: list[str], days: list[str]) -> None:
    result = usage(ember, usage_home, dead_host, *args)
    assert [r["day"] for r in result["rows"]] == days
    assert result["total"]["requests"] == sum(r["requests"] for r in result["rows"])


def test_by_model_within_days(ember: Ember, usage_home: Path, dead_host: str) -> None:
    result = usage(ember, usage_home, dead_host, "--by", "model", "--since", "2026-01-02")
    rows = {r["model"]: (r["requests"], r["tokens_in"], r["errors"]) for r in result["rows"]}
    assert rows == {"alpha": (2, 103, 0), "beta": (1, 7, 1)}
    assert [r["model"] for r in result["rows"]] == ["alpha", "beta"]  # largest cost first
    assert result["rows"][0]["cost"] == pytest.approx(0.6)


def test_table_without_json(ember: Ember, usage_home: Path, dead_host: str) -> None:
    result = ember("usage", "--since", "2026-01-02",
                   env={"EMBER_HOME": str(usage_home), "EMBER_HOST": dead_host, "COLUMNS": "200"})
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert any(line.startswith("DAY") and "TOKENS IN" in line for line in lines), result.stdout
    assert any(line.startswith("2026-01-03") and " 100 " in line for line in lines), result.stdout
    total = next(line for line in lines if line.startswith("TOTAL"))
    assert total.split()[1:4] == ["3", "110", "54"], total
    assert "2026-01-01" not in result.stdout


def test_no_usage_yet(ember: Ember, tmp_path: Path, dead_host: str) -> None:
    result = usage(ember, tmp_path / "empty", dead_host)
    assert result["rows"] == [] and result["total"]["requests"] == 0


@pytest.mark.slow
def test_server_and_disk_agree(ember: Ember, usage_home: Path, dead_host: str, server_factory) -> None:
    """The same rows totalled by a running server and by the CLI alone read the same."""
    offline = [usage(ember, usage_home, dead_host, *args)
               for args in ([], ["--by", "model", "--until", "2026-01-02"])]
    server = server_factory(usage_home)
    online = [usage(ember, usage_home, server.host, *args)
              for args in ([], ["--by", "model", "--until", "2026-01-02"])]
    # The CLI did ask the server: its /admin/usage says the same.
    assert httpx.get(server.url("/admin/usage"), timeout=10).json() == online[0]
    assert online == offline
