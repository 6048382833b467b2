"""least-busy: fewest requests in flight first (ties keep the route's order)."""

from __future__ import annotations

from ember.gateway.config import RouteConfig
from ember.gateway.target import Target
from ember.services.types import TextRequest


def least_busy(targets: list[Target], route: RouteConfig, request: TextRequest) -> list[Target]:
    return sorted(targets, key=lambda t: t.in_flight)
