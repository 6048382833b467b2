"""Settings come from defaults < ember.toml (EMBER_CONFIG) < EMBER_* environment < `ember serve` flags.

The unit tests load Settings directly; the slow one starts the real `ember serve` three times
(ember.toml alone, then the environment over it, then flags over both) and reads every
setting's effect from outside: the bound port, /api/ps slots, context, expiry and resident
models, and which log lines appear.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from tests.conftest import ServerHandle, free_port, stop_process

from ember.config import Settings
from ember.runtime.store import ModelStore

from .conftest import SRC
from .helpers import MODEL, Ember, assert_one_line_error

TWIN = "twin:latest"  # a second name for the same file: two models to load, no second download

TOML = """\
num_parallel = 2
keep_alive = "1m"
max_loaded_models = 1
log_level = "warning"
host = "127.0.0.1:{port}"
num_ctx = 512
max_memory = "6GiB"
max_queue = 7
engine = "process"
cache = "off"
cache_ttl = "30s"
max_body_bytes = "1MiB"
auth = "off"

[model_parallel]
"smollm2:135m" = 3

[[routes]]                  # gateway tables live in the same file and are no settings
model = "chat"
targets = ["local/smollm2:135m"]
"""


def clean_environ() -> dict[str, str]:
    """The test process's environment without any EMBER_* a developer may have set."""
    return {k: v for k, v in os.environ.items() if not k.startswith("EMBER_")}


@pytest.fixture
def no_ember_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in list(os.environ):
        if name.startswith("EMBER_"):
            monkeypatch.delenv(name)
    return monkeypatch


def write_toml(path: Path, port: int) -> Path:
    path.write_text(TOML.format(port=port))
    return path


# -- Settings, loaded in this process ----------------------------------------------------------


def test_defaults(no_ember_env: pytest.MonkeyPatch) -> None:
    s = Settings()
    assert (s.host, s.keep_alive, s.max_loaded_models, s.num_parallel, s.log_level) == (
        "127.0.0.1:11434", 600.0, 3, 4, "info")
    assert s.model_parallel == {} and s.config is None and s.engine == "process" and s.auth == "auto"


def test_toml_over_defaults(no_ember_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    no_ember_env.setenv("EMBER_CONFIG", str(write_toml(tmp_path / "ember.toml", 1234)))
    s = Settings()
    assert s.config == tmp_path / "ember.toml"
    assert (s.host, s.keep_alive, s.max_loaded_models, s.num_parallel, s.log_level) == (
        "127.0.0.1:1234", 60.0, 1, 2, "warning")
    assert s.model_parallel == {"smollm2:135m": 3}
    assert (s.num_ctx, s.max_memory, s.max_queue, s.cache, s.cache_ttl, s.max_body_bytes, s.auth) == (
        512, 6 * 1024**3, 7, "off", 30.0, 1024**2, "off")
    # Untouched keys keep their defaults.
    assert s.num_gpu == 0 and s.max_messages == 1024


def test_environment_over_toml(no_ember_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    no_ember_env.setenv("EMBER_CONFIG", str(write_toml(tmp_path / "ember.toml", 1234)))
    for name, value in {"HOST": "127.0.0.1:2345", "KEEP_ALIVE": "2m", "MAX_LOADED_MODELS": "2",
                        "NUM_PARALLEL": "5", "LOG_LEVEL": "debug", "NUM_CTX": "256",
                        "MODEL_PARALLEL": json.dumps({TWIN: 6})}.items():
        no_ember_env.setenv(f"EMBER_{name}", value)
    s = Settings()
    assert (s.host, s.keep_alive, s.max_loaded_models, s.num_parallel, s.log_level, s.num_ctx) == (
        "127.0.0.1:2345", 120.0, 2, 5, "debug", 256)
    # The environment's table replaces the file's, as any other value does: it is not merged in.
    assert s.model_parallel == {TWIN: 6}
    assert s.max_queue == 7  # not in the environment: still the file's
    no_ember_env.setenv("EMBER_MODEL_PARALLEL", "{}")
    assert Settings().model_parallel == {}


def test_explicit_values_over_environment(no_ember_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    no_ember_env.setenv("EMBER_CONFIG", str(write_toml(tmp_path / "ember.toml", 1234)))
    no_ember_env.setenv("EMBER_KEEP_ALIVE", "2m")
    no_ember_env.setenv("EMBER_NUM_PARALLEL", "5")
    s = Settings(host="127.0.0.1:3456", keep_alive="3m", max_loaded_models=0, num_parallel=6, log_level="error")
    assert (s.host, s.keep_alive, s.max_loaded_models, s.num_parallel, s.log_level) == (
        "127.0.0.1:3456", 180.0, 0, 6, "error")
    assert s.model_parallel == {"smollm2:135m": 3} and s.num_ctx == 512


@pytest.mark.parametrize(("flag", "value", "field"), [
    ("--num-parallel", "0", "num_parallel"),
    ("--max-loaded-models", "-1", "max_loaded_models"),
    ("--keep-alive", "soon", "keep_alive"),
])
def test_a_bad_flag_is_one_line(ember: Ember, tmp_path: Path, flag: str, value: str, field: str) -> None:
    result = ember("serve", flag, value, env={"EMBER_HOME": str(tmp_path)}, timeout=60)
    assert_one_line_error(result, contains=f"invalid {field} ({flag} or EMBER_{field.upper()})")


# -- the real `ember serve` ----------------------------------------------------------------------


def serve(home: Path, toml: Path, log_path: Path, port: int, env: dict[str, str], *flags: str) -> ServerHandle:
    """`python -m ember serve FLAGS` with only EMBER_HOME, EMBER_CONFIG and `env` set; waits for
    /health on `port`, the port the settings should have chosen."""
    full_env = {**clean_environ(), "EMBER_HOME": str(home), "EMBER_CONFIG": str(toml), **env,
                "PYTHONPATH": os.pathsep.join(filter(None, [str(SRC), os.environ.get("PYTHONPATH", "")]))}
    host = f"127.0.0.1:{port}"
    with log_path.open("wb") as log_file:
        process = subprocess.Popen([sys.executable, "-m", "ember", "serve", *flags], env=full_env,
                                   stdout=log_file, stderr=subprocess.STDOUT)
    handle = ServerHandle(base_url=f"http://{host}", host=host, home=home, env=env, process=process,
                          log_path=log_path)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"ember serve exited with {process.returncode}:\n{handle.log()}")
        try:
            if httpx.get(handle.url("/health"), timeout=1).status_code == 200:
                return handle
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    stop_process(process)
    raise AssertionError(f"ember serve did not answer on {host}:\n{handle.log()}")


def resident(server: ServerHandle, *models: str) -> dict[str, dict[str, Any]]:
    """Load each model in turn (an empty generate), then /api/ps as {name: entry}."""
    for model in models:
        httpx.post(server.url("/api/generate"), json={"model": model}, timeout=120).raise_for_status()
    return {m["name"]: m for m in httpx.get(server.url("/api/ps"), timeout=10).json()["models"]}


def idle_for(entry: dict[str, Any]) -> float:
    """Seconds until the model's keep_alive runs out."""
    return datetime.fromisoformat(entry["expires_at"]).timestamp() - datetime.now(UTC).timestamp()


@pytest.mark.slow
def test_serve_reads_toml_then_environment_then_flags(fresh_home: Path, tmp_path: Path) -> None:
    ModelStore(fresh_home).copy(MODEL, TWIN)
    ports = [free_port() for _ in range(3)]
    toml = write_toml(tmp_path / "ember.toml", ports[0])
    # Small contexts keep the KV caches of up to six slots cheap.
    env_layer = {"EMBER_HOST": f"127.0.0.1:{ports[1]}", "EMBER_KEEP_ALIVE": "2m", "EMBER_MAX_LOADED_MODELS": "2",
                 "EMBER_NUM_PARALLEL": "5", "EMBER_LOG_LEVEL": "debug", "EMBER_CACHE": "memory",
                 "EMBER_MODEL_PARALLEL": json.dumps({MODEL: 1})}
    flags = ["--host", f"127.0.0.1:{ports[2]}", "--keep-alive", "3m", "--max-loaded-models", "1",
             "--num-parallel", "3", "--log-level", "info"]

    # 1. ember.toml alone: its host, slots (num_parallel, and [model_parallel] for smollm2), context,
    #    keep_alive, one model at a time, and warnings only.
    server = serve(fresh_home, toml, tmp_path / "toml.log", ports[0], {})
    try:
        first = resident(server, MODEL)
        assert first[MODEL]["slots"] == 3 and first[MODEL]["context_length"] == 512
        assert 50 < idle_for(first[MODEL]) <= 61
        second = resident(server, TWIN)
        assert list(second) == [TWIN]  # max_loaded_models = 1 evicted smollm2
        assert second[TWIN]["slots"] == 2 and 50 < idle_for(second[TWIN]) <= 61
        # The gateway tables in the same file took effect too.
        assert "chat" in [m["name"] for m in httpx.get(server.url("/api/tags"), timeout=10).json()["models"]]
    finally:
        server.stop()
    log = server.log()
    assert f"listening on http://127.0.0.1:{ports[0]}" in log
    assert "INFO" not in log and "DEBUG" not in log, log

    # 2. The environment over the file, key by key: what it does not set stays the file's (num_ctx).
    server = serve(fresh_home, toml, tmp_path / "env.log", ports[1], env_layer)
    try:
        both = resident(server, MODEL, TWIN)
        assert sorted(both) == [MODEL, TWIN]  # two may be resident now
        assert both[MODEL]["slots"] == 1 and both[TWIN]["slots"] == 5
        assert both[TWIN]["context_length"] == 512
        assert 110 < idle_for(both[TWIN]) <= 121
    finally:
        server.stop()
    log = server.log()
    assert f"listening on http://127.0.0.1:{ports[1]}" in log
    assert "DEBUG     response cache: memory" in log, log  # ember's debug lines
    assert "INFO" in log

    # 3. Flags over the environment, every one of `ember serve`'s.
    server = serve(fresh_home, toml, tmp_path / "flags.log", ports[2], env_layer, *flags)
    try:
        first = resident(server, MODEL)
        assert first[MODEL]["slots"] == 1  # [model_parallel] from the environment: no flag for it
        assert 170 < idle_for(first[MODEL]) <= 181
        second = resident(server, TWIN)
        assert list(second) == [TWIN]  # --max-loaded-models 1 over EMBER_MAX_LOADED_MODELS=2
        assert second[TWIN]["slots"] == 3 and 170 < idle_for(second[TWIN]) <= 181
    finally:
        server.stop()
    log = server.log()
    assert f"listening on http://127.0.0.1:{ports[2]}" in log
    assert "INFO" in log and "loaded twin:latest" in log  # --log-level info over EMBER_LOG_LEVEL=debug
    assert "DEBUG" not in log, log
