"""The audit log: rows for requests and admin actions, a hash chain that names tampering,
prompts absent by default and encrypted (AES-256-GCM) when asked for."""

from __future__ import annotations

import base64
import json
import multiprocessing
import secrets
import shutil
import sqlite3
import time
from pathlib import Path

import httpx
import openai
import pytest
from typer.testing import CliRunner

from ember.cli.audit import audit_app
from ember.config import Settings
from ember.errors import ConfigError
from ember.guard import audit
from tests.conftest import start_server

MODEL = "smollm2:135m"
SECRET_PROMPT = "zebra-quartz-4417 says hello"


def _db_path(home: Path) -> Path:
    return home / "state" / "audit.db"


def _rows(home: Path) -> list[dict]:
    path = _db_path(home)
    if not path.exists():
        return []
    with sqlite3.connect(path) as db:
        return [json.loads(d) for (d,) in db.execute("SELECT data FROM audit ORDER BY seq")]


def _wait_rows(home: Path, count: int, timeout: float = 20) -> list[dict]:
    deadline = time.monotonic() + timeout
    while True:
        found = _rows(home)
        if len(found) >= count or time.monotonic() > deadline:
            return found
        time.sleep(0.1)


def _cli(home: Path, *args: str, **env: str):
    return CliRunner().invoke(audit_app, list(args), env={"EMBER_HOME": str(home), **env})


def _tamper(home: Path, sql: str, *params: object) -> None:
    with sqlite3.connect(_db_path(home)) as db:
        db.execute(sql, params)


# -- through a real server ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def audited(tmp_path_factory: pytest.TempPathFactory, model_home: Path) -> Path:
    """A home whose server served one chat, one completion and three admin actions, then stopped."""
    home = tmp_path_factory.mktemp("audited") / "home"
    shutil.copytree(model_home, home, ignore=shutil.ignore_patterns("state"))
    handle = start_server(home, home.parent)
    try:
        client = openai.OpenAI(base_url=handle.url("/v1"), api_key="unused")
        client.chat.completions.create(model=MODEL, max_tokens=2,
                                       messages=[{"role": "user", "content": SECRET_PROMPT}])
        client.completions.create(model=MODEL, prompt=SECRET_PROMPT, max_tokens=2)
        with httpx.Client(base_url=handle.base_url, timeout=60) as http:
            assert http.post("/api/pull", json={"model": MODEL, "stream": False}).status_code == 200
            assert http.post("/api/copy", json={"source": MODEL, "destination": "audit-copy"}).status_code == 200
            assert http.request("DELETE", "/api/delete", json={"model": "audit-copy"}).status_code == 200
        assert len(_wait_rows(home, 5)) >= 5  # written by the background thread, soon
    finally:
        handle.stop()
    return home


def test_requests_and_admin_actions_are_rows(audited: Path) -> None:
    rows = _rows(audited)
    requests = [r for r in rows if r["kind"] == "request"]
    assert {r["endpoint"] for r in requests} == {"/v1/chat/completions", "/v1/completions"}
    for r in requests:
        assert r["model"] == MODEL and r["status"] == 200 and r["tokens_in"] > 0 and r["tokens_out"] > 0
        assert r["ts"] > 0 and "key" in r and "route" in r
    admin = [(r["action"], r["detail"]) for r in rows if r["kind"] == "admin"]
    assert admin == [("pull", {"model": MODEL, "destination": None}),
                     ("copy", {"source": MODEL, "destination": "audit-copy"}),
                     ("delete", {"model": "audit-copy"})]
    assert [r["seq"] for r in rows] == list(range(1, len(rows) + 1))


def test_prompts_are_absent_by_default(audited: Path) -> None:
    assert all("prompt" not in r for r in _rows(audited))
    for path in audited.joinpath("state").glob("audit.db*"):
        assert b"zebra-quartz" not in path.read_bytes()


def test_verify_passes_then_names_edited_deleted_and_inserted_rows(audited: Path, tmp_path: Path) -> None:
    result = _cli(audited, "verify")
    assert result.exit_code == 0, result.output
    assert result.output.strip() == f"audit log intact: {len(_rows(audited))} rows"

    def copy() -> Path:
        home = tmp_path / f"home{len(list(tmp_path.iterdir()))}"
        shutil.copytree(audited / "state", home / "state")
        return home

    # An edited row: the tokens of seq 2 changed in place.
    edited = copy()
    with sqlite3.connect(_db_path(edited)) as db:
        (data,) = db.execute("SELECT data FROM audit WHERE seq = 2").fetchone()
        db.execute("UPDATE audit SET data = ? WHERE seq = 2",
                   (data.replace('"tokens_out":', '"tokens_out":1'),))
    result = _cli(edited, "verify")
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == ["seq 2: edited (its hash does not match its contents)"]

    # A deleted row in the middle, and one at the end.
    deleted = copy()
    _tamper(deleted, "DELETE FROM audit WHERE seq = 3")
    _tamper(deleted, "DELETE FROM audit WHERE seq = (SELECT max(seq) FROM audit)")
    result = _cli(deleted, "verify")
    assert result.exit_code == 1
    last = len(_rows(audited))
    assert result.output.strip().splitlines() == [
        "seq 3: deleted", f"seq {last}: deleted (the log ends before its recorded tip)"]

    # Inserted rows: one forged before the chain starts, one appended with a correct-looking hash.
    inserted = copy()
    with sqlite3.connect(_db_path(inserted)) as db:
        forged = audit.canonical({"kind": "admin", "action": "delete", "seq": 0, "ts": 1.0})
        db.execute("INSERT INTO audit VALUES (0, ?, ?, ?)",
                   (forged, audit.GENESIS, audit.chain_hash(audit.GENESIS, forged)))
        (tip,) = db.execute("SELECT hash FROM audit ORDER BY seq DESC LIMIT 1").fetchone()
        forged = audit.canonical({"kind": "admin", "action": "pull", "seq": last + 1, "ts": 2.0})
        db.execute("INSERT INTO audit VALUES (?, ?, ?, ?)",
                   (last + 1, forged, tip, audit.chain_hash(tip, forged)))
    result = _cli(inserted, "verify")
    assert result.exit_code == 1
    assert result.output.strip().splitlines() == [
        "seq 0: inserted (not part of the chain)", f"seq {last + 1}: inserted (not part of the chain)"]
    # The next honest row chains past the forged one, which still shows.
    audit.append_admin(Settings(home=inserted), "key-create", "admin", {"name": "ci"})
    assert _cli(inserted, "verify").output.strip().splitlines()[-1] == \
        f"seq {last + 1}: inserted (not part of the chain)"


def test_tail_prints_the_newest_rows(audited: Path) -> None:
    result = _cli(audited, "tail", "-n", "2")
    assert result.exit_code == 0, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 2 and "admin copy" in lines[0] and "admin delete" in lines[1]


@pytest.mark.slow
def test_prompts_are_encrypted_when_asked_and_decrypt_with_the_key(fresh_home: Path, server_factory) -> None:
    key = secrets.token_hex(32)
    handle = server_factory(fresh_home, EMBER_AUDIT_PROMPTS="on", EMBER_AUDIT_KEY=key)
    client = openai.OpenAI(base_url=handle.url("/v1"), api_key="unused")
    client.chat.completions.create(model=MODEL, max_tokens=1,
                                   messages=[{"role": "user", "content": SECRET_PROMPT}])
    handle.stop()
    rows = _rows(fresh_home)
    assert len(rows) == 1 and isinstance(rows[0]["prompt"], str)
    for path in fresh_home.joinpath("state").glob("audit.db*"):
        assert b"zebra-quartz" not in path.read_bytes()

    shown = _cli(fresh_home, "tail", "--show-prompts", "--json", EMBER_AUDIT_KEY=key)
    assert shown.exit_code == 0, shown.output
    assert json.loads(shown.output)["prompt"] == {"messages": [{"role": "user", "content": SECRET_PROMPT}]}
    hidden = _cli(fresh_home, "tail")
    assert "prompt=<encrypted>" in hidden.output and "zebra" not in hidden.output
    wrong = _cli(fresh_home, "tail", "--show-prompts", EMBER_AUDIT_KEY=secrets.token_hex(32))
    assert wrong.exit_code != 0


@pytest.mark.slow
def test_server_refuses_to_start_without_a_key(fresh_home: Path, server_factory) -> None:
    with pytest.raises(RuntimeError, match="EMBER_AUDIT_KEY is missing"):
        server_factory(fresh_home, EMBER_AUDIT_PROMPTS="on")


# -- the chain itself ---------------------------------------------------------------------------


def test_keys_parse_from_hex_or_base64_and_bad_ones_are_refused() -> None:
    raw = secrets.token_bytes(32)
    assert audit.parse_key(raw.hex()) == raw
    assert audit.parse_key(base64.b64encode(raw).decode()) == raw
    assert audit.parse_key(base64.urlsafe_b64encode(raw).decode().rstrip("=")) == raw
    for bad in (None, "", "abc", "zz" * 32, base64.b64encode(raw[:16]).decode()):
        with pytest.raises(ConfigError):
            audit.parse_key(bad)
    with pytest.raises(ConfigError):
        audit.check_settings(Settings(audit_prompts=True, audit_key=None))
    assert audit.check_settings(Settings(audit_prompts=False)) is None


def _append_many(home: str, worker: int, count: int) -> None:
    settings = Settings(home=Path(home))
    for i in range(count):
        audit.append_admin(settings, "key-create", f"worker{worker}", {"i": i})


def test_several_processes_keep_one_chain(tmp_path: Path) -> None:
    """Writers in separate processes (as several `ember serve` on one home) interleave into one chain."""
    ctx = multiprocessing.get_context("spawn")
    workers = [ctx.Process(target=_append_many, args=(str(tmp_path), w, 15)) for w in range(3)]
    log = audit.AuditLog(Settings(home=tmp_path))
    for w in workers:
        w.start()
    for i in range(30):
        log.admin("copy", "server", {"i": i})
    for w in workers:
        w.join(60)
        assert w.exitcode == 0
    log.close()
    db = audit.open_readonly(_db_path(tmp_path))
    count, problems = audit.verify(db)
    db.close()
    assert (count, problems) == (75, [])


def test_key_management_from_the_cli_is_audited(tmp_path: Path) -> None:
    import subprocess
    import sys

    env = {"EMBER_HOME": str(tmp_path), "PATH": "/usr/bin:/bin"}
    for args in (["keys", "create", "--name", "ops", "--scopes", "admin"], ["keys", "revoke", "ops"]):
        done = subprocess.run([sys.executable, "-m", "ember", *args], env=env, capture_output=True,
                              text=True, timeout=60)
        assert done.returncode == 0, done.stderr
    actions = [(r["action"], r["detail"]["name"]) for r in _rows(tmp_path) if r["kind"] == "admin"]
    assert actions == [("keys.create", "ops"), ("keys.revoke", "ops")]
    assert _cli(tmp_path, "verify").exit_code == 0
