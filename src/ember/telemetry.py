"""Prometheus metrics (/metrics) and OpenTelemetry traces.

STUB until written.
"""

from __future__ import annotations

from typing import Any

from ember.config import Settings
from ember.gateway.usage import UsageRecord


class Telemetry:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def observe(self, record: UsageRecord) -> None:
        """Usage observer: request counts, token counts, TTFT and latency histograms."""

    def bind(self, services: Any) -> None:
        """Give scrape-time collectors (scheduler, gateway breakers) what they read."""
