"""fastest: lowest moving-average time to first token first; untried targets get a try first."""

from __future__ import annotations

from ember.gateway.config import RouteConfig
from ember.gateway.target import Target
from ember.services.types import TextRequest


def fastest(targets: list[Target], route: RouteConfig, request: TextRequest) -> list[Target]:
    def score(target: Target) -> tuple[float, float]:
        if target.ttft_ms is None:
            return (-1.0, 0.0)  # unmeasured: explore it
        return (target.ttft_ms, -(target.tokens_per_s or 0.0))

    return sorted(targets, key=score)
