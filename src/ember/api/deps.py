"""What route handlers reach for: the services, built once per app in its lifespan."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fastapi import Request

from ember.api.protocols import protocol_name
from ember.config import Settings
from ember.runtime.scheduler import Scheduler
from ember.services.models import ModelService
from ember.services.types import RequestContext

if TYPE_CHECKING:
    from ember.agents.approvals import ApprovalService
    from ember.agents.service import AgentService
    from ember.api.responses.store import ResponseStore
    from ember.cache import ResponseCache
    from ember.fleet.service import Fleet
    from ember.gateway import Gateway, UsageLog
    from ember.guard import Guard
    from ember.guard.audit import AuditLog
    from ember.jobs.schedules import ScheduleRunner
    from ember.jobs.service import Jobs
    from ember.recent_stats import RecentStats
    from ember.telemetry import Telemetry


@dataclass
class Services:
    settings: Settings
    scheduler: Scheduler
    models: ModelService
    gateway: Gateway
    usage: UsageLog
    guard: Guard
    audit: AuditLog
    telemetry: Telemetry
    responses: ResponseStore  # stored /v1/responses (api/responses/store.py)
    recent: RecentStats  # live counters for GET /admin/stats (recent_stats.py)
    cache: ResponseCache | None = None
    jobs: Jobs | None = None  # /v1/files and /v1/batches; set once the app (which lines run through) is up
    schedules: ScheduleRunner | None = None  # /v1/ember/batch_schedules (jobs/schedules.py); beside jobs
    agents: AgentService | None = None  # agent/NAME and mode requests (agents/service.py), gateway.agents
    approvals: ApprovalService | None = None  # parked agent runs (agents/approvals/), set with the agents
    fleet: Fleet | None = None  # this node's part in a fleet (fleet/service.py); gateway.fleet is its registry


async def services(request: Request) -> Services:
    # async: FastAPI runs a plain def dependency in its thread pool, a hop on every request.
    return request.app.state.services


def request_context(request: Request) -> RequestContext:
    """What the layers below need to know about the caller, from the HTTP request."""
    path: str = request.scope["path"]  # not request.url: building it costs ~50 µs
    principal: Any = getattr(request.state, "principal", None)
    cache_control = request.headers.get("cache-control", "").lower()
    return RequestContext(
        protocol=protocol_name(request.scope),
        endpoint=path,
        key_name=getattr(principal, "name", None),
        scopes=getattr(principal, "scopes", None),
        priority=request.headers.get("x-ember-priority"),
        no_cache="no-cache" in cache_control or "no-store" in cache_control,
    )
