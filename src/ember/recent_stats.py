"""Live counters for the dashboard's overview: totals since start and TTFTs of a recent window.

A usage observer (fed one record per finished request, like telemetry.py's), kept apart from the
Prometheus registry because a browser polling every second wants a few plain numbers, not the
exposition text summed over label sets. Totals only grow, so a client gets rates by taking the
difference of two polls; the TTFT percentiles are over the requests that ended in the last
`window_s` seconds (at most `max_samples` of them), so a quiet minute reads as no data, not as
the last busy minute's figures. Everything here runs on the event loop: no locks.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass

from ember.gateway.usage import UsageRecord


@dataclass
class Totals:
    requests: int = 0
    errors: int = 0  # answered with a status of 400 or more (4xx and 5xx)
    server_errors: int = 0  # 500 or more: ember's or an upstream's failure, not the caller's
    tokens_in: int = 0
    tokens_out: int = 0


@dataclass(frozen=True)
class Percentiles:
    count: int
    p50: float | None
    p95: float | None


def percentiles(values: list[float]) -> Percentiles:
    """Nearest-rank p50 and p95 (None when there is nothing to rank)."""
    if not values:
        return Percentiles(0, None, None)
    ranked = sorted(values)

    def rank(q: float) -> float:
        # The smallest value with at least q of them at or below it (the epsilon: 0.95 * 100 is
        # 95.00000000000001 in floating point, which would round the rank up past 95).
        return ranked[min(len(ranked) - 1, max(0, math.ceil(q * len(ranked) - 1e-9) - 1))]

    return Percentiles(len(ranked), rank(0.50), rank(0.95))


class RecentStats:
    def __init__(self, window_s: float = 60.0, max_samples: int = 4096, clock: Callable[[], float] = time.time) -> None:
        self.window_s = window_s
        self.clock = clock
        self.started_at = clock()
        self.totals = Totals()
        self._ttft: deque[tuple[float, float]] = deque(maxlen=max_samples)  # (ended at, ms)
        self._ended: deque[float] = deque(maxlen=max_samples)  # when each request ended

    def observe(self, record: UsageRecord) -> None:
        now = self.clock()
        t = self.totals
        t.requests += 1
        if record.status >= 400:
            t.errors += 1
        if record.status >= 500:
            t.server_errors += 1
        t.tokens_in += record.tokens_in
        t.tokens_out += record.tokens_out
        self._ended.append(now)
        if record.ttft_ms is not None:
            self._ttft.append((now, record.ttft_ms))

    def snapshot(self) -> dict[str, object]:
        now = self.clock()
        since = now - self.window_s
        ttft = percentiles([ms for ended, ms in self._ttft if ended >= since])
        return {
            "totals": asdict(self.totals),
            "window": {
                "seconds": self.window_s,
                "requests": sum(1 for ended in self._ended if ended >= since),
                "ttft_ms": asdict(ttft),
            },
        }
