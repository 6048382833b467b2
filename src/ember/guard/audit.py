"""The audit log: every request and admin action, appended to SQLite in a hash chain.

STUB until written.
"""

from __future__ import annotations

from typing import Any

from ember.config import Settings
from ember.gateway.usage import UsageRecord


class AuditLog:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def observe(self, record: UsageRecord) -> None:
        """Usage observer: one audit row per request."""

    def admin(self, action: str, key_name: str | None, detail: dict[str, Any] | None = None,
              status: int = 200) -> None:
        """One audit row per admin action (pull, delete, copy, key management)."""

    def close(self) -> None:
        return None
