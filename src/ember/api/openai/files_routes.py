"""/v1/files: upload, list, read and delete files (OpenAI's Files API), owned by the caller's key.

An upload is read here, not by FastAPI's UploadFile parameter, so its size is bounded while it
streams in (EMBER_MAX_FILE_BYTES, 413 past it; the guard and the JSON-body check leave this
body alone, guard/auth.py STREAMED_BODIES) and a malformed multipart body is a 400 in OpenAI's
format. The bytes reach their place only whole (jobs/files.py).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import FileResponse
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException
from starlette.formparsers import MultiPartException

from ember.api.deps import Services, request_context, services
from ember.errors import BadRequest, NotFound, PayloadTooLarge, ServiceUnavailable
from ember.guard.auth import Receive
from ember.jobs.records import FileRecord
from ember.jobs.service import Jobs

router = APIRouter(prefix="/v1", tags=["OpenAI files"])

# What OpenAI's files.create takes (openai.types.FilePurpose).
PURPOSES = ("assistants", "batch", "fine-tune", "vision", "user_data", "evals")
_MULTIPART_SLACK = 64 * 1024  # boundaries and the small fields around the file
_EXPIRY_RANGE = (3600, 30 * 86400)  # expires_after[seconds], as OpenAI bounds it


def jobs_of(svc: Services) -> Jobs:
    if svc.jobs is None:
        raise ServiceUnavailable("batch jobs are not running on this server")
    return svc.jobs


def owner_of(http: Request) -> str:
    """Files and batches belong to the key that made them ("" when keys are off)."""
    return request_context(http).key_name or ""


def file_object(record: FileRecord) -> dict[str, Any]:
    """As openai.types.FileObject parses it."""
    return {
        "id": record.id,
        "object": "file",
        "bytes": record.bytes,
        "created_at": record.created_at,
        "expires_at": record.expires_at,
        "filename": record.filename,
        "purpose": record.purpose,
        "status": record.status,
        "status_details": None,
    }


def _bounded(receive: Receive, limit: int) -> Receive:
    """The client's receive, refusing with 413 once more than `limit` bytes came in."""
    seen = 0

    async def counted() -> Any:
        nonlocal seen
        message = await receive()
        seen += len(message.get("body", b""))
        if seen > limit:
            raise PayloadTooLarge(f"file larger than this server's limit of {limit - _MULTIPART_SLACK} bytes")
        return message

    return counted


def _expires_at(form: Any, created: int) -> int | None:
    anchor, seconds = form.get("expires_after[anchor]"), form.get("expires_after[seconds]")
    if anchor is None and seconds is None:
        return None
    if anchor != "created_at":
        raise BadRequest("expires_after[anchor] must be 'created_at'", param="expires_after.anchor")
    try:
        value = int(str(seconds))
    except ValueError:
        raise BadRequest("expires_after[seconds] must be a whole number", param="expires_after.seconds") from None
    low, high = _EXPIRY_RANGE
    if not low <= value <= high:
        raise BadRequest(f"expires_after[seconds] must be between {low} and {high}", param="expires_after.seconds")
    return created + value


@router.post("/files")
async def create_file(http: Request, svc: Services = Depends(services)) -> dict[str, Any]:
    jobs = jobs_of(svc)
    limit = svc.settings.max_file_bytes
    content_type = http.headers.get("content-type", "")
    if not content_type.lower().startswith("multipart/form-data"):
        raise BadRequest("upload the file as multipart/form-data with the fields 'file' and 'purpose'", param="file")
    declared = http.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit + _MULTIPART_SLACK:
        raise PayloadTooLarge(f"file larger than this server's limit of {limit} bytes")
    upload = Request(http.scope, _bounded(http.receive, limit + _MULTIPART_SLACK))
    try:
        form = await upload.form(max_files=1, max_fields=16)
    except (MultiPartException, HTTPException) as exc:
        detail = exc.message if isinstance(exc, MultiPartException) else exc.detail
        raise BadRequest(f"malformed multipart upload: {detail}", param="file") from None
    except (ValueError, KeyError, UnicodeDecodeError) as exc:
        raise BadRequest(f"malformed multipart upload: {exc}", param="file") from None
    try:
        purpose, file = form.get("purpose"), form.get("file")
        if not isinstance(purpose, str) or purpose not in PURPOSES:
            raise BadRequest(
                f"invalid purpose {purpose!r}: use one of {', '.join(PURPOSES)}", param="purpose", code="invalid_value"
            )
        if not isinstance(file, UploadFile):
            raise BadRequest("missing required field 'file' (a file part of the multipart body)", param="file")
        expires_at = _expires_at(form, int(time.time()))
        record = await asyncio.to_thread(
            jobs.files.save_stream,
            file.file,
            owner=owner_of(http),
            filename=file.filename or "upload",
            purpose=purpose,
            limit=limit,
            expires_at=expires_at,
        )
    finally:
        await form.close()
    return file_object(record)


@router.get("/files")
async def list_files(
    http: Request,
    purpose: str | None = None,
    after: str | None = None,
    limit: int = Query(10_000, ge=1, le=10_000),
    order: Literal["asc", "desc"] = "desc",
    svc: Services = Depends(services),
) -> dict[str, Any]:
    records, more = jobs_of(svc).store.list_files(
        owner_of(http), purpose=purpose, after=after, limit=limit, ascending=order == "asc"
    )
    data = [file_object(r) for r in records]
    return {
        "object": "list",
        "data": data,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
        "has_more": more,
    }


def _file(jobs: Jobs, http: Request, file_id: str) -> FileRecord:
    record = jobs.store.get_file(file_id, owner_of(http))
    if record is None:
        raise NotFound(f"no file with id '{file_id}'", param="file_id")
    return record


@router.get("/files/{file_id}")
async def retrieve_file(file_id: str, http: Request, svc: Services = Depends(services)) -> dict[str, Any]:
    return file_object(_file(jobs_of(svc), http, file_id))


@router.get("/files/{file_id}/content", response_model=None)
async def file_content(file_id: str, http: Request, svc: Services = Depends(services)) -> FileResponse:
    jobs = jobs_of(svc)
    record = _file(jobs, http, file_id)
    path = jobs.files.path(record.id)
    if not path.exists():
        raise NotFound(f"the bytes of file '{file_id}' are gone", param="file_id")
    return FileResponse(path, media_type="application/octet-stream", filename=record.filename)


@router.delete("/files/{file_id}")
async def delete_file(file_id: str, http: Request, svc: Services = Depends(services)) -> dict[str, Any]:
    jobs = jobs_of(svc)
    jobs.files.delete(_file(jobs, http, file_id))
    return {"id": file_id, "object": "file", "deleted": True}
