"""/v1/ember/batch_schedules: batches created on a cron schedule (ember's own; OpenAI has none).

Under /v1, so errors come in OpenAI's format, and under /v1/ember so no future OpenAI path can
collide with it. A schedule takes what POST /v1/batches takes, plus `cron`; it is checked the
way a batch is when it is made (endpoint, window, the input file is the caller's and has
purpose batch), so a schedule that could never fire is a 400 or 404 now, not an error at 2 am.
Schedules belong to the key that made them: another key gets 404.
"""

from __future__ import annotations

import time
from typing import Any

from fastapi import APIRouter, Depends, Request

from ember.api.deps import Services, services
from ember.api.openai.batches_routes import CreateBatch
from ember.api.openai.files_routes import jobs_of, owner_of
from ember.errors import BadRequest, NotFound, ServiceUnavailable
from ember.jobs.batches import window_seconds
from ember.jobs.records import ENDPOINTS
from ember.jobs.schedules import NewSchedule, ScheduleRunner, check_cron

router = APIRouter(prefix="/v1/ember", tags=["ember batch schedules"])


class CreateSchedule(CreateBatch):
    cron: str


def _schedules(svc: Services) -> ScheduleRunner:
    if svc.schedules is None:
        raise ServiceUnavailable("batch schedules are not running on this server")
    return svc.schedules


@router.post("/batch_schedules")
async def create_schedule(body: CreateSchedule, http: Request, svc: Services = Depends(services)) -> dict[str, Any]:
    runner = _schedules(svc)
    owner = owner_of(http)
    check_cron(body.cron)
    if body.endpoint not in ENDPOINTS:
        raise BadRequest(
            f"invalid endpoint {body.endpoint!r}: use one of {', '.join(ENDPOINTS)}",
            param="endpoint",
            code="invalid_value",
        )
    window_seconds(body.completion_window)
    source = jobs_of(svc).store.get_file(body.input_file_id, owner)
    if source is None:
        raise NotFound(f"no file with id '{body.input_file_id}'", param="input_file_id")
    if source.purpose != "batch":
        raise BadRequest(
            f"file '{body.input_file_id}' was uploaded with purpose '{source.purpose}': a batch's input file "
            "needs purpose 'batch'",
            param="input_file_id",
            code="invalid_value",
        )
    new = NewSchedule(
        cron=body.cron,
        input_file_id=body.input_file_id,
        endpoint=body.endpoint,
        completion_window=body.completion_window,
        metadata=body.metadata,
        output_seconds=body.output_expires_after.seconds if body.output_expires_after else None,
    )
    return runner.store.create(owner, new, time.time()).to_dict()


@router.get("/batch_schedules")
async def list_schedules(http: Request, svc: Services = Depends(services)) -> dict[str, Any]:
    data = [schedule.to_dict() for schedule in _schedules(svc).store.all(owner_of(http))]
    return {"object": "list", "data": data, "has_more": False}


@router.get("/batch_schedules/{schedule_id}")
async def retrieve_schedule(schedule_id: str, http: Request, svc: Services = Depends(services)) -> dict[str, Any]:
    return _schedules(svc).store.get(owner_of(http), schedule_id).to_dict()


@router.delete("/batch_schedules/{schedule_id}")
async def delete_schedule(schedule_id: str, http: Request, svc: Services = Depends(services)) -> dict[str, Any]:
    _schedules(svc).store.delete(owner_of(http), schedule_id)
    return {"id": schedule_id, "object": "batch_schedule.deleted", "deleted": True}
