"""/v1/batches: create, list, retrieve and cancel batches (OpenAI's Batch API); the work is the
runner's (jobs/runner.py). A batch belongs to the key that created it: another key gets 404."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, ConfigDict, Field, field_validator

from ember.api.deps import Services, services
from ember.api.openai.files_routes import jobs_of, owner_of

router = APIRouter(prefix="/v1", tags=["OpenAI batches"])


class OutputExpiresAfter(BaseModel):
    model_config = ConfigDict(extra="forbid")
    anchor: str = Field(pattern="^created_at$")
    seconds: int = Field(ge=3600, le=30 * 86400)


class CreateBatch(BaseModel):
    # Unknown fields are a 400: a misspelt option must not be quietly ignored.
    model_config = ConfigDict(extra="forbid")
    input_file_id: str
    endpoint: str
    completion_window: str = "24h"
    metadata: dict[str, str] | None = None
    output_expires_after: OutputExpiresAfter | None = None

    @field_validator("metadata")
    @classmethod
    def _metadata(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        # OpenAI's bounds: 16 pairs, keys up to 64 characters, values up to 512.
        if value is not None:
            if len(value) > 16:
                raise ValueError("at most 16 metadata pairs")
            if any(len(k) > 64 or len(v) > 512 for k, v in value.items()):
                raise ValueError("metadata keys are at most 64 characters, values at most 512")
        return value


@router.post("/batches")
async def create_batch(body: CreateBatch, http: Request, svc: Services = Depends(services)) -> dict[str, Any]:
    jobs = jobs_of(svc)
    record = jobs.batches.create(
        owner_of(http),
        input_file_id=body.input_file_id,
        endpoint=body.endpoint,
        completion_window=body.completion_window,
        metadata=body.metadata,
        output_seconds=body.output_expires_after.seconds if body.output_expires_after else None,
    )
    jobs.runner.wake()
    return record.to_openai()


@router.get("/batches")
async def list_batches(
    http: Request,
    after: str | None = None,
    limit: int = Query(20, ge=1, le=100),
    svc: Services = Depends(services),
) -> dict[str, Any]:
    records, more = await jobs_of(svc).batches.list(owner_of(http), after=after, limit=limit)
    data = [r.to_openai() for r in records]
    return {
        "object": "list",
        "data": data,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
        "has_more": more,
    }


@router.get("/batches/{batch_id}")
async def retrieve_batch(batch_id: str, http: Request, svc: Services = Depends(services)) -> dict[str, Any]:
    return (await jobs_of(svc).batches.get(owner_of(http), batch_id)).to_openai()


@router.post("/batches/{batch_id}/cancel")
async def cancel_batch(batch_id: str, http: Request, svc: Services = Depends(services)) -> dict[str, Any]:
    jobs = jobs_of(svc)
    record = await jobs.batches.cancel(owner_of(http), batch_id)
    jobs.runner.wake()
    return record.to_openai()
