"""Batches: create, look up, cancel; validate an input file into lines; finalize into files.

The life of a batch (each status with its timestamp, as OpenAI's object carries them):
validating (the runner reads the input file) -> failed (errors name the lines) or in_progress
(its lines in the queue) -> finalizing (every line finished) -> completed, or expired (past the
completion window: the lines not run are `batch_expired` in the error file); cancel moves it to
cancelling (waiting lines dropped, running ones finish) -> cancelled, keeping what finished.

The output and error files are built at finalizing from the results the queue stored, so a
crash at any point loses no line and writes none twice; their ids are fixed before they are
written, so a finalize redone after a crash rewrites the same files.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from ember.config import parse_duration
from ember.errors import BadRequest, Conflict, NotFound
from ember.jobs.files import FileStorage
from ember.jobs.queue import LineQueue
from ember.jobs.records import ENDPOINTS, BatchError, BatchRecord, Line, LineResult, new_id
from ember.jobs.store import JobStore

MAX_ERRORS = 100  # a failed batch reports at most this many bad lines
MAX_WINDOW = 7 * 86400.0
EXPIRED_CODE = "batch_expired"


@dataclass(frozen=True)
class BatchLimits:
    max_lines: int = 50_000
    max_input_bytes: int = 200 * 1024**2


def window_seconds(text: str) -> float:
    """'24h' (OpenAI's only value), or another duration: '1h', '30m', '90s'."""
    try:
        seconds = parse_duration(text)
    except ValueError:
        seconds = None
    if seconds is None or seconds <= 0 or seconds > MAX_WINDOW:
        raise BadRequest(
            f"invalid completion_window {text!r}: use 24h, or a duration up to 7 days such as 1h or 30m",
            param="completion_window",
            code="invalid_value",
        )
    return seconds


def parse_input(data: bytes, batch: BatchRecord, limits: BatchLimits) -> tuple[list[Line], list[BatchError]]:
    """The batch's lines, or the errors that make it unusable (each with its 1-based line)."""
    errors: list[BatchError] = []
    if len(data) > limits.max_input_bytes:
        return [], [BatchError("file_too_large", f"the input file is over {limits.max_input_bytes} bytes")]
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        return [], [BatchError("invalid_file", f"the input file is not UTF-8 text (byte {exc.start})")]
    lines: list[Line] = []
    seen: set[str] = set()
    for number, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue  # a blank line (a trailing newline, say) is no request
        if len(lines) + len(errors) >= limits.max_lines:
            errors.append(
                BatchError("too_many_requests", f"the input file has more than {limits.max_lines} requests", number)
            )
            break
        line, error = _parse_line(raw, number, batch, len(lines))
        if error is None and line is not None and line.custom_id in seen:
            error = BatchError(
                "duplicate_custom_id",
                f"custom_id {line.custom_id!r} appears more than once",
                number,
                "custom_id",
            )
        if error is not None:
            errors.append(error)
            if len(errors) >= MAX_ERRORS:
                break
        elif line is not None:
            seen.add(line.custom_id)
            lines.append(line)
    if not lines and not errors:
        errors.append(BatchError("empty_file", "the input file has no requests"))
    return lines, errors


def _parse_line(raw: str, number: int, batch: BatchRecord, index: int) -> tuple[Line | None, BatchError | None]:
    try:
        item = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        return None, BatchError("invalid_json_line", f"line {number} is not valid JSON: {exc}", number)
    if not isinstance(item, dict):
        return None, BatchError("invalid_json_line", f"line {number} is not a JSON object", number)
    for field in ("custom_id", "method", "url", "body"):
        if field not in item:
            return None, BatchError(
                "missing_required_parameter", f"missing required parameter '{field}'", number, field
            )
    custom_id, method, url, body = item["custom_id"], item["method"], item["url"], item["body"]
    if not isinstance(custom_id, str) or not custom_id:
        return None, BatchError("invalid_value", "custom_id must be a non-empty string", number, "custom_id")
    if method != "POST":
        return None, BatchError("invalid_value", f"method must be POST, not {method!r}", number, "method")
    if url != batch.endpoint:
        return None, BatchError(
            "invalid_url",
            f"the url {url!r} of this request is not the batch's endpoint {batch.endpoint!r}",
            number,
            "url",
        )
    if not isinstance(body, dict):
        return None, BatchError("invalid_value", "body must be a JSON object", number, "body")
    if body.get("stream"):
        return None, BatchError(
            "unsupported_parameter",
            "stream is not supported in a batch: each answer is written whole",
            number,
            "body.stream",
        )
    line = Line(
        batch_id=batch.id,
        index=index,
        custom_id=custom_id,
        owner=batch.owner,
        url=url,
        body=json.dumps(body, separators=(",", ":"), ensure_ascii=False),
        deadline=float(batch.expires_at),
    )
    return line, None


# -- the lines of the output and error files ----------------------------------------------------


def output_line(custom_id: str, status: int, request_id: str, body: Any) -> str:
    """An answered line: status 2xx, `error` null."""
    return _dump(
        {
            "id": new_id("batch_req_"),
            "custom_id": custom_id,
            "response": {"status_code": status, "request_id": request_id, "body": body},
            "error": None,
        }
    )


def error_line(
    custom_id: str, code: str, message: str, status: int | None = None, request_id: str = "", body: Any = None
) -> str:
    """A failed line: the last response when there was one (status, body), and the error."""
    response = None if status is None else {"status_code": status, "request_id": request_id, "body": body}
    return _dump(
        {
            "id": new_id("batch_req_"),
            "custom_id": custom_id,
            "response": response,
            "error": {"code": code, "message": message},
        }
    )


def _dump(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _usage(results: list[LineResult]) -> dict[str, Any]:
    """Tokens over the answered lines, in the Batch object's `usage` shape."""
    tokens_in = tokens_out = cached = 0
    for result in results:
        if result.failed:
            continue
        try:
            usage = (json.loads(result.text).get("response") or {}).get("body", {}).get("usage") or {}
        except (ValueError, AttributeError):
            continue
        tokens_in += int(usage.get("prompt_tokens", usage.get("input_tokens", 0)) or 0)
        tokens_out += int(usage.get("completion_tokens", usage.get("output_tokens", 0)) or 0)
        details = usage.get("prompt_tokens_details") or usage.get("input_tokens_details") or {}
        cached += int(details.get("cached_tokens", 0) or 0) if isinstance(details, dict) else 0
    return {
        "input_tokens": tokens_in,
        "input_tokens_details": {"cached_tokens": cached},
        "output_tokens": tokens_out,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": tokens_in + tokens_out,
    }


class BatchService:
    """What the routes and the runner do to batches; the queue holds their lines."""

    def __init__(self, store: JobStore, files: FileStorage, queue: LineQueue, limits: BatchLimits) -> None:
        self.store = store
        self.files = files
        self.queue = queue
        self.limits = limits

    # -- the routes' side ----------------------------------------------------------------------

    def create(
        self,
        owner: str,
        *,
        input_file_id: str,
        endpoint: str,
        completion_window: str,
        metadata: dict[str, str] | None,
        output_seconds: int | None = None,
    ) -> BatchRecord:
        if endpoint not in ENDPOINTS:
            raise BadRequest(
                f"invalid endpoint {endpoint!r}: use one of {', '.join(ENDPOINTS)}",
                param="endpoint",
                code="invalid_value",
            )
        seconds = window_seconds(completion_window)
        source = self.store.get_file(input_file_id, owner)
        if source is None:
            raise NotFound(f"no file with id '{input_file_id}'", param="input_file_id")
        if source.purpose != "batch":
            raise BadRequest(
                f"file '{input_file_id}' was uploaded with purpose '{source.purpose}': a batch's input file needs "
                "purpose 'batch'",
                param="input_file_id",
                code="invalid_value",
            )
        now = int(time.time())
        record = BatchRecord(
            id=new_id("batch_"),
            owner=owner,
            endpoint=endpoint,
            input_file_id=input_file_id,
            completion_window=completion_window,
            window_seconds=seconds,
            status="validating",
            created_at=now,
            expires_at=int(now + seconds),
            metadata=metadata,
            output_seconds=output_seconds,
        )
        self.store.add_batch(record)
        return record

    async def get(self, owner: str, batch_id: str) -> BatchRecord:
        record = self.store.get_batch(batch_id, owner)
        if record is None:
            raise NotFound(f"no batch with id '{batch_id}'", param="batch_id")
        return await self.live(record)

    async def live(self, record: BatchRecord) -> BatchRecord:
        """While lines run, the counts come from the queue (the record has them once finalized)."""
        if record.status in ("in_progress", "cancelling", "finalizing"):
            counts = await self.queue.counts(record.id)
            record.completed, record.failed = counts.completed, counts.failed
        return record

    async def list(self, owner: str, *, after: str | None, limit: int) -> tuple[list[BatchRecord], bool]:
        records, more = self.store.list_batches(owner, after=after, limit=limit)
        return [await self.live(r) for r in records], more

    async def cancel(self, owner: str, batch_id: str) -> BatchRecord:
        record = self.store.get_batch(batch_id, owner)
        if record is None:
            raise NotFound(f"no batch with id '{batch_id}'", param="batch_id")
        if record.status in ("cancelling", "cancelled"):
            return await self.live(record)  # asked twice: the same answer, as OpenAI gives
        if record.finished or record.status == "finalizing":
            raise Conflict(
                f"cannot cancel batch '{batch_id}': its status is '{record.status}'", code="invalid_batch_status"
            )
        record.status = "cancelling"
        record.cancelling_at = int(time.time())
        self.store.save(record)
        await self.queue.drop(record.id)  # lines already running finish and are kept
        return await self.live(record)

    # -- the runner's side ---------------------------------------------------------------------

    async def validate(self, record: BatchRecord) -> None:
        """validating -> in_progress with the lines queued, or -> failed with the errors."""
        source = self.store.get_file(record.input_file_id, record.owner)
        now = int(time.time())
        if source is None:
            errors = [BatchError("file_not_found", f"the input file '{record.input_file_id}' is gone")]
            lines: list[Line] = []
        else:
            # A thread: a 200 MB file takes seconds to read and parse, and requests go on meanwhile.
            data = await asyncio.to_thread(self.files.read_bytes, source)
            lines, errors = await asyncio.to_thread(parse_input, data, record, self.limits)
        if errors:
            record.status, record.failed_at, record.errors = "failed", now, errors
            self.store.save(record)
            return
        await self.queue.enqueue(record.id, lines)  # idempotent: a crash here is redone at start
        record.total = len(lines)
        record.model = _model_of(lines[0])
        record.status, record.in_progress_at = "in_progress", now
        current = self.store.get_batch(record.id, None)
        if current is not None and current.status == "cancelling":  # cancelled while we read the file
            record.status, record.cancelling_at = "cancelling", current.cancelling_at
            await self.queue.drop(record.id)
        self.store.save(record)

    async def fail(self, record: BatchRecord, code: str, message: str) -> None:
        record.status, record.failed_at, record.errors = "failed", int(time.time()), [BatchError(code, message)]
        self.store.save(record)
        await self.queue.forget(record.id)

    async def finalize(self, record: BatchRecord) -> None:
        """Every line finished (or dropped): write the files, then the final status."""
        cancelled = record.status == "cancelling"
        if record.status != "finalizing":
            record.status, record.finalizing_at = "finalizing", int(time.time())
        if record.output_file_id is None and record.error_file_id is None:
            # Ids before bytes: a finalize redone after a crash rewrites these same two files.
            record.output_file_id, record.error_file_id = new_id("file-"), new_id("file-")
        self.store.save(record)
        results = await self.queue.results(record.id)
        answered = [r.text for r in results if not r.failed]
        failed = [r.text for r in results if r.failed]
        expired = any(r.failed and f'"code":"{EXPIRED_CODE}"' in r.text for r in results)
        output_id, error_id = record.output_file_id, record.error_file_id
        expires = int(time.time()) + record.output_seconds if record.output_seconds else None
        assert output_id is not None and error_id is not None
        record.output_file_id = record.error_file_id = None
        if answered:
            self.files.save_lines(
                output_id,
                answered,
                owner=record.owner,
                filename=f"{record.id}_output.jsonl",
                purpose="batch_output",
                expires_at=expires,
            )
            record.output_file_id = output_id
        if failed:
            self.files.save_lines(
                error_id,
                failed,
                owner=record.owner,
                filename=f"{record.id}_error.jsonl",
                purpose="batch_output",
                expires_at=expires,
            )
            record.error_file_id = error_id
        record.completed, record.failed = len(answered), len(failed)
        record.usage = _usage(results)
        now = int(time.time())
        if cancelled or record.cancelling_at is not None:
            record.status, record.cancelled_at = "cancelled", now
        elif expired:
            record.status, record.expired_at = "expired", now
        else:
            record.status, record.completed_at = "completed", now
        self.store.save(record)
        await self.queue.forget(record.id)

    def iter_active(self) -> Iterator[BatchRecord]:
        yield from self.store.active_batches()


def _model_of(line: Line) -> str | None:
    try:
        model = json.loads(line.body).get("model")
    except ValueError:
        return None
    return model if isinstance(model, str) else None
