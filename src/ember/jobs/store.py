"""JobStore: file and batch records in state/jobs.db (SQLite, WAL), beside the queue's lines.

A batch is kept as one row: its status, timestamps and counts in columns, its errors and
metadata as JSON. Every change is one UPDATE of the whole row (`save`), so a reader never sees a
status without its timestamp. Reads filter by owner: another key's record is "not found".
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

from ember.jobs.records import BatchError, BatchRecord, FileRecord

_SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    id TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    filename TEXT NOT NULL,
    purpose TEXT NOT NULL,
    bytes INTEGER NOT NULL,
    created_at INTEGER NOT NULL,
    expires_at INTEGER,
    status TEXT NOT NULL,
    seq INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS files_owner ON files (owner, seq);
CREATE TABLE IF NOT EXISTS batches (
    id TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    seq INTEGER NOT NULL,
    status TEXT NOT NULL,
    record TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS batches_owner ON batches (owner, seq);
CREATE INDEX IF NOT EXISTS batches_status ON batches (status);
"""

_FILE_COLUMNS = "id, owner, filename, purpose, bytes, created_at, expires_at, status"
_BATCH_FIELDS = {f.name for f in fields(BatchRecord)}


def _batch_from(text: str) -> BatchRecord:
    data: dict[str, Any] = json.loads(text)
    errors = [BatchError(**e) for e in data.pop("errors", [])]
    return BatchRecord(**{k: v for k, v in data.items() if k in _BATCH_FIELDS}, errors=errors)


class JobStore:
    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, check_same_thread=False, timeout=30, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")  # as the queue: safe from kill -9
        self._db.executescript(_SCHEMA)
        self._lock = threading.Lock()

    def _next_seq(self, table: str) -> int:
        # Creation order even within one second (created_at is whole seconds): the list order.
        row = self._db.execute(f"SELECT coalesce(max(seq), 0) + 1 FROM {table}").fetchone()
        return int(row[0])

    # -- files ---------------------------------------------------------------------------------

    def add_file(self, record: FileRecord) -> None:
        with self._lock:
            self._db.execute(
                f"INSERT OR REPLACE INTO files ({_FILE_COLUMNS}, seq) VALUES (?,?,?,?,?,?,?,?,?)",
                (*_file_row(record), self._next_seq("files")),
            )

    def get_file(self, file_id: str, owner: str) -> FileRecord | None:
        with self._lock:
            row = self._db.execute(
                f"SELECT {_FILE_COLUMNS} FROM files WHERE id=? AND owner=?", (file_id, owner)
            ).fetchone()
        record = FileRecord(*row) if row else None
        if record is not None and record.expires_at is not None and record.expires_at <= time.time():
            return None  # expired: gone for the caller; the runner's sweep deletes the bytes
        return record

    def list_files(
        self, owner: str, *, purpose: str | None, after: str | None, limit: int, ascending: bool
    ) -> tuple[list[FileRecord], bool]:
        """A page of the owner's files and whether more follow; `after` is the last id seen."""
        where, args = ["owner=?", "(expires_at IS NULL OR expires_at > ?)"], [owner, time.time()]
        if purpose:
            where.append("purpose=?")
            args.append(purpose)
        with self._lock:
            if after:
                cursor = self._db.execute("SELECT seq FROM files WHERE id=? AND owner=?", (after, owner)).fetchone()
                if cursor is not None:
                    where.append("seq > ?" if ascending else "seq < ?")
                    args.append(cursor[0])
            rows = self._db.execute(
                f"SELECT {_FILE_COLUMNS} FROM files WHERE {' AND '.join(where)}"
                f" ORDER BY seq {'ASC' if ascending else 'DESC'} LIMIT ?",
                (*args, limit + 1),
            ).fetchall()
        return [FileRecord(*r) for r in rows[:limit]], len(rows) > limit

    def delete_file(self, file_id: str, owner: str) -> bool:
        with self._lock:
            return self._db.execute("DELETE FROM files WHERE id=? AND owner=?", (file_id, owner)).rowcount == 1

    def expired_files(self, now: float) -> list[FileRecord]:
        with self._lock:
            rows = self._db.execute(
                f"SELECT {_FILE_COLUMNS} FROM files WHERE expires_at IS NOT NULL AND expires_at <= ?", (now,)
            ).fetchall()
        return [FileRecord(*r) for r in rows]

    def forget_file(self, file_id: str) -> None:
        with self._lock:
            self._db.execute("DELETE FROM files WHERE id=?", (file_id,))

    # -- batches -------------------------------------------------------------------------------

    def add_batch(self, record: BatchRecord) -> None:
        with self._lock:
            self._db.execute(
                "INSERT INTO batches (id, owner, seq, status, record) VALUES (?,?,?,?,?)",
                (record.id, record.owner, self._next_seq("batches"), record.status, json.dumps(asdict(record))),
            )

    def save(self, record: BatchRecord) -> None:
        with self._lock:
            self._db.execute(
                "UPDATE batches SET status=?, record=? WHERE id=?",
                (record.status, json.dumps(asdict(record)), record.id),
            )

    def get_batch(self, batch_id: str, owner: str | None) -> BatchRecord | None:
        """owner None: whoever owns it (the runner)."""
        with self._lock:
            if owner is None:
                row = self._db.execute("SELECT record FROM batches WHERE id=?", (batch_id,)).fetchone()
            else:
                row = self._db.execute(
                    "SELECT record FROM batches WHERE id=? AND owner=?", (batch_id, owner)
                ).fetchone()
        return _batch_from(row[0]) if row else None

    def list_batches(self, owner: str, *, after: str | None, limit: int) -> tuple[list[BatchRecord], bool]:
        """Newest first, as OpenAI lists them; `after` is the last id of the previous page."""
        where, args = ["owner=?"], [owner]
        with self._lock:
            if after:
                cursor = self._db.execute("SELECT seq FROM batches WHERE id=? AND owner=?", (after, owner)).fetchone()
                if cursor is not None:
                    where.append("seq < ?")
                    args.append(cursor[0])
            rows = self._db.execute(
                f"SELECT record FROM batches WHERE {' AND '.join(where)} ORDER BY seq DESC LIMIT ?",
                (*args, limit + 1),
            ).fetchall()
        return [_batch_from(r[0]) for r in rows[:limit]], len(rows) > limit

    def active_batches(self) -> list[BatchRecord]:
        """Batches the runner still has work on, oldest first."""
        with self._lock:
            rows = self._db.execute(
                "SELECT record FROM batches WHERE status IN ('validating', 'in_progress', 'finalizing', 'cancelling')"
                " ORDER BY seq"
            ).fetchall()
        return [_batch_from(r[0]) for r in rows]

    def count_by_status(self) -> dict[str, int]:
        with self._lock:
            rows = self._db.execute("SELECT status, count(*) FROM batches GROUP BY status").fetchall()
        return {str(status): int(n) for status, n in rows}

    def close(self) -> None:
        with self._lock:
            self._db.close()


def _file_row(r: FileRecord) -> tuple[Any, ...]:
    return (r.id, r.owner, r.filename, r.purpose, r.bytes, r.created_at, r.expires_at, r.status)
