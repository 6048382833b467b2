"""Fixtures for the gateway: fake upstream model servers (`python -m ember.bench.upstream`) on loopback."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import free_port, stop_process


@dataclass
class UpstreamHandle:
    """A running fake upstream; its URLs stay valid (and refuse) after stop()."""

    url: str  # the root, for kind = "ollama"
    port: int
    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def v1(self) -> str:
        """The OpenAI base, for kind = "openai"."""
        return self.url + "/v1"

    def control(self, **fields: Any) -> dict[str, Any]:
        """Set the fault for the next requests: mode, status, retry_after, times, delay, drop_after, token_delay."""
        response = httpx.post(self.url + "/_control", json=fields, timeout=5)
        response.raise_for_status()
        return response.json()

    def stats(self) -> dict[str, Any]:
        return httpx.get(self.url + "/_stats", timeout=5).json()

    def reset(self) -> None:
        httpx.post(self.url + "/_reset", timeout=5).raise_for_status()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        stop_process(self.process)

    def kill(self) -> None:
        """SIGKILL: connections die without a goodbye."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()


def start_upstream(log_dir: Path, token_delay: float = 0.0, keep_alive: float = 60.0) -> UpstreamHandle:
    """Start a fake upstream on a free port and wait until it answers; it closes connections
    idle for `keep_alive` seconds."""
    port = free_port()
    log_path = log_dir / f"upstream-{port}.log"
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            [sys.executable, "-m", "ember.bench.upstream", "--host", "127.0.0.1", "--port", str(port),
             "--token-delay", str(token_delay), "--keep-alive", str(keep_alive)],
            stdout=log_file, stderr=subprocess.STDOUT, env={**os.environ})
    handle = UpstreamHandle(url=f"http://127.0.0.1:{port}", port=port, process=process, log_path=log_path)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the fake upstream exited with {process.returncode}:\n{handle.log()}")
        try:
            if httpx.get(handle.url + "/api/version", timeout=1).status_code == 200:
                handle.reset()  # the readiness probe is not a request the test made
                return handle
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    handle.kill()
    raise RuntimeError(f"the fake upstream did not answer:\n{handle.log()}")


@pytest.fixture(scope="module")
def logs(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A log folder per test module, for its servers and upstreams."""
    return tmp_path_factory.mktemp(request.module.__name__.rsplit(".", 1)[-1] + "-logs")


@pytest.fixture(scope="module")
def fake(logs: Path) -> Iterator[UpstreamHandle]:
    """One fake upstream for a whole module; modules that share it use `clean_fake` too."""
    handle = start_upstream(logs)
    try:
        yield handle
    finally:
        handle.stop()


@pytest.fixture
def clean_fake(fake: UpstreamHandle) -> Iterator[None]:
    """The module's fake upstream reset before and after each test (mode, script, counters)."""
    fake.reset()
    yield
    fake.reset()


@pytest.fixture
def upstream_factory(tmp_path: Path) -> Iterator[Callable[..., UpstreamHandle]]:
    """Start fake upstreams (`factory(token_delay=0.0)`); all are stopped after the test."""
    started: list[UpstreamHandle] = []

    def factory(token_delay: float = 0.0) -> UpstreamHandle:
        handle = start_upstream(tmp_path, token_delay=token_delay)
        started.append(handle)
        return handle

    yield factory
    for handle in started:
        handle.stop()


@pytest.fixture
def upstream(upstream_factory: Callable[..., UpstreamHandle]) -> UpstreamHandle:
    return upstream_factory()


def write_config(tmp_path: Path, text: str) -> Path:
    """Write an ember.toml for a test server (pass it as EMBER_CONFIG)."""
    path = tmp_path / "ember.toml"
    path.write_text(text, encoding="utf-8")
    return path
