"""Human approvals end to end: the real server (keys required), the real `openai` client,
httpx, and the `ember approvals` CLI (its real main(), in this process, over HTTP).

The scripted fake upstream stands in for the cloud model the agent runs on: it asks for
`fs_write`, which the agent's config marks `require_approval`, so the first request ends with
a pending approval (finish reason "approval") and the run waits in state/approvals.db. The
parked run survives the server stopping; `ember approvals` sees and decides it; the follow-up
request that carries the approval resumes the same run, and only then does the file appear.
A denial ends the run with a clear message and the tool never runs. Every decision is a row of
the audit chain, which still verifies.

One home and one server for the module (two server starts in all: the restart test replaces
the module's server with the one it started on the same home).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from tests.agents.conftest import MODEL, agent_toml, history, tool_call
from tests.agents.conftest import script as queue_answers
from tests.conftest import ServerHandle, start_server
from tests.gateway.conftest import UpstreamHandle

from ember.cli.main import main as ember_main
from ember.guard.audit import open_readonly, rows, verify
from ember.guard.keys import KeyStore, parse_scopes

AGENT = "agent/scribe"
ASK = [{"role": "user", "content": "write the note"}]


def _config(upstream: UpstreamHandle, files: Path) -> str:
    return agent_toml(
        upstream,
        f"""
[tools.fs]
root = "{files}"
writable = true

[[agents]]
name = "scribe"
model = "{MODEL}"
instructions = "You write notes."
tools = ["fs_write", "fs_read"]
require_approval = ["fs_write"]

[[agents.auto_approve]]
tool = "fs_write"
arguments = '^\\{{"content":"[a-z ]*","path":"auto/[a-z]+\\.txt"\\}}$'
""",
    )


@dataclass
class Site:
    """The module's home, its keys, and the server now running on it."""

    home: Path
    files: Path
    logs: Path
    upstream: UpstreamHandle
    keys: dict[str, str]  # name -> secret: alice and bob (chat, tools), boss (admin)
    server: ServerHandle | None = None

    def start(self) -> ServerHandle:
        self.server = start_server(
            self.home, self.logs, EMBER_CONFIG=str(self.home / "ember.toml"), EMBER_AUTH="required"
        )
        return self.server

    @property
    def live(self) -> ServerHandle:
        assert self.server is not None
        return self.server

    def headers(self, key: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.keys[key]}"}

    def chat(self, key: str = "alice", **body: Any) -> httpx.Response:
        return httpx.post(
            self.live.url("/v1/chat/completions"),
            json={"model": AGENT, "messages": ASK, **body},
            headers=self.headers(key),
            timeout=60,
        )

    def admin(self, method: str, path: str = "", **kwargs: Any) -> httpx.Response:
        return httpx.request(
            method, self.live.url(f"/admin/approvals{path}"), headers=self.headers("boss"), timeout=10, **kwargs
        )


@pytest.fixture(scope="module")
def site(upstream: UpstreamHandle, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    root = tmp_path_factory.mktemp("approvals")
    home, files = root / "home", root / "files"
    home.mkdir()
    files.mkdir()
    (home / "ember.toml").write_text(_config(upstream, files), encoding="utf-8")
    store = KeyStore(home / "state" / "keys.db")
    try:
        keys = {
            name: store.create(name, parse_scopes(scopes))[0]
            for name, scopes in (("alice", "chat,tools"), ("bob", "chat,tools"), ("boss", "admin"))
        }
    finally:
        store.close()
    site = Site(home=home, files=files, logs=root, upstream=upstream, keys=keys)
    site.start()
    try:
        yield site
    finally:
        if site.server is not None:
            site.server.stop()


def script(site: Site, *answers: dict[str, Any]) -> None:
    site.upstream.reset()
    queue_answers(site.upstream, *answers)


def write_call(path: str, content: str) -> dict[str, Any]:
    return {"tool_calls": [tool_call("fs_write", path=path, content=content)]}


def pending_of(response: httpx.Response) -> list[dict[str, Any]]:
    assert response.status_code == 200, response.text
    ember = response.json()["ember"]
    assert ember["finish_reason"] == "approval", ember
    return list(ember["pending_approvals"])


def ember_cli(site: Site, *args: str) -> tuple[int, str, str]:
    """`ember approvals ARGS` through the CLI's real main(), as the boss key, against the server."""
    out, err = io.StringIO(), io.StringIO()
    env = {"EMBER_HOST": site.live.host, "EMBER_HOME": str(site.home), "EMBER_API_KEY": site.keys["boss"]}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    code = 0
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                ember_main(["approvals", *args])
            except SystemExit as exc:
                code = int(exc.code or 0)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return code, out.getvalue(), err.getvalue()


def approval_rows(site: Site, action: str, count: int = 1) -> list[dict[str, Any]]:
    """The audit chain's `action` rows, once `count` are there (the log writes in batches);
    the chain must verify."""
    deadline = time.monotonic() + 10
    while True:
        db = open_readonly(site.home / "state" / "audit.db")
        try:
            _, problems = verify(db)
            found = [f for f in (r.fields() for r in rows(db)) if f and f.get("action") == action]
        finally:
            db.close()
        assert problems == [], problems
        if len(found) >= count or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


@pytest.mark.slow
def test_approve_across_a_restart(site: Site) -> None:
    script(site, write_call("notes.txt", "hello from the agent"), {"text": "I wrote the note."})
    client = openai.OpenAI(base_url=site.live.url("/v1"), api_key=site.keys["alice"], max_retries=0)
    answer = client.chat.completions.create(model=AGENT, messages=ASK)  # type: ignore[arg-type]
    ember = (answer.model_extra or {})["ember"]
    assert ember["finish_reason"] == "approval"
    [waiting] = ember["pending_approvals"]
    assert waiting["tool"] == "fs_write" and json.loads(waiting["arguments"])["path"] == "notes.txt"
    assert not (site.files / "notes.txt").exists()  # nothing ran before a human said yes

    site.live.stop()
    site.start()  # the same EMBER_HOME: the run waits in its SQLite

    code, listed, err = ember_cli(site, "list")
    assert code == 0, err
    assert waiting["id"] in listed and "fs_write" in listed and "pending" in listed
    code, approved, err = ember_cli(site, "approve", waiting["id"], "--reason", "looks fine")
    assert code == 0, err
    assert f"{waiting['id']} approved (looks fine)" in approved
    record = site.admin("GET", f"/{waiting['id']}").json()
    assert (record["status"], record["decided_by"], record["reason"]) == ("approved", "boss", "looks fine")
    assert not (site.files / "notes.txt").exists()  # approval alone runs nothing: the follow-up does

    client = openai.OpenAI(base_url=site.live.url("/v1"), api_key=site.keys["alice"], max_retries=0)
    resumed = client.chat.completions.create(
        model=AGENT,
        messages=ASK,  # type: ignore[arg-type]
        extra_body={"approvals": [{"id": waiting["id"], "approve": True}]},
    )
    assert resumed.choices[0].message.content == "I wrote the note."
    trace = (resumed.model_extra or {})["ember"]
    assert trace["run_id"] == ember["run_id"] and trace["finish_reason"] == "stop"
    assert (site.files / "notes.txt").read_text() == "hello from the agent"
    # The same follow-up again must not run the tool a second time.
    again = site.chat(approvals=[{"id": waiting["id"], "approve": True}])
    assert again.status_code == 409 and "already resumed" in again.json()["error"]["message"], again.text
    [row] = approval_rows(site, "approval.approved")
    assert (row["key"], row["detail"]["by"], row["detail"]["id"]) == ("boss", "boss", waiting["id"])
    assert approval_rows(site, "approval.requested")


def test_deny_ends_the_run_and_the_tool_never_runs(site: Site) -> None:
    script(site, write_call("denied.txt", "should not exist"), {"text": "unused"})
    [waiting] = pending_of(site.chat())
    denied = site.chat(approvals=[{"id": waiting["id"], "approve": False, "reason": "not today"}])
    assert denied.status_code == 200, denied.text
    text = denied.json()["choices"][0]["message"]["content"]
    assert "denied" in text and "fs_write" in text and "not today" in text
    assert not (site.files / "denied.txt").exists()
    record = site.admin("GET", f"/{waiting['id']}").json()
    assert (record["status"], record["decided_by"], record["reason"]) == ("denied", "alice", "not today")
    assert len(history(site.upstream)) == 1  # the model was not asked again after the denial
    denials = approval_rows(site, "approval.denied")
    assert [(r["key"], r["detail"]["reason"]) for r in denials] == [("alice", "not today")]


def test_auto_approved_call_runs_at_once(site: Site) -> None:
    script(site, write_call("auto/memo.txt", "fine words"), {"text": "written"})
    answer = site.chat()
    assert answer.status_code == 200, answer.text
    assert answer.json()["ember"]["pending_approvals"] == []
    assert (site.files / "auto" / "memo.txt").read_text() == "fine words"
    [auto] = approval_rows(site, "approval.auto")
    assert auto["detail"]["tool"] == "fs_write"


def test_keys_own_their_runs(site: Site) -> None:
    script(site, write_call("keys.txt", "by alice"), {"text": "done"})
    [waiting] = pending_of(site.chat("alice"))
    follow_up = [{"id": waiting["id"], "approve": True}]
    # Another key's run is not found, as an unknown id is; it stays parked for its owner.
    stolen = site.chat("bob", approvals=follow_up)
    assert stolen.status_code == 404, stolen.text
    forbidden = httpx.get(site.live.url("/admin/approvals"), headers=site.headers("alice"), timeout=10)
    assert forbidden.status_code == 403, forbidden.text
    resumed = site.chat("alice", approvals=follow_up)
    assert resumed.status_code == 200, resumed.text
    assert (site.files / "keys.txt").read_text() == "by alice"
    assert site.admin("GET", f"/{waiting['id']}").json()["decided_by"] == "alice"


def test_undecided_unknown_and_bad_input(site: Site) -> None:
    script(
        site,
        {
            "tool_calls": [
                tool_call("fs_write", path="a.txt", content="A"),
                tool_call("fs_write", path="b.txt", content="B"),
            ]
        },
    )
    a, b = pending_of(site.chat())
    # Half an answer: a 400 naming the call still waiting; nothing is kept, the run stays parked.
    half = site.chat(approvals=[{"id": a["id"], "approve": True}])
    assert half.status_code == 400 and b["id"] in half.json()["error"]["message"], half.text
    listed = site.admin("GET", params={"status": "pending"}).json()
    assert {a["id"], b["id"]} <= {x["id"] for x in listed["data"]}
    unknown = site.chat(approvals=[{"id": "apr_nope", "approve": True}])
    assert unknown.status_code == 404 and "apr_nope" in unknown.text, unknown.text

    assert site.admin("GET", params={"status": "maybe"}).status_code == 400
    assert site.admin("GET", params={"limit": 0}).status_code == 400
    assert site.admin("GET", "/apr_nope").status_code == 404
    assert site.admin("POST", "/apr_nope", json={"approve": True}).status_code == 404
    for bad in (
        {"approve": "yes"},
        {"approve": 1},
        {"approve": True, "why": "x"},
        {},
        {"approve": True, "reason": "x" * 3000},
    ):
        response = site.admin("POST", f"/{a['id']}", json=bad)
        assert response.status_code == 400, (bad, response.text)
    decided = site.admin("POST", f"/{a['id']}", json={"approve": False, "reason": "one is enough"})
    assert decided.status_code == 200 and decided.json()["decided_by"] == "boss", decided.text
    same = site.admin("POST", f"/{a['id']}", json={"approve": False})
    assert same.status_code == 200 and same.json()["reason"] == "one is enough"  # a retried click
    flip = site.admin("POST", f"/{a['id']}", json={"approve": True})
    assert flip.status_code == 409 and "already denied" in flip.text
    view = site.admin("GET", f"/{a['id']}").json()
    fields = {
        "id",
        "run_id",
        "agent",
        "tool",
        "arguments",
        "status",
        "reason",
        "created_at",
        "decided_at",
        "decided_by",
    }
    assert fields <= set(view)
    assert (view["agent"], view["tool"], view["status"], view["key"]) == ("scribe", "fs_write", "denied", "alice")
    run = view["run"]  # what the human deciding sees of the run
    assert (run["id"], run["status"], run["model"]) == (view["run_id"], "parked", AGENT)
    assert {"role": "user", "content": "write the note"} in run["messages"]
    assert [c["name"] for c in run["messages"][-1]["tool_calls"]] == ["fs_write", "fs_write"]
    denied_only = site.admin("GET", params={"status": "denied"}).json()["data"]
    assert a["id"] in {x["id"] for x in denied_only} and all(x["status"] == "denied" for x in denied_only)
    every = site.admin("GET", params={"status": "all"}).json()["data"]
    assert {a["id"], b["id"]} <= {x["id"] for x in every}


def test_cli_errors_are_one_line(site: Site) -> None:
    code, _, err = ember_cli(site, "approve", "apr_nope")
    assert code == 1 and err.startswith("Error:") and "apr_nope" in err and len(err.strip().splitlines()) == 1
    code, _, err = ember_cli(site, "list", "--status", "maybe")
    assert code == 1 and err.startswith("Error:"), err
    code, _, err = ember_cli(site, "show", "apr_nope")
    assert code == 1 and "apr_nope" in err


def test_streamed_pause_and_streamed_resume(site: Site) -> None:
    script(site, write_call("streamed.txt", "via a stream"), {"text": "streamed and written"})
    client = openai.OpenAI(base_url=site.live.url("/v1"), api_key=site.keys["alice"], max_retries=0)

    def run(**extra: Any) -> tuple[str, dict[str, Any]]:
        text, closing = "", {}
        stream = client.chat.completions.create(model=AGENT, messages=ASK, stream=True, **extra)  # type: ignore[call-overload]
        for chunk in stream:
            for choice in chunk.choices:
                text += choice.delta.content or ""
            ember = (chunk.model_extra or {}).get("ember") or {}
            if "finish_reason" in ember:
                closing = ember
        return text, closing

    _, paused = run()
    assert paused["finish_reason"] == "approval"
    [waiting] = paused["pending_approvals"]
    assert not (site.files / "streamed.txt").exists()
    text, done = run(extra_body={"approvals": [{"id": waiting["id"], "approve": True}]})
    assert text == "streamed and written" and done["finish_reason"] == "stop"
    assert done["run_id"] == paused["run_id"]
    assert (site.files / "streamed.txt").read_text() == "via a stream"


def test_an_admin_denial_kept_for_the_follow_up(site: Site) -> None:
    script(
        site,
        {
            "tool_calls": [
                tool_call("fs_write", path="kept.txt", content="yes"),
                tool_call("fs_write", path="dropped.txt", content="no"),
            ]
        },
    )
    keep, drop = pending_of(site.chat())
    assert site.admin("POST", f"/{drop['id']}", json={"approve": False, "reason": "not that one"}).status_code == 200
    # The follow-up answers only what is still open; the admin's denial stands for the other.
    ended = site.chat(approvals=[{"id": keep["id"], "approve": True}])
    assert ended.status_code == 200, ended.text
    text = ended.json()["choices"][0]["message"]["content"]
    assert "denied" in text and "not that one" in text
    assert (site.files / "kept.txt").read_text() == "yes"  # the approved call of the turn ran
    assert not (site.files / "dropped.txt").exists()
