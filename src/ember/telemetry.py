"""Prometheus metrics (/metrics) and OpenTelemetry traces.

Counters and histograms move in `observe` (one usage record per request; kept cheap: a few
label lookups). Gauges about loaded models, slots, queues and breakers are read at scrape
time from the scheduler and the gateway, so they are never stale and cost nothing per request.

Each app has its own CollectorRegistry (not prometheus_client's global one): tests build
several apps in one process. Traces go out only when OTEL_EXPORTER_OTLP_ENDPOINT is set.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Awaitable, Callable, Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ember.config import Settings
from ember.gateway.usage import UsageRecord

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.trace import Tracer

    from ember.api.deps import Services

log = logging.getLogger("ember.telemetry")

_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
_TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_BREAKER_VALUES = {"closed": 0, "half-open": 1, "open": 2}
# A name nobody could resolve (404) would otherwise mint a label set per typo or probe.
_UNKNOWN_MODEL = "(unknown)"


class _StateCollector(Collector):
    """Scrape-time gauges from the services bound to it (nothing until bound)."""

    def __init__(self) -> None:
        self.services: Services | None = None

    def collect(self) -> Iterator[Metric]:
        queue = GaugeMetricFamily("ember_queue_depth", "Requests waiting for a slot.", labels=["model"])
        busy = GaugeMetricFamily("ember_slots_busy", "Slots generating now.", labels=["model"])
        slots = GaugeMetricFamily("ember_slots", "Slots (parallel sequences) per loaded model.", labels=["model"])
        memory = GaugeMetricFamily("ember_model_memory_bytes", "Memory held by a loaded model.", labels=["model"])
        breaker = GaugeMetricFamily(
            "ember_breaker_state",
            "Circuit breaker per gateway target: 0 closed, 1 half-open, 2 open.",
            labels=["target"],
        )
        runners = self.services.scheduler.running() if self.services else []
        for runner in runners:
            queue.add_metric([runner.key], runner.queued)
            busy.add_metric([runner.key], runner.slots_busy)
            slots.add_metric([runner.key], runner.engine.parallel)
            memory.add_metric([runner.key], runner.engine.memory_bytes)
        targets = self.services.gateway.targets if self.services else {}
        for label, target in list(targets.items()):
            breaker.add_metric([label], _BREAKER_VALUES.get(target.breaker.state, 2))
        yield from (queue, busy, slots, memory, breaker)
        yield GaugeMetricFamily("ember_models_loaded", "Models resident now.", value=len(runners))


def _tracer_provider() -> TracerProvider:
    # Imported only when tracing is on: the SDK and exporter are not light.
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    from ember import __version__

    # Resource.create reads OTEL_SERVICE_NAME / OTEL_RESOURCE_ATTRIBUTES over these defaults;
    # the exporter reads OTEL_EXPORTER_OTLP_ENDPOINT (and appends /v1/traces) and its headers.
    resource = Resource.create({"service.name": "ember", "service.version": __version__})
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    return provider


class Telemetry:
    def __init__(self, settings: Settings, registry: CollectorRegistry | None = None) -> None:
        self.settings = settings
        self.registry = registry or CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "ember_requests",
            "Requests finished, by outcome.",
            ["endpoint", "model", "route", "provider", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "ember_request_latency_seconds",
            "Request latency, start to last byte.",
            ["model"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.ttft = Histogram(
            "ember_ttft_seconds", "Time to first token.", ["model"], buckets=_TTFT_BUCKETS, registry=r
        )
        self.tokens = Counter(
            "ember_tokens", "Tokens read (in) and generated (out).", ["direction", "model"], registry=r
        )
        self.cost = Counter(
            "ember_cost_usd", "Spend at the providers' configured prices.", ["model", "provider"], registry=r
        )
        self.cache = Counter("ember_cache_requests", "Response cache lookups.", ["result"], registry=r)
        self.rejections = Counter(
            "ember_ratelimit_rejections", "Requests refused by limits or budgets.", ["reason"], registry=r
        )
        self.redis_up = Gauge("ember_redis_up", "1 when the shared Redis answers, else 0.", registry=r)
        self._state = _StateCollector()
        r.register(self._state)
        self._refreshers: list[Callable[[], Awaitable[None]]] = []
        self._provider: TracerProvider | None = None
        self._tracer: Tracer | None = None
        if os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
            # Our own provider, not the global one: two apps in a process must not share it.
            self._provider = _tracer_provider()
            self._tracer = self._provider.get_tracer("ember")

    # -- per request ----------------------------------------------------------------------------

    def observe(self, record: UsageRecord) -> None:
        """Usage observer: request counts, token counts, TTFT and latency histograms, one span."""
        model = _UNKNOWN_MODEL if record.status == 404 else record.model
        self.requests.labels(
            record.endpoint, model, record.route or "", record.provider or "", str(record.status)
        ).inc()
        self.latency.labels(model).observe(record.latency_ms / 1000)
        if record.ttft_ms is not None:
            self.ttft.labels(model).observe(record.ttft_ms / 1000)
        if record.tokens_in:
            self.tokens.labels("in", model).inc(record.tokens_in)
        if record.tokens_out:
            self.tokens.labels("out", model).inc(record.tokens_out)
        if record.cost:
            self.cost.labels(model, record.provider or "").inc(record.cost)
        if record.cache in ("hit", "miss"):
            self.cache.labels(record.cache).inc()
        if self._tracer is not None:
            _span(self._tracer, record)

    # -- called by guard/ and cache/ ----------------------------------------------------------------

    def count_rejection(self, reason: str) -> None:
        self.rejections.labels(reason).inc()

    def set_redis_up(self, up: bool) -> None:
        self.redis_up.set(1 if up else 0)

    # -- lifecycle and scraping -----------------------------------------------------------------

    def add_collector(self, collector: Collector, refresh: Callable[[], Awaitable[None]] | None = None) -> None:
        """More scrape-time metrics (jobs/metrics.py); `refresh` reads what only an await can, before each render."""
        self.registry.register(collector)
        if refresh is not None:
            self._refreshers.append(refresh)

    async def refresh(self) -> None:
        """Run the collectors' refreshers: call just before `render`."""
        for refresh in self._refreshers:
            await refresh()

    def bind(self, services: Any) -> None:
        """Give scrape-time collectors (scheduler, gateway breakers) what they read."""
        self._state.services = services

    def render(self) -> bytes:
        """The exposition text. Call on the event loop: the collectors read scheduler state."""
        return generate_latest(self.registry)

    def close(self) -> None:
        """Send the spans still queued (the batch processor would wait up to its delay)."""
        if self._provider is not None:
            try:
                self._provider.shutdown()
            except Exception:  # exporting is best effort; shutdown must go on
                log.exception("could not flush traces")
            self._provider = self._tracer = None


def _span(tracer: Tracer, record: UsageRecord) -> None:
    """One finished span per request, timed from the record (it is written once the request ends)."""
    from opentelemetry.trace import SpanKind, Status, StatusCode

    start = int(record.ts * 1e9)
    attributes: dict[str, Any] = {
        "ember.endpoint": record.endpoint,
        "ember.protocol": record.protocol,
        "ember.model": record.model,
        "ember.route": record.route or "",
        "ember.provider": record.provider or "",
        "ember.upstream_model": record.upstream_model,
        "ember.tokens_in": record.tokens_in,
        "ember.tokens_out": record.tokens_out,
        "ember.cost_usd": record.cost,
        "ember.attempts": record.attempts,
        "http.response.status_code": record.status,
    }
    if record.ttft_ms is not None:
        attributes["ember.ttft_ms"] = record.ttft_ms
    if record.cache is not None:
        attributes["ember.cache"] = record.cache
    span = tracer.start_span("ember.request", kind=SpanKind.SERVER, start_time=start, attributes=attributes)
    if record.status >= 500:
        span.set_status(Status(StatusCode.ERROR, record.error or ""))
    span.end(end_time=start + int(record.latency_ms * 1e6))
