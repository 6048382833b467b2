"""One row per request in SQLite: who, which route, provider and model, tokens, cost, timings.

Rows are written in batches by a background thread (BatchWriter), so the request path
never waits on the disk; `flush()` makes everything pending visible (the totals call it).
"""

from __future__ import annotations

import sqlite3
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, get_args

from ember.background import BatchWriter

GroupBy = Literal["day", "model", "route", "key", "provider"]
GROUPS: tuple[GroupBy, ...] = get_args(GroupBy)
_COLUMNS = {
    "day": "date(ts, 'unixepoch')",
    "model": "model",
    "route": "coalesce(route, '')",
    "key": "coalesce(key, '')",
    "provider": "provider",
}


@dataclass
class UsageRecord:
    """What one request used. Observers (guard, audit, metrics) see every one of these."""

    ts: float
    endpoint: str
    protocol: str
    model: str  # the name the client asked for
    provider: str = "local"
    upstream_model: str = ""  # the model the provider served
    route: str | None = None
    key: str | None = None
    tokens_in: int = 0
    tokens_out: int = 0
    cost: float = 0.0  # USD, from the provider's configured prices
    ttft_ms: float | None = None
    latency_ms: float = 0.0
    status: int = 200
    error: str | None = None
    attempts: int = 1
    cache: str | None = None
    # Not stored here: the request itself, for observers that may keep its text (audit).
    request: Any = field(default=None, repr=False)


_SCHEMA = """
CREATE TABLE IF NOT EXISTS usage (
    id INTEGER PRIMARY KEY,
    ts REAL NOT NULL,
    endpoint TEXT NOT NULL,
    protocol TEXT NOT NULL,
    key TEXT,
    route TEXT,
    provider TEXT NOT NULL,
    model TEXT NOT NULL,
    upstream_model TEXT NOT NULL,
    tokens_in INTEGER NOT NULL,
    tokens_out INTEGER NOT NULL,
    cost REAL NOT NULL,
    ttft_ms REAL,
    latency_ms REAL NOT NULL,
    status INTEGER NOT NULL,
    error TEXT,
    attempts INTEGER NOT NULL,
    cache TEXT
);
CREATE INDEX IF NOT EXISTS usage_ts ON usage (ts);
"""


def connect(path: Path) -> sqlite3.Connection:
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(path, check_same_thread=False, timeout=30)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    db.executescript(_SCHEMA)
    return db


class UsageLog:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._db = connect(path)
        self._lock = threading.Lock()
        self._writer: BatchWriter[UsageRecord] = BatchWriter("usage", self._insert)

    def add(self, record: UsageRecord) -> None:
        self._writer.put(record)

    def _insert(self, rows: list[UsageRecord]) -> None:
        with self._lock, self._db:
            self._db.executemany(
                "INSERT INTO usage (ts, endpoint, protocol, key, route, provider, model, upstream_model,"
                " tokens_in, tokens_out, cost, ttft_ms, latency_ms, status, error, attempts, cache)"
                " VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                [
                    (
                        r.ts,
                        r.endpoint,
                        r.protocol,
                        r.key,
                        r.route,
                        r.provider,
                        r.model,
                        r.upstream_model,
                        r.tokens_in,
                        r.tokens_out,
                        r.cost,
                        r.ttft_ms,
                        r.latency_ms,
                        r.status,
                        r.error,
                        r.attempts,
                        r.cache,
                    )
                    for r in rows
                ],
            )

    def flush(self) -> None:
        self._writer.flush()

    def totals(
        self, by: GroupBy = "day", since: float | None = None, until: float | None = None
    ) -> list[dict[str, Any]]:
        """Requests, tokens and cost grouped by one column, newest day / largest cost first."""
        self.flush()
        column = _COLUMNS[by]
        where, args = [], []
        if since is not None:
            where.append("ts >= ?")
            args.append(since)
        if until is not None:
            where.append("ts < ?")
            args.append(until)
        sql = (
            f"SELECT {column} AS k, count(*), sum(tokens_in), sum(tokens_out), sum(cost),"
            f" sum(status >= 400), avg(latency_ms), avg(ttft_ms) FROM usage"
            f"{' WHERE ' + ' AND '.join(where) if where else ''} GROUP BY k"
            f" ORDER BY {'k DESC' if by == 'day' else 'sum(cost) DESC, count(*) DESC'}"
        )
        with self._lock:
            rows = self._db.execute(sql, args).fetchall()
        return [
            {
                by: k,
                "requests": n,
                "tokens_in": tin or 0,
                "tokens_out": tout or 0,
                "cost": round(cost or 0.0, 10),
                "errors": errors or 0,
                "avg_latency_ms": round(lat or 0.0, 2),
                "avg_ttft_ms": round(ttft, 2) if ttft else None,
            }
            for k, n, tin, tout, cost, errors, lat, ttft in rows
        ]

    def close(self) -> None:
        self._writer.close()
        with self._lock:
            self._db.close()


def summary(by: GroupBy, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The answer of /admin/usage and `ember usage --json`: the rows of `totals` and their sum."""
    total = {key: sum(r[key] for r in rows) for key in ("requests", "tokens_in", "tokens_out", "cost", "errors")}
    total["cost"] = round(total["cost"], 10)  # as each row's: float sums must not show 0.7000000000000001
    return {"by": by, "rows": rows, "total": total}


def day_start(text: str) -> float:
    """'2026-11-24' -> its midnight UTC as a Unix time."""
    return datetime.strptime(text, "%Y-%m-%d").replace(tzinfo=UTC).timestamp()
