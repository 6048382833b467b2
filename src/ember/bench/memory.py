"""Resident memory of a server process and its descendants, sampled while a benchmark runs.

Servers differ in shape: llama-server is one process, ember runs a worker process per model.
Summing the whole process tree makes them comparable. Linux /proc only; elsewhere the
sampler reports nothing rather than guessing.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

PROC = Path("/proc")
_KIB_PER_MIB = 1024
_SAMPLE_EVERY_S = 0.2
# Walking all of /proc for the process tree costs far more than reading a few status files:
# do it every this many samples (a worker process starts once per model load, not per request).
_TREE_EVERY = 10


def rss_kib(pid: int, proc: Path = PROC) -> int | None:
    """VmRSS of one process in KiB; None when it is gone (or is a zombie without memory)."""
    try:
        text = (proc / str(pid) / "status").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return None


def _parent_of(stat_text: str) -> int | None:
    # The command name (field 2) may hold spaces and parentheses: split after its last ')'.
    _, _, rest = stat_text.rpartition(")")
    fields = rest.split()
    return int(fields[1]) if len(fields) > 1 else None


def descendants(pid: int, proc: Path = PROC) -> list[int]:
    """Every process below `pid` in the process tree (children, grandchildren, ...)."""
    children: dict[int, list[int]] = {}
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parent = _parent_of((entry / "stat").read_text())
        except (OSError, ValueError):
            continue  # exited while we looked
        if parent is not None:
            children.setdefault(parent, []).append(int(entry.name))
    found: list[int] = []
    todo = list(children.get(pid, []))
    while todo:
        child = todo.pop()
        found.append(child)
        todo.extend(children.get(child, []))
    return found


def process_exists(pid: int, proc: Path = PROC) -> bool:
    return (proc / str(pid) / "status").exists()


@dataclass
class RssSampler:
    """Samples a process tree's RSS in the background; `peak_mib` since the last `reset`."""

    pid: int
    interval_s: float = _SAMPLE_EVERY_S
    peak_mib: float | None = None
    overall_peak_mib: float | None = None
    last_mib: float | None = None
    _tree: list[int] = field(default_factory=list)
    _samples: int = 0

    def reset(self) -> None:
        self.peak_mib = None

    def sample(self) -> None:
        if self._samples % _TREE_EVERY == 0:
            self._tree = descendants(self.pid)
        self._samples += 1
        own = rss_kib(self.pid)
        if own is None:
            return
        value = (own + sum(rss_kib(child) or 0 for child in self._tree)) / _KIB_PER_MIB
        self.last_mib = value
        self.peak_mib = value if self.peak_mib is None else max(self.peak_mib, value)
        self.overall_peak_mib = value if self.overall_peak_mib is None else max(self.overall_peak_mib, value)

    async def _loop(self) -> None:
        while True:
            # Blocking file reads on the event loop, but a handful of small ones (the full /proc
            # walk only every _TREE_EVERY samples): too little to disturb the streams' timing.
            self.sample()
            await asyncio.sleep(self.interval_s)

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[RssSampler]:
        task = asyncio.create_task(self._loop())
        try:
            yield self
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            self.sample()
