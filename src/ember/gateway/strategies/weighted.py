"""weighted: a random order drawn by the route's weights (a weight-2 target leads twice as often)."""

from __future__ import annotations

import random

from ember.gateway.config import RouteConfig
from ember.gateway.target import Target
from ember.services.types import TextRequest


def weighted(
    targets: list[Target], route: RouteConfig, request: TextRequest, rng: random.Random | None = None
) -> list[Target]:
    uniform = rng.uniform if rng is not None else random.uniform  # the module's shared generator by default
    weights = dict(zip(route.targets, route.weights or [1.0] * len(route.targets), strict=True))
    pool = [(t, weights.get(t.label, 1.0)) for t in targets]
    order: list[Target] = []
    while pool:
        total = sum(w for _, w in pool)
        if total <= 0:
            order.extend(t for t, _ in pool)
            break
        pick = uniform(0, total)
        for i, (target, weight) in enumerate(pool):
            pick -= weight
            if pick <= 0 or i == len(pool) - 1:
                order.append(target)
                pool.pop(i)
                break
    return order
