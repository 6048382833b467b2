"""BatchWriter: rows appended on the request path, written to disk in batches by one thread.

`put` only appends to a deque: it wakes no thread, so a request pays nothing for the
write. The thread drains the deque every `interval` seconds; `flush` drains it at once
in the caller's thread (before reading totals back, say). One lock keeps batches in order.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")
log = logging.getLogger("ember")


class BatchWriter(Generic[T]):
    def __init__(self, name: str, write: Callable[[list[T]], None], interval: float = 0.05) -> None:
        self._name = name
        self._write = write
        self._interval = interval
        self._pending: deque[T] = deque()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"ember-{name}", daemon=True)
        self._thread.start()

    def put(self, item: T) -> None:
        self._pending.append(item)

    def flush(self) -> None:
        with self._lock:
            batch: list[T] = []
            while self._pending:
                batch.append(self._pending.popleft())
            if not batch:
                return
            try:
                self._write(batch)
            except Exception:  # a full disk must not take the server down; say so
                log.exception("could not write %d %s rows", len(batch), self._name)

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self.flush()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self.flush()
