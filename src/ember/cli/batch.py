"""`ember batch …`: batch jobs through the server's OpenAI Files and Batches API, as any client.

create uploads the JSONL file (purpose batch) and creates the batch; --wait follows it to the end
with a progress bar of completed/failed/total on a terminal, or a plain line per change (thinned
to ~5% steps) in a pipe or CI log. Data goes to stdout (the id, tables, a downloaded file);
failures are one `Error:` line on stderr, from main(). An upload whose batch or schedule the
server then refuses is deleted again, so a refused command leaves nothing behind.

Schedules (schedule, schedules, unschedule) are ember's /v1/ember/batch_schedules.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from contextlib import suppress
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Annotated, Any, Protocol, TextIO

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

from ember.cli.client import EmberClient
from ember.cli.output import print_table, relative_time
from ember.config import Settings
from ember.errors import EmberError

batch_app = typer.Typer(
    help="Batch jobs: run a JSONL file of requests (OpenAI's Batch API), now or on a cron schedule.",
    no_args_is_help=True,
)

DEFAULT_ENDPOINT = "/v1/chat/completions"
DEFAULT_WINDOW = "24h"
POLL_SECONDS = 0.5
FINISHED = ("completed", "failed", "expired", "cancelled")
SCHEDULES = "/v1/ember/batch_schedules"

_File = Annotated[Path, typer.Argument(help="A JSONL file: one {custom_id, method, url, body} request a line.")]
_Endpoint = Annotated[
    str,
    typer.Option("--endpoint", help="/v1/chat/completions, /v1/completions, /v1/embeddings or /v1/responses."),
]
_Window = Annotated[str, typer.Option("--completion-window", help="How long the batch may run: 24h, or e.g. 1h, 30m.")]


def _client() -> EmberClient:
    return EmberClient.from_settings(Settings())


def _upload(client: EmberClient, path: Path) -> str:
    if not path.is_file():
        raise EmberError(f"{path}: no such file")
    with path.open("rb") as handle:
        uploaded = client.call(
            "POST", "/v1/files", files={"file": (path.name, handle, "application/jsonl"), "purpose": (None, "batch")}
        )
    return str(uploaded["id"])


def _then_delete(client: EmberClient, file_id: str) -> None:
    """The server refused what the upload was for: take the upload back (best effort)."""
    with suppress(EmberError):
        client.call("DELETE", f"/v1/files/{file_id}")


def _counts(batch: dict[str, Any]) -> tuple[int, int, int]:
    counts = batch.get("request_counts") or {}
    return int(counts.get("completed") or 0), int(counts.get("failed") or 0), int(counts.get("total") or 0)


def _when(ts: Any) -> str:
    if not isinstance(ts, (int, float)):
        return "-"
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _ago(ts: Any) -> str:
    return relative_time(datetime.fromtimestamp(ts, UTC)) if isinstance(ts, (int, float)) else "-"


def _first_error(batch: dict[str, Any]) -> str:
    data = (batch.get("errors") or {}).get("data") or []
    if not data:
        return ""
    first = data[0]
    where = f"line {first['line']}: " if first.get("line") else ""
    more = f" (and {len(data) - 1} more: ember batch show {batch['id']})" if len(data) > 1 else ""
    return f": {where}{first.get('message') or first.get('code')}{more}"


# -- following a batch ----------------------------------------------------------------------------


class BatchView(Protocol):
    def __enter__(self) -> BatchView: ...

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None: ...

    def update(self, batch: dict[str, Any]) -> None: ...


class RichBatchView:
    """One live bar: done (completed + failed) of total, the failed count, the status, the time."""

    def __init__(self, stream: TextIO) -> None:
        self._progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[failed]} failed"),
            TimeElapsedColumn(),
            console=Console(file=stream),
        )
        self._task: TaskID | None = None

    def __enter__(self) -> RichBatchView:
        self._progress.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._progress.stop()

    def update(self, batch: dict[str, Any]) -> None:
        completed, failed, total = _counts(batch)
        if self._task is None:
            self._task = self._progress.add_task(batch["status"], total=total or None, failed=failed)
        self._progress.update(
            self._task, description=batch["status"], total=total or None, completed=completed + failed, failed=failed
        )


class PlainBatchView:
    """A line when the status changes and per ~5% of the lines done, for pipes and CI logs."""

    STEP = 5

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._last: tuple[str, int] | None = None

    def __enter__(self) -> PlainBatchView:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stream.flush()

    def update(self, batch: dict[str, Any]) -> None:
        completed, failed, total = _counts(batch)
        step = (completed + failed) * 100 // total // self.STEP if total else 0
        now = (batch["status"], step)
        if now == self._last:
            return
        self._last = now
        print(f"{batch['status']} {completed + failed}/{total} done ({failed} failed)", file=self._stream, flush=True)


def batch_view(stream: TextIO | None = None) -> BatchView:
    stream = stream or sys.stdout
    return RichBatchView(stream) if stream.isatty() else PlainBatchView(stream)


def follow(client: EmberClient, batch: dict[str, Any], stream: TextIO, poll: float = POLL_SECONDS) -> dict[str, Any]:
    """Poll the batch until it ends, drawing its progress; the last state."""
    with batch_view(stream) as view:
        view.update(batch)
        while batch["status"] not in FINISHED:
            time.sleep(poll)
            batch = client.call("GET", f"/v1/batches/{batch['id']}")
            view.update(batch)
    return batch


def _outcome(batch: dict[str, Any]) -> None:
    """The summary line of a finished batch; a batch that did not complete is an error."""
    completed, failed, total = _counts(batch)
    status, batch_id = batch["status"], batch["id"]
    if status == "failed":
        raise EmberError(f"batch {batch_id} failed{_first_error(batch)}")
    if status in ("expired", "cancelled"):
        raise EmberError(
            f"batch {batch_id} {status} with {completed + failed} of {total} requests done: "
            f"`ember batch download {batch_id}` has what finished"
        )
    hint = f"; `ember batch download {batch_id} --errors` for the failures" if failed else ""
    typer.echo(f"batch {batch_id} completed: {completed} completed, {failed} failed of {total}{hint}")


# -- commands -------------------------------------------------------------------------------------


@batch_app.command("create")
def create(
    file: _File,
    endpoint: _Endpoint = DEFAULT_ENDPOINT,
    completion_window: _Window = DEFAULT_WINDOW,
    wait: Annotated[bool, typer.Option("--wait", help="Follow the batch until it ends, with its progress.")] = False,
) -> None:
    """Upload FILE and run it as a batch; prints the batch's id."""
    with _client() as client:
        file_id = _upload(client, file)
        body = {"input_file_id": file_id, "endpoint": endpoint, "completion_window": completion_window}
        try:
            batch = client.call("POST", "/v1/batches", json_body=body)
        except EmberError:
            _then_delete(client, file_id)
            raise
        typer.echo(batch["id"])
        if not wait:
            return
        try:
            batch = follow(client, batch, sys.stdout)
        except KeyboardInterrupt:
            print(f"\nthe batch goes on: `ember batch show {batch['id']}`", file=sys.stderr)
            raise
    _outcome(batch)


@batch_app.command("list")
def list_batches(
    limit: Annotated[int, typer.Option("--limit", min=1, max=100, help="How many, newest first.")] = 20,
) -> None:
    """Batches of this key, newest first."""
    with _client() as client:
        page = client.call("GET", "/v1/batches", params={"limit": limit})
    rows = []
    for batch in page.get("data") or []:
        completed, failed, total = _counts(batch)
        rows.append(
            [
                batch["id"],
                batch["status"],
                batch["endpoint"],
                f"{completed}/{failed}/{total}",
                _ago(batch["created_at"]),
            ]
        )
    print_table(["ID", "STATUS", "ENDPOINT", "DONE/FAILED/TOTAL", "CREATED"], rows)


_TIMES = ("created_at", "in_progress_at", "finalizing_at", "completed_at", "failed_at", "expired_at")
_MORE_TIMES = ("cancelling_at", "cancelled_at", "expires_at")


@batch_app.command("show")
def show(batch_id: Annotated[str, typer.Argument(help="The batch's id (batch_…).")]) -> None:
    """A batch's status, counts, files, times and errors."""
    with _client() as client:
        batch = client.call("GET", f"/v1/batches/{batch_id}")
    completed, failed, total = _counts(batch)
    rows = [
        ("id", batch["id"]),
        ("status", batch["status"]),
        ("endpoint", batch["endpoint"]),
        ("requests", f"{completed} completed, {failed} failed, {total} total"),
        ("input file", batch.get("input_file_id") or "-"),
        ("output file", batch.get("output_file_id") or "-"),
        ("error file", batch.get("error_file_id") or "-"),
    ]
    rows += [(name.removesuffix("_at").replace("_", " "), _when(batch[name])) for name in _TIMES if batch.get(name)]
    rows += [
        (name.removesuffix("_at").replace("_", " "), _when(batch[name])) for name in _MORE_TIMES if batch.get(name)
    ]
    for key, value in (batch.get("metadata") or {}).items():
        rows.append((f"metadata {key}", value))
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        typer.echo(f"{name:<{width}}  {value}")
    for error in (batch.get("errors") or {}).get("data") or []:
        where = f"line {error['line']}: " if error.get("line") else ""
        typer.echo(f"error  {where}{error.get('message')} ({error.get('code')})")


@batch_app.command("cancel")
def cancel(batch_id: Annotated[str, typer.Argument(help="The batch's id (batch_…).")]) -> None:
    """Cancel a batch: waiting requests are dropped, running ones finish and are kept."""
    with _client() as client:
        batch = client.call("POST", f"/v1/batches/{batch_id}/cancel")
    typer.echo(f"batch {batch['id']} {batch['status']}")


@batch_app.command("download")
def download(
    batch_id: Annotated[str, typer.Argument(help="The batch's id (batch_…).")],
    output: Annotated[Path | None, typer.Option("-o", "--output", help="Write to this file instead of stdout.")] = None,
    errors: Annotated[bool, typer.Option("--errors", help="The error file (failed requests) instead.")] = False,
) -> None:
    """A finished batch's output file (or its error file), as JSONL."""
    with _client() as client:
        batch = client.call("GET", f"/v1/batches/{batch_id}")
        field, what = ("error_file_id", "error file") if errors else ("output_file_id", "output file")
        file_id = batch.get(field)
        if not file_id:
            if batch["status"] not in FINISHED:
                raise EmberError(f"batch {batch_id} is {batch['status']}: its {what} comes when it ends")
            reason = "no request failed" if errors else "no request completed"
            raise EmberError(f"batch {batch_id} has no {what}: {reason}")
        path = f"/v1/files/{file_id}/content"
        if output is None:
            client.download(path, sys.stdout.buffer)
            sys.stdout.flush()
            return
        # Beside the target, renamed when whole: a broken download leaves no half file.
        fd, partial = tempfile.mkstemp(prefix=f".{output.name}.", dir=output.parent if str(output.parent) else ".")
        try:
            with os.fdopen(fd, "wb") as sink:
                written = client.download(path, sink)
            os.replace(partial, output)
        except BaseException:
            Path(partial).unlink(missing_ok=True)
            raise
    print(f"wrote {written} bytes to {output}", file=sys.stderr)


# -- schedules ----------------------------------------------------------------------------------


@batch_app.command("schedule")
def schedule(
    file: _File,
    cron: Annotated[str, typer.Option("--cron", help="Five cron fields in UTC, e.g. '0 2 * * *' (02:00 daily).")],
    endpoint: _Endpoint = DEFAULT_ENDPOINT,
    completion_window: _Window = DEFAULT_WINDOW,
) -> None:
    """Upload FILE once and create a batch from it on a cron schedule; prints the schedule's id."""
    from ember.jobs.schedules import check_cron  # croniter, only for this command

    check_cron(cron)  # before uploading: a typo costs nothing
    with _client() as client:
        file_id = _upload(client, file)
        body = {"cron": cron, "input_file_id": file_id, "endpoint": endpoint, "completion_window": completion_window}
        try:
            created = client.call("POST", SCHEDULES, json_body=body)
        except EmberError:
            _then_delete(client, file_id)
            raise
    typer.echo(created["id"])
    print(f"next run {_when(created['next_run_at'])}", file=sys.stderr)


@batch_app.command("schedules")
def schedules() -> None:
    """Batch schedules of this key."""
    with _client() as client:
        page = client.call("GET", SCHEDULES)
    rows = [
        [
            item["id"],
            item["cron"],
            item["endpoint"],
            item["input_file_id"],
            _when(item["next_run_at"]),
            item.get("last_batch_id") or "-",
            item.get("last_error") or "-",
        ]
        for item in page.get("data") or []
    ]
    print_table(["ID", "CRON", "ENDPOINT", "FILE", "NEXT RUN", "LAST BATCH", "LAST ERROR"], rows)


@batch_app.command("unschedule")
def unschedule(schedule_id: Annotated[str, typer.Argument(help="The schedule's id (bsched_…).")]) -> None:
    """Remove a schedule (batches it created stay, and so does its input file)."""
    with _client() as client:
        client.call("DELETE", f"{SCHEDULES}/{schedule_id}")
    typer.echo(f"removed schedule {schedule_id}")
