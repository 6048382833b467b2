"""The agent runner end to end: the real server, the real openai client and httpx, the scripted
upstream as the agents' model (and, once, the real default model with forced tool calls)."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from tests.agents.conftest import MODEL, agent_toml, history, script, start_agent_server, tool_call
from tests.conftest import DEFAULT_MODEL, ServerHandle
from tests.gateway.conftest import UpstreamHandle

from ember.agents.runner import parse_arguments
from ember.agents.types import ToolOutcome, ToolSpec
from ember.guard.audit import open_readonly, verify
from ember.guard.keys import KeyStore, parse_scopes

AGENTS = """
[tools.shell]
allow = ["echo", "sleep"]
timeout = 5

[tools.fs]
root = "files"

[tools.http_fetch]
allow_hosts = ["127.0.0.1"]
timeout = 6

[[agents]]
name = "helper"
model = "{MODEL}"
instructions = "You help."
tools = ["shell", "fs_read", "fs_list", "http_fetch"]

[[agents]]
name = "short"
model = "{MODEL}"
tools = ["fs_list"]
max_steps = 2

[[agents]]
name = "frugal"
model = "{MODEL}"
tools = ["fs_list"]
max_tool_calls = 1

[[agents]]
name = "hurried"
model = "{MODEL}"
tools = ["http_fetch"]
deadline = "1s"

[[agents]]
name = "plain"
model = "{MODEL}"

[[agents]]
name = "serial"
model = "{MODEL}"
tools = ["http_fetch"]
tool_concurrency = 1

[[agents]]
name = "broken"
model = "no-such-model:1b"

[[mcp_servers]]
name = "calc"
command = ["{PYTHON}", "-m", "tests.agents.mcp_servers.stdio_server"]
env = {{ PYTHONPATH = "{ROOT}" }}
require_approval = ["echo"]

[[agents]]
name = "mcp"
model = "{MODEL}"
tools = ["calc__*"]
"""
ROOT = Path(__file__).resolve().parents[2]
PRICE_IN, PRICE_OUT = 3.0, 7.0  # USD per million tokens, of the provider "up"


class _Slow(BaseHTTPRequestHandler):
    """GET /sleep/SECONDS answers "slept" after that long: a tool call that takes time."""

    def do_GET(self) -> None:
        time.sleep(float(self.path.rsplit("/", 1)[-1]))
        body = b"slept"
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _Quiet(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that left while we slept (the deadline test's) is expected


@pytest.fixture(scope="module")
def slow_url() -> Iterator[str]:
    httpd = _Quiet(("127.0.0.1", 0), _Slow)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


def _create_key(home: Path, name: str, scopes: str) -> str:
    """A key in the server's key store (what `ember keys create` writes), made before it starts."""
    store = KeyStore(home / "state" / "keys.db")
    try:
        secret, _ = store.create(name, parse_scopes(scopes))
    finally:
        store.close()
    return secret


@pytest.fixture(scope="module")
def keys_and_server(
    upstream: UpstreamHandle, agent_logs: Path, slow_url: str
) -> Iterator[tuple[dict[str, str], ServerHandle]]:
    home = agent_logs / "home"
    (home / "files").mkdir(parents=True)
    (home / "files" / "note.txt").write_text("the note says 42\n", encoding="utf-8")
    keys = {"full": _create_key(home, "full", "chat,tools"), "chat": _create_key(home, "chat-only", "chat")}
    toml = agent_toml(upstream, AGENTS.format(MODEL=MODEL, PYTHON=sys.executable, ROOT=ROOT), PRICE_IN, PRICE_OUT)
    handle = start_agent_server(agent_logs, toml, home=home, EMBER_AUTH="required")
    try:
        yield keys, handle
    finally:
        handle.stop()


@pytest.fixture
def server(keys_and_server: tuple[dict[str, str], ServerHandle]) -> ServerHandle:
    return keys_and_server[1]


@pytest.fixture
def key(keys_and_server: tuple[dict[str, str], ServerHandle]) -> str:
    return keys_and_server[0]["full"]


@pytest.fixture
def client(server: ServerHandle, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url("/v1"), api_key=key, max_retries=0)


def _ember(response: Any) -> dict[str, Any]:
    return (response.model_extra or {}).get("ember") or {}


def _ask(client: openai.OpenAI, model: str, text: str = "go", **extra: Any) -> Any:
    return client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": text}], max_tokens=20, **extra
    )


def test_two_step_loop(scripted: UpstreamHandle, client: openai.OpenAI) -> None:
    script(scripted, {"tool_calls": [tool_call("fs_read", path="note.txt")]}, {"text": "The note says 42."})
    response = _ask(client, "agent/helper", "what does the note say?")
    assert response.choices[0].message.content == "The note says 42."
    assert response.choices[0].finish_reason == "stop"
    trace = _ember(response)
    assert [s["kind"] for s in trace["steps"]] == ["model", "tool", "model"]
    assert trace["steps"][1]["name"] == "fs_read" and not trace["steps"][1]["is_error"]
    assert trace["finish_reason"] == "stop" and trace["run_id"].startswith("run_")
    sent = history(scripted)
    assert len(sent) == 2
    first, second = sent[0]["body"], sent[1]["body"]
    assert first["messages"][0] == {"role": "system", "content": "You help."}
    assert sorted(t["function"]["name"] for t in first["tools"]) == ["fs_list", "fs_read", "http_fetch", "shell"]
    assert first["max_tokens"] == 20  # the client's settings are carried to each step
    assert "mode" not in first
    call = second["messages"][-2]["tool_calls"][0]
    assert call["function"]["name"] == "fs_read"
    assert second["messages"][-1]["role"] == "tool"
    assert second["messages"][-1]["tool_call_id"] == call["id"]
    assert "the note says 42" in second["messages"][-1]["content"]
    # Tokens summed over the steps (the upstream counts a few per answer).
    steps_in = sum(s["tokens_in"] for s in trace["steps"])
    assert response.usage is not None and response.usage.prompt_tokens == steps_in


def test_parallel_calls_run_concurrently(scripted: UpstreamHandle, client: openai.OpenAI, slow_url: str) -> None:
    sleeps = [
        tool_call("http_fetch", url=f"{slow_url}/sleep/0.5"),
        tool_call("http_fetch", url=f"{slow_url}/sleep/0.5"),
    ]
    script(scripted, {"tool_calls": sleeps}, {"text": "slept"})
    started = time.perf_counter()
    response = _ask(client, "agent/helper")
    took = time.perf_counter() - started
    tools = [s for s in _ember(response)["steps"] if s["kind"] == "tool"]
    assert len(tools) == 2 and not any(s["is_error"] for s in tools), tools
    assert all(s["seconds"] >= 0.45 for s in tools)
    assert took < 0.9, f"two 0.5 s sleeps in one turn took {took:.2f} s"
    assert response.choices[0].message.content == "slept"


def test_tool_concurrency_caps_a_turn(scripted: UpstreamHandle, client: openai.OpenAI, slow_url: str) -> None:
    sleeps = [
        tool_call("http_fetch", url=f"{slow_url}/sleep/0.4"),
        tool_call("http_fetch", url=f"{slow_url}/sleep/0.4"),
    ]
    script(scripted, {"tool_calls": sleeps}, {"text": "slept"})
    started = time.perf_counter()
    response = _ask(client, "agent/serial")
    assert time.perf_counter() - started >= 0.8  # one at a time
    assert [s["is_error"] for s in _ember(response)["steps"] if s["kind"] == "tool"] == [False, False]


def test_shell_runs_in_the_server(scripted: UpstreamHandle, client: openai.OpenAI) -> None:
    """The shell built-in under the server's event loop (uvicorn runs uvloop)."""
    script(scripted, {"tool_calls": [tool_call("shell", argv=["echo", "hello"])]}, {"text": "ok"})
    step = next(s for s in _ember(_ask(client, "agent/helper"))["steps"] if s["kind"] == "tool")
    assert not step["is_error"] and "hello" in step["result"], step["result"]


def test_mcp_tools_through_an_agent(scripted: UpstreamHandle, client: openai.OpenAI) -> None:
    """A real stdio MCP server's tools, named "<server>__*" in the agent's config."""
    script(
        scripted,
        {"tool_calls": [tool_call("calc__add", a=2, b=3), tool_call("calc__fail"), tool_call("calc__add", a="x")]},
        {"text": "five"},
    )
    response = _ask(client, "agent/mcp")
    assert response.choices[0].message.content == "five"
    offered = {t["function"]["name"] for t in history(scripted)[0]["body"]["tools"]}
    assert {"calc__add", "calc__echo", "calc__fail"} <= offered
    # Steps are in the order they finished: the refused call (no round trip) comes first.
    by_call = {(s["name"], s["arguments"]): s for s in _ember(response)["steps"] if s["kind"] == "tool"}
    add = by_call[("calc__add", '{"a":2,"b":3}')]
    fail = by_call[("calc__fail", "{}")]
    bad = by_call[("calc__add", '{"a":"x"}')]
    assert add["result"] == "5" and not add["is_error"]
    assert fail["is_error"] and "fail was asked to fail" in fail["result"]
    assert bad["is_error"] and "do not fit the schema of tool 'calc__add'" in bad["result"]


def test_a_mode_run_resumes_with_the_tools_it_was_parked_with(scripted: UpstreamHandle, client: openai.OpenAI) -> None:
    script(scripted, {"tool_calls": [tool_call("calc__echo", text="hi")]}, {"text": "it echoed"})
    paused = _ask(client, MODEL, extra_body={"mode": "tools", "mode_tools": ["calc__echo"]})
    trace = _ember(paused)
    assert trace["finish_reason"] == "approval", trace
    (pending,) = trace["pending_approvals"]
    assert pending["tool"] == "calc__echo" and json.loads(pending["arguments"]) == {"text": "hi"}
    # A follow-up that would change what the run may reach is refused, and the run stays parked.
    with pytest.raises(openai.BadRequestError, match="mode_tools differs"):
        _ask(
            client,
            MODEL,
            extra_body={"mode": "tools", "mode_tools": ["fs_list"], "approvals": [{"id": pending["id"], "approve": True}]},
        )
    # The follow-up names the mode but not the tools again: the run keeps those it had.
    resumed = _ask(client, MODEL, extra_body={"mode": "tools", "approvals": [{"id": pending["id"], "approve": True}]})
    assert resumed.choices[0].message.content == "it echoed"
    trace = _ember(resumed)
    assert trace["run_id"] == _ember(paused)["run_id"]
    echo = next(s for s in trace["steps"] if s["kind"] == "tool")
    assert echo["result"] == "hi" and not echo["is_error"]
    assert history(scripted)[-1]["body"]["messages"][-1]["content"] == "hi"


def test_a_call_that_cannot_run_asks_no_human(scripted: UpstreamHandle, client: openai.OpenAI) -> None:
    script(scripted, {"tool_calls": [tool_call("calc__echo", txt="hi")]}, {"text": "oops"})
    response = _ask(client, MODEL, extra_body={"mode": "tools", "mode_tools": ["calc__echo"]})
    trace = _ember(response)
    assert trace["finish_reason"] == "stop" and trace["pending_approvals"] == []
    assert [s["kind"] for s in trace["steps"]] == ["model", "tool", "model"]
    assert "do not fit the schema" in trace["steps"][1]["result"]


def test_bad_arguments_are_fed_back(scripted: UpstreamHandle, client: openai.OpenAI) -> None:
    script(
        scripted,
        {"tool_calls": [tool_call("fs_read", file="note.txt"), tool_call("rm", path="/")]},
        {"text": "sorry"},
    )
    response = _ask(client, "agent/helper")
    assert response.choices[0].message.content == "sorry"
    results = history(scripted)[1]["body"]["messages"][-2:]
    assert results[0]["content"].startswith("error: the arguments do not fit the schema of tool 'fs_read'")
    assert "path" in results[0]["content"]
    assert results[1]["content"].startswith("error: tool 'rm' is not one of this agent's tools")
    assert [s["is_error"] for s in _ember(response)["steps"] if s["kind"] == "tool"] == [True, True]


def test_step_limit_ends_with_reason(scripted: UpstreamHandle, client: openai.OpenAI) -> None:
    httpx.post(scripted.url + "/_script", json={"tool_calls": [tool_call("fs_list")]}, timeout=5).raise_for_status()
    response = _ask(client, "agent/short")
    trace = _ember(response)
    assert trace["finish_reason"] == "max_steps"
    assert "stopped after 2 model steps without a final answer" in (response.choices[0].message.content or "")
    assert [s["kind"] for s in trace["steps"]] == ["model", "tool", "model", "tool"]
    assert len(history(scripted)) == 2


def test_tool_call_limit(scripted: UpstreamHandle, client: openai.OpenAI) -> None:
    script(scripted, {"tool_calls": [tool_call("fs_list"), tool_call("fs_list")]}, {"text": "never"})
    response = _ask(client, "agent/frugal")
    assert _ember(response)["finish_reason"] == "max_steps"
    assert "limit of 1 tool calls" in (response.choices[0].message.content or "")


def test_deadline(scripted: UpstreamHandle, client: openai.OpenAI, slow_url: str) -> None:
    script(scripted, {"tool_calls": [tool_call("http_fetch", url=f"{slow_url}/sleep/4")]}, {"text": "late"})
    started = time.perf_counter()
    response = _ask(client, "agent/hurried")
    assert time.perf_counter() - started < 3
    assert _ember(response)["finish_reason"] == "deadline"
    assert "deadline of 1 s" in (response.choices[0].message.content or "")


def test_streaming_sends_steps_before_the_answer(scripted: UpstreamHandle, client: openai.OpenAI) -> None:
    script(scripted, {"tool_calls": [tool_call("fs_list")]}, {"text": "one file"})
    order: list[str] = []
    text = ""
    for chunk in client.chat.completions.create(
        model="agent/helper", messages=[{"role": "user", "content": "list"}], max_tokens=20, stream=True
    ):
        extra = chunk.model_extra or {}
        if "ember" in extra and "step" in extra["ember"]:
            order.append("step:" + extra["ember"]["step"]["kind"])
        for choice in chunk.choices:
            if choice.delta.content:
                order.append("text")
                text += choice.delta.content
    assert text == "one file"
    assert order[:2] == ["step:model", "step:tool"]
    assert order.index("text") > order.index("step:tool")
    assert order[-1] == "step:model"  # the final call's step, once its text is out


def test_plain_model_in_tools_mode(scripted: UpstreamHandle, client: openai.OpenAI) -> None:
    script(scripted, {"tool_calls": [tool_call("fs_list")]}, {"text": "listed"})
    response = _ask(client, MODEL, extra_body={"mode": "tools", "mode_tools": ["fs_list"]})
    assert response.choices[0].message.content == "listed"
    trace = _ember(response)
    assert trace["agent"] == "mode:tools" and [s["kind"] for s in trace["steps"]] == ["model", "tool", "model"]
    assert [t["function"]["name"] for t in history(scripted)[0]["body"]["tools"]] == ["fs_list"]


@pytest.mark.parametrize(
    ("model", "extra", "status", "param"),
    [
        ("agent/nobody", {}, 404, None),
        ("agent/broken", {}, 503, None),  # the agent exists; its model does not: the server's fault
        (MODEL, {"mode": "dreaming"}, 400, "mode"),
        (MODEL, {"mode": "tools", "mode_tools": ["rm_rf"]}, 400, "mode_tools"),
        (
            "agent/helper",
            {"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]},
            400,
            "tools",
        ),
        ("agent/helper", {"response_format": {"type": "json_object"}}, 400, "response_format"),
    ],
)
def test_bad_agent_requests(
    server: ServerHandle, key: str, model: str, extra: dict[str, Any], status: int, param: str | None
) -> None:
    body = {"model": model, "messages": [{"role": "user", "content": "x"}], **extra}
    response = httpx.post(
        server.url("/v1/chat/completions"), json=body, headers={"Authorization": f"Bearer {key}"}, timeout=30
    )
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["message"]
    if param is not None:
        assert error["param"] == param


def test_key_without_tools_scope(
    scripted: UpstreamHandle, keys_and_server: tuple[dict[str, str], ServerHandle]
) -> None:
    keys, server = keys_and_server
    chat_only = openai.OpenAI(base_url=server.url("/v1"), api_key=keys["chat"], max_retries=0)
    with pytest.raises(openai.PermissionDeniedError) as caught:
        _ask(chat_only, "agent/helper")
    assert "'tools' scope" in str(caught.value)
    with pytest.raises(openai.PermissionDeniedError):
        _ask(chat_only, MODEL, extra_body={"mode": "tools", "mode_tools": ["fs_list"]})
    assert history(scripted) == []  # refused before any model call
    # An agent without tools needs only chat.
    script(scripted, {"text": "hi"})
    assert _ask(chat_only, "agent/plain").choices[0].message.content == "hi"


def _audit_rows(server: ServerHandle, run_id: str, kind: str, timeout: float = 10) -> list[dict[str, Any]]:
    """The run's audit rows once one of `kind` is there (the audit log writes on its own thread)."""
    audit = server.home / "state" / "audit.db"
    deadline = time.monotonic() + timeout
    rows: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        with sqlite3.connect(f"file:{audit}?mode=ro", uri=True) as db:
            rows = [json.loads(d) for (d,) in db.execute("SELECT data FROM audit ORDER BY seq")]
        if any(r.get("run_id") == run_id and r["kind"] == kind for r in rows):
            break
        time.sleep(0.05)
    return rows


def test_a_client_that_goes_away_stops_the_run(
    scripted: UpstreamHandle, server: ServerHandle, key: str, slow_url: str
) -> None:
    script(scripted, {"tool_calls": [tool_call("http_fetch", url=f"{slow_url}/sleep/3")]}, {"text": "never read"})
    body = {"model": "agent/helper", "messages": [{"role": "user", "content": "x"}], "stream": True}
    started = time.monotonic()
    with httpx.stream(
        "POST", server.url("/v1/chat/completions"), json=body, headers={"Authorization": f"Bearer {key}"}, timeout=10
    ) as response:
        assert response.status_code == 200
        run_id = response.headers["x-ember-agent-run"]
        for line in response.iter_lines():
            if '"step"' in line:  # the first model step: the tool is running now
                break
    rows = _audit_rows(server, run_id, "agent_run", timeout=2.5)
    run_row = next(r for r in rows if r.get("run_id") == run_id and r["kind"] == "agent_run")
    assert time.monotonic() - started < 2.5  # cancelled, not waited out
    assert run_row["status"] == 499 and run_row["finish_reason"] == "cancelled"
    assert len(history(scripted)) == 1  # no second model call


def test_a_step_that_fails_upstream_is_an_error_status(
    scripted: UpstreamHandle, server: ServerHandle, key: str, slow_url: str
) -> None:
    """The second model call fails (the upstream breaks while the tool runs): the request is an
    upstream error in the protocol's error body, not a 500 or a half answer."""
    script(scripted, {"tool_calls": [tool_call("http_fetch", url=f"{slow_url}/sleep/1")]}, {"text": "never"})
    body = {"model": "agent/helper", "messages": [{"role": "user", "content": "x"}]}
    result: dict[str, httpx.Response] = {}
    thread = threading.Thread(
        target=lambda: result.update(
            response=httpx.post(
                server.url("/v1/chat/completions"), json=body, headers={"Authorization": f"Bearer {key}"}, timeout=30
            )
        )
    )
    thread.start()
    deadline = time.monotonic() + 10
    while not history(scripted) and time.monotonic() < deadline:
        time.sleep(0.02)
    scripted.control(mode="error", status=500)
    thread.join(30)
    response = result["response"]
    assert 500 <= response.status_code < 600 and response.status_code != 500, response.text
    assert response.json()["error"]["message"]
    assert "Traceback" not in server.log()


def test_usage_and_audit_rows(scripted: UpstreamHandle, client: openai.OpenAI, server: ServerHandle) -> None:
    script(scripted, {"tool_calls": [tool_call("fs_read", path="note.txt")]}, {"text": "done"})
    trace = _ember(_ask(client, "agent/helper"))
    run_id = trace["run_id"]
    rows = _audit_rows(server, run_id, "agent_run")
    mine = [r for r in rows if r.get("run_id") == run_id]
    tool_rows = [r for r in mine if r["kind"] == "agent_tool"]
    assert len(tool_rows) == 1 and tool_rows[0]["tool"] == "fs_read" and tool_rows[0]["outcome"] == "ok"
    assert tool_rows[0]["key"] == "full" and len(tool_rows[0]["arguments_sha256"]) == 16
    run_row = next(r for r in mine if r["kind"] == "agent_run")
    assert run_row["steps"] == 3 and run_row["finish_reason"] == "stop" and run_row["tool_calls"] == 1
    # Each model step priced as the gateway prices its usage row; the run's row sums them.
    model_steps = [s for s in trace["steps"] if s["kind"] == "model"]
    for s in model_steps:
        assert s["cost"] == pytest.approx((s["tokens_in"] * PRICE_IN + s["tokens_out"] * PRICE_OUT) / 1e6)
        assert s["cost"] > 0
    assert run_row["cost"] == pytest.approx(sum(s["cost"] for s in model_steps))
    assert run_row["tokens_in"] == sum(s["tokens_in"] for s in model_steps)
    # The agents' rows are links of the same hash chain, which still verifies.
    db = open_readonly(server.home / "state" / "audit.db")
    try:
        count, problems = verify(db)
    finally:
        db.close()
    assert count >= len(rows) and problems == []
    tail = subprocess.run(
        [sys.executable, "-m", "ember", "audit", "tail", "-n", "50"],
        env={**os.environ, "EMBER_HOME": str(server.home)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    line = next(x for x in tail.stdout.splitlines() if "agent_tool" in x and run_id in x)
    assert '"tool":"fs_read"' in line and " full " in line
    requests = [r for r in rows if r["kind"] == "request" and r["model"] == "agent/helper"]
    assert requests and requests[-1]["provider"] == "agent" and requests[-1]["tokens_in"] == 0
    # The steps' own rows carry the tokens, under the agent's model and the same key.
    steps = [r for r in rows if r["kind"] == "request" and r["model"] == MODEL and r["key"] == "full"]
    assert len(steps) >= 2 and all(r["tokens_in"] > 0 for r in steps[-2:])


def test_a_refused_agent_request_is_a_usage_row(client: openai.OpenAI, server: ServerHandle) -> None:
    with pytest.raises(openai.NotFoundError):
        _ask(client, "agent/nobody-at-all")
    usage = server.home / "state" / "usage.db"
    deadline = time.monotonic() + 10
    found: list[tuple[Any, ...]] = []
    while not found and time.monotonic() < deadline:
        with sqlite3.connect(f"file:{usage}?mode=ro", uri=True) as db:
            found = db.execute("SELECT status, provider, key FROM usage WHERE model = 'agent/nobody-at-all'").fetchall()
        time.sleep(0.05)
    assert found == [(404, "agent", "full")]


@pytest.mark.slow
def test_real_model_forced_tool_call(model_home: Path, agent_server_factory: Callable[..., ServerHandle]) -> None:
    """The loop's mechanics on the real default model: the first step must call a tool (the
    grammar forces it), the later one may not call any, so it answers. The tool takes no
    arguments (the MCP test server's `pid`), so what a 135M model writes cannot break the call."""
    home = model_home.parent / "agents-real-home"
    if not home.exists():
        import shutil

        shutil.copytree(model_home, home, ignore=shutil.ignore_patterns("state"))
    toml = f"""
[[mcp_servers]]
name = "calc"
command = ["{sys.executable}", "-m", "tests.agents.mcp_servers.stdio_server"]
env = {{ PYTHONPATH = "{ROOT}" }}

[[agents]]
name = "pid"
model = "{DEFAULT_MODEL}"
instructions = "Find the process id with the tool, then say it."
tools = ["calc__pid"]
first_tool_choice = "required"
tool_choice = "none"
deadline = "600s"  # a loaded CI machine: the run's default 120 s is not this test's subject
"""
    server = agent_server_factory(toml, home)
    client = openai.OpenAI(base_url=server.url("/v1"), api_key="unused", max_retries=0)
    response = client.chat.completions.create(
        model="agent/pid",
        messages=[{"role": "user", "content": "What is the process id?"}],
        max_tokens=32,  # greedy, the model writes a whole (if odd) arguments object in these
        temperature=0,  # greedy: the same run each time
    )
    steps = _ember(response)["steps"]
    kinds = [s["kind"] for s in steps]
    # The grammar forces at least one call on the first step (the model may make several).
    assert kinds[0] == "model" and kinds[-1] == "model" and set(kinds[1:-1]) == {"tool"}, json.dumps(steps)
    tools = steps[1:-1]
    assert all(s["name"] == "calc__pid" for s in tools)
    assert any(s["result"].isdigit() and not s["is_error"] for s in tools), json.dumps(tools)
    assert steps[0]["tokens_in"] > 0 and steps[-1]["tokens_in"] > 0
    assert "tool_calls" not in steps[-1]["detail"]  # tool_choice none on the later step
    assert response.choices[0].message.content == steps[-1]["result"]


class _Tool:
    """A tool with only a schema: parse_arguments reads nothing else."""

    def __init__(self, parameters: dict[str, Any]) -> None:
        self.spec = ToolSpec(name="t", description="", parameters=parameters)

    async def call(self, arguments: dict[str, Any]) -> ToolOutcome:
        return ToolOutcome("unused")


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ('{"n": 3, "tags": ["a"]}', None),
        ("", "required property"),  # no arguments at all: an empty object, which lacks "n"
        ("{", "not valid JSON"),
        ("[1]", "must be a JSON object, not list"),
        ("null", "must be a JSON object, not NoneType"),
        ('{"n": "3"}', "at n: '3' is not of type 'integer'"),
        ('{"n": 1, "tags": [1]}', "at tags/0: 1 is not of type 'string'"),
        ('{"n": 1, "extra": true}', "Additional properties are not allowed"),
    ],
)
def test_arguments_are_checked_against_the_schema(text: str, problem: str | None) -> None:
    schema = {
        "type": "object",
        "properties": {"n": {"type": "integer"}, "tags": {"type": "array", "items": {"type": "string"}}},
        "required": ["n"],
        "additionalProperties": False,
    }
    _, found = parse_arguments(_Tool(schema), text)
    if problem is None:
        assert found is None
    else:
        assert found is not None and problem in found, found
