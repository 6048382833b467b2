"""The process engine's pre-loaded spare worker: a load of the default model is a handover,
an unloaded model's worker is kept (its cache cleared), and anything else frees it first."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from ember.engine.process_engine import LoadTarget, ProcessEngine, ProcessEngineLoader
from ember.engine.types import GenerationRequest, LoadOptions, SamplingParams

pytestmark = pytest.mark.asyncio(loop_scope="session")

OPTIONS = LoadOptions(num_ctx=512, num_parallel=2, num_thread=2)
GREEDY = SamplingParams(temperature=0.0, repeat_penalty=1.0)


async def answer(engine: ProcessEngine, prompt: list[int]) -> tuple[str, int]:
    """The text of a short greedy answer and the prompt tokens found in the cache."""
    text, cached = "", -1
    async for event in engine.generate(GenerationRequest(prompt_tokens=prompt, max_tokens=6, sampling=GREEDY)):
        text += event.text
        if event.stats is not None:
            cached = event.stats.cached_prompt_tokens
    return text, cached


def running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is gone for our purposes: its parent (this process) has not reaped it yet.
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().split(") ", 1)[1][0] != "Z"


async def eventually(check: Callable[[], bool], within: float = 15.0) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if check():
            return True
        await asyncio.sleep(0.05)
    return False


async def gone(pid: int) -> bool:
    return await eventually(lambda: not running(pid))


@pytest.mark.slow
async def test_preloaded_spare_is_handed_over_and_kept_after_unload(smollm2_gguf: Path) -> None:
    loader = ProcessEngineLoader(spare="preload", preload=LoadTarget(smollm2_gguf, OPTIONS))
    try:
        first = await loader.load(smollm2_gguf, OPTIONS)  # waits for the spare's own load, if still going
        prompt = await first.tokenize("The capital of France is")
        said, cached = await answer(first, prompt)
        assert said and cached == 0
        worker = first.pid
        await first.close()  # unloaded: the worker is parked, not stopped
        assert running(worker)

        started = time.perf_counter()
        again = await loader.load(smollm2_gguf, OPTIONS)
        handover = time.perf_counter() - started
        assert again.pid == worker and again.alive
        assert handover < 0.25, f"a handover took {handover:.3f}s"
        # The same answer, and nothing of the earlier request's prompt left in the cache.
        assert await answer(again, prompt) == (said, 0)

        # Other options are another load: the parked worker cannot serve them and is stopped.
        await again.close()
        other = await loader.load(smollm2_gguf, LoadOptions(num_ctx=256, num_parallel=1, num_thread=2))
        assert other.pid != worker
        assert await gone(worker)
        assert (await answer(other, prompt))[0]
        await other.close()  # not the preloaded target: stopped, and a fresh spare loads it again
        assert await gone(other.pid)
        back = await loader.load(smollm2_gguf, OPTIONS)
        assert back.pid not in (worker, other.pid)
        assert await answer(back, prompt) == (said, 0)
        await back.close()
        parked = back.pid
    finally:
        await loader.close()
    assert await gone(parked)  # closing the loader stops its spare


async def test_a_dead_worker_is_not_kept(smollm2_gguf: Path) -> None:
    loader = ProcessEngineLoader(spare="preload", preload=LoadTarget(smollm2_gguf, OPTIONS))
    try:
        engine = await loader.load(smollm2_gguf, OPTIONS)
        doomed = engine.pid
        os.kill(doomed, 9)
        assert await eventually(lambda: not engine.alive)
        await engine.close()
        fresh = await loader.load(smollm2_gguf, OPTIONS)
        assert fresh.pid != doomed and fresh.alive
        prompt = await fresh.tokenize("Hello")
        assert (await answer(fresh, prompt))[0]
        await fresh.close()
    finally:
        await loader.close()
