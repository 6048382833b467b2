"""API keys: generated once, stored only as SHA-256 hashes in SQLite (state_dir/keys.db, WAL).

The CLI writes the file directly; a running server sees a new or revoked key on its next request
because every lookup first asks SQLite's `PRAGMA data_version` (a counter in shared memory that
moves when another connection commits) and drops its cache when it moved. No write per request.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import sqlite3
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal, get_args

from ember.errors import BadRequest, Conflict, NotFound, ServiceUnavailable

Period = Literal["day", "month", "total"]
PERIODS: tuple[Period, ...] = get_args(Period)
SCOPES = ("chat", "embed", "models", "admin", "tools")  # tools: agents that run ember tools (agents/)
KEY_PREFIX = "ember-"
_CACHE_MAX = 10_000  # random wrong keys are cached too; bound the memory they can take

_SCHEMA = """
CREATE TABLE IF NOT EXISTS keys (
    name TEXT PRIMARY KEY,
    prefix TEXT NOT NULL,
    hash TEXT NOT NULL UNIQUE,
    scopes TEXT NOT NULL,
    rpm INTEGER, tpm INTEGER, max_concurrent INTEGER,
    budget_usd REAL, budget_tokens INTEGER, budget_period TEXT NOT NULL DEFAULT 'month',
    created REAL NOT NULL, expires REAL, revoked REAL
);
"""
_COLUMNS = (
    "name, prefix, hash, scopes, rpm, tpm, max_concurrent, budget_usd, budget_tokens,"
    " budget_period, created, expires, revoked"
)
# One row of _COLUMNS as sqlite3 reads it (budget_period is only ever written from a Period).
_Row = tuple[
    str,
    str,
    str,
    str,
    int | None,
    int | None,
    int | None,
    float | None,
    int | None,
    Period,
    float,
    float | None,
    float | None,
]


@dataclass(frozen=True)
class KeyRecord:
    name: str
    prefix: str
    hash: str
    scopes: frozenset[str]
    rpm: int | None = None
    tpm: int | None = None
    max_concurrent: int | None = None
    budget_usd: float | None = None
    budget_tokens: int | None = None
    budget_period: Period = "month"
    created: float = field(default_factory=time.time)
    expires: float | None = None
    revoked: float | None = None

    def usable(self, now: float) -> bool:
        return self.revoked is None and (self.expires is None or now < self.expires)

    @property
    def limited(self) -> bool:
        """Whether admission has anything to count for this key."""
        return any(
            v is not None for v in (self.rpm, self.tpm, self.max_concurrent, self.budget_usd, self.budget_tokens)
        )


def generate_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(30)  # 30 bytes -> 40 url-safe characters


def hash_key(secret: str) -> str:
    # A plain SHA-256 is enough: keys carry 240 random bits, so there is nothing to brute-force.
    return hashlib.sha256(secret.encode()).hexdigest()


def parse_scopes(text: str) -> frozenset[str]:
    scopes = frozenset(s.strip() for s in text.split(",") if s.strip())
    unknown = sorted(scopes - set(SCOPES))
    if unknown or not scopes:
        raise BadRequest(f"unknown scope(s) {', '.join(unknown) or '(none)'}: use some of {', '.join(SCOPES)}")
    return scopes


def parse_period(text: str) -> Period:
    period = next((p for p in PERIODS if p == text), None)
    if period is None:
        raise BadRequest(f"invalid --budget-period {text!r}: use day, month or total")
    return period


_REL = re.compile(r"^(\d+)([hdw])$")
_REL_SECONDS = {"h": 3600, "d": 86400, "w": 7 * 86400}


def parse_expires(text: str, now: float | None = None) -> float:
    """'30d', '12h', '2w', or a date/time ('2026-12-31', '2026-12-31T12:00', UTC when naive)."""
    now = time.time() if now is None else now
    match = _REL.match(text.strip())
    if match:
        return now + int(match.group(1)) * _REL_SECONDS[match.group(2)]
    try:
        moment = datetime.fromisoformat(text.strip())
    except ValueError:
        raise BadRequest(f"invalid --expires {text!r}: use e.g. 30d, 12h, 2w or 2026-12-31") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    if moment.timestamp() <= now:
        raise BadRequest(f"--expires {text!r} is in the past")
    return moment.timestamp()


def _record(row: _Row) -> KeyRecord:
    (name, prefix, digest, scopes, rpm, tpm, conc, usd, tokens, period, created, expires, revoked) = row
    return KeyRecord(
        name=name,
        prefix=prefix,
        hash=digest,
        scopes=frozenset(scopes.split(",")),
        rpm=rpm,
        tpm=tpm,
        max_concurrent=conc,
        budget_usd=usd,
        budget_tokens=tokens,
        budget_period=period,
        created=created,
        expires=expires,
        revoked=revoked,
    )


class KeyStore:
    """The keys table. Reads are cached until another connection commits."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._db: sqlite3.Connection | None = None
        self._lock = threading.Lock()
        self._version: int | None = None
        self._by_hash: dict[str, KeyRecord | None] = {}
        self._count: int | None = None

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self.path, check_same_thread=False, timeout=5, isolation_level=None)
            try:
                db.execute("PRAGMA journal_mode=WAL")
                db.executescript(_SCHEMA)
            except sqlite3.Error:
                db.close()
                raise
            self._db = db
        return self._db

    def _fresh(self) -> sqlite3.Connection:
        """The connection, with the cache dropped if anyone committed since the last look."""
        db = self._conn()
        version = db.execute("PRAGMA data_version").fetchone()[0]
        if version != self._version:
            self._version = version
            self._by_hash.clear()
            self._count = None
        return db

    def lookup(self, secret: str) -> KeyRecord | None:
        """The record of a presented key, usable or not; None when no such key. 503 if unreadable."""
        digest = hash_key(secret)
        try:
            with self._lock:
                db = self._fresh()
                if digest in self._by_hash:
                    record = self._by_hash[digest]
                else:
                    row = db.execute(f"SELECT {_COLUMNS} FROM keys WHERE hash = ?", (digest,)).fetchone()
                    record = _record(row) if row else None
                    if len(self._by_hash) >= _CACHE_MAX:
                        self._by_hash.clear()
                    self._by_hash[digest] = record
        except sqlite3.Error as exc:
            self._reset()
            raise ServiceUnavailable(f"the API key store cannot be read ({exc})", code="key_store_unavailable") from exc
        # The index found it by hash; compare again in constant time so no code path branches on bytes.
        if record is None or not hmac.compare_digest(record.hash, digest):
            return None
        return record

    def _reset(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
            self._db, self._version = None, None
            self._by_hash.clear()

    # -- management (CLI) ------------------------------------------------------------------------

    def create(
        self,
        name: str,
        scopes: frozenset[str],
        *,
        rpm: int | None = None,
        tpm: int | None = None,
        max_concurrent: int | None = None,
        budget_usd: float | None = None,
        budget_tokens: int | None = None,
        budget_period: Period = "month",
        expires: float | None = None,
    ) -> tuple[str, KeyRecord]:
        """A new key: the secret (shown once, never stored) and its record."""
        if not re.match(r"^[A-Za-z0-9_.@-]{1,64}$", name):
            raise BadRequest(f"invalid key name {name!r}: use letters, digits, '_', '.', '@' or '-'")
        secret = generate_key()
        record = KeyRecord(
            name=name,
            prefix=secret[:12],
            hash=hash_key(secret),
            scopes=scopes,
            rpm=rpm,
            tpm=tpm,
            max_concurrent=max_concurrent,
            budget_usd=budget_usd,
            budget_tokens=budget_tokens,
            budget_period=budget_period,
            expires=expires,
        )
        try:
            with self._lock:
                self._conn().execute(
                    f"INSERT INTO keys ({_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                    (
                        record.name,
                        record.prefix,
                        record.hash,
                        ",".join(sorted(scopes)),
                        rpm,
                        tpm,
                        max_concurrent,
                        budget_usd,
                        budget_tokens,
                        budget_period,
                        record.created,
                        expires,
                        None,
                    ),
                )
                self._by_hash.clear()  # as in revoke(): our own commit does not move data_version
                self._count = None
        except sqlite3.IntegrityError:
            raise Conflict(f"a key named '{name}' already exists") from None
        return secret, record

    def list(self) -> list[KeyRecord]:
        with self._lock:
            rows = self._conn().execute(f"SELECT {_COLUMNS} FROM keys ORDER BY created").fetchall()
        return [_record(row) for row in rows]

    def revoke(self, name: str) -> None:
        with self._lock:
            cursor = self._conn().execute(
                "UPDATE keys SET revoked = ? WHERE name = ? AND revoked IS NULL", (time.time(), name)
            )
            # data_version moves only for other connections' commits: forget our own cached record.
            self._by_hash.clear()
            self._count = None
            if cursor.rowcount == 0:
                exists = self._conn().execute("SELECT 1 FROM keys WHERE name = ?", (name,)).fetchone()
                if not exists:
                    raise NotFound(f"no key named '{name}'")

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None
