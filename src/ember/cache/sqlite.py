"""The cache on disk (state_dir/cache.db): answers survive a restart.

Reads run on the event loop: a primary-key lookup in WAL mode takes microseconds and never
waits for a writer, so a thread hop would cost more than the query. Writes (a commit, now and
then a checkpoint that touches the disk) run in a thread on their own connection.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path

from ember.cache.entry import CachedAnswer

log = logging.getLogger("ember.cache")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS response_cache (
    key TEXT PRIMARY KEY,
    value BLOB NOT NULL,
    expires REAL,             -- unix time; NULL: never
    created REAL NOT NULL
)
"""
# Expired and surplus rows are pruned every this many writes (and at start).
_PRUNE_EVERY = 64


class SQLiteBackend:
    name = "sqlite"

    def __init__(
        self, path: Path, *, ttl: float | None, max_entries: int, clock: Callable[[], float] = time.time
    ) -> None:
        self._clock = clock  # unix seconds (the rows outlive the process); tests pass their own
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._ttl = ttl
        self._max_entries = max_entries
        self._writes = 0
        self._write_lock = threading.Lock()
        self._writer = self._connect(check_same_thread=False)
        with self._write_lock:
            self._writer.execute(_SCHEMA)
            self._prune()
        self._reader = self._connect(check_same_thread=True)
        self._read_failed = False

    def _connect(self, *, check_same_thread: bool) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, check_same_thread=check_same_thread, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: no fsync per commit
        db.execute("PRAGMA busy_timeout=2000")
        return db

    async def get(self, key: str) -> CachedAnswer | None:
        try:
            row = self._reader.execute("SELECT value, expires FROM response_cache WHERE key = ?", (key,)).fetchone()
        except sqlite3.Error as exc:
            if not self._read_failed:  # once: a broken file would otherwise log per request
                log.warning("response cache %s unreadable (%s); serving without it", self.path, exc)
                self._read_failed = True
            return None
        if row is None:
            return None
        value, expires = row
        if expires is not None and expires <= self._clock():
            return None  # pruned later by a writer
        return CachedAnswer.decode(value)

    async def put(self, key: str, answer: CachedAnswer, blob: bytes) -> None:
        now = self._clock()
        expires = None if self._ttl is None else now + self._ttl
        await asyncio.to_thread(self._put, key, blob, expires, now)

    def _put(self, key: str, blob: bytes, expires: float | None, now: float) -> None:
        with self._write_lock:
            self._writer.execute(
                "INSERT OR REPLACE INTO response_cache (key, value, expires, created) VALUES (?, ?, ?, ?)",
                (key, blob, expires, now),
            )
            self._writes += 1
            if self._writes % _PRUNE_EVERY == 0:
                self._prune()

    def _prune(self) -> None:
        """Drop expired rows, then the oldest beyond max_entries. Caller holds the write lock."""
        self._writer.execute("DELETE FROM response_cache WHERE expires IS NOT NULL AND expires <= ?", (self._clock(),))
        self._writer.execute(
            "DELETE FROM response_cache WHERE key IN "
            "(SELECT key FROM response_cache ORDER BY created DESC LIMIT -1 OFFSET ?)",
            (self._max_entries,),
        )

    async def aclose(self) -> None:
        self._reader.close()
        with self._write_lock:
            self._writer.close()
