"""Budget periods (UTC day, UTC month, all time) and what a key already spent in one.

Spend is counted in memory (or Redis) as usage records arrive; at the first request of a key in a
period the count starts from what the usage log (state_dir/usage.db) already holds, so a restart
does not hand a key a fresh budget. That read happens once per key and period, not per request.
"""

from __future__ import annotations

import logging
import sqlite3
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from ember.guard.keys import KeyRecord, Period

log = logging.getLogger("ember.guard")


@dataclass(frozen=True)
class PeriodWindow:
    id: str  # "day:2026-05-01", "month:2026-05", "total"
    start: float
    end: float | None  # None: never resets


def window(period: Period, now: float) -> PeriodWindow:
    moment = datetime.fromtimestamp(now, UTC)
    if period == "day":
        start = moment.replace(hour=0, minute=0, second=0, microsecond=0)
        return PeriodWindow(f"day:{start:%Y-%m-%d}", start.timestamp(), start.timestamp() + 86400)
    if period == "month":
        start = moment.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
        following = (
            start.replace(year=start.year + 1, month=1) if start.month == 12 else start.replace(month=start.month + 1)
        )
        return PeriodWindow(f"month:{start:%Y-%m}", start.timestamp(), following.timestamp())
    return PeriodWindow("total", 0.0, None)


@dataclass
class Spend:
    tokens: int = 0
    cost: float = 0.0


@dataclass(frozen=True)
class Verdict:
    ok: bool
    message: str = ""
    retry_after: float | None = None


def has_budget(key: KeyRecord) -> bool:
    return key.budget_usd is not None or key.budget_tokens is not None


def judge(key: KeyRecord, spend: Spend, win: PeriodWindow, now: float) -> Verdict:
    """Whether the key may start another request with this much already spent."""
    per = "in total" if win.end is None else f"per {key.budget_period}"
    retry = None if win.end is None else max(1.0, win.end - now)
    if key.budget_tokens is not None and spend.tokens >= key.budget_tokens:
        return Verdict(False, f"this key's budget of {key.budget_tokens} tokens {per} is spent", retry)
    if key.budget_usd is not None and spend.cost >= key.budget_usd:
        return Verdict(False, f"this key's budget of ${key.budget_usd:g} {per} is spent", retry)
    return Verdict(True)


def spent_in_log(usage_db: Path, key_name: str, since: float) -> Spend:
    """What the usage log holds for a key since a moment; zero when there is no log yet."""
    if not usage_db.exists():
        return Spend()
    try:
        db = sqlite3.connect(f"file:{usage_db}?mode=ro", uri=True, timeout=2)
        try:
            row = db.execute(
                "SELECT sum(tokens_in + tokens_out), sum(cost) FROM usage WHERE key = ? AND ts >= ?", (key_name, since)
            ).fetchone()
        finally:
            db.close()
    except sqlite3.Error as exc:
        # The budget still holds for what this process sees; say so rather than fail requests.
        log.warning("could not read past usage of key '%s' from %s: %s", key_name, usage_db, exc)
        return Spend()
    return Spend(int(row[0] or 0), float(row[1] or 0.0))
