"""LineQueue: what a queue of batch lines offers the runner, whatever holds it.

Two implementations: SqliteLineQueue (sqlite_queue.py, the embedded default: one node) and the
Redis Streams queue (redis_queue.py, with EMBER_REDIS_URL: several nodes work one batch).

The contract, which the runner relies on for "every line exactly once":
- `enqueue` is all or nothing for a batch: after it returns, every line is waiting.
- `claim` hands each waiting line to one worker; a line stays claimed until `complete` or until
  `reclaim` gives it back (its worker died or went silent).
- `complete` stores the line's result and retires it in one step (one transaction, or one Lua
  script): a line is never finished twice. It returns False when the line had already been
  finished (a worker thought dead came back late): the caller drops its result.
- `results` reads what `complete` stored, in line order: the output and error files are built
  from it at finalizing, so a crash between lines loses nothing and duplicates nothing.
- `drop` removes a batch's waiting lines (cancel, expiry) and `forget` everything of a batch
  once its files are written.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from ember.jobs.records import Claim, Line, LineCounts, LineResult


class LineQueue(Protocol):
    name: str  # "sqlite" or "redis", for logs and metrics

    async def enqueue(self, batch_id: str, lines: Sequence[Line]) -> None:
        """Add a batch's lines (idempotent: enqueueing a batch again adds nothing)."""
        ...

    async def claim(self, worker: str, count: int) -> list[Claim]:
        """Up to `count` waiting lines for this worker, oldest batch first; [] when none wait."""
        ...

    async def complete(self, claim: Claim, result: LineResult) -> bool:
        """Store the result and retire the line at once; False if it was already finished."""
        ...

    async def reclaim(self, idle_seconds: float) -> int:
        """Give back lines claimed more than `idle_seconds` ago and not finished (their worker died);
        returns how many. idle_seconds=0 at a lone node's start: every claim is a dead process's."""
        ...

    async def counts(self, batch_id: str) -> LineCounts: ...

    async def waiting(self) -> int:
        """Lines waiting over all batches (the metrics' gauge)."""
        ...

    async def results(self, batch_id: str) -> list[LineResult]:
        """Every finished line of the batch, by index."""
        ...

    async def drop(self, batch_id: str) -> int:
        """Remove the batch's waiting lines (cancelled or expired); returns how many. Claimed lines
        still finish and are kept."""
        ...

    async def forget(self, batch_id: str) -> None:
        """Remove everything the queue holds for the batch (after its files are written)."""
        ...

    async def aclose(self) -> None: ...
