"""The plain data of batch jobs: what the store keeps and what the queue hands around.

No I/O here. Times are Unix seconds (int, as OpenAI's objects carry them).
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from typing import Any, Literal

BatchStatus = Literal[
    "validating", "failed", "in_progress", "finalizing", "completed", "expired", "cancelling", "cancelled"
]
# A batch in one of these never changes again.
FINISHED: frozenset[str] = frozenset({"failed", "completed", "expired", "cancelled"})
ENDPOINTS = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/responses")


def new_id(prefix: str) -> str:
    """OpenAI-shaped ids: file-…, batch_…, batch_req_…"""
    return prefix + secrets.token_hex(12)


@dataclass(frozen=True)
class FileRecord:
    id: str
    owner: str  # the API key's name; "" when keys are off
    filename: str
    purpose: str
    bytes: int
    created_at: int
    expires_at: int | None = None
    status: str = "processed"


@dataclass
class BatchError:
    """One entry of a failed batch's errors.data[]: a line that made the input unusable."""

    code: str
    message: str
    line: int | None = None  # 1-based, as OpenAI reports it
    param: str | None = None


@dataclass
class BatchRecord:
    id: str
    owner: str
    endpoint: str
    input_file_id: str
    completion_window: str
    window_seconds: float
    status: BatchStatus
    created_at: int
    expires_at: int
    metadata: dict[str, str] | None = None
    output_file_id: str | None = None
    error_file_id: str | None = None
    errors: list[BatchError] = field(default_factory=list)
    total: int = 0
    completed: int = 0  # lines answered 2xx
    failed: int = 0  # lines in the error file
    in_progress_at: int | None = None
    finalizing_at: int | None = None
    completed_at: int | None = None
    failed_at: int | None = None
    expired_at: int | None = None
    cancelling_at: int | None = None
    cancelled_at: int | None = None
    model: str | None = None  # the model of the first line, as OpenAI reports it
    usage: dict[str, Any] | None = None  # summed over the answered lines, at finalizing
    output_seconds: int | None = None  # output_expires_after: the result files' lifetime

    @property
    def finished(self) -> bool:
        return self.status in FINISHED

    def to_openai(self) -> dict[str, Any]:
        """The batch object exactly as openai.types.Batch parses it."""
        return {
            "id": self.id,
            "object": "batch",
            "endpoint": self.endpoint,
            "input_file_id": self.input_file_id,
            "completion_window": self.completion_window,
            "status": self.status,
            "output_file_id": self.output_file_id,
            "error_file_id": self.error_file_id,
            "created_at": self.created_at,
            "in_progress_at": self.in_progress_at,
            "expires_at": self.expires_at,
            "finalizing_at": self.finalizing_at,
            "completed_at": self.completed_at,
            "failed_at": self.failed_at,
            "expired_at": self.expired_at,
            "cancelling_at": self.cancelling_at,
            "cancelled_at": self.cancelled_at,
            "request_counts": {"total": self.total, "completed": self.completed, "failed": self.failed},
            "metadata": self.metadata,
            "model": self.model,
            "usage": self.usage,
            "errors": (
                {
                    "object": "list",
                    "data": [
                        {"code": e.code, "message": e.message, "param": e.param, "line": e.line} for e in self.errors
                    ],
                }
                if self.errors
                else None
            ),
        }


# -- the queue's data ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Line:
    """One request of a batch, as the queue carries it: enough for any node to run it."""

    batch_id: str
    index: int  # 0-based position in the input file; the output is written in this order
    custom_id: str
    owner: str  # the batch's key name: the line runs as that key
    url: str  # the endpoint path, e.g. /v1/chat/completions
    body: str  # the line's "body", as JSON text
    deadline: float  # Unix time the batch expires; a line claimed after it is not run


@dataclass(frozen=True)
class Claim:
    """A line handed to one worker. `token` is what the queue needs to recognise this claim
    (a row's claim id in SQLite, a stream entry id in Redis); `attempts` counts earlier claims,
    so a line whose workers keep dying is not retried forever."""

    line: Line
    token: str
    attempts: int = 0


@dataclass(frozen=True)
class LineResult:
    """A finished line: its output-file or error-file line, as JSON text."""

    batch_id: str
    index: int
    custom_id: str
    failed: bool  # True: it goes to the error file
    text: str  # one JSONL line without the newline


@dataclass(frozen=True)
class LineCounts:
    waiting: int = 0  # enqueued, not claimed (or claimed by a worker that died and reclaimed)
    running: int = 0  # claimed, not finished
    completed: int = 0
    failed: int = 0

    @property
    def unfinished(self) -> int:
        return self.waiting + self.running
