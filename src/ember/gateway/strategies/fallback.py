"""fallback: the targets in the order the route lists them."""

from __future__ import annotations

from ember.gateway.config import RouteConfig
from ember.gateway.target import Target
from ember.services.types import TextRequest


def fallback(targets: list[Target], route: RouteConfig, request: TextRequest) -> list[Target]:
    return list(targets)
