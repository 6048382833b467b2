"""GET /metrics: Prometheus exposition text from the app's own registry."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST

from ember.api.deps import Services, services

router = APIRouter(tags=["ops"])


# async on purpose: the scrape-time collectors read scheduler state, which lives on the event loop.
@router.get(
    "/metrics",
    response_class=Response,
    responses={
        200: {"content": {"text/plain": {"schema": {"type": "string"}}}, "description": "Prometheus text format."}
    },
)
async def metrics(svc: Services = Depends(services)) -> Response:
    await svc.telemetry.refresh()
    return Response(svc.telemetry.render(), media_type=CONTENT_TYPE_LATEST)
