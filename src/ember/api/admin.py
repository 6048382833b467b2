"""/admin: what an operator reads: usage totals and the gateway's routes with their health."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Depends, Query

from ember.api.deps import Services, services
from ember.errors import BadRequest
from ember.gateway.usage import day_start, summary

router = APIRouter(prefix="/admin", tags=["admin"])


def _day(value: str | None, name: str) -> float | None:
    if value is None:
        return None
    try:
        return day_start(value)
    except ValueError:
        raise BadRequest(f"{name} must be a day written YYYY-MM-DD, not {value!r}", param=name) from None


@router.get("/usage")
async def usage(
    by: Literal["day", "model", "route", "key", "provider"] = Query("day"),
    since: str | None = Query(None, description="First day, YYYY-MM-DD (UTC)."),
    until: str | None = Query(None, description="Last day, YYYY-MM-DD (UTC), included."),
    svc: Services = Depends(services),
) -> dict[str, Any]:
    start = _day(since, "since")
    end = _day(until, "until")
    return summary(by, svc.usage.totals(by, since=start, until=end + 86400 if end is not None else None))


@router.get("/routes")
async def routes(svc: Services = Depends(services)) -> dict[str, Any]:
    return {"routes": svc.gateway.describe()}
