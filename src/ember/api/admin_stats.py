"""GET /admin/stats: what the dashboard's overview polls every second or two, as plain JSON.

The figures are read when asked (the loaded models from the scheduler) or kept by the
RecentStats observer (recent_stats.py: counters that only grow, and TTFT percentiles over a
recent window); nothing is computed per request beyond that observer. Cheap enough to poll:
no disk, no lock, a walk over the few resident models.
"""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Depends

from ember import __version__
from ember.api.deps import Services, services
from ember.runtime.scheduler import Runner

router = APIRouter(prefix="/admin", tags=["admin"])


@router.get("/stats")
async def stats(svc: Services = Depends(services)) -> dict[str, Any]:
    now = time.time()
    runners = svc.scheduler.running()
    recent = svc.recent
    return {
        "version": __version__,
        "now": now,
        "started_at": recent.started_at,
        "uptime_s": now - recent.started_at,
        "models": [_model(r, now) for r in runners],
        "slots": sum(r.engine.parallel for r in runners),
        "slots_busy": sum(r.slots_busy for r in runners),
        "queue": sum(r.queued for r in runners),
        "memory": {
            "resident_bytes": sum(r.engine.memory_bytes for r in runners),
            "budget_bytes": svc.settings.max_memory,
        },
        **recent.snapshot(),
    }


def _model(runner: Runner, now: float) -> dict[str, Any]:
    # Seconds until an idle model is unloaded; None while in use (the count starts when the last
    # request ends) or when it is kept for good.
    left = max(0.0, runner.expires_at - now) if runner.expires_at is not None and runner.idle else None
    return {
        "name": runner.key,
        "slots": runner.engine.parallel,
        "slots_busy": runner.slots_busy,
        "queue": runner.queued,
        "in_flight": runner.in_flight,
        "memory_bytes": runner.engine.memory_bytes,
        "context_length": runner.engine.context_length,
        "keep_alive_s": runner.keep_alive,  # negative: kept until unloaded
        "keep_alive_left_s": left,
    }
