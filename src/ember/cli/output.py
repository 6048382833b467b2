"""How the CLI writes: sizes, times, tables and pull progress.

A terminal gets colour and live progress bars; a pipe or a log file gets plain lines that
grep and CI logs can read, with progress thinned to one line per ~5%.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from types import TracebackType
from typing import Any, Protocol, TextIO

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table

# Plain output must never wrap or be cut at 80 columns when piped: give it room.
_PLAIN_WIDTH = 1000


def console_for(stream: TextIO | None = None) -> Console:
    """A rich console on `stream` (stdout by default): styled on a TTY, plain otherwise."""
    stream = stream or sys.stdout
    if stream.isatty():
        return Console(file=stream, highlight=False)
    return Console(file=stream, width=_PLAIN_WIDTH, no_color=True, highlight=False, emoji=False)


def error_line(message: str) -> None:
    """The one line every failure ends in."""
    # Only the first line: a multi-line server message would read as a traceback.
    first = message.strip().splitlines()[0] if message.strip() else "unknown error"
    print(f"Error: {first}", file=sys.stderr)


def human_size(num_bytes: float | int | None) -> str:
    """Decimal units, as Ollama prints them: 98 MB, 1.3 GB."""
    if num_bytes is None:
        return "-"
    value = float(num_bytes)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(value) < 1000 or unit == "TB":
            if unit == "B":
                return f"{int(value)} B"
            return f"{value:.0f} {unit}" if value >= 10 else f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.1f} TB"  # unreachable; keeps type checkers calm


_FRACTION = re.compile(r"(\.\d{6})\d+")


def parse_time(value: Any) -> datetime | None:
    """An RFC 3339 timestamp (Go's nanoseconds and 'Z' included) as an aware datetime."""
    if not isinstance(value, str) or not value:
        return None
    text = _FRACTION.sub(r"\1", value.strip())
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _plural(count: int, unit: str) -> str:
    return f"{count} {unit}" if count == 1 else f"{count} {unit}s"


def relative_time(moment: datetime | None, now: datetime | None = None) -> str:
    """'3 minutes ago', 'About an hour from now', as Ollama words it."""
    if moment is None:
        return "-"
    now = now or datetime.now(UTC)
    seconds = (now - moment).total_seconds()
    suffix = "ago" if seconds >= 0 else "from now"
    seconds = abs(seconds)
    if seconds < 1:
        return "Less than a second ago" if suffix == "ago" else "Less than a second from now"
    if seconds < 60:
        text = _plural(int(seconds), "second")
    elif seconds < 120:
        text = "About a minute"
    elif seconds < 3600:
        text = _plural(int(seconds // 60), "minute")
    elif seconds < 7200:
        text = "About an hour"
    elif seconds < 2 * 86400:
        text = _plural(int(seconds // 3600), "hour")
    elif seconds < 14 * 86400:
        text = _plural(int(seconds // 86400), "day")
    elif seconds < 60 * 86400:
        text = _plural(int(seconds // (7 * 86400)), "week")
    elif seconds < 730 * 86400:
        text = _plural(int(seconds // (30 * 86400)), "month")
    else:
        text = _plural(int(seconds // (365 * 86400)), "year")
    return f"{text} {suffix}"


def short_digest(digest: Any) -> str:
    """The 12 hex characters Ollama shows as a model's ID."""
    if not isinstance(digest, str) or not digest:
        return "-"
    return digest.split(":", 1)[-1][:12]


def print_table(headers: Sequence[str], rows: Sequence[Sequence[str]], stream: TextIO | None = None) -> None:
    """Borderless aligned columns, like `ollama list`."""
    console = console_for(stream)
    table = Table(box=None, pad_edge=False, show_edge=False, header_style="bold" if console.is_terminal else "")
    for header in headers:
        table.add_column(header, no_wrap=True, overflow="fold")
    for row in rows:
        table.add_row(*row)
    with console.capture() as captured:
        console.print(table)
    # rich pads every cell to the column width; trailing blanks only get in the way of pipes.
    lines = [line.rstrip() for line in captured.get().splitlines()]
    console.file.write("\n".join(lines) + "\n")
    console.file.flush()


def status_word(ok: bool, stream: TextIO | None = None) -> str:
    """'ok' in green or 'problem' in red on a terminal, padded so the checks line up."""
    word = "ok" if ok else "problem"
    padded = f"{word:<8}"
    if (stream or sys.stdout).isatty():
        colour = "32" if ok else "31"
        return f"\x1b[{colour}m{padded}\x1b[0m"
    return padded


# -- pull progress ----------------------------------------------------------------------------


@dataclass(frozen=True)
class PullEvent:
    """One progress report of a pull, from the server's NDJSON or the local store's callback."""

    status: str
    digest: str | None = None
    total: int | None = None
    completed: int | None = None

    @classmethod
    def from_any(cls, source: Any) -> PullEvent:
        """Accepts a server line (dict) or the store's PullProgress (attributes)."""
        get = source.get if isinstance(source, dict) else (lambda key: getattr(source, key, None))
        return cls(
            status=str(get("status") or ""),
            digest=get("digest") or None,
            total=get("total") or None,
            completed=get("completed"),
        )

    @property
    def key(self) -> str:
        return self.digest or self.status


class PullView(Protocol):
    def __enter__(self) -> PullView: ...

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...

    def update(self, event: PullEvent) -> None: ...


class RichPullView:
    """Live bars (bytes, speed, ETA), one per blob, as on a terminal."""

    def __init__(self, stream: TextIO) -> None:
        self._progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            DownloadColumn(binary_units=False),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=Console(file=stream),
            transient=False,
        )
        self._tasks: dict[str, TaskID] = {}
        self._last_status: str | None = None

    def __enter__(self) -> RichPullView:
        self._progress.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._progress.stop()

    def update(self, event: PullEvent) -> None:
        if event.total:
            task = self._tasks.get(event.key)
            if task is None:
                task = self._progress.add_task(event.status, total=event.total)
                self._tasks[event.key] = task
            self._progress.update(task, description=event.status, total=event.total, completed=event.completed or 0)
            return
        if event.status and event.status != self._last_status:
            self._progress.console.print(event.status)
        self._last_status = event.status


class PlainPullView:
    """One line per status change and per ~5% of a blob, for pipes and logs."""

    STEP = 5

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._last_status: str | None = None
        self._last_step: dict[str, int] = {}

    def __enter__(self) -> PlainPullView:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stream.flush()

    def _line(self, text: str) -> None:
        print(text, file=self._stream, flush=True)

    def update(self, event: PullEvent) -> None:
        if event.total:
            done = min(event.completed or 0, event.total)
            percent = int(done * 100 / event.total)
            step = percent // self.STEP
            if self._last_step.get(event.key, -1) < step:
                self._last_step[event.key] = step
                self._line(f"{event.status} {percent}% ({human_size(done)}/{human_size(event.total)})")
            self._last_status = event.status
            return
        if event.status and event.status != self._last_status:
            self._line(event.status)
        self._last_status = event.status


def pull_view(stream: TextIO | None = None) -> PullView:
    stream = stream or sys.stdout
    return RichPullView(stream) if stream.isatty() else PlainPullView(stream)
