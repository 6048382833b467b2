"""The response cache for deterministic requests: memory LRU, SQLite or Redis.

STUB until written: no cache.
"""

from __future__ import annotations

from typing import Any

from ember.config import Settings


class ResponseCache:
    pass


def build_cache(settings: Settings, telemetry: Any = None) -> ResponseCache | None:
    return None
