"""Strategies order a route's targets for one request; the router walks that order.

Each is a function (targets, route, request) -> targets, in a module of its own. `race`
orders like `fallback`; the router starts the first few at once.
"""

from __future__ import annotations

from collections.abc import Callable

from ember.gateway.config import RouteConfig
from ember.gateway.strategies.auto import auto
from ember.gateway.strategies.cheapest import cheapest
from ember.gateway.strategies.fallback import fallback
from ember.gateway.strategies.fastest import fastest
from ember.gateway.strategies.fleet import fleet
from ember.gateway.strategies.least_busy import least_busy
from ember.gateway.strategies.weighted import weighted
from ember.gateway.target import Target
from ember.services.types import TextRequest

Order = Callable[[list[Target], RouteConfig, TextRequest], list[Target]]

STRATEGIES: dict[str, Order] = {
    "fallback": fallback,
    "race": fallback,
    "cheapest": cheapest,
    "fastest": fastest,
    "least-busy": least_busy,
    "weighted": weighted,
    "auto": auto,
    "fleet": fleet,
}

__all__ = ["STRATEGIES", "Order"]
