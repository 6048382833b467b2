"""The `fleet` strategy with real parts: three ember nodes that join a real Redis registry, a
gateway that reads it, and the real openai client.

A conversation keeps going to the node that holds its prefix (X-Ember-Provider names the node),
moves when that node is full, and a node killed mid-run is failed over before the first token.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import openai
import pytest
from tests.conftest import DEFAULT_MODEL, RedisHandle, ServerHandle, start_server

pytestmark = pytest.mark.slow

TOKEN = "h-routing-join-token"
PREFIX = "ember:fleet:h-routing:"  # this module's registry keys: other fleet tests share the Redis
READY = 180  # seconds for a server to come up: four start at once on a loaded machine
NODES = ("node-a", "node-b", "node-c")
LONG_ANSWER = {
    "type": "json_schema",
    "json_schema": {
        "name": "numbers",
        "schema": {
            "type": "object",
            "properties": {"numbers": {"type": "array", "items": {"type": "integer"}, "minItems": 60}},
            "required": ["numbers"],
        },
    },
}
SYSTEM = (
    "You are the assistant of a small bakery. You answer questions about bread, opening hours "
    "and orders in one short sentence. The bakery opens at seven and closes at six; it bakes "
    "sourdough, rye and brioche every day, and takes orders for cakes two days ahead. "
) * 2


@dataclass
class Fleet:
    gateway: ServerHandle
    nodes: dict[str, ServerHandle]


def _linked_home(model_home: Path, home: Path) -> Path:
    """A node's own EMBER_HOME (its identity key, its state) sharing the model's files by hard link."""
    shutil.copytree(model_home, home, ignore=shutil.ignore_patterns("state"), copy_function=os.link)
    return home


@pytest.fixture(scope="module")
def fleet(model_home: Path, redis_server: RedisHandle, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    root = tmp_path_factory.mktemp("fleet-routing")
    logs = root / "logs"
    logs.mkdir()
    common = {
        "EMBER_FLEET_JOIN": redis_server.url,
        "EMBER_FLEET_TOKEN": TOKEN,
        "EMBER_FLEET_TTL": "8",
    }
    node_toml = root / "node.toml"
    node_toml.write_text(f'[fleet]\nprefix = "{PREFIX}"\n')
    gateway_toml = root / "gateway.toml"
    gateway_toml.write_text(
        f'[fleet]\nprefix = "{PREFIX}"\nrefresh = 0.3\n\n'
        '[[routes]]\nmodel = "chat"\nstrategy = "fleet"\n'
        f'targets = ["fleet/{DEFAULT_MODEL}"]\ntiers = ["edge"]\n'
    )

    def node(name: str) -> ServerHandle:
        home = _linked_home(model_home, root / name)
        return start_server(
            home,
            logs,
            ready_timeout=READY,
            **common,
            EMBER_CONFIG=str(node_toml),
            EMBER_FLEET_ROLE="member",
            EMBER_FLEET_NAME=name,
            EMBER_FLEET_LABELS='{"tier": "edge"}',
            EMBER_NUM_PARALLEL="2",
        )

    def gateway() -> ServerHandle:
        home = root / "gateway"
        home.mkdir()
        return start_server(
            home, logs, ready_timeout=READY, **common, EMBER_CONFIG=str(gateway_toml), EMBER_FLEET_ROLE="gateway"
        )

    started: list[ServerHandle] = []
    try:
        with ThreadPoolExecutor(4) as pool:  # four starts at once: they take a few seconds each
            futures = [pool.submit(node, name) for name in NODES] + [pool.submit(gateway)]
        started.extend(f.result() for f in futures if f.exception() is None)
        handles = [f.result() for f in futures]  # the first failure, if any, raises here
        nodes = dict(zip(NODES, handles[:3], strict=True))
        _warm(handles[:3], handles[3])
        yield Fleet(gateway=handles[3], nodes=nodes)
    finally:
        for server in started:
            server.stop()


def _warm(nodes: list[ServerHandle], gateway: ServerHandle, timeout: float = 60) -> None:
    """Load the model on every node (straight to it, so the gateway's prefix tree stays empty),
    and wait until the gateway's table lists the three with the model resident: the router puts
    resident nodes first, and the tests are about prefixes and load, not about loading."""

    def load(node: ServerHandle) -> None:
        body = {"model": DEFAULT_MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}
        httpx.post(node.url("/v1/chat/completions"), json=body, timeout=120).raise_for_status()

    with ThreadPoolExecutor(len(nodes)) as pool:
        list(pool.map(load, nodes))
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        table = httpx.get(gateway.url("/admin/fleet"), timeout=5).json()["nodes"]
        if sum(DEFAULT_MODEL in n["resident"] for n in table if not n["self"]) == len(nodes):
            return
        time.sleep(0.2)
    raise AssertionError(f"the gateway did not see the fleet's nodes resident: {table}\n{gateway.log()[-3000:]}")


def client(fleet: Fleet) -> openai.OpenAI:
    return openai.OpenAI(base_url=fleet.gateway.url("/v1"), api_key="unused", max_retries=0, timeout=120)


def ask(fleet: Fleet, messages: list[dict[str, str]], model: str = "chat") -> tuple[str, str, int]:
    """One turn: (the node that answered, the answer, attempts)."""
    raw = client(fleet).chat.completions.with_raw_response.create(
        model=model,
        messages=messages,
        max_tokens=4,
        temperature=0,  # type: ignore[arg-type]
    )
    answer = raw.parse().choices[0].message.content or ""
    return raw.headers["x-ember-provider"], answer, int(raw.headers["x-ember-attempts"])


def node_name(provider: str) -> str:
    """The node a provider name stands for ("node-a", or "node-a-<id>" when names collide)."""
    return next(n for n in NODES if provider == n or provider.startswith(n + "-"))


def conversation(first: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": first}]


def test_a_conversation_stays_on_the_node_holding_its_prefix_and_moves_when_it_is_full(fleet: Fleet) -> None:
    messages = conversation("When do you open on Mondays?")
    served: list[str] = []
    for follow_up in ("And on Sundays?", "Do you bake rye?", "Can I order a cake for Friday?"):
        provider, answer, _ = ask(fleet, messages)
        served.append(node_name(provider))
        messages += [{"role": "assistant", "content": answer}, {"role": "user", "content": follow_up}]
    home = served[0]
    assert served == [home] * 3, served
    # `ember routes` (GET /admin/routes) shows the node targets the fleet route has used.
    routes = httpx.get(fleet.gateway.url("/admin/routes"), timeout=5).json()["routes"]
    chat_targets = next(r["targets"] for r in routes if r["model"] == "chat")
    assert any(node_name(t["target"].split("/")[0]) == home and t["requests"] >= 3 for t in chat_targets), chat_targets

    # Another conversation (another system prompt) goes to a node that holds no prefix yet.
    other, _, _ = ask(
        fleet,
        [
            {"role": "system", "content": "You are a tour guide. " * 10},
            {"role": "user", "content": "Where is the old bridge?"},
        ],
    )
    assert node_name(other) != home

    # Fill the home node's two slots with held streams of this conversation: the next turn moves.
    streams = []
    try:
        for _ in range(2):
            # A schema the grammar holds to 60 numbers: the stream runs for seconds, whatever
            # a small model would rather say.
            stream = client(fleet).chat.completions.with_raw_response.create(
                model="chat",
                messages=messages,
                max_tokens=250,
                stream=True,  # type: ignore[arg-type]
                response_format=LONG_ANSWER,  # type: ignore[arg-type]
            )
            assert node_name(stream.headers["x-ember-provider"]) == home
            streams.append(stream)
        moved, _, _ = ask(fleet, messages)
        assert node_name(moved) != home
    finally:
        for stream in streams:
            stream.http_response.close()


def test_a_model_only_the_fleet_has_and_fleet_names_go_to_the_nodes(fleet: Fleet) -> None:
    # The gateway's own store is empty: the model's plain name and "fleet/MODEL" reach the nodes.
    for model in (DEFAULT_MODEL, f"fleet/{DEFAULT_MODEL}"):
        provider, _, _ = ask(fleet, conversation("Hello?"), model=model)
        assert node_name(provider) in NODES
    with pytest.raises(openai.APIStatusError) as caught:
        ask(fleet, conversation("Hello?"), model="fleet/no-such-model:1b")
    assert caught.value.status_code == 503
    assert "no live node of the fleet" in caught.value.message


def test_a_killed_node_is_failed_over_before_the_first_token(fleet: Fleet) -> None:
    messages = conversation("Do you sell brioche?")
    provider, answer, _ = ask(fleet, messages)
    victim = node_name(provider)
    fleet.nodes[victim].process.kill()  # by its pid: no goodbye to the registry
    fleet.nodes[victim].process.wait()
    messages += [{"role": "assistant", "content": answer}, {"role": "user", "content": "How much is it?"}]
    # Its record stands until the TTL: the gateway still tries it first, and moves on.
    provider, answer, attempts = ask(fleet, messages)
    assert node_name(provider) != victim
    assert attempts == 2
    survivors = {node_name(provider)}
    for i in range(4):
        messages += [{"role": "assistant", "content": answer}, {"role": "user", "content": f"And {i} more?"}]
        provider, answer, _ = ask(fleet, messages)
        survivors.add(node_name(provider))
    assert victim not in survivors
