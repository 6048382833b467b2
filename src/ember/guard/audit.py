"""The audit log: every request and admin action, appended to SQLite in a hash chain.

Each row holds its fields as canonical JSON (`data`), the hash of the row before it
(`prev_hash`) and `hash = SHA-256(prev_hash || data)`. A one-row `audit_head` table keeps the
chain's tip in the same transaction, so deleting the newest rows shows too. Writers take the
tip inside BEGIN IMMEDIATE, so several ember processes sharing one audit.db keep one chain.

Requests never wait on the disk: rows are queued and a background thread writes them in order.
Prompt text is kept only when audit_prompts is on, encrypted with AES-256-GCM.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
import os
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ember.background import BatchWriter
from ember.config import Settings
from ember.errors import ConfigError, EmberError
from ember.gateway.usage import UsageRecord

log = logging.getLogger("ember.audit")

GENESIS = "0" * 64
_NONCE_BYTES = 12

_SCHEMA = """
CREATE TABLE IF NOT EXISTS audit (
    seq INTEGER PRIMARY KEY,
    data TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS audit_head (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    seq INTEGER NOT NULL,
    hash TEXT NOT NULL
);
"""


def audit_path(settings: Settings) -> Path:
    return settings.state_dir / "audit.db"


# -- keys and encryption ----------------------------------------------------------------------


def parse_key(text: str | None) -> bytes:
    """32 key bytes from 64 hex digits or base64 of 32 bytes; ConfigError otherwise."""
    hint = "set EMBER_AUDIT_KEY to 64 hex digits or base64 of 32 bytes (e.g. `openssl rand -hex 32`)"
    value = (text or "").strip()
    if not value:
        raise ConfigError(f"EMBER_AUDIT_KEY is missing: {hint}")
    if len(value) == 64:
        try:
            return bytes.fromhex(value)
        except ValueError:
            pass
    try:
        padded = value + "=" * (-len(value) % 4)
        raw = base64.b64decode(padded.replace("-", "+").replace("_", "/"), validate=True)
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != 32:
        raise ConfigError(f"EMBER_AUDIT_KEY is not a 256-bit key: {hint}")
    return raw


def check_settings(settings: Settings) -> AESGCM | None:
    """The cipher for audited prompts, None when prompts are not audited.

    Raises ConfigError when audit_prompts is on and the key is missing or bad, so the server
    refuses to start rather than serve requests it cannot audit as asked.
    """
    if not settings.audit_prompts:
        return None
    return AESGCM(parse_key(settings.audit_key))


def _aad(seq: int) -> bytes:
    # Bound to the row: a ciphertext copied into another row does not decrypt.
    return f"ember-audit:{seq}".encode()


def encrypt_prompt(cipher: AESGCM, seq: int, plaintext: str) -> str:
    nonce = os.urandom(_NONCE_BYTES)
    sealed = cipher.encrypt(nonce, plaintext.encode(), _aad(seq))
    return base64.b64encode(nonce + sealed).decode()


def decrypt_prompt(cipher: AESGCM, seq: int, token: str) -> str:
    raw = base64.b64decode(token)
    try:
        return cipher.decrypt(raw[:_NONCE_BYTES], raw[_NONCE_BYTES:], _aad(seq)).decode()
    except InvalidTag as exc:
        raise EmberError(f"audit row {seq}: the prompt does not decrypt with this EMBER_AUDIT_KEY") from exc


def prompt_text(request: Any) -> str | None:
    """The request's text as JSON: {"messages": [...]} or {"prompt": "..."}."""
    if request is None:
        return None
    messages = getattr(request, "messages", None)
    if messages is not None:
        return canonical({"messages": [{"role": m.role, "content": m.content} for m in messages]})
    prompt = getattr(request, "prompt", None)
    return None if prompt is None else canonical({"prompt": prompt})


# -- the chain --------------------------------------------------------------------------------


def canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def chain_hash(prev_hash: str, data: str) -> str:
    return hashlib.sha256((prev_hash + data).encode()).hexdigest()


@dataclass
class Entry:
    """One row to append; the writer assigns seq and encrypts the request's text once it knows it."""

    fields: dict[str, Any]
    request: Any = field(default=None, repr=False)  # a TextRequest, when its text is to be kept


def connect(path: Path) -> sqlite3.Connection:
    path.parent.mkdir(parents=True, exist_ok=True)
    # Autocommit mode: transactions are opened explicitly with BEGIN IMMEDIATE.
    db = sqlite3.connect(path, check_same_thread=False, timeout=30, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    db.executescript(_SCHEMA)
    return db


def _tip(db: sqlite3.Connection) -> tuple[int, str]:
    head = db.execute("SELECT seq, hash FROM audit_head WHERE id = 1").fetchone()
    if head is not None:
        return int(head[0]), str(head[1])
    last = db.execute("SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1").fetchone()
    return (int(last[0]), str(last[1])) if last else (0, GENESIS)


def append(db: sqlite3.Connection, entries: list[Entry], cipher: AESGCM | None) -> None:
    """Chain `entries` onto the tip, all in one write transaction."""
    db.execute("BEGIN IMMEDIATE")  # the write lock first: no other process can move the tip now
    try:
        seq, prev = _tip(db)
        # Past any row beyond the tip (a forged append) so the insert cannot collide with it.
        top = db.execute("SELECT max(seq) FROM audit").fetchone()[0] or 0
        seq = max(seq, top)
        for entry in entries:
            seq += 1
            fields = {**entry.fields, "seq": seq}
            text = prompt_text(entry.request) if cipher is not None else None
            if text is not None and cipher is not None:
                fields["prompt"] = encrypt_prompt(cipher, seq, text)
            data = canonical(fields)
            digest = chain_hash(prev, data)
            db.execute("INSERT INTO audit (seq, data, prev_hash, hash) VALUES (?, ?, ?, ?)", (seq, data, prev, digest))
            prev = digest
        db.execute(
            "INSERT INTO audit_head (id, seq, hash) VALUES (1, ?, ?)"
            " ON CONFLICT (id) DO UPDATE SET seq = excluded.seq, hash = excluded.hash",
            (seq, prev),
        )
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise


def request_fields(record: UsageRecord) -> dict[str, Any]:
    return {
        "kind": "request",
        "ts": record.ts,
        "key": record.key,
        "endpoint": record.endpoint,
        "protocol": record.protocol,
        "route": record.route,
        "model": record.model,
        "provider": record.provider,
        "upstream_model": record.upstream_model,
        "tokens_in": record.tokens_in,
        "tokens_out": record.tokens_out,
        "cost": record.cost,
        "latency_ms": round(record.latency_ms, 3),
        "status": record.status,
        "error": record.error,
        "cache": record.cache,
    }


def admin_fields(action: str, key_name: str | None, detail: dict[str, Any] | None, status: int) -> dict[str, Any]:
    return {
        "kind": "admin",
        "ts": time.time(),
        "action": action,
        "key": key_name,
        "detail": detail or {},
        "status": status,
    }


def append_admin(
    settings: Settings, action: str, key_name: str | None, detail: dict[str, Any] | None = None, status: int = 200
) -> None:
    """One chained admin row, written now (for CLI commands that run without a server)."""
    db = connect(audit_path(settings))
    try:
        append(db, [Entry(admin_fields(action, key_name, detail, status))], None)
    finally:
        db.close()


class AuditLog:
    """The server's audit writer: observe() and admin() queue; one thread appends in order."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._cipher = check_settings(settings)
        self.path = audit_path(settings)
        self._db = connect(self.path)
        self._writer: BatchWriter[Entry] = BatchWriter("audit", self._append)

    def observe(self, record: UsageRecord) -> None:
        """Usage observer: one audit row per request."""
        # The text is read and encrypted on the writer thread, off the request's path.
        self._writer.put(Entry(request_fields(record), record.request if self._cipher else None))

    def admin(self, action: str, key_name: str | None, detail: dict[str, Any] | None = None, status: int = 200) -> None:
        """One audit row per admin action (pull, delete, copy, key management)."""
        self._writer.put(Entry(admin_fields(action, key_name, detail, status)))

    def event(self, kind: str, key_name: str | None, fields: dict[str, Any]) -> None:
        """One row of another kind (an agent's tool call or run, an approval decision)."""
        self._writer.put(Entry({"kind": kind, "ts": time.time(), "key": key_name, **fields}))

    def _append(self, entries: list[Entry]) -> None:
        append(self._db, entries, self._cipher)

    def flush(self) -> None:
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()
        self._db.close()


# -- reading and verifying --------------------------------------------------------------------


@dataclass
class Row:
    seq: int
    data: str
    prev_hash: str
    hash: str

    def fields(self) -> dict[str, Any] | None:
        try:
            value = json.loads(self.data)
        except ValueError:
            return None
        return value if isinstance(value, dict) else None


def open_readonly(path: Path) -> sqlite3.Connection:
    if not path.exists():
        raise EmberError(f"no audit log at {path}")
    return sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)


def rows(db: sqlite3.Connection) -> Iterator[Row]:
    for seq, data, prev_hash, digest in db.execute("SELECT seq, data, prev_hash, hash FROM audit ORDER BY seq"):
        yield Row(int(seq), str(data), str(prev_hash), str(digest))


def tail(db: sqlite3.Connection, n: int) -> list[Row]:
    found = db.execute("SELECT seq, data, prev_hash, hash FROM audit ORDER BY seq DESC LIMIT ?", (n,)).fetchall()
    return [Row(int(s), str(d), str(p), str(h)) for s, d, p, h in reversed(found)]


def _span(first: int, last: int) -> str:
    return f"seq {first}" if first == last else f"seq {first}-{last}"


def verify(db: sqlite3.Connection) -> tuple[int, list[str]]:
    """(rows, problems): each problem one line naming the seq numbers edited, inserted or deleted."""
    db.execute("BEGIN")  # one snapshot: rows and tip as one writer left them
    try:
        all_rows = list(rows(db))
        head = db.execute("SELECT seq, hash FROM audit_head WHERE id = 1").fetchone()
    finally:
        db.execute("COMMIT")
    head_seq = int(head[0]) if head else (all_rows[-1].seq if all_rows else 0)
    problems: list[str] = []
    expected_prev, expected_seq = GENESIS, 1
    for i, row in enumerate(all_rows):
        following = all_rows[i + 1] if i + 1 < len(all_rows) else None
        # A row the chain skips over: its successor links to the row before it, it lies past
        # the recorded tip, or it takes a seq the chain has already passed.
        if (
            row.seq < expected_seq
            or row.seq > head_seq
            or (following is not None and following.prev_hash == expected_prev)
        ):
            problems.append(f"seq {row.seq}: inserted (not part of the chain)")
            if row.seq == expected_seq:
                expected_seq += 1  # honest writers number past a forged row: no gap to report
            continue
        fields = row.fields()
        intact = row.hash == chain_hash(row.prev_hash, row.data) and fields is not None and fields.get("seq") == row.seq
        if row.seq > expected_seq:
            problems.append(f"{_span(expected_seq, row.seq - 1)}: deleted")
        elif not intact:
            problems.append(f"seq {row.seq}: edited (its hash does not match its contents)")
        elif row.prev_hash != expected_prev:
            problems.append(f"{_span(row.seq - 1, row.seq)}: edited (the chain breaks between them)")
        expected_prev, expected_seq = row.hash, row.seq + 1
    if expected_seq <= head_seq:
        problems.append(f"{_span(expected_seq, head_seq)}: deleted (the log ends before its recorded tip)")
    elif head is not None and all_rows and expected_prev != head[1] and not problems:
        problems.append(f"seq {head_seq}: edited (does not match the recorded tip)")
    return len(all_rows), problems
