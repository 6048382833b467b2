"""Batch metrics for /metrics, read at scrape time from the jobs of one app.

- ember_batches{status}           gauge: batches this node holds, by status (every status listed,
                                  0 included, so a dashboard's series do not come and go)
- ember_batch_lines_total{outcome} counter: lines this node finished, completed or failed (the
                                  runner counts them when the queue stores the result, so a line
                                  finished twice by two nodes counts once); lines per second is
                                  rate(ember_batch_lines_total[1m])
- ember_batch_lines_waiting       gauge: lines waiting for a worker. With Redis it is the whole
                                  fleet's backlog (the queue is shared), the same on every node

The queue is asynchronous (Redis), a collector is not: `refresh` reads the waiting count on the
event loop just before each scrape renders (telemetry.Telemetry.refresh).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ember.jobs.records import BatchStatus

if TYPE_CHECKING:
    from ember.jobs.service import Jobs

log = logging.getLogger("ember.jobs")

STATUSES: tuple[BatchStatus, ...] = (
    "validating",
    "failed",
    "in_progress",
    "finalizing",
    "completed",
    "expired",
    "cancelling",
    "cancelled",
)


class BatchMetrics(Collector):
    def __init__(self, jobs: Jobs) -> None:
        self._jobs = jobs
        self._waiting: int | None = None

    async def refresh(self) -> None:
        try:
            self._waiting = await self._jobs.queue.waiting()
        except Exception as exc:  # Redis away: the scrape goes on without this gauge
            log.warning("batch metrics: could not count waiting lines: %s", exc)
            self._waiting = None

    def collect(self) -> Iterator[Metric]:
        batches = GaugeMetricFamily("ember_batches", "Batches on this node, by status.", labels=["status"])
        by_status = self._jobs.store.count_by_status()
        for status in STATUSES:
            batches.add_metric([status], by_status.get(status, 0))
        yield batches
        lines = CounterMetricFamily(
            "ember_batch_lines", "Batch lines this node finished, by outcome.", labels=["outcome"]
        )
        lines.add_metric(["completed"], self._jobs.runner.lines_completed)
        lines.add_metric(["failed"], self._jobs.runner.lines_failed)
        yield lines
        if self._waiting is not None:
            yield GaugeMetricFamily(
                "ember_batch_lines_waiting", "Batch lines waiting for a worker (all nodes' with Redis).", self._waiting
            )
