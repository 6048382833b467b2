"""Fixtures for agent tests: a scripted fake upstream (the agents' cloud model) and ember servers
whose ember.toml a test module composes.

- `upstream`: one fake upstream per module (src/ember/bench/upstream.py), reset before each test
  that asks for `scripted`; `script(upstream, *answers)` queues its next chat answers and
  `history(upstream)` lists the requests it was sent.
- `agent_toml(upstream, body)`: an ember.toml with the provider "up" pointing at the upstream
  (agents then use model "up/gpt-test") and `body` after it.
- `start_agent_server(log_dir, toml, home=None, **env)`: an ember server with that config (an
  empty EMBER_HOME unless `home` is given: the scripted model needs no local model), started as
  a subprocess; `agent_server_factory` stops those it started after the test.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import ServerHandle, start_server
from tests.gateway.conftest import UpstreamHandle, start_upstream

MODEL = "up/gpt-test"  # the scripted model, through the provider agent_toml names "up"


@pytest.fixture(scope="module")
def agent_logs(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp(request.module.__name__.rsplit(".", 1)[-1] + "-logs")


@pytest.fixture(scope="module")
def upstream(agent_logs: Path) -> Iterator[UpstreamHandle]:
    handle = start_upstream(agent_logs)
    try:
        yield handle
    finally:
        handle.stop()


@pytest.fixture
def scripted(upstream: UpstreamHandle) -> Iterator[UpstreamHandle]:
    """The module's upstream, reset (script, queue, history) before and after the test."""
    upstream.reset()
    yield upstream
    upstream.reset()


def tool_call(name: str, **arguments: Any) -> dict[str, Any]:
    return {"name": name, "arguments": arguments}


def script(upstream: UpstreamHandle, *answers: dict[str, Any]) -> None:
    """Queue the next chat answers: each {"text": ..., "tool_calls": [tool_call(...), ...]}."""
    httpx.post(upstream.url + "/_script", json={"queue": list(answers)}, timeout=5).raise_for_status()


def history(upstream: UpstreamHandle) -> list[dict[str, Any]]:
    """The generation requests the upstream got since its reset: [{"path", "body"}, ...]."""
    response = httpx.get(upstream.url + "/_history", timeout=5)
    response.raise_for_status()
    data = response.json()
    return data["requests"] if isinstance(data, dict) else data


def agent_toml(upstream: UpstreamHandle, body: str, price_in: float = 0.0, price_out: float = 0.0) -> str:
    """`price_in`/`price_out`: the provider's USD per million tokens (steps are priced by them)."""
    return (
        f'[[providers]]\nname = "up"\nkind = "openai"\nbase_url = "{upstream.v1}"\n'
        f"price_in = {price_in}\nprice_out = {price_out}\n\n{body}"
    )


def start_agent_server(log_dir: Path, toml: str, home: Path | None = None, **env: str) -> ServerHandle:
    """An ember server with this ember.toml (written next to its logs)."""
    log_dir.mkdir(parents=True, exist_ok=True)
    config = log_dir / f"ember-{len(list(log_dir.glob('ember-*.toml')))}.toml"
    config.write_text(toml, encoding="utf-8")
    if home is None:
        home = log_dir / f"home-{config.stem}"
        home.mkdir()
    return start_server(home, log_dir, EMBER_CONFIG=str(config), **env)


@pytest.fixture
def agent_server_factory(tmp_path: Path) -> Iterator[Callable[..., ServerHandle]]:
    started: list[ServerHandle] = []

    def factory(toml: str, home: Path | None = None, **env: str) -> ServerHandle:
        handle = start_agent_server(tmp_path, toml, home, **env)
        started.append(handle)
        return handle

    yield factory
    for handle in started:
        handle.stop()
