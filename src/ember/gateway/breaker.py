"""A circuit breaker per target: closed, open (skip it), half-open (let one probe through)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from ember.gateway.config import BreakerConfig

State = Literal["closed", "open", "half-open"]


@dataclass
class CircuitBreaker:
    config: BreakerConfig
    clock: Callable[[], float] = time.monotonic
    failures: int = 0  # consecutive
    opened_at: float | None = None
    probing: bool = False  # a half-open probe is in flight
    _state: State = field(default="closed", repr=False)

    @property
    def state(self) -> State:
        if (
            self._state == "open"
            and self.opened_at is not None
            and self.clock() - self.opened_at >= self.config.cooldown
        ):
            return "half-open"
        return self._state

    def allow(self) -> bool:
        """May a request go to this target now? In half-open, only one probe at a time."""
        state = self.state
        if state == "closed":
            return True
        if state == "half-open" and not self.probing:
            self.probing = True
            return True
        return False

    def retry_in(self) -> float:
        """Seconds until an open breaker lets a probe through."""
        if self._state != "open" or self.opened_at is None:
            return 0.0
        return max(0.0, self.config.cooldown - (self.clock() - self.opened_at))

    def success(self) -> None:
        self.failures = 0
        self.probing = False
        self.opened_at = None
        self._state = "closed"

    def failure(self) -> None:
        self.failures += 1
        if self.probing or self.failures >= self.config.failures:
            self._state = "open"
            self.opened_at = self.clock()
        self.probing = False

    def release(self) -> None:
        """A probe that ended neither way (the client left): let another probe try."""
        self.probing = False
