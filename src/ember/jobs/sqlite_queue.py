"""SqliteLineQueue: the embedded queue of batch lines, in state/jobs.db beside the batch records.

One row per line. Its state goes waiting -> running (claimed, with a claim token and time) ->
done (with its result). `complete` writes the result and the state in one UPDATE that only
matches the claim it was given, so a line is finished once even if a reclaimed copy of it ran
twice. Results stay in the row until `forget`: the output file is built from them.

One node only: a second process on the same EMBER_HOME would reclaim this one's lines at its
start. Several nodes use the Redis Streams queue.
"""

from __future__ import annotations

import secrets
import sqlite3
import threading
import time
from collections.abc import Sequence
from pathlib import Path

from ember.jobs.records import Claim, Line, LineCounts, LineResult

_SCHEMA = """
CREATE TABLE IF NOT EXISTS lines (
    batch_id TEXT NOT NULL,
    idx INTEGER NOT NULL,
    custom_id TEXT NOT NULL,
    owner TEXT NOT NULL,
    url TEXT NOT NULL,
    body TEXT NOT NULL,
    deadline REAL NOT NULL,
    enqueued REAL NOT NULL,
    state TEXT NOT NULL DEFAULT 'waiting',
    token TEXT,
    claimed_at REAL,
    attempts INTEGER NOT NULL DEFAULT 0,
    failed INTEGER,
    result TEXT,
    PRIMARY KEY (batch_id, idx)
);
CREATE INDEX IF NOT EXISTS lines_waiting ON lines (state, enqueued, batch_id, idx);
"""


def connect(path: Path) -> sqlite3.Connection:
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(path, check_same_thread=False, timeout=30, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    # NORMAL under WAL: a committed result survives the process being killed (kill -9: the WAL is
    # in the OS's hands); only a power cut may lose the last few, which then run again. FULL
    # would fsync every line, ~10 ms each on the event loop.
    db.execute("PRAGMA synchronous=NORMAL")
    db.executescript(_SCHEMA)
    return db


class SqliteLineQueue:
    name = "sqlite"

    def __init__(self, path: Path) -> None:
        self.path = path
        self._db = connect(path)
        self._lock = threading.Lock()

    # Each call is one short transaction: microseconds to a millisecond, so it runs on the loop;
    # the lock keeps the connection to one statement sequence at a time if a thread joins in.

    async def enqueue(self, batch_id: str, lines: Sequence[Line]) -> None:
        now = time.time()
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.executemany(
                    "INSERT OR IGNORE INTO lines (batch_id, idx, custom_id, owner, url, body, deadline, enqueued)"
                    " VALUES (?,?,?,?,?,?,?,?)",
                    [(batch_id, x.index, x.custom_id, x.owner, x.url, x.body, x.deadline, now) for x in lines],
                )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    async def claim(self, worker: str, count: int) -> list[Claim]:
        if count <= 0:
            return []
        token = f"{worker}:{secrets.token_hex(6)}"
        with self._lock:
            rows = self._db.execute(
                "UPDATE lines SET state='running', token=?, claimed_at=?, attempts=attempts+1"
                " WHERE rowid IN (SELECT rowid FROM lines WHERE state='waiting'"
                " ORDER BY enqueued, batch_id, idx LIMIT ?)"
                " RETURNING batch_id, idx, custom_id, owner, url, body, deadline, attempts",
                (token, time.time(), count),
            ).fetchall()
        rows.sort(key=lambda r: (r[0], r[1]))
        return [
            Claim(
                line=Line(batch_id=b, index=i, custom_id=c, owner=o, url=u, body=body, deadline=d),
                token=token,
                attempts=attempts - 1,
            )
            for b, i, c, o, u, body, d, attempts in rows
        ]

    async def complete(self, claim: Claim, result: LineResult) -> bool:
        with self._lock:
            changed = self._db.execute(
                "UPDATE lines SET state='done', failed=?, result=?, token=NULL"
                " WHERE batch_id=? AND idx=? AND state='running' AND token=?",
                (int(result.failed), result.text, claim.line.batch_id, claim.line.index, claim.token),
            ).rowcount
        return changed == 1

    async def reclaim(self, idle_seconds: float) -> int:
        with self._lock:
            return self._db.execute(
                "UPDATE lines SET state='waiting', token=NULL WHERE state='running' AND claimed_at <= ?",
                (time.time() - idle_seconds,),
            ).rowcount

    async def counts(self, batch_id: str) -> LineCounts:
        with self._lock:
            rows = self._db.execute(
                "SELECT state, coalesce(failed, 0), count(*) FROM lines WHERE batch_id=? GROUP BY 1, 2", (batch_id,)
            ).fetchall()
        n = {"waiting": 0, "running": 0, "completed": 0, "failed": 0}
        for state, failed, count in rows:
            n["failed" if state == "done" and failed else "completed" if state == "done" else state] += count
        return LineCounts(**n)

    async def waiting(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT count(*) FROM lines WHERE state='waiting'").fetchone()[0])

    async def results(self, batch_id: str) -> list[LineResult]:
        with self._lock:
            rows = self._db.execute(
                "SELECT idx, custom_id, failed, result FROM lines WHERE batch_id=? AND state='done' ORDER BY idx",
                (batch_id,),
            ).fetchall()
        return [LineResult(batch_id, i, c, bool(f), text) for i, c, f, text in rows]

    async def drop(self, batch_id: str) -> int:
        with self._lock:
            return self._db.execute("DELETE FROM lines WHERE batch_id=? AND state='waiting'", (batch_id,)).rowcount

    async def forget(self, batch_id: str) -> None:
        with self._lock:
            self._db.execute("DELETE FROM lines WHERE batch_id=?", (batch_id,))

    async def aclose(self) -> None:
        with self._lock:
            self._db.close()
