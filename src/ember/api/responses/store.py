"""Stored responses (state/responses.db): what GET /v1/responses/{id} returns, and the
conversation a `previous_response_id` continues from.

Invariants:
- a row belongs to the API key that made it (`key`, NULL when the server takes no keys); a
  lookup with another key finds nothing, so a foreign id is the same 404 as an unknown one;
- the conversation is the neutral messages of the response's input (after the conversation it
  continued) and of its output; instructions are not in it (OpenAI does not carry them over);
- writes go through a BatchWriter, so a request never waits for the disk; every read flushes
  first, so a response is found the moment its creator has its answer.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ember.background import BatchWriter
from ember.services.message_codec import decode_message, encode_message
from ember.services.types import ChatMessage

_SCHEMA = """
CREATE TABLE IF NOT EXISTS responses (
    id TEXT PRIMARY KEY,
    key TEXT,
    created_at REAL NOT NULL,
    body TEXT NOT NULL,
    conversation TEXT NOT NULL,
    input_items TEXT NOT NULL
);
"""


@dataclass(frozen=True)
class StoredResponse:
    id: str
    key: str | None
    created_at: float
    body: dict[str, Any]  # the response object, as the API returned it
    conversation: tuple[ChatMessage, ...]
    input_items: tuple[dict[str, Any], ...] = ()  # this request's own input, as input_items lists it


# One pending write: a response to insert, or the id of one to delete.
_Op = tuple[str, StoredResponse | str]


class ResponseStore:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, check_same_thread=False, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        self._lock = threading.Lock()
        self._writer: BatchWriter[_Op] = BatchWriter("responses", self._write)

    def put(self, stored: StoredResponse) -> None:
        self._writer.put(("put", stored))

    def get(self, response_id: str, key: str | None) -> StoredResponse | None:
        """The response if it exists and belongs to `key`; None otherwise (never says which)."""
        self._writer.flush()
        with self._lock:
            row = self._db.execute(
                "SELECT id, key, created_at, body, conversation, input_items FROM responses WHERE id = ? AND key IS ?",
                (response_id, key),
            ).fetchone()
        if row is None:
            return None
        return StoredResponse(
            id=row[0],
            key=row[1],
            created_at=row[2],
            body=json.loads(row[3]),
            conversation=tuple(decode_message(m) for m in json.loads(row[4])),
            input_items=tuple(json.loads(row[5])),
        )

    def delete(self, response_id: str, key: str | None) -> bool:
        """Whether a response of `key` was there to delete."""
        if self.get(response_id, key) is None:
            return False
        self._writer.put(("delete", response_id))
        self._writer.flush()  # gone before the client hears it is
        return True

    def _write(self, ops: list[_Op]) -> None:
        with self._lock, self._db:
            for kind, value in ops:
                if kind == "delete":
                    self._db.execute("DELETE FROM responses WHERE id = ?", (value,))
                    continue
                assert isinstance(value, StoredResponse)
                self._db.execute(
                    "INSERT OR REPLACE INTO responses (id, key, created_at, body, conversation, input_items)"
                    " VALUES (?,?,?,?,?,?)",
                    (
                        value.id,
                        value.key,
                        value.created_at,
                        json.dumps(value.body, ensure_ascii=False),
                        json.dumps([encode_message(m) for m in value.conversation], ensure_ascii=False),
                        json.dumps(value.input_items, ensure_ascii=False),
                    ),
                )

    def close(self) -> None:
        self._writer.close()
        with self._lock:
            self._db.close()
