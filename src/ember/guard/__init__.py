"""Guardrails: API keys and scopes, rate limits, budgets, request caps (the audit log is guard/audit.py).

STUB: the guard lets everything through until guard/ is written.
"""

from __future__ import annotations

from typing import Any

from ember.config import Settings
from ember.gateway.usage import UsageRecord


class Guard:
    def __init__(self, settings: Settings, telemetry: Any = None) -> None:
        self.settings = settings
        self.telemetry = telemetry

    def observe(self, record: UsageRecord) -> None:
        """Usage observer: count tokens and spend against the key's limits and budgets."""

    async def aclose(self) -> None:
        return None


class GuardMiddleware:
    """Pure ASGI middleware: authenticate, authorise, limit; sets scope["state"]["principal"]."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await self.app(scope, receive, send)


def build_guard(settings: Settings, telemetry: Any = None) -> Guard:
    return Guard(settings, telemetry)
