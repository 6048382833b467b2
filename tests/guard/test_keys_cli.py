"""`ember keys create|list|revoke` on EMBER_HOME's key store, no server."""

from __future__ import annotations

import hashlib
import os
import re
import sqlite3
import subprocess
from pathlib import Path

import pytest

from ember.guard.keys import KeyStore, parse_expires

from . import CLI_ARGV


def ember_keys(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "EMBER_HOME": str(home)}
    return subprocess.run([*CLI_ARGV, "keys", *args], env=env, capture_output=True, text=True, timeout=60)


def test_create_list_revoke(tmp_path: Path) -> None:
    home = tmp_path / "home"
    made = ember_keys(home, "create", "--name", "ci", "--scopes", "chat,models", "--rpm", "5", "--tpm", "900",
                      "--max-concurrent", "2", "--budget-usd", "1.5", "--budget-tokens", "1000",
                      "--budget-period", "day", "--expires", "30d")
    assert made.returncode == 0, made.stderr
    secret = made.stdout.strip()
    assert re.fullmatch(r"ember-[A-Za-z0-9_-]{40}", secret)

    # Stored hashed only: the secret is nowhere in the database files.
    db_path = home / "state" / "keys.db"
    raw = b"".join(p.read_bytes() for p in db_path.parent.glob("keys.db*"))
    assert secret.encode() not in raw
    with sqlite3.connect(db_path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        (digest,) = db.execute("SELECT hash FROM keys WHERE name = 'ci'").fetchone()
    assert digest == hashlib.sha256(secret.encode()).hexdigest()

    listed = ember_keys(home, "list")
    assert listed.returncode == 0, listed.stderr
    assert secret not in listed.stdout
    row = next(line for line in listed.stdout.splitlines() if line.startswith("ci "))
    assert secret[:12] in row and "chat,models" in row
    assert "5 rpm" in row and "900 tpm" in row and "2 concurrent" in row and "$1.5/day" in row

    revoked = ember_keys(home, "revoke", "ci")
    assert revoked.returncode == 0, revoked.stderr
    store = KeyStore(db_path)
    record = store.lookup(secret)
    store.close()
    assert record is not None and record.revoked is not None and not record.usable(record.revoked + 1)


@pytest.mark.parametrize(("args", "message"), [
    (["create", "--name", "x", "--scopes", "chat,root"], "unknown scope(s) root"),
    (["create", "--name", "x", "--expires", "soon"], "invalid --expires 'soon'"),
    (["create", "--name", "x", "--expires", "2001-01-01"], "is in the past"),
    (["create", "--name", "x", "--budget-period", "week"], "invalid --budget-period"),
    (["create", "--name", "bad name!"], "invalid key name"),
    (["revoke", "nobody"], "no key named 'nobody'"),
])
def test_errors_are_one_line(tmp_path: Path, args: list[str], message: str) -> None:
    result = ember_keys(tmp_path / "home", *args)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and message in lines[0], result.stderr


def test_duplicate_name(tmp_path: Path) -> None:
    home = tmp_path / "home"
    assert ember_keys(home, "create", "--name", "dup").returncode == 0
    again = ember_keys(home, "create", "--name", "dup")
    assert again.returncode == 1 and again.stderr.strip() == "Error: a key named 'dup' already exists"


def test_parse_expires() -> None:
    assert parse_expires("30d", now=1000.0) == 1000.0 + 30 * 86400
    assert parse_expires("12h", now=0.0) == 12 * 3600
    assert parse_expires("2999-01-02") > parse_expires("2999-01-01")
