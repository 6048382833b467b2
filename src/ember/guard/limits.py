"""Per-key admission in this process: requests and tokens per minute (GCRA), concurrency, budgets.

GCRA keeps one number per limit (the "theoretical arrival time"), lets a key burst up to its
whole per-minute allowance and then refills smoothly. Admission is synchronous code with no await
inside, so on one event loop it is exact: with rpm=5, 20 simultaneous requests admit exactly 5.
Tokens are known only when a request ends; they advance the token TAT then, and admission refuses
while the key's token bucket is empty.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path

from ember.guard.budgets import Spend, has_budget, judge, spent_in_log, window
from ember.guard.keys import KeyRecord

MINUTE = 60.0


@dataclass
class Admission:
    ok: bool
    reason: str | None = None  # for telemetry: rpm, tpm, concurrency, budget
    message: str = ""
    retry_after: float | None = None
    headers: dict[str, str] = field(default_factory=dict)
    lease: str | None = None  # set when Redis holds the concurrency slot


def format_reset(seconds: float) -> str:
    """OpenAI's reset format: '20ms', '1s', '6m0s'."""
    if seconds <= 0:
        return "0s"
    if seconds < 1:
        return f"{max(1, int(seconds * 1000))}ms"
    whole = math.ceil(seconds)
    minutes, secs = divmod(whole, 60)
    return f"{minutes}m{secs}s" if minutes else f"{secs}s"


def rate_headers(key: KeyRecord, req: tuple[int, float] | None, tok: tuple[int, float] | None) -> dict[str, str]:
    """x-ratelimit-* for the limits a key has: (remaining, seconds until full) of each."""
    headers: dict[str, str] = {}
    if key.rpm is not None and req is not None:
        headers.update(
            {
                "x-ratelimit-limit-requests": str(key.rpm),
                "x-ratelimit-remaining-requests": str(req[0]),
                "x-ratelimit-reset-requests": format_reset(req[1]),
            }
        )
    if key.tpm is not None and tok is not None:
        headers.update(
            {
                "x-ratelimit-limit-tokens": str(key.tpm),
                "x-ratelimit-remaining-tokens": str(tok[0]),
                "x-ratelimit-reset-tokens": format_reset(tok[1]),
            }
        )
    return headers


def gcra_state(tat: float, now: float, limit: int) -> tuple[int, float]:
    """(units left now, seconds until the bucket is full again)."""
    backlog = max(0.0, tat - now)
    return max(0, int((MINUTE - backlog) * limit / MINUTE + 1e-9)), backlog


@dataclass
class _KeyState:
    req_tat: float = 0.0
    tok_tat: float = 0.0
    active: int = 0
    spend: dict[str, Spend] = field(default_factory=dict)  # by period id


class MemoryLimiter:
    def __init__(self, usage_db: Path | None = None) -> None:
        self.usage_db = usage_db
        self._keys: dict[str, _KeyState] = {}

    def _state(self, name: str) -> _KeyState:
        state = self._keys.get(name)
        if state is None:
            state = self._keys[name] = _KeyState()
        return state

    def spend(self, key: KeyRecord, wall: float | None = None) -> Spend:
        """What the key spent in its current period (read from the usage log on first sight)."""
        wall = time.time() if wall is None else wall
        win = window(key.budget_period, wall)
        state = self._state(key.name)
        spend = state.spend.get(win.id)
        if spend is None:
            spend = spent_in_log(self.usage_db, key.name, win.start) if self.usage_db else Spend()
            state.spend = {win.id: spend}  # older periods are over: drop them
        return spend

    def admit(self, key: KeyRecord) -> Admission:
        now, wall = time.monotonic(), time.time()
        state = self._state(key.name)
        if has_budget(key):
            verdict = judge(key, self.spend(key, wall), window(key.budget_period, wall), wall)
            if not verdict.ok:
                return Admission(False, "budget", verdict.message, verdict.retry_after)
        tok = gcra_state(state.tok_tat, now, key.tpm) if key.tpm is not None else None
        if key.tpm is not None and state.tok_tat - now >= MINUTE:
            return Admission(
                False,
                "tpm",
                f"this key's limit of {key.tpm} tokens per minute is reached",
                state.tok_tat - now - MINUTE + 0.001,
                rate_headers(key, None, tok),
            )
        if key.max_concurrent is not None and state.active >= key.max_concurrent:
            return Admission(
                False, "concurrency", f"this key's limit of {key.max_concurrent} concurrent requests is reached", 1.0
            )
        req = None
        if key.rpm is not None:
            interval = MINUTE / key.rpm
            new_tat = max(state.req_tat, now) + interval
            if new_tat - now > MINUTE + 1e-9:
                return Admission(
                    False,
                    "rpm",
                    f"this key's limit of {key.rpm} requests per minute is reached",
                    new_tat - now - MINUTE,
                    rate_headers(key, gcra_state(state.req_tat, now, key.rpm), tok),
                )
            state.req_tat = new_tat
            req = gcra_state(new_tat, now, key.rpm)
        if key.max_concurrent is not None:
            state.active += 1
        return Admission(True, headers=rate_headers(key, req, tok))

    def release(self, key: KeyRecord) -> None:
        if key.max_concurrent is not None:
            state = self._state(key.name)
            state.active = max(0, state.active - 1)

    def record(self, key: KeyRecord, tokens: int, cost: float) -> None:
        """A finished request's usage: into the token bucket and the period's spend."""
        state = self._state(key.name)
        if key.tpm is not None and tokens > 0:
            now = time.monotonic()
            state.tok_tat = max(state.tok_tat, now) + tokens * MINUTE / key.tpm
        if has_budget(key):
            spend = self.spend(key)
            spend.tokens += tokens
            spend.cost += cost
