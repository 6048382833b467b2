"""A route target ("provider/model") with its breaker and live figures.

One Target per distinct "provider/model", shared by every route naming it, so its
breaker and moving averages describe the target, not the route.
"""

from __future__ import annotations

from dataclasses import dataclass

from ember.gateway.breaker import CircuitBreaker
from ember.gateway.provider import Provider

_ALPHA = 0.3  # weight of the newest sample in the moving averages


@dataclass
class Target:
    provider: Provider
    model: str  # the provider's name for it
    breaker: CircuitBreaker
    in_flight: int = 0
    requests: int = 0
    failures: int = 0
    ttft_ms: float | None = None  # moving average
    tokens_per_s: float | None = None  # moving average
    last_error: str | None = None
    retry_at: float = 0.0  # monotonic time before which a 429's Retry-After asks us to wait

    @property
    def label(self) -> str:
        return f"{self.provider.name}/{self.model}"

    @property
    def price_in(self) -> float:
        return self.provider.config.price_in

    @property
    def price_out(self) -> float:
        return self.provider.config.price_out

    def observe(self, ttft_ms: float | None, tokens: int, generate_s: float) -> None:
        if ttft_ms is not None:
            self.ttft_ms = ttft_ms if self.ttft_ms is None else (1 - _ALPHA) * self.ttft_ms + _ALPHA * ttft_ms
        if tokens > 1 and generate_s > 0:
            rate = tokens / generate_s
            self.tokens_per_s = rate if self.tokens_per_s is None else (1 - _ALPHA) * self.tokens_per_s + _ALPHA * rate

    def health(self) -> dict[str, object]:
        return {
            "target": self.label,
            "kind": self.provider.config.kind,
            "state": self.breaker.state,
            "in_flight": self.in_flight,
            "requests": self.requests,
            "failures": self.failures,
            "consecutive_failures": self.breaker.failures,
            "ttft_ms": None if self.ttft_ms is None else round(self.ttft_ms, 1),
            "tokens_per_s": None if self.tokens_per_s is None else round(self.tokens_per_s, 1),
            "last_error": self.last_error,
        }
