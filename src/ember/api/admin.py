"""/admin: what an operator reads: usage totals and the gateway's routes with their health."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Depends, Query

from ember.api.deps import Services, services
from ember.errors import BadRequest
from ember.gateway.usage import day_start

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
    rows = svc.usage.totals(by, since=start, until=end + 86400 if end is not None else None)
    total = {"requests": sum(r["requests"] for r in rows), "tokens_in": sum(r["tokens_in"] for r in rows),
             "tokens_out": sum(r["tokens_out"] for r in rows),
             "cost": round(sum(r["cost"] for r in rows), 10), "errors": sum(r["errors"] for r in rows)}
    return {"by": by, "rows": rows, "total": total}


@router.get("/routes")
async def routes(svc: Services = Depends(services)) -> dict[str, Any]:
    return {"routes": svc.gateway.describe()}
