"""Run the real `ember` CLI as a subprocess, the way a user does."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from .helpers import Ember

SRC = Path(__file__).resolve().parents[2] / "src"


def cli_env(extra: dict[str, str]) -> dict[str, str]:
    env = {**os.environ, **extra}
    # Works whether or not ember is installed into the interpreter running the tests.
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(SRC), env.get("PYTHONPATH", "")]))
    env["NO_COLOR"] = "1"
    env.pop("EMBER_CONFIG", None)
    return env


@pytest.fixture
def ember() -> Ember:
    """ember(*args, env={...}, input=None, timeout=120) -> CompletedProcess with text output."""

    def run(*args: str, env: dict[str, str], input: str | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "ember", *args],
            env=cli_env(env),
            input=input,
            stdin=None if input is not None else subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    return run


@pytest.fixture
def dead_host() -> Iterator[str]:
    """A loopback address where nothing listens."""
    # Bound but never listening: connections are refused, and no other test can take the port.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield f"127.0.0.1:{sock.getsockname()[1]}"
