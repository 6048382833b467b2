"""The `shell` built-in's sandbox, escape by escape: real subprocesses, real rlimits, real bwrap.

Each test runs a real command through `ShellTool.call` (the runner's entry point) and checks
what the sandbox promises: a CPU loop and a memory bomb stopped at their limits, a hang killed
with its whole process group, a bounded fork loop stopped, the allowlist, an empty environment
and a removed working directory; under bubblewrap also no network and a read-only system.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from ember.agents.tools.builtin_config import ShellConfig
from ember.agents.tools.sandbox import Sandbox, SandboxLimits
from ember.agents.tools.shell import ShellTool

ALLOW = ["echo", "python3", "sleep", "cat", "ls"]


def shell(**overrides: Any) -> ShellTool:
    settings: dict[str, Any] = {"allow": ALLOW, "cpu_seconds": 1, "memory_mb": 256, "timeout": 5, **overrides}
    return ShellTool(ShellConfig(**settings))


async def run(tool: ShellTool, *argv: str, stdin: str | None = None) -> tuple[dict[str, Any], bool]:
    arguments: dict[str, Any] = {"argv": list(argv)}
    if stdin is not None:
        arguments["stdin"] = stdin
    outcome = await tool.call(arguments)
    return json.loads(outcome.content), outcome.is_error


def py(code: str) -> tuple[str, str, str]:
    return ("python3", "-c", code)


def exists(path: str) -> bool:
    return os.path.exists(path)


def alive(pid: int) -> bool:
    """Whether a host pid runs (a zombie waiting for a reaper counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.fixture(scope="module")
def bwrap_works() -> None:
    sandbox = Sandbox(SandboxLimits(1, 1 << 28, 64, 8, 1 << 20, 5, 1024), "auto")
    if not sandbox.isolated_sync():
        pytest.skip("bubblewrap cannot create namespaces here (scripts/debian-packages.sh installs it)")


# -- the tool's contract ------------------------------------------------------------------------


async def test_allowed_command_answers_exit_code_and_streams() -> None:
    tool = shell(bubblewrap="never")
    body, is_error = await run(tool, "echo", "hello", "world")
    assert not is_error and body["exit_code"] == 0 and body["stdout"] == "hello world\n"
    assert body["sandbox"] == "rlimits only (no bubblewrap)"
    body, _ = await run(tool, "cat", stdin="from stdin")
    assert body["stdout"] == "from stdin"
    # No shell: a `;` or `$(...)` is an argument, not a second command.
    body, _ = await run(tool, "echo", "a; rm -rf /tmp/x $(id)")
    assert body["stdout"] == "a; rm -rf /tmp/x $(id)\n"


async def test_nonzero_exit_is_an_answer_not_a_tool_error() -> None:
    body, is_error = await run(shell(bubblewrap="never"), *py("import sys; print('bad', file=sys.stderr); sys.exit(3)"))
    assert not is_error and body["exit_code"] == 3 and body["stderr"] == "bad\n"


@pytest.mark.parametrize("argv0", ["rm", "/bin/echo", "./echo", "sh"])
async def test_command_not_in_allowlist_is_refused(argv0: str) -> None:
    outcome = await shell().call({"argv": [argv0, "-rf", "/"]})
    assert outcome.is_error and "not allowed" in outcome.content and "echo" in outcome.content


@pytest.mark.parametrize("arguments", [{}, {"argv": []}, {"argv": "echo hi"}, {"argv": ["echo"], "cwd": "/"}])
async def test_bad_arguments_are_a_tool_error(arguments: dict[str, Any]) -> None:
    outcome = await shell().call(arguments)
    assert outcome.is_error and outcome.content.startswith("bad arguments:")


def test_allowlist_holds_bare_names_only() -> None:
    with pytest.raises(ValueError, match="bare command names"):
        ShellConfig(allow=["/bin/sh"])
    with pytest.raises(ValueError):
        ShellConfig(allow=[])


# -- limits (with and without bubblewrap: the rlimits apply to both) -------------------------------


@pytest.mark.parametrize("bubblewrap", ["never", "auto"])
async def test_cpu_loop_is_killed_at_its_cpu_limit(bubblewrap: str, request: pytest.FixtureRequest) -> None:
    if bubblewrap == "auto":
        request.getfixturevalue("bwrap_works")
    started = time.monotonic()
    body, is_error = await run(shell(bubblewrap=bubblewrap, timeout=20), *py("while True: pass"))
    assert is_error and body["signal"] == "SIGXCPU" and "CPU limit of 1 s" in body["error"]
    assert time.monotonic() - started < 10  # the CPU limit, not the 20 s timeout


@pytest.mark.parametrize("bubblewrap", ["never", "auto"])
async def test_memory_bomb_is_stopped_by_the_address_space_limit(
    bubblewrap: str, request: pytest.FixtureRequest
) -> None:
    if bubblewrap == "auto":
        request.getfixturevalue("bwrap_works")
    bomb = "chunks = []\nwhile True: chunks.append(bytearray(16 << 20))"
    started = time.monotonic()
    body, _ = await run(shell(bubblewrap=bubblewrap, memory_mb=128), *py(bomb))
    assert body["exit_code"] == 1 and "MemoryError" in body["stderr"]
    assert time.monotonic() - started < 5


async def test_hang_is_killed_at_the_timeout_with_its_whole_process_group() -> None:
    # A child in the same group and one that left it (setsid) both outlive the parent's start.
    code = (
        "import subprocess, time\n"
        "a = subprocess.Popen(['sleep', '60'])\n"
        "b = subprocess.Popen(['sleep', '60'], start_new_session=True)\n"
        "print(a.pid, b.pid, flush=True)\n"
        "time.sleep(60)\n"
    )
    if os.geteuid() != 0:
        code = code.replace(", start_new_session=True", "")  # only root runs give each run a uid to kill by
    started = time.monotonic()
    body, is_error = await run(shell(bubblewrap="never", timeout=1), *py(code))
    assert time.monotonic() - started < 4
    assert is_error and body["error"] == "killed after 1 s (the timeout)" and body["signal"] == "SIGKILL"
    pids = [int(p) for p in body["stdout"].split()]
    assert len(pids) == 2
    await asyncio.sleep(0.2)
    assert not any(alive(pid) for pid in pids), body


async def test_children_left_behind_by_a_finished_command_are_killed() -> None:
    code = "import subprocess\nprint(subprocess.Popen(['sleep', '60'], stdout=subprocess.DEVNULL).pid)"
    started = time.monotonic()
    body, is_error = await run(shell(bubblewrap="never"), *py(code))
    # It answers when the command exits, not when the background child (holding no pipe) would.
    assert not is_error and body["exit_code"] == 0 and time.monotonic() - started < 3
    await asyncio.sleep(0.2)
    assert not alive(int(body["stdout"]))


@pytest.mark.parametrize("bubblewrap", ["never", "auto"])
async def test_fork_loop_is_stopped_at_max_processes(bubblewrap: str, request: pytest.FixtureRequest) -> None:
    if bubblewrap == "auto":
        request.getfixturevalue("bwrap_works")
    if bubblewrap == "never" and os.geteuid() != 0:
        pytest.skip("without bwrap, RLIMIT_NPROC is exact only for root (a uid per run)")
    # A bounded fork loop (50 at most, each child exits within a second): safe on a shared box.
    code = (
        "import os, time\nn = 0\n"
        "for _ in range(50):\n"
        "    try:\n        pid = os.fork()\n"
        "    except OSError:\n        break\n"
        "    if pid == 0:\n        time.sleep(1)\n        os._exit(0)\n"
        "    n += 1\n"
        "print(n)\n"
    )
    body, _ = await run(shell(bubblewrap=bubblewrap, max_processes=8), *py(code))
    assert body["exit_code"] == 0 and int(body["stdout"]) < 8


async def test_open_files_and_file_size_are_capped() -> None:
    tool = shell(bubblewrap="never", max_files=16, max_file_mb=1)
    body, _ = await run(tool, *py("fs = [open('/dev/null') for _ in range(64)]"))
    assert body["exit_code"] == 1 and "Too many open files" in body["stderr"]
    body, _ = await run(tool, *py("open('f', 'wb').write(b'x' * (2 << 20))"))
    assert body["exit_code"] == 1 and "File too large" in body["stderr"]


async def test_output_is_capped_and_says_so() -> None:
    body, is_error = await run(shell(bubblewrap="never", max_output_bytes=1000), *py("print('x' * 100000)"))
    assert not is_error and body["stdout"] == "x" * 1000
    assert body["stdout_note"] == "cut at 1000 of 100001 bytes"


@pytest.mark.parametrize("bubblewrap", ["never", "auto"])
async def test_environment_is_empty_and_workdir_is_fresh_and_removed(
    bubblewrap: str, request: pytest.FixtureRequest
) -> None:
    if bubblewrap == "auto":
        request.getfixturevalue("bwrap_works")
    os.environ["EMBER_SECRET_FOR_TEST"] = "leak"
    try:
        code = (
            "import os, json; open('made', 'w').write('x')\n"
            "print(json.dumps([dict(os.environ), os.getcwd(), os.listdir('.')]))"
        )
        body, _ = await run(shell(bubblewrap=bubblewrap), *py(code))
    finally:
        del os.environ["EMBER_SECRET_FOR_TEST"]
    env, cwd, listing = json.loads(body["stdout"])  # (bwrap sets PWD after --chdir)
    assert set(env) <= {"PATH", "LANG", "HOME", "PWD"} and env["PATH"] == "/usr/local/bin:/usr/bin:/bin"
    assert env["LANG"] == "C.UTF-8" and env["HOME"] == cwd and listing == ["made"]
    if bubblewrap == "never":
        assert not exists(cwd)  # removed after the run
    else:
        assert cwd == "/sandbox"


# -- bubblewrap: no network, a read-only system ---------------------------------------------------


@pytest.fixture
async def loopback_listener() -> AsyncIterator[int]:
    server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
    port: int = server.sockets[0].getsockname()[1]
    try:
        yield port
    finally:
        server.close()
        await server.wait_closed()


async def test_network_is_refused_inside_bubblewrap(bwrap_works: None, loopback_listener: int) -> None:
    code = (
        "import socket, sys\n"
        f"try:\n    socket.create_connection(('127.0.0.1', {loopback_listener}), timeout=2)\n"
        "except OSError as e:\n    print('refused', e)\n    sys.exit(1)\n"
        "print('connected')\n"
    )
    # The same command without bubblewrap reaches the listener: the test can see a connection.
    body, _ = await run(shell(bubblewrap="never"), *py(code))
    assert body["stdout"].strip() == "connected"
    body, _ = await run(shell(bubblewrap="auto"), *py(code))
    assert body["exit_code"] == 1 and body["stdout"].startswith("refused"), body
    assert "sandbox" not in body  # isolated
    body, _ = await run(shell(bubblewrap="always"), *py("import socket; print(socket.if_nameindex())"))
    assert body["stdout"].strip() == "[(1, 'lo')]"  # only a loopback of its own, down


async def test_system_is_read_only_inside_bubblewrap(bwrap_works: None) -> None:
    tool = shell(bubblewrap="always")
    for path in ("/usr/x", "/etc/x", "/bin/x"):
        body, _ = await run(tool, *py(f"open({path!r}, 'w')"))
        assert body["exit_code"] == 1 and "Read-only file system" in body["stderr"], (path, body)
    assert not exists("/usr/x")
    # What it can see of the host: the system, not the rest (no /root, /home, /work).
    body, _ = await run(tool, "ls", "/")
    assert set(body["stdout"].split()) <= {"bin", "dev", "etc", "lib", "lib64", "proc", "sandbox", "sbin", "tmp", "usr"}


async def test_a_timed_out_run_in_bubblewrap_leaves_nothing_running(bwrap_works: None) -> None:
    started = time.monotonic()
    body, is_error = await run(
        shell(bubblewrap="always", timeout=1),
        *py("import subprocess, time; subprocess.Popen(['sleep', '60'], start_new_session=True); time.sleep(60)"),
    )
    assert is_error and "killed after 1 s" in body["error"] and time.monotonic() - started < 4
    await asyncio.sleep(0.2)
    # The pid namespace died with bwrap: no `sleep 60` of any sandbox uid is left on the host.
    assert sandbox_sleepers() == []


def sandbox_sleepers() -> list[str]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    cmd = f.read()
                if cmd == b"sleep\x0060\x00" and os.stat(f"/proc/{entry}").st_uid >= 1_900_000_000:
                    found.append(entry)
            except OSError:
                pass
    return found


async def test_a_cancelled_call_kills_the_command_and_removes_its_directory() -> None:
    # The runner cancels a call at the agent's deadline: nothing may be left behind.
    tool = shell(bubblewrap="never", timeout=30)
    marker = f"cancelled-{os.getpid()}-{time.monotonic_ns()}"  # to find this run's process only
    code = f"import os, time; print(os.getpid(), os.getcwd(), flush=True); time.sleep(60)  # {marker}"
    task = asyncio.create_task(tool.call({"argv": list(py(code))}))
    await asyncio.sleep(0.5)
    before = set(leftover_dirs())
    assert before  # the run's working directory exists while it runs
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not (before & set(leftover_dirs()))
    assert sandbox_sleepers() == [] and alive_with(marker) == []


def leftover_dirs() -> list[str]:
    import tempfile

    tmp = tempfile.gettempdir()
    return [name for name in os.listdir(tmp) if name.startswith("ember-shell-")]


def alive_with(marker: str) -> list[str]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    if marker.encode() in f.read() and alive(int(entry)):
                        found.append(entry)
            except OSError:
                pass
    return found


def test_runs_the_same_on_the_servers_event_loop() -> None:
    # `ember serve` runs on uvloop, whose subprocesses take fewer options than asyncio's.
    uvloop = pytest.importorskip("uvloop")
    code = "import subprocess, time; print(subprocess.Popen(['sleep', '60']).pid, flush=True); time.sleep(60)"

    async def calls() -> tuple[tuple[dict[str, Any], bool], tuple[dict[str, Any], bool]]:
        return await run(shell(), "echo", "on uvloop"), await run(shell(bubblewrap="never", timeout=1), *py(code))

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        (echo, echo_error), (hang, hang_error) = runner.run(calls())
    assert not echo_error and echo["stdout"] == "on uvloop\n"
    assert hang_error and hang["error"] == "killed after 1 s (the timeout)"
    time.sleep(0.2)
    assert not alive(int(hang["stdout"]))


async def test_without_bubblewrap_auto_falls_back_once_and_always_refuses(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from ember.agents.tools import sandbox

    monkeypatch.setattr(sandbox, "BWRAP", "/nonexistent/bwrap")
    monkeypatch.setattr(sandbox, "_BUBBLEWRAP", sandbox._Bubblewrap())  # a fresh, unprobed cache
    with caplog.at_level("WARNING", logger="ember.agents.tools.sandbox"):
        for _ in range(2):
            body, is_error = await run(shell(), "echo", "still runs")
            assert not is_error and body["stdout"] == "still runs\n"
            assert body["sandbox"] == "rlimits only (no bubblewrap)"
    warnings = [r.getMessage() for r in caplog.records if "bubblewrap unusable" in r.getMessage()]
    assert warnings == ["shell tool: bubblewrap unusable (/nonexistent/bwrap is not installed); runs get rlimits only"]
    outcome = await shell(bubblewrap="always").call({"argv": ["echo", "x"]})
    assert outcome.is_error and outcome.content.startswith('bubblewrap is required (bubblewrap = "always")')
