"""`ember bench`: load an OpenAI-compatible server with streaming chats and report what it did.

The measuring lives in ember.bench (no typer there); this module only turns flags into a
BenchConfig, shows progress on stderr (stdout stays clean for --json) and prints the result.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from types import TracebackType
from typing import Annotated, Any, TextIO

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

from ember.bench.loadgen import BenchConfig, RequestResult, parse_levels, run_bench
from ember.bench.report import level_rows, summary_lines, to_document
from ember.cli.output import console_for, print_table
from ember.config import Settings
from ember.errors import EmberError


class _RichProgress:
    """A live bar per phase, on a terminal."""

    def __init__(self, stream: TextIO) -> None:
        self._progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[errors]} errors"),
            TimeElapsedColumn(),
            console=Console(file=stream),
            transient=False,
        )
        self._task: TaskID | None = None
        self._errors = 0

    def __enter__(self) -> _RichProgress:
        self._progress.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._progress.stop()

    def phase_started(self, name: str, total: int) -> None:
        self._errors = 0
        self._task = self._progress.add_task(name, total=total, errors=0)

    def request_done(self, result: RequestResult) -> None:
        if self._task is None:
            return
        self._errors += 0 if result.ok else 1
        self._progress.update(self._task, advance=1, errors=self._errors)

    def phase_finished(self, name: str) -> None:
        self._task = None


class _PlainProgress:
    """A line as each phase ends, for pipes and CI logs (a failed warm-up leaves only the error)."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._started = 0.0
        self._done = 0
        self._errors = 0

    def __enter__(self) -> _PlainProgress:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stream.flush()

    def phase_started(self, name: str, total: int) -> None:
        self._started, self._done, self._errors = time.perf_counter(), 0, 0

    def request_done(self, result: RequestResult) -> None:
        self._done += 1
        self._errors += 0 if result.ok else 1

    def phase_finished(self, name: str) -> None:
        elapsed = time.perf_counter() - self._started
        print(f"{name}: {self._done} done, {self._errors} errors, {elapsed:.1f} s", file=self._stream, flush=True)


def bench(
    ctx: typer.Context,
    url: Annotated[
        str | None,
        typer.Option(
            "--url", help="OpenAI-compatible base URL, ending in /v1. Default: the ember server at EMBER_HOST."
        ),
    ] = None,
    model: Annotated[str, typer.Option("--model", "-m", help="Model name sent in each request.")] = "smollm2:135m",
    concurrency: Annotated[
        str, typer.Option("--concurrency", "-c", help="Concurrency levels, comma-separated.")
    ] = "1,8,16",
    requests: Annotated[
        int | None, typer.Option("--requests", "-n", help="Requests per level. Default: twice the concurrency.")
    ] = None,
    prompt_tokens: Annotated[
        int, typer.Option("--prompt-tokens", help="Approximate prompt size of each request.")
    ] = 64,
    max_tokens: Annotated[int, typer.Option("--max-tokens", help="max_tokens of each request.")] = 128,
    shared_prefix: Annotated[
        int,
        typer.Option(
            "--shared-prefix",
            help="Put a common system prompt of about this many tokens before every request; "
            "time one cold request first.",
        ),
    ] = 0,
    temperature: Annotated[float, typer.Option("--temperature", help="Sampling temperature.")] = 0.0,
    repeat_penalty: Annotated[
        float | None,
        typer.Option(
            "--repeat-penalty",
            help="Send this repeat_penalty (llama.cpp's meaning; 1 is off) in every request. "
            "Default: the server's own.",
        ),
    ] = None,
    timeout: Annotated[float, typer.Option("--timeout", help="Seconds one request may take, stream included.")] = 120.0,
    warmup: Annotated[
        bool, typer.Option("--warmup/--no-warmup", help="Send one short untimed request first (loads the model).")
    ] = True,
    memory_pid: Annotated[
        int | None,
        typer.Option("--memory-pid", help="Sample the RSS of this process and its children; report the peak."),
    ] = None,
    api_key: Annotated[
        str | None,
        typer.Option(
            "--api-key",
            envvar="EMBER_API_KEY",
            show_envvar=False,
            help="Bearer token sent to the server. Default: EMBER_API_KEY.",
        ),
    ] = None,
    label: Annotated[
        str | None, typer.Option("--label", help="Name of this run in the report (e.g. the server's).")
    ] = None,
    seed: Annotated[
        str | None,
        typer.Option(
            "--seed",
            help="Make the prompts those of any other run with this seed (to give several servers "
            "the same requests). Default: new prompts every run.",
        ),
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print one JSON document with every number instead of a table.")
    ] = False,
) -> None:
    """Benchmark a server: streaming chat completions at several concurrency levels."""
    if ctx.invoked_subcommand is not None:
        return  # the group's callback (cli/bench_fleet.py): `ember bench fleet` runs instead
    config = BenchConfig(
        url=url or Settings().base_url + "/v1",
        model=model,
        concurrency=parse_levels(concurrency),
        requests=requests,
        prompt_tokens=prompt_tokens,
        max_tokens=max_tokens,
        shared_prefix=shared_prefix,
        temperature=temperature,
        repeat_penalty=repeat_penalty,
        timeout_s=timeout,
        warmup=warmup,
        api_key=api_key,
        memory_pid=memory_pid,
        label=label,
        seed=seed,
    )
    progress: _RichProgress | _PlainProgress = (
        _RichProgress(sys.stderr) if sys.stderr.isatty() else _PlainProgress(sys.stderr)
    )
    with progress:
        run = asyncio.run(run_bench(config, progress))
    document = to_document(run)
    if as_json:
        print(json.dumps(document, indent=2))
    else:
        _print_report(document)
    if document["errors"]:
        total = sum(level["requests"] for level in document["levels"]) + (1 if document["shared_prefix"] else 0)
        kinds = sorted({kind for level in document["levels"] for kind in level["error_kinds"]})
        cold = (document["shared_prefix"] or {}).get("cold_error")
        if cold:
            kinds.append(f"cold: {cold}")
        raise EmberError(f"{document['errors']} of {total} requests failed ({'; '.join(kinds)})")


def _print_report(document: dict[str, Any]) -> None:
    console = console_for()
    title = f"{document.get('label') or document['url']}  model {document['model']}"
    console.print(title, style="bold" if console.is_terminal else None)
    headers, rows = level_rows(document)
    if console.is_terminal:
        # Two-line headers keep all columns within 80 terminal columns; pipes get one line to grep.
        headers = [header.replace(" ", "\n", 1) for header in headers]
    print_table(headers, rows)
    for line in summary_lines(document):
        console.print(line)
