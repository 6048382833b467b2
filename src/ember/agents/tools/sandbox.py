"""Running one command in a sandbox: the `shell` tool's engine room.

Every run is `asyncio.create_subprocess_exec` of an absolute path (never a shell) with:
- rlimits: RLIMIT_CPU (soft N, hard N+1: SIGXCPU, then SIGKILL), RLIMIT_AS, RLIMIT_NOFILE,
  RLIMIT_FSIZE, and RLIMIT_NPROC (how that one is made to bite: below);
- an environment of PATH, LANG=C.UTF-8 and HOME (the working directory), nothing else;
- a fresh temporary working directory, removed after the run;
- its own session (`start_new_session`); at the end of the run, whether it exited, timed out or
  the call was cancelled, everything it started is killed: under bubblewrap its pid namespace
  dies with it; without, its process group, and where it had a uid of its own (ember as root)
  every process of that uid. (Not root and no bubblewrap: a process that left the group with
  setsid survives the run, within its rlimits.)

Where bubblewrap works (checked once per process, then cached) and the config does not say
"never", the command also runs in `bwrap --unshare-all`: no network (an empty net namespace), a
read-only /usr (with /bin, /lib, /lib64 as links into it, this machine's layout), a private /proc,
/dev and /tmp, the root itself read-only, and the working directory bound read-write at
/sandbox. bwrap reports a signalled command as 128 + the signal. Where it does not work, a
run gets the rlimits alone ("always" refuses instead), and one warning is logged.

RLIMIT_NPROC counts the processes of the *user*, and root is exempt from it. What we found on
this machine (kernel 6.18, as root): the limit set before exec does not stop a fork bomb, in or
out of bwrap. So:
- as root, each run gets a uid of its own (from a high, unused range), the limit is exact (only
  that run's processes count), the command is not root on the host, and `kill -1` as that uid
  ends processes that left the process group (setsid);
- under bwrap, the limit is set inside the sandbox (`prlimit`), where the new user namespace
  counts only the sandbox's processes (a limit set outside would count all of ember's threads
  and make bwrap itself fail);
- not root and no bwrap: the limit is the user's current count plus max_processes, which is
  best effort (ember's own threads come and go).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import random
import resource
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

log = logging.getLogger(__name__)

SAFE_PATH = "/usr/local/bin:/usr/bin:/bin"
BWRAP = "/usr/bin/bwrap"
PRLIMIT = "/usr/bin/prlimit"
SANDBOX_DIR = "/sandbox"  # where the working directory is seen inside bwrap
# Per-run uids when ember runs as root: far above any real account (useradd stops at 60000,
# systemd's dynamic users at 65519, container ranges at a few million).
_UID_BASE = 1_900_000_000
_UID_SPAN = 50_000_000
_READ_CHUNK = 65536
_DRAIN_AFTER_EXIT = 1.0  # seconds to read what is left once the command itself has ended


@dataclass(frozen=True)
class SandboxLimits:
    cpu_seconds: int
    memory_bytes: int
    max_files: int
    max_processes: int
    max_file_bytes: int
    timeout: float
    max_output_bytes: int


@dataclass(frozen=True)
class RunResult:
    exit_code: int | None  # None: killed by a signal (see `signal`) or never started
    signal: str | None  # "SIGKILL", "SIGXCPU"...
    stdout: str
    stderr: str
    stdout_bytes: int  # all the command wrote, kept or not
    stderr_bytes: int
    limit: str | None  # why ember stopped it ("killed after 2 s"...), or None
    isolated: bool  # ran under bubblewrap
    seconds: float


class SandboxUnavailable(Exception):
    """bubblewrap = "always" but it cannot run here."""


class _Capped:
    """Reads a pipe to its end, keeping the first `cap` bytes (so a chatty command never blocks
    on a full pipe, and never fills ember's memory)."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.kept = bytearray()
        self.total = 0

    async def drain(self, stream: asyncio.StreamReader | None) -> None:
        if stream is None:
            return
        while chunk := await stream.read(_READ_CHUNK):
            self.total += len(chunk)
            room = self.cap - len(self.kept)
            if room > 0:
                self.kept += chunk[:room]

    def text(self) -> str:
        return self.kept.decode("utf-8", errors="replace")


class _Streams:
    """The command's stdin, stdout and stderr, owned here rather than by asyncio's subprocess
    transport: stdin is an unlinked temporary file (no writer to block or to leak), stdout and
    stderr our own pipes, whose read ends are closed when the run ends even if an escaped
    process still holds the write ends (asyncio's would stay open, and its `wait()` may wait
    for them)."""

    def __init__(self, cap: int, stdin: bytes | None) -> None:
        self.out, self.err = _Capped(cap), _Capped(cap)
        self._stdin = stdin
        self._fds: list[int] = []
        self._transports: list[asyncio.ReadTransport] = []
        self._readers: asyncio.Future[Any] | None = None
        self.stdin_fd = self.stdout_fd = self.stderr_fd = -1

    async def __aenter__(self) -> _Streams:
        if self._stdin is not None:
            with tempfile.TemporaryFile() as f:
                f.write(self._stdin)
                f.seek(0)
                self.stdin_fd = os.dup(f.fileno())
        else:
            self.stdin_fd = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        self._fds.append(self.stdin_fd)
        loop = asyncio.get_running_loop()
        drains = []
        for capped in (self.out, self.err):
            read_fd, write_fd = os.pipe2(os.O_CLOEXEC)
            self._fds.append(write_fd)
            reader = asyncio.StreamReader()
            transport, _ = await loop.connect_read_pipe(
                functools.partial(asyncio.StreamReaderProtocol, reader), os.fdopen(read_fd, "rb", buffering=0)
            )
            self._transports.append(transport)
            drains.append(capped.drain(reader))
        self.stdout_fd, self.stderr_fd = self._fds[1], self._fds[2]
        self._readers = asyncio.gather(*drains)
        return self

    def started(self) -> None:
        """The child has its copies: ours go, so the pipes end when the command's side does."""
        for fd in self._fds:
            os.close(fd)
        self._fds.clear()

    async def drained(self, seconds: float) -> None:
        assert self._readers is not None
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self._readers), seconds)

    async def __aexit__(self, *exc: object) -> None:
        self.started()  # (when the command never started)
        if self._readers is not None:
            self._readers.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._readers
        for transport in self._transports:
            transport.close()


class _Bubblewrap:
    """Whether bwrap can create its namespaces here: tried once per process, then remembered.
    (A thread lock, not an asyncio one: the probe is a blocking run in a worker thread, and the
    answer holds for every event loop.)"""

    def __init__(self) -> None:
        self._answer: tuple[bool, str] | None = None
        self._lock = threading.Lock()

    async def works(self) -> tuple[bool, str]:
        if self._answer is None:
            return await asyncio.to_thread(self.works_sync)
        return self._answer

    def works_sync(self) -> tuple[bool, str]:
        with self._lock:
            if self._answer is None:
                self._answer = self._probe()
                if not self._answer[0]:
                    log.warning("shell tool: bubblewrap unusable (%s); runs get rlimits only", self._answer[1])
            return self._answer

    @staticmethod
    def _probe() -> tuple[bool, str]:
        if not os.access(BWRAP, os.X_OK):
            return False, f"{BWRAP} is not installed"
        with tempfile.TemporaryDirectory(prefix="ember-bwrap-probe-") as tmp:
            try:
                done = subprocess.run(
                    [*bwrap_argv(tmp), "/bin/true"],
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.PIPE,
                    env={"PATH": SAFE_PATH},
                    timeout=10,
                    check=False,
                )
            except (OSError, subprocess.TimeoutExpired) as exc:
                return False, str(exc) or type(exc).__name__
        if done.returncode != 0:
            return False, done.stderr.decode(errors="replace").strip() or f"exit {done.returncode}"
        return True, ""


_BUBBLEWRAP = _Bubblewrap()
_UIDS_IN_USE: set[int] = set()


def bwrap_argv(workdir: str) -> list[str]:
    """bwrap's arguments up to the command: no network, a read-only system, `workdir` read-write."""
    argv = [BWRAP, "--unshare-all", "--die-with-parent", "--new-session", "--ro-bind", "/usr", "/usr"]
    for link in ("bin", "lib", "lib64", "sbin"):
        target = os.readlink(f"/{link}") if os.path.islink(f"/{link}") else None
        if target is not None:
            argv += ["--symlink", target, f"/{link}"]
        elif os.path.isdir(f"/{link}"):
            argv += ["--ro-bind", f"/{link}", f"/{link}"]
    # Debian's alternatives (awk, editor...) and the loader cache live in /etc; nothing else does.
    argv += ["--ro-bind-try", "/etc/alternatives", "/etc/alternatives"]
    argv += ["--ro-bind-try", "/etc/ld.so.cache", "/etc/ld.so.cache"]
    argv += ["--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp"]
    argv += ["--bind", workdir, SANDBOX_DIR]
    # The root is bwrap's own tmpfs: read-only too, so only /sandbox and /tmp take writes.
    argv += ["--remount-ro", "/", "--chdir", SANDBOX_DIR, "--"]
    return argv


def _user_processes(uid: int) -> int:
    """Threads of `uid` now (RLIMIT_NPROC counts threads)."""
    count = 0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            if entry.stat().st_uid == uid:
                count += len(os.listdir(f"/proc/{entry.name}/task"))
    return count


def _has_processes(uid: int) -> bool:
    for entry in os.scandir("/proc"):
        with contextlib.suppress(OSError):
            if entry.name.isdigit() and entry.stat().st_uid == uid:
                return True
    return False


def _take_uid() -> int:
    while True:
        uid = _UID_BASE + random.randrange(_UID_SPAN)
        if uid not in _UIDS_IN_USE:
            _UIDS_IN_USE.add(uid)
            return uid


def _become(uid: int | None) -> None:
    # By hand, not Popen's user=/group=: uvloop (the server's loop) does not take those.
    if uid is not None:
        os.setgroups([])
        os.setgid(uid)
        os.setuid(uid)


def _as_uid(uid: int) -> Callable[[], None]:
    def become() -> None:
        _become(uid)

    return become


def _limiter(limits: SandboxLimits, nproc: int | None, uid: int | None) -> Callable[[], None]:
    def set_limits() -> None:  # runs in the child between fork and exec
        _become(uid)
        resource.setrlimit(resource.RLIMIT_CPU, (limits.cpu_seconds, limits.cpu_seconds + 1))
        resource.setrlimit(resource.RLIMIT_AS, (limits.memory_bytes, limits.memory_bytes))
        resource.setrlimit(resource.RLIMIT_NOFILE, (limits.max_files, limits.max_files))
        resource.setrlimit(resource.RLIMIT_FSIZE, (limits.max_file_bytes, limits.max_file_bytes))
        if nproc is not None:
            resource.setrlimit(resource.RLIMIT_NPROC, (nproc, nproc))

    return set_limits


async def _kill_all(proc: asyncio.subprocess.Process, uid: int | None) -> None:
    """End the command and everything it started, however it ended."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    if uid is not None and _has_processes(uid):  # (a scan costs ~1 ms, the killer ~15)
        # As its own uid, `kill -1` reaches every process of that uid (those that left the group).
        with contextlib.suppress(OSError):
            killer = await asyncio.create_subprocess_exec(
                "/bin/kill", "-KILL", "-1", preexec_fn=_as_uid(uid), env={"PATH": SAFE_PATH}
            )
            await killer.wait()


async def _kill_and_wait(proc: asyncio.subprocess.Process, uid: int | None) -> None:
    """On cancellation: kill, and see the command gone before the call ends (briefly: a
    process in uninterruptible sleep may take its time, and the caller is leaving)."""
    await _kill_all(proc, uid)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(_exited(proc), 2)


async def _exited(proc: asyncio.subprocess.Process) -> None:
    """Until the command itself has ended. Not `proc.wait()`: asyncio's also waits for the pipes
    to close, which a background child holding stdout would delay to the timeout."""
    try:
        pidfd = os.pidfd_open(proc.pid)
    except ProcessLookupError:
        return  # already reaped
    except OSError:
        await proc.wait()  # no pidfd here (an old kernel): the slower, still correct way
        return
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()

    def readable() -> None:
        if not done.done():
            done.set_result(None)

    loop.add_reader(pidfd, readable)
    try:
        await done
    finally:
        loop.remove_reader(pidfd)
        os.close(pidfd)


def _signal_of(code: int | None, isolated: bool) -> str | None:
    """The signal that ended the command. bwrap reports a signalled child as 128 + the signal,
    like a shell does, so under bwrap 129..159 are read that way (a command exiting with such a
    code on purpose is read as signalled too)."""
    if code is None:
        return None
    number = -code if code < 0 else code - 128 if isolated and 128 < code < 160 else 0
    try:
        return signal.Signals(number).name if number else None
    except ValueError:
        return None


class Sandbox:
    """Runs commands under one set of limits (see the module docstring for what it guarantees)."""

    def __init__(self, limits: SandboxLimits, bubblewrap: Literal["auto", "always", "never"] = "auto") -> None:
        self.limits = limits
        self.bubblewrap = bubblewrap

    async def isolated(self) -> bool:
        """Whether runs get bubblewrap; raises SandboxUnavailable when it is required and cannot."""
        if self.bubblewrap == "never":
            return False
        return self._decide(*await _BUBBLEWRAP.works())

    def isolated_sync(self) -> bool:
        """`isolated()` for callers outside an event loop (a startup check, a test's skip)."""
        if self.bubblewrap == "never":
            return False
        return self._decide(*_BUBBLEWRAP.works_sync())

    def _decide(self, works: bool, why: str) -> bool:
        if not works and self.bubblewrap == "always":
            raise SandboxUnavailable(f'bubblewrap is required (bubblewrap = "always") but cannot run: {why}')
        return works

    async def run(self, executable: str, args: list[str], stdin: bytes | None = None) -> RunResult:
        """Run `executable` (an absolute path) with `args` (argv[1:]). Raises SandboxUnavailable
        or OSError when it cannot start; everything after the start is in the RunResult."""
        isolated = await self.isolated()
        limits = self.limits
        uid = _take_uid() if os.geteuid() == 0 else None
        workdir = tempfile.mkdtemp(prefix="ember-shell-")
        started = time.monotonic()
        try:
            if uid is not None:
                os.chown(workdir, uid, uid)
            argv = [executable, *args]
            nproc: int | None
            if isolated:
                if os.access(PRLIMIT, os.X_OK):
                    argv = [PRLIMIT, f"--nproc={limits.max_processes}", "--", *argv]
                    nproc = None
                else:  # (util-linux is essential on Debian; elsewhere: exact for root only)
                    nproc = limits.max_processes + 2 if uid is not None else None  # + bwrap's two
                argv = [*bwrap_argv(workdir), *argv]
                home = SANDBOX_DIR
            else:
                if uid is not None:
                    nproc = limits.max_processes
                else:
                    nproc = _user_processes(os.geteuid()) + limits.max_processes
                home = workdir
            env = {"PATH": SAFE_PATH, "LANG": "C.UTF-8", "HOME": home}
            async with _Streams(limits.max_output_bytes, stdin) as streams:
                proc = await asyncio.create_subprocess_exec(
                    *argv,
                    stdin=streams.stdin_fd,
                    stdout=streams.stdout_fd,
                    stderr=streams.stderr_fd,
                    cwd=workdir,
                    env=env,
                    start_new_session=True,
                    preexec_fn=_limiter(limits, nproc, uid),
                )
                streams.started()
                # Under bwrap the pid namespace dies with it, taking every process of the run
                # along: killing by uid is only needed (and only paid for: a process) without it.
                killable_uid = None if isolated else uid
                limit = None
                try:
                    try:
                        await asyncio.wait_for(_exited(proc), limits.timeout)
                    except TimeoutError:
                        limit = f"killed after {limits.timeout:g} s (the timeout)"
                    await _kill_all(proc, killable_uid)
                    await proc.wait()
                    # A pipe still held by something we could not kill: keep what was read.
                    await streams.drained(_DRAIN_AFTER_EXIT)
                finally:
                    # Also on cancellation: nothing the command started outlives the call.
                    if proc.returncode is None:
                        await asyncio.shield(_kill_and_wait(proc, killable_uid))
            out, err = streams.out, streams.err
            code = proc.returncode
            sig = _signal_of(code, isolated)
            if limit is None and sig in ("SIGXCPU", "SIGKILL") and self._cpu_used(started):
                limit = f"stopped at its CPU limit of {limits.cpu_seconds} s"
            elif limit is None and sig == "SIGXFSZ":
                limit = f"stopped at its file size limit of {limits.max_file_bytes // (1 << 20)} MB"
            return RunResult(
                exit_code=None if sig is not None else code,
                signal=sig,
                stdout=out.text(),
                stderr=err.text(),
                stdout_bytes=out.total,
                stderr_bytes=err.total,
                limit=limit,
                isolated=isolated,
                seconds=time.monotonic() - started,
            )
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
            if uid is not None:
                _UIDS_IN_USE.discard(uid)

    def _cpu_used(self, started: float) -> bool:
        # A SIGKILL counts as the CPU limit's hard stop only if the run lasted about that long
        # (something else, like the OOM killer, may have sent it earlier).
        return time.monotonic() - started >= self.limits.cpu_seconds * 0.9
