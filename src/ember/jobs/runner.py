"""BatchRunner: the background task that works the queue's lines through the app itself.

Each line is one POST sent in-process to the ASGI app (`call_app`), not to a model directly, so
it takes the path an interactive request takes: the guard (the batch's key, its scopes, limits
and budgets), the gateway (routes, fallback, the cache), usage, cost and the audit log. The line
runs as the batch's owner: the runner puts the key's record in the request's ASGI scope under
`BATCH_KEY`, which only code in this process can do (a network client controls headers, never
the scope), so no secret is needed: the key store keeps only hashes.

Sharing the model with interactive traffic (the rule, measured in docs/benchmarks.md): the batch
runs at most `slots` lines at once, the largest slot count of the loaded models (or
EMBER_BATCH_CONCURRENCY). While interactive requests are running, or ran in the last
INTERACTIVE_GRACE seconds, it runs at most slots - 1 - (interactive requests in flight), and at
least one line: a slot stays free for the next interactive request, and the batch never stalls.
Batch lines carry `X-Ember-Priority: low`. The engine serves waiting requests first come, first
served, so an interactive request that finds every slot busy waits for one batch line at most.

Failures: 5xx, 429 (except a spent budget), a timeout or an exception are retried with
exponential backoff (Retry-After when the answer names one) up to EMBER_BATCH_MAX_ATTEMPTS; then
the line goes to the error file with its last answer. A spent budget (429 insufficient_quota)
and every other 4xx fail the line at once, so a batch whose budget ran out finishes quickly with
its remaining lines failed. A line claimed after its batch's window is `batch_expired` unrun.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
import socket
import time
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ember.guard.auth import BATCH_KEY
from ember.jobs.batches import EXPIRED_CODE, BatchService, error_line, output_line
from ember.jobs.records import Claim, LineResult

if TYPE_CHECKING:
    from ember.guard import Guard
    from ember.guard.keys import KeyRecord
    from ember.runtime.scheduler import Scheduler

log = logging.getLogger("ember.jobs")

ASGIApp = Callable[[MutableMapping[str, Any], Any, Any], Awaitable[None]]
INTERACTIVE_GRACE = 2.0  # seconds after the last interactive request that a slot stays reserved
LINE_TIMEOUT = 600.0  # one attempt of one line
TEND_EVERY = 0.5  # seconds between looks at the batches (validate, finalize)
SWEEP_EVERY = 60.0  # seconds between sweeps of expired files
RETRYABLE = frozenset({408, 429, 500, 502, 503, 504})


@dataclass(frozen=True)
class RunnerConfig:
    concurrency: int = 0  # 0: the loaded models' slot count
    default_slots: int = 4  # when no model is loaded yet (EMBER_NUM_PARALLEL)
    max_attempts: int = 5
    backoff: float = 0.5  # first retry after this many seconds, doubling
    max_backoff: float = 30.0


@dataclass(frozen=True)
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes


async def call_app(app: ASGIApp, path: str, body: bytes, headers: dict[str, str], extra: dict[str, Any]) -> Reply:
    """POST `body` to `path` through the ASGI app, in this process; `extra` goes into the scope."""
    scope: dict[str, Any] = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()]
        + [(b"content-length", str(len(body)).encode())],
        "client": ("127.0.0.1", 0),
        "server": ("ember-batch", 0),
        **extra,
    }
    sent = False
    done = asyncio.Event()
    status = 500
    reply_headers: dict[str, str] = {}
    parts: list[bytes] = []

    async def receive() -> dict[str, Any]:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        await done.wait()
        return {"type": "http.disconnect"}

    async def send(message: MutableMapping[str, Any]) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]
            reply_headers.update((k.decode("latin-1").lower(), v.decode("latin-1")) for k, v in message["headers"])
        elif message["type"] == "http.response.body":
            parts.append(message.get("body", b""))
            if not message.get("more_body", False):
                done.set()

    try:
        await app(scope, receive, send)
    finally:
        done.set()
    return Reply(status, reply_headers, b"".join(parts))


class BatchRunner:
    def __init__(
        self,
        service: BatchService,
        app: ASGIApp,
        scheduler: Scheduler,
        guard: Guard,
        config: RunnerConfig,
    ) -> None:
        self.service = service
        self.queue = service.queue
        self._app = app
        self._scheduler = scheduler
        self._guard = guard
        self.config = config
        self.worker = f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"
        self._running: set[asyncio.Task[None]] = set()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._tend_soon = False  # validate or finalize at the next turn of the loop
        self._last_interactive = -INTERACTIVE_GRACE
        self._keys: dict[str, KeyRecord] = {}
        self._keys_read = 0.0
        # For the metrics (E's telemetry reads these): lines finished by this node since start.
        self.lines_completed = 0
        self.lines_failed = 0

    # -- life ------------------------------------------------------------------------------------

    async def start(self) -> None:
        if self.queue.name == "sqlite":
            # One node owns an embedded queue: every claim left in it is a dead process's. (A shared
            # queue takes over a silent node's lines itself, jobs/redis_queue.py.)
            back = await self.queue.reclaim(0)
            if back:
                log.info("batch lines resumed after a restart: %d", back)
        self._task = asyncio.create_task(self._loop(), name="ember-batch-runner")

    def wake(self) -> None:
        """A batch was created or cancelled: look now rather than at the next tick."""
        self._tend_soon = True
        self._wake.set()

    async def stop(self) -> None:
        """Stop claiming; lines in flight are abandoned unfinished (their claims go back to the
        queue at the next start, so nothing is lost or written twice)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        for task in list(self._running):
            task.cancel()
        if self._running:
            await asyncio.gather(*self._running, return_exceptions=True)

    async def _loop(self) -> None:
        next_tend = next_sweep = 0.0
        while True:
            try:
                now = time.monotonic()
                if now >= next_tend or self._tend_soon:
                    self._tend_soon = False
                    await self._tend()
                    next_tend = now + TEND_EVERY
                if now >= next_sweep:
                    self.service.files.sweep_expired(time.time())
                    next_sweep = now + SWEEP_EVERY
                claimed = await self._dispatch()
            except asyncio.CancelledError:
                raise
            except Exception:  # a full disk, a locked database: say so, keep the loop alive
                log.exception("batch runner step failed")
                claimed = 0
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                # Busy: look again soon (a line finishing sets the event); idle: every tend tick.
                await asyncio.wait_for(self._wake.wait(), 0.05 if claimed or self._running else TEND_EVERY)

    # -- batches -----------------------------------------------------------------------------------

    async def _tend(self) -> None:
        for listed in self.service.iter_active():
            # Read afresh: a cancel may have come in while an earlier batch was being tended.
            record = self.service.store.get_batch(listed.id, None)
            if record is None:
                continue
            if record.status == "validating":
                try:
                    await self.service.validate(record)
                except Exception as exc:  # an unreadable input file: the batch fails, the runner goes on
                    log.exception("batch %s: validation failed", record.id)
                    await self.service.fail(record, "validation_error", f"the input file could not be read: {exc}")
                self.wake()
            elif record.status == "cancelling" and record.in_progress_at is None:
                await self.service.finalize(record)  # cancelled while validating: nothing ran
            else:
                counts = await self.queue.counts(record.id)
                if counts.unfinished == 0:
                    await self.service.finalize(record)
                    log.info("batch %s %s", record.id, record.status)

    # -- lines -------------------------------------------------------------------------------------

    def room(self) -> int:
        """How many more lines may start now (the rule in the module docstring)."""
        runners = self._scheduler.running()
        slots = self.config.concurrency or max((r.engine.parallel for r in runners), default=self.config.default_slots)
        busy = sum(r.in_flight for r in runners)
        mine = len(self._running)
        interactive = max(0, busy - mine)
        now = time.monotonic()
        if interactive:
            self._last_interactive = now
        recent = now - self._last_interactive < INTERACTIVE_GRACE
        limit = max(1, slots - 1 - interactive) if recent else slots
        return limit - mine

    async def _dispatch(self) -> int:
        room = self.room()
        if room <= 0:
            return 0
        claims = await self.queue.claim(self.worker, room)
        for claim in claims:
            if time.time() >= claim.line.deadline:
                await self._finish(claim, True, _expired(claim))
                continue
            task = asyncio.create_task(self._run(claim), name=f"ember-batch-line-{claim.line.custom_id}")
            self._running.add(task)
            task.add_done_callback(self._line_done)
        return len(claims)

    def _line_done(self, task: asyncio.Task[None]) -> None:
        self._running.discard(task)
        if not self._running:
            self._tend_soon = True  # perhaps a batch's last line: finalize it now, not at the tick
        self._wake.set()
        if not task.cancelled() and task.exception() is not None:
            log.error("batch line failed unexpectedly", exc_info=task.exception())

    async def _finish(self, claim: Claim, failed: bool, text: str) -> None:
        line = claim.line
        stored = await self.queue.complete(claim, LineResult(line.batch_id, line.index, line.custom_id, failed, text))
        if stored:
            if failed:
                self.lines_failed += 1
            else:
                self.lines_completed += 1

    async def _run(self, claim: Claim) -> None:
        line = claim.line
        if claim.attempts >= self.config.max_attempts:
            # Claimed this often already: its workers died each time. Do not take a third server down.
            message = f"the line was claimed {claim.attempts} times without finishing (its worker died each time)"
            await self._finish(claim, True, error_line(line.custom_id, "too_many_attempts", message))
            return
        key = self._key_of(line.owner)
        extra = {BATCH_KEY: key} if key is not None else {}
        headers = {"content-type": "application/json", "x-ember-priority": "low", "x-ember-batch": line.batch_id}
        body = line.body.encode()
        last: Reply | None = None
        last_error = ""
        for attempt in range(self.config.max_attempts):
            if attempt:
                await asyncio.sleep(self._delay(attempt, last))
                if time.time() >= line.deadline:
                    await self._finish(claim, True, _expired(claim))
                    return
            try:
                last = await asyncio.wait_for(call_app(self._app, line.url, body, headers, extra), LINE_TIMEOUT)
                last_error = ""
            except TimeoutError:
                last, last_error = None, f"no answer within {LINE_TIMEOUT:.0f} s"
                continue
            except Exception as exc:  # the app itself broke: retry like a 500
                last, last_error = None, f"{type(exc).__name__}: {exc}"
                continue
            if 200 <= last.status < 300:
                await self._finish(
                    claim, False, output_line(line.custom_id, last.status, _request_id(last), _json(last))
                )
                return
            if last.status not in RETRYABLE or _code(last) == "insufficient_quota":
                break
        await self._finish(claim, True, _failure(line.custom_id, last, last_error, self.config.max_attempts))

    def _delay(self, attempt: int, last: Reply | None) -> float:
        delay = min(self.config.max_backoff, self.config.backoff * 2 ** (attempt - 1))
        if last is not None and "retry-after" in last.headers:
            with contextlib.suppress(ValueError):
                delay = max(delay, min(float(last.headers["retry-after"]), 60.0))
        return delay

    def _key_of(self, owner: str) -> KeyRecord | None:
        """The owner's current key record (re-read every few seconds: a revoked key stops its
        batches); None when keys are off or the owner is no key."""
        if not self._guard.enabled or not owner:
            return None
        now = time.monotonic()
        if now - self._keys_read > 2.0 or owner not in self._keys:  # a key made a moment ago: read again
            try:
                self._keys = {k.name: k for k in self._guard.keys.list()}
            except Exception:  # unreadable store: the guard answers 401/503 for the line
                self._keys = {}
            self._keys_read = now
        return self._keys.get(owner)


def _json(reply: Reply) -> Any:
    try:
        return json.loads(reply.body)
    except ValueError:
        return reply.body.decode("utf-8", "replace")


def _code(reply: Reply) -> str | None:
    body = _json(reply)
    error = body.get("error") if isinstance(body, dict) else None
    code = error.get("code") if isinstance(error, dict) else None
    return code if isinstance(code, str) else None


def _request_id(reply: Reply) -> str:
    return reply.headers.get("x-request-id") or "req_" + secrets.token_hex(12)


def _failure(custom_id: str, last: Reply | None, last_error: str, attempts: int) -> str:
    if last is None:
        return error_line(custom_id, "request_failed", f"{last_error} (after {attempts} attempts)")
    body = _json(last)
    error = body.get("error") if isinstance(body, dict) else None
    message = error.get("message") if isinstance(error, dict) else None
    code = _code(last) or f"http_{last.status}"
    return error_line(custom_id, code, str(message or f"HTTP {last.status}"), last.status, _request_id(last), body)


def _expired(claim: Claim) -> str:
    return error_line(
        claim.line.custom_id, EXPIRED_CODE, "This request could not be executed before the completion window expired."
    )
