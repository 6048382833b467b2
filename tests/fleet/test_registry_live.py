"""A real fleet on loopback: three `ember serve` nodes joined to a real Redis (valkey), and
llama-cpp-python's own OpenAI server enrolled as a node that cannot sign.

- node `a` is member and gateway: its [fleet] allowlists `c`, and knows the join token;
- node `b` joins with the join token (and stores one model nobody else has);
- node `c` has no token but is in `a`'s allowlist; it requires API keys (a chat key is made);
- `llama` (llama_cpp.server) and `ghost` (nothing listens there) are enrolled in `a`'s config.

Records that must be refused (forged, unsigned, signed but not admitted) are written into Redis
directly, as an attacker with access to the registry would. The TTL is 2 s, so a killed node
must leave `a`'s table within about 3 s.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from ember.fleet.identity import NodeIdentity, load_or_create
from ember.fleet.record import NodeRecord
from ember.fleet.types import NodeLoad
from tests.conftest import RedisHandle, ServerHandle, free_port, start_server, stop_process

pytestmark = pytest.mark.slow

TOKEN = "fleet-test-token"
TTL = 2.0
ALIAS = "smollm2-llama"  # the name llama_cpp.server serves the model under
ONLY_B = "smollm2:only-on-b"


@dataclass
class Fleet:
    a: ServerHandle
    b: ServerHandle
    c: ServerHandle
    c_id: str
    c_key: str  # a chat key of c (no admin scope)
    prefix: str
    redis: redis.Redis
    llama_url: str


def _home(model_home: Path, root: Path, name: str) -> Path:
    """A node's own EMBER_HOME (its own key and state) sharing the session's model blobs."""
    home = root / name
    home.mkdir()
    (home / "blobs").symlink_to(model_home / "blobs")
    shutil.copytree(model_home / "manifests", home / "manifests")
    return home


@dataclass
class Llama:
    """llama_cpp.server on a free loopback port (started once the ember nodes are up: four
    servers starting at once on two cores were slower than three, then one)."""

    model_path: Path
    log_path: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        # Its settings are pydantic-settings: keep stray HOST, PORT, MODEL... from overriding the flags.
        env = {k: v for k, v in os.environ.items() if k.upper() not in {"HOST", "PORT", "MODEL", "CONFIG_FILE"}}
        with self.log_path.open("wb") as log_file:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "llama_cpp.server", "--model", str(self.model_path), "--model_alias", ALIAS,
                 "--host", "127.0.0.1", "--port", str(self.port), "--n_ctx", "256", "--n_threads", "1"],
                env=env, stdout=log_file, stderr=subprocess.STDOUT)
        _wait(lambda: _answers(self.url + "/v1/models"), 120, lambda: self.log_path.read_text(errors="replace"))

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process)


@pytest.fixture(scope="module")
def fleet(
    model_home: Path, model_path: Path, redis_server: RedisHandle, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Fleet]:
    pytest.importorskip("sse_starlette", reason="llama-cpp-python[server] is not installed")
    root = tmp_path_factory.mktemp("fleet")
    llama = Llama(model_path, root / "llama.log")
    prefix = f"test-fleet-{uuid.uuid4().hex[:8]}:"
    homes = {name: _home(model_home, root, name) for name in "abc"}
    from ember.runtime.store import ModelStore

    ModelStore(homes["b"]).copy("smollm2:135m", ONLY_B)
    c_id = load_or_create(homes["c"]).node_id  # made now so `a` can allowlist it
    from ember.guard.keys import KeyStore

    c_key, _ = KeyStore(homes["c"] / "state" / "keys.db").create("chat", frozenset({"chat", "models"}))
    common = f'prefix = "{prefix}"\nttl = {TTL}\nheartbeat = 0.5\nrefresh = 0.5\njoin_token_env = "EMBER_TEST_FLEET_TOKEN"\n'
    ghost = f"http://127.0.0.1:{free_port()}"
    (root / "a.toml").write_text(f"""
[fleet]
{common}allowlist = ["{c_id}"]
scrape = 0.5

[[fleet.nodes]]
name = "llama"
kind = "llama-server"
base_url = "{llama.url}/v1"
labels = {{ tier = "cloud" }}

[[fleet.nodes]]
name = "ghost"
kind = "vllm"
base_url = "{ghost}"
""")
    (root / "member.toml").write_text(f"[fleet]\n{common}role = \"member\"\n")
    env = {"EMBER_FLEET_JOIN": redis_server.url}
    specs: dict[str, dict[str, str]] = {
        "a": {**env, "EMBER_CONFIG": str(root / "a.toml"), "EMBER_FLEET_NAME": "node-a",
              "EMBER_TEST_FLEET_TOKEN": TOKEN, "EMBER_FLEET_LABELS": '{"tier": "edge", "zone": "a"}'},
        "b": {**env, "EMBER_CONFIG": str(root / "member.toml"), "EMBER_FLEET_NAME": "node-b",
              "EMBER_TEST_FLEET_TOKEN": TOKEN, "EMBER_FLEET_LABELS": '{"tier": "edge", "zone": "b"}'},
        "c": {**env, "EMBER_CONFIG": str(root / "member.toml"), "EMBER_FLEET_NAME": "node-c",
              "EMBER_FLEET_LABELS": '{"tier": "cloud"}', "EMBER_AUTH": "required"},
    }
    # One after another: on a loaded machine three starts at once each ran past start_server's
    # deadline, where one at a time each gets the CPU it needs.
    started: dict[str, ServerHandle] = {}
    try:
        for name, spec in specs.items():
            started[name] = start_server(homes[name], root, **spec)
    except BaseException:
        for server in started.values():
            server.stop()
        raise
    client = redis.Redis.from_url(redis_server.url)
    try:
        llama.start()
        yield Fleet(started["a"], started["b"], started["c"], c_id, c_key, prefix, client, llama.url)
    finally:
        for server in started.values():
            server.stop()
        llama.stop()
        for key in client.scan_iter(match=prefix + "*"):
            client.delete(key)
        client.close()


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def _wait(check: Callable[[], Any], seconds: float, why: Callable[[], str] = lambda: "") -> Any:
    deadline = time.monotonic() + seconds
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {seconds} s: {why()}")
        time.sleep(0.1)


def _fleet_of(server: ServerHandle) -> dict[str, Any]:
    response = httpx.get(server.url("/admin/fleet"), timeout=5)
    assert response.status_code == 200, response.text
    return response.json()


def _by_name(view: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {node["name"]: node for node in view["nodes"]}


def _all_joined(fleet: Fleet) -> dict[str, dict[str, Any]]:
    names = {"node-a", "node-b", "node-c", "llama"}
    return _wait(lambda: (nodes := _by_name(_fleet_of(fleet.a))) and names <= set(nodes) and nodes, 15,
                 lambda: json.dumps(_fleet_of(fleet.a), indent=1) + fleet.a.log()[-3000:])


def test_nodes_register_with_labels_models_and_load(fleet: Fleet) -> None:
    nodes = _all_joined(fleet)
    a, b, c, llama = nodes["node-a"], nodes["node-b"], nodes["node-c"], nodes["llama"]
    assert a["self"] and not b["self"]
    assert a["labels"] == {"tier": "edge", "zone": "a"} and c["labels"] == {"tier": "cloud"}
    assert c["node_id"] == fleet.c_id  # admitted by the allowlist, without the token
    assert all(n["verified"] and n["kind"] == "ember" for n in (a, b, c))
    assert "smollm2:135m" in c["stored"] and ONLY_B in b["stored"] and ONLY_B not in c["stored"]
    assert b["base_url"] == fleet.b.base_url
    assert b["load"]["slots"] >= 1 and b["load"]["busy"] == 0 and b["age_s"] < TTL
    # The enrolled server: its models from its /v1/models; it publishes no /slots or /metrics,
    # so its load is unknown (the router counts its own requests there).
    assert llama["kind"] == "llama-server" and not llama["verified"]
    assert llama["resident"] == [ALIAS] and llama["base_url"] == fleet.llama_url
    assert llama["labels"] == {"tier": "cloud"} and llama["load"]["slots"] == 0
    view = _fleet_of(fleet.a)
    assert view["self"]["node_id"] == a["node_id"] and view["self"]["announcing"]
    assert [d["name"] for d in view["down"]] == ["ghost"] and "ghost" not in _by_name(view)
    # A member that reads no registry lists what it announced of itself.
    own = _fleet_of(fleet.b)
    assert own["self"]["role"] == "member" and [(n["name"], n["self"]) for n in own["nodes"]] == [("node-b", True)]


def test_a_resident_model_is_announced(fleet: Fleet) -> None:
    _all_joined(fleet)
    answer = httpx.post(fleet.c.url("/v1/completions"), timeout=60, headers=_bearer(fleet.c_key),
                        json={"model": "smollm2:135m", "prompt": "Hi", "max_tokens": 1})
    assert answer.status_code == 200, answer.text
    _wait(lambda: "smollm2:135m" in _by_name(_fleet_of(fleet.a))["node-c"]["resident"], 5)


def test_fleet_models_are_listed_in_models_and_tags(fleet: Fleet) -> None:
    _all_joined(fleet)
    cards = httpx.get(fleet.a.url("/v1/models"), timeout=5).json()["data"]
    owners = {card["id"]: card["owned_by"] for card in cards}
    assert owners[ONLY_B] == "ember-fleet" and owners[ALIAS] == "ember-fleet"
    assert owners["smollm2:135m"] == "ember"  # a's own model is listed once, as its own
    assert [card["id"] for card in cards].count("smollm2:135m") == 1
    card = httpx.get(fleet.a.url(f"/v1/models/{ONLY_B}"), timeout=5)
    assert card.status_code == 200 and card.json()["owned_by"] == "ember-fleet"
    tags = {t["name"]: t for t in httpx.get(fleet.a.url("/api/tags"), timeout=5).json()["models"]}
    assert tags[ONLY_B]["details"]["format"] == "fleet" and ALIAS in tags
    # A member that is not a gateway lists only its own models.
    mine = httpx.get(fleet.c.url("/v1/models"), headers=_bearer(fleet.c_key), timeout=5).json()["data"]
    assert ONLY_B not in {card["id"] for card in mine}


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def _ember(*args: str, **env: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "ember", *args], env={**os.environ, **env},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_cli_lists_the_nodes_and_says_in_one_line_why_it_cannot(fleet: Fleet) -> None:
    _all_joined(fleet)
    # The CLI's runs go side by side: each is mostly Python's start. (No server at all is
    # `cannot reach ember at ...`, as for every command: tests/cli.)
    listed = _ember("fleet", "nodes", EMBER_HOST=fleet.a.host)
    no_key = _ember("fleet", "nodes", EMBER_HOST=fleet.c.host, EMBER_API_KEY="")
    not_admin = _ember("fleet", "nodes", EMBER_HOST=fleet.c.host, EMBER_API_KEY=fleet.c_key)
    bad_join = _ember("serve", "--join", "http://127.0.0.1:6379", "--host", f"127.0.0.1:{free_port()}")
    out, err = listed.communicate(timeout=60)
    assert listed.returncode == 0, err
    lines = out.splitlines()
    assert lines[0].split()[:3] == ["NODE", "NAME", "KIND"]
    row_b = next(line for line in lines if "node-b" in line)
    assert "tier=edge,zone=b" in row_b and ONLY_B in row_b and "ember" in row_b
    assert any("node-a (this)" in line for line in lines) and any("llama-server" in line for line in lines)
    assert any(line.startswith("down: ghost") for line in lines)
    for process, starts in [
        (no_key, f"Error: ember at {fleet.c.base_url} refused GET /admin/fleet ("),
        (not_admin, f"Error: ember at {fleet.c.base_url} refused GET /admin/fleet ("),
        (bad_join, "Error: --join or EMBER_FLEET_JOIN: fleet.join: join must be a Redis URL"),
    ]:
        _, err = process.communicate(timeout=60)
        assert process.returncode == 1 and err.startswith(starts), err
        assert len(err.strip().splitlines()) == 1, err
        assert process not in (no_key, not_admin) or "a key with the admin scope" in err


def _write(fleet: Fleet, node_id: str, value: bytes) -> None:
    fleet.redis.set(f"{fleet.prefix}node:{node_id}", value, px=60_000)
    fleet.redis.sadd(f"{fleet.prefix}nodes", node_id)


def _record(identity: NodeIdentity, **fields: Any) -> NodeRecord:
    base: dict[str, Any] = {
        "node_id": identity.node_id, "public_key": identity.public_key, "name": "intruder",
        "base_url": "http://127.0.0.1:9", "resident": ("evil:1b",), "stored": ("evil:1b",),
        "load": NodeLoad(slots=64), "seq": 1, "ts": time.time(), "ttl": 60.0,
    }
    return NodeRecord(**{**base, **fields})


def test_forged_unsigned_and_unadmitted_records_are_refused_and_logged_once(fleet: Fleet) -> None:
    _all_joined(fleet)
    victim, forger, stranger = NodeIdentity.generate(), NodeIdentity.generate(), NodeIdentity.generate()
    # Signed with another key than the one it carries.
    _write(fleet, victim.node_id, _record(victim).signed(forger))
    # No signature at all.
    unsigned = NodeIdentity.generate()
    _write(fleet, unsigned.node_id, json.dumps({"record": _record(unsigned).body()}).encode())
    # Properly signed, but neither allowlisted nor holding the join token (a wrong token's proof).
    _write(fleet, stranger.node_id, _record(stranger, join_proof="00" * 32).signed(stranger))
    expected = {victim.node_id: "bad signature", unsigned.node_id: "unsigned", stranger.node_id: "not admitted"}

    def refused() -> dict[str, str]:
        return {r["node_id"]: r["reason"] for r in _fleet_of(fleet.a)["refused"]}

    got = _wait(lambda: (seen := refused()) and set(expected) <= set(seen) and seen, 5, lambda: str(refused()))
    for node_id, words in expected.items():
        assert words in got[node_id]
    time.sleep(1.2)  # a few more refreshes: still one log line each
    log = fleet.a.log()
    for node_id in expected:
        assert log.count(f"refused the record under node id {node_id[:16]}") == 1, log[-2000:]
    view = _fleet_of(fleet.a)
    assert "intruder" not in _by_name(view) and "evil:1b" not in view["models"]
    assert "evil:1b" not in {c["id"] for c in httpx.get(fleet.a.url("/v1/models"), timeout=5).json()["data"]}


def test_a_clean_stop_leaves_at_once_and_a_killed_node_within_the_ttl(fleet: Fleet) -> None:
    _all_joined(fleet)
    # Clean stop: the node deletes its own key while shutting down (not waiting for the TTL).
    b_id = _by_name(_fleet_of(fleet.a))["node-b"]["node_id"]
    fleet.b.stop()
    assert not fleet.redis.exists(f"{fleet.prefix}node:{b_id}")
    # Killed: no goodbye; the registry's TTL and the gateway's heartbeat age take it out.
    fleet.c.process.send_signal(signal.SIGKILL)
    fleet.c.process.wait()
    killed = time.monotonic()
    _wait(lambda: "node-c" not in _by_name(_fleet_of(fleet.a)), TTL + 2.0)
    gone_after = time.monotonic() - killed
    assert gone_after <= TTL + 1.0, gone_after  # the TTL, plus one refresh of the table
    assert set(_by_name(_fleet_of(fleet.a))) == {"node-a", "llama"}
    # The table hides a node the moment its TTL ends; the refresh after that says so in the log.
    _wait(lambda: f"fleet: node node-c ({fleet.c_id[:16]}) left the table" in fleet.a.log(), 2)
    assert ONLY_B not in {c["id"] for c in httpx.get(fleet.a.url("/v1/models"), timeout=5).json()["data"]}


def test_signature_shape_is_base64_ed25519(fleet: Fleet) -> None:
    """What a node writes is the documented envelope (record + 64-byte signature)."""
    a_id = _by_name(_fleet_of(fleet.a))["node-a"]["node_id"]
    raw = fleet.redis.get(f"{fleet.prefix}node:{a_id}")
    assert isinstance(raw, bytes)
    envelope = json.loads(raw)
    assert set(envelope) == {"record", "signature"} and len(base64.b64decode(envelope["signature"])) == 64
    assert envelope["record"]["node_id"] == a_id and envelope["record"]["join_proof"]
