"""MCP tool sources against real MCP servers written with the `mcp` SDK: a stdio one (a child
process per source) and a streamable-HTTP one (uvicorn, in a subprocess on a loopback port)."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import openai
import pytest
from tests.agents.conftest import MODEL, agent_toml, history, script, tool_call
from tests.conftest import ServerHandle, free_port
from tests.gateway.conftest import UpstreamHandle

from ember.agents.tools.mcp import McpServerConfig, McpSource
from ember.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "t0ken-for-the-tests"


def stdio_config(**fields: Any) -> McpServerConfig:
    env = {"PYTHONPATH": str(ROOT), **fields.pop("env", {})}
    return McpServerConfig(
        name=fields.pop("name", "st"),
        command=[sys.executable, "-m", "tests.agents.mcp_servers.stdio_server"],
        env=env,
        **fields,
    )


@asynccontextmanager
async def started(config: McpServerConfig, environ: dict[str, str] | None = None) -> AsyncIterator[McpSource]:
    source = McpSource(config, environ)
    await source.start()
    try:
        yield source
    finally:
        await source.aclose()
        # Nothing of the source lives on (its owner task ended, not just abandoned).
        assert not [task for task in asyncio.all_tasks() if task.get_name().startswith(f"mcp:{source.name}")]


async def call(source: McpSource, tool: str, **arguments: Any) -> tuple[str, bool]:
    outcome = await source.tool(f"{source.name}__{tool}").call(arguments)
    return outcome.content, outcome.is_error


def gone(pid: int) -> bool:
    """No such process, not even a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return True
    return state == "X"


def stdio_children() -> list[int]:
    """Our child processes that are the stdio test server (zombies included)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        ours = b"stdio_server" in cmdline or b"sys.stdin.read" in cmdline or stat[0] == "Z"
        if int(stat[1]) == os.getpid() and ours:
            found.append(int(entry.name))
    return found


async def until(predicate: Any, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


@pytest.fixture(scope="module")
def http_server() -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    port = free_port()
    proc = spawn_http_server(port)
    deadline = time.monotonic() + 20
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            assert proc.poll() is None and time.monotonic() < deadline, "the MCP HTTP test server did not start"
            time.sleep(0.05)
    yield f"http://127.0.0.1:{port}/mcp", proc
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def spawn_http_server(port: int) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "tests.agents.mcp_servers.http_server", str(port), TOKEN]
    return subprocess.Popen(command, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})


def http_config(url: str, **fields: Any) -> McpServerConfig:
    return McpServerConfig(
        name=fields.pop("name", "web"), url=url, headers={"Authorization": "Bearer ${MCP_TEST_TOKEN}"}, **fields
    )


# -- config -----------------------------------------------------------------------------------


def test_config_refuses_bad_tables() -> None:
    from pydantic import ValidationError

    for bad in (
        {"name": "x"},  # no transport
        {"name": "x", "command": ["a"], "url": "http://127.0.0.1:1/mcp"},  # both
        {"name": "a__b", "command": ["a"]},  # the separator in the prefix
        {"name": "a.b", "command": ["a"]},
        {"name": "x", "command": []},
        {"name": "x", "url": "ftp://h/mcp"},
        {"name": "x", "command": ["a"], "headers": {"A": "b"}},
        {"name": "x", "command": ["a"], "timeout": 0},
        {"name": "x", "command": ["a"], "colour": "red"},
        {"name": "x", "command": ["a"], "tools": ["t"], "require_approval": ["u"]},
    ):
        with pytest.raises(ValidationError):
            McpServerConfig.model_validate(bad)
    assert McpServerConfig(name="x", command=["a"], require_approval="*").needs_approval("anything")
    for flag in (True, False):  # as the built-in tools' tables take it
        table = {"name": "x", "command": ["a"], "require_approval": flag}
        assert McpServerConfig.model_validate(table).needs_approval("t") is flag


def test_a_missing_environment_variable_is_a_config_error_naming_it() -> None:
    config = http_config("http://127.0.0.1:9/mcp")
    with pytest.raises(ConfigError, match=r"headers\.Authorization uses \$\{MCP_TEST_TOKEN\}.*not set"):
        McpSource(config, environ={})
    with pytest.raises(ConfigError, match="NOPE_VAR"):
        McpSource(stdio_config(env={"X": "${NOPE_VAR}"}), environ={})
    assert McpSource(stdio_config()).state == "idle"  # built with the app, before any event loop runs


# -- stdio ------------------------------------------------------------------------------------


async def test_stdio_tools_listed_with_prefix_and_called(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MCP_TEST_SECRET", "not for the child")
    config = stdio_config(
        env={"GREETING": "hello ${WHO}"},
        tools=["add", "echo", "fail", "picture", "getenv", "pid", "absent"],
        require_approval=["echo"],
        timeout=5,
    )
    async with started(config, environ={"WHO": "world"}) as source:
        assert source.state == "up"
        specs = {tool.spec.name: tool.spec for tool in await source.tools()}
        assert set(specs) == {"st__add", "st__echo", "st__fail", "st__picture", "st__getenv", "st__pid"}
        assert source.known_tool_names() == list(specs)
        add = specs["st__add"]
        assert add.description == "Add two integers."
        assert add.parameters["properties"]["a"]["type"] == "integer" and add.parameters["required"] == ["a", "b"]
        assert add.source == "mcp:st" and add.timeout == 5 and not add.require_approval
        assert specs["st__echo"].require_approval

        assert await call(source, "add", a=2, b=40) == ("42", False)
        assert await call(source, "getenv", var="GREETING") == ("hello world", False)  # env, ${VAR} expanded
        assert await call(source, "getenv", var="MCP_TEST_SECRET") == ("", False)  # ember's environment stays out
        assert (await call(source, "getenv", var="PATH"))[0] == os.environ["PATH"]
        text, is_error = await call(source, "fail")
        assert is_error and "fail was asked to fail" in text
        assert await call(source, "picture") == ("[image: image/png, 66 bytes]", False)
        text, is_error = await call(source, "add", a="many")  # the server validates its arguments
        assert is_error and "b" in text
        # Left out by the allowlist: not listed, and a call says so (not a crash).
        assert await call(source, "slow", seconds=0) == ("MCP server 'st' has no tool 'slow'", True)
        # Several at once on the one session.
        results = await asyncio.gather(*(call(source, "add", a=i, b=1) for i in range(8)))
        assert results == [(str(i + 1), False) for i in range(8)]


async def test_slow_tool_times_out_and_the_next_call_works() -> None:
    async with started(stdio_config(timeout=0.5)) as source:
        t0 = time.monotonic()
        text, is_error = await call(source, "slow", seconds=1.5)
        assert is_error and text == "MCP tool 'st__slow' timed out after 0.5 s"
        assert time.monotonic() - t0 < 2.5
        assert await call(source, "echo", text="still here") == ("still here", False)
        with pytest.raises(TimeoutError):  # the caller's own cancellation propagates
            await asyncio.wait_for(call(source, "slow", seconds=1.5), 0.2)
        await asyncio.sleep(0.3)  # the ping after the timeout is answered: no reconnect
        assert source.state == "up"


@pytest.mark.slow
async def test_stdio_server_that_dies_is_a_tool_error_then_restarted(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "ember.agents.mcp")
    async with started(stdio_config(timeout=10)) as source:
        first_pid = int((await call(source, "pid"))[0])
        text, is_error = await call(source, "crash")
        assert is_error and text.startswith("MCP server 'st' died during the call"), text
        # The restart: a later call waits for the connection under way and reaches a new child.
        second = await call(source, "pid")
        assert not second[1], second
        assert int(second[0]) != first_pid
        await until(lambda: gone(first_pid))
        assert "MCP server 'st' died" in caplog.text

        # Killed from outside while idle: the source notices by itself and reconnects.
        os.kill(int(second[0]), signal.SIGKILL)
        await until(lambda: source.state != "up")
        await until(lambda: source.state == "up")
        third = await call(source, "pid")
        assert not third[1] and int(third[0]) not in (first_pid, int(second[0]))
        last_pid = int(third[0])
    assert source.state == "closed"
    await until(lambda: gone(last_pid), 5)  # aclose: no child left, not even a zombie
    assert stdio_children() == []


async def test_a_source_not_started_or_closed_answers_with_a_tool_error() -> None:
    source = McpSource(stdio_config())
    assert await call(source, "add", a=1, b=2) == ("MCP server 'st' is not running (idle)", True)
    await source.aclose()
    assert await call(source, "add", a=1, b=2) == ("MCP server 'st' is not running (closed)", True)


async def test_aclose_while_connecting_leaves_no_child() -> None:
    source = McpSource(stdio_config(timeout=0.2))
    starting = asyncio.create_task(source.start())
    await until(lambda: stdio_children() != [], 5)  # spawned, still importing
    assert await call(source, "add", a=1, b=2) == ("MCP server 'st' is still starting (0.2 s waited)", True)
    await source.aclose()
    await starting
    assert not [task for task in asyncio.all_tasks() if task.get_name().startswith("mcp:")]
    await until(lambda: stdio_children() == [], 5)


async def test_changed_tool_lists_and_names_that_do_not_fit(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "ember.agents.mcp")
    async with started(stdio_config()) as source:
        names = source.known_tool_names()
        assert "st__add" in names and not any("dot" in n or "xxx" in n for n in names)
        assert "'has.dot' left out" in caplog.text and f"'{'x' * 62}' left out" in caplog.text
        assert "st__extra" not in names
        assert await call(source, "grow") == ("grown", False)
        await until(lambda: "st__extra" in source.known_tool_names(), 5)  # listed again on the notification
        assert await call(source, "extra") == ("extra here", False)
        assert {tool.spec.name for tool in await source.tools()} >= {"st__extra", "st__add"}


async def test_a_command_that_cannot_start_is_retried_and_calls_are_tool_errors(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, "ember.agents.mcp")
    config = McpServerConfig(name="nope", command=["/nonexistent/mcp-server"], startup_timeout=2)
    async with started(config) as source:  # start() does not raise
        assert source.state == "down" and source.known_tool_names() == []
        text, is_error = await call(source, "anything")
        assert is_error and text.startswith("MCP server 'nope' is not connected (") and "nonexistent" in text
        assert "MCP server 'nope' could not start" in caplog.text
    # A child that exits at once (it is no MCP server).
    config = McpServerConfig(name="quits", command=[sys.executable, "-c", "pass"], startup_timeout=3)
    t0 = time.monotonic()
    async with started(config) as source:
        assert source.state == "down" and time.monotonic() - t0 < 4
        text, is_error = await call(source, "x")
        assert is_error and "exited or closed its output before initializing" in text, text
    # One that never answers initialize is given up at startup_timeout, and stopped on aclose.
    mute = [sys.executable, "-c", "import sys; sys.stdin.read()"]  # reads, never answers
    config = McpServerConfig(name="mute", command=mute, startup_timeout=1)
    t0 = time.monotonic()
    async with started(config) as source:
        assert source.state == "down" and time.monotonic() - t0 < 2.5
        text, is_error = await call(source, "x")
        assert is_error and "no answer in time" in text, text
    await until(lambda: stdio_children() == [], 5)


# -- streamable HTTP --------------------------------------------------------------------------


async def test_http_server_with_a_header_from_the_environment(http_server: tuple[str, Any]) -> None:
    url, _ = http_server
    async with started(http_config(url), environ={"MCP_TEST_TOKEN": TOKEN}) as source:
        assert source.state == "up"
        assert "web__add" in source.known_tool_names()
        assert await call(source, "add", a=1, b=2) == ("3", False)
        text, is_error = await call(source, "fail")
        assert is_error and "fail was asked to fail" in text


async def test_http_server_refusing_the_header_makes_calls_tool_errors(http_server: tuple[str, Any]) -> None:
    url, _ = http_server
    async with started(http_config(url, startup_timeout=3), environ={"MCP_TEST_TOKEN": "wrong"}) as source:
        assert source.state == "down"
        text, is_error = await call(source, "add", a=1, b=2)
        assert is_error and "HTTP 401" in text and url not in text, text  # no URL: its query could hold a secret


@pytest.mark.slow
async def test_http_server_that_stops_is_a_tool_error_then_reconnected() -> None:
    port = free_port()
    proc = spawn_http_server(port)
    config = http_config(f"http://127.0.0.1:{port}/mcp", name="flaky", startup_timeout=5, timeout=5)
    try:
        await until(lambda: _listening(port), 20)
        async with started(config, environ={"MCP_TEST_TOKEN": TOKEN}) as source:
            assert await call(source, "echo", text="a") == ("a", False)
            proc.kill()
            proc.wait()
            text, is_error = await call(source, "echo", text="b")
            assert is_error and text.startswith("MCP server 'flaky' "), text
            proc = spawn_http_server(port)
            await until(lambda: _listening(port), 20)
            await until(lambda: source.state == "up", 20)
            assert await call(source, "echo", text="c") == ("c", False)
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.slow
async def test_http_server_that_hangs_is_given_up_and_reconnected(
    http_server: tuple[str, subprocess.Popen[bytes]], monkeypatch: pytest.MonkeyPatch
) -> None:
    import ember.agents.tools.mcp as mcp_module

    monkeypatch.setattr(mcp_module, "PING_TIMEOUT", 0.5)
    monkeypatch.setattr(mcp_module, "TEARDOWN_TIMEOUT", 0.5)
    url, proc = http_server
    config = http_config(url, name="hangs", startup_timeout=1, timeout=1)
    async with started(config, environ={"MCP_TEST_TOKEN": TOKEN}) as source:
        assert await call(source, "echo", text="a") == ("a", False)
        proc.send_signal(signal.SIGSTOP)  # the process lives, its socket stays open, nothing answers
        try:
            assert await call(source, "echo", text="b") == ("MCP tool 'hangs__echo' timed out after 1 s", True)
            await until(lambda: source.state != "up", 15)  # the ping after the timeout got no answer
        finally:
            proc.send_signal(signal.SIGCONT)
        await until(lambda: source.state == "up", 15)
        assert await call(source, "echo", text="c") == ("c", False)


def _listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
        return True
    except OSError:
        return False


def test_structured_content_alone_is_json() -> None:
    from mcp import types as mcp_types

    from ember.agents.tools.mcp import _result_text

    result = mcp_types.CallToolResult(content=[], structured_content={"ok": True, "n": 1})
    assert json.loads(_result_text(result)) == {"ok": True, "n": 1}


# -- through the ember server -----------------------------------------------------------------


@pytest.mark.slow
def test_an_agent_calls_mcp_tools_through_the_server(
    scripted: UpstreamHandle, agent_server_factory: Callable[..., ServerHandle]
) -> None:
    toml = f"""
[[mcp_servers]]
name = "st"
command = [{json.dumps(sys.executable)}, "-m", "tests.agents.mcp_servers.stdio_server"]
env = {{ PYTHONPATH = {json.dumps(str(ROOT))} }}
timeout = 10

[[agents]]
name = "calc"
model = "{MODEL}"
tools = ["st__add", "st__crash"]
"""
    server = agent_server_factory(agent_toml(scripted, toml))
    client = openai.OpenAI(base_url=server.url("/v1"), api_key="none", max_retries=0)

    def ask() -> Any:
        return client.chat.completions.create(
            model="agent/calc", messages=[{"role": "user", "content": "go"}], max_tokens=20
        )

    script(scripted, {"tool_calls": [tool_call("st__add", a=2, b=3)]}, {"text": "five"})
    assert ask().choices[0].message.content == "five"
    offered = sorted(t["function"]["name"] for t in history(scripted)[0]["body"]["tools"])
    assert offered == ["st__add", "st__crash"]
    assert history(scripted)[1]["body"]["messages"][-1]["content"] == "5"

    # The server dies in a call: a tool error fed back, and the run's next call reaches a new one.
    scripted.reset()
    script(
        scripted,
        {"tool_calls": [tool_call("st__crash")]},
        {"tool_calls": [tool_call("st__add", a=1, b=1)]},
        {"text": "recovered"},
    )
    response = ask()
    assert response.choices[0].message.content == "recovered"
    sent = history(scripted)
    assert "MCP server 'st' died during the call" in sent[1]["body"]["messages"][-1]["content"]
    assert sent[2]["body"]["messages"][-1]["content"] == "2"
