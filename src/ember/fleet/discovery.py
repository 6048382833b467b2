"""Which models the fleet adds to what this node lists in /v1/models and /api/tags.

A model this node serves itself (stored here, a route or an agent) is listed once, as its own:
the fleet adds only the names no local entry has, so a client sees each name once and a fleet
model is one the gateway routes to another node.
"""

from __future__ import annotations

from collections.abc import Collection

from ember.fleet.types import FleetView


def fleet_only_models(fleet: FleetView | None, listed: Collection[str]) -> list[str]:
    if fleet is None:
        return []
    known = set(listed)
    return [m for m in fleet.models() if m not in known]
