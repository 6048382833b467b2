"""Loads and slot layout through the real server: 16 slots of 2,048 cells (the KV memory of
8 x 4,096) stream 16 requests at once, and a load after an unload is a handover to the
pre-loaded spare worker (EMBER_SPARE_WORKER=preload, the default)."""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from tests.conftest import ServerHandle, start_server

MODEL = "smollm2:135m"
STREAMS = 16


@pytest.fixture(scope="module")
def wide(model_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerHandle]:
    base = tmp_path_factory.mktemp("wide")
    home = base / "home"
    shutil.copytree(model_home, home, ignore=shutil.ignore_patterns("state"))
    handle = start_server(home, base, EMBER_NUM_PARALLEL=str(STREAMS), EMBER_NUM_CTX="2048", EMBER_NUM_THREAD="2")
    try:
        yield handle
    finally:
        handle.stop()


def _read(path: str) -> str:
    """A /proc file's text, or "" when its thread or process ended since it was listed (the
    server's spare-worker threads come and go)."""
    try:
        return Path(path).read_text(errors="replace")
    except (FileNotFoundError, ProcessLookupError):
        return ""


def _children(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(p) for p in _read(f"{task}/children").split()]
    return [p for p in found if "ember.engine.worker" in _read(f"/proc/{p}/cmdline")]


def _with_model(pids: list[int]) -> list[int]:
    """The workers that have the model file mapped (an imports-only spare has none)."""
    return [p for p in pids if "/blobs/sha256-" in _read(f"/proc/{p}/maps")]


def _load_seconds(server: ServerHandle) -> float:
    reply = httpx.post(server.url("/api/generate"), json={"model": MODEL, "prompt": ""}, timeout=120)
    reply.raise_for_status()
    return reply.json()["load_duration"] / 1e9


def _unload(server: ServerHandle) -> None:
    httpx.post(server.url("/api/generate"), json={"model": MODEL, "keep_alive": 0}, timeout=60).raise_for_status()


@pytest.mark.slow
def test_sixteen_streams_run_at_once_on_sixteen_slots(wide: ServerHandle) -> None:
    async def stream(client: openai.AsyncOpenAI, i: int) -> tuple[float, float, int]:
        first: float | None = None
        chunks = 0
        response = await client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": f"Count from {i} to {i + 60}, separated by commas."}],
            max_tokens=24,
            temperature=0,
            stream=True,
        )
        async for chunk in response:
            if chunk.choices and chunk.choices[0].delta.content:
                chunks += 1
                first = first or time.monotonic()
        assert first is not None
        return first, time.monotonic(), chunks

    async def burst() -> list[tuple[float, float, int]]:
        async with openai.AsyncOpenAI(base_url=wide.url("/v1"), api_key="none", timeout=120) as client:
            return await asyncio.gather(*(stream(client, i) for i in range(STREAMS)))

    _load_seconds(wide)
    (model,) = httpx.get(wide.url("/api/ps"), timeout=10).json()["models"]
    assert model["slots"] == STREAMS and model["context_length"] == 2048
    results = asyncio.run(burst())
    # Every stream had begun before any ended: none waited for another's slot.
    assert max(first for first, _, _ in results) < min(end for _, end, _ in results)
    assert all(chunks > 1 for _, _, chunks in results)


def test_a_load_after_an_unload_is_a_handover(wide: ServerHandle) -> None:
    _load_seconds(wide)  # resident (the first load may have waited for the spare's own load)
    (worker,) = _with_model(_children(wide.process.pid))
    _unload(wide)
    # The unloaded model's worker stays, the model still mapped, as the pre-loaded spare;
    # the imports-only spare kept while the model was loaded is stopped.
    deadline = time.monotonic() + 15
    while _children(wide.process.pid) != [worker] and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _children(wide.process.pid) == [worker]
    for _ in range(2):
        assert _load_seconds(wide) < 0.1
        assert _with_model(_children(wide.process.pid)) == [worker]
        _unload(wide)
    _load_seconds(wide)
    # Once loaded, an imports-only spare waits again for the next model's load.
    deadline = time.monotonic() + 30
    while len(_children(wide.process.pid)) != 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert len(_children(wide.process.pid)) == 2
    reply = httpx.post(
        wide.url("/api/generate"),
        json={"model": MODEL, "prompt": "Say hi", "stream": False, "options": {"num_predict": 3, "temperature": 0}},
        timeout=60,
    )
    assert reply.status_code == 200 and reply.json()["eval_count"] >= 1
