"""Logprobs: the log-softmax/top-k helper on known vectors, then both engines on the real SmolLM2.

An entry per completion token (the end-of-generation token gets none), the stop sequence's
tokens included, so there are always exactly `completion_tokens` of them.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import pytest_asyncio

from ember.engine.llama_engine import LlamaEngine
from ember.engine.logprobs import FLOOR, log_softmax_at
from ember.engine.process_engine import ProcessEngine, ProcessEngineLoader
from ember.engine.types import (
    GenerationEvent,
    GenerationRequest,
    GenerationStats,
    LoadOptions,
    SamplingParams,
    TokenLogprob,
)

GREEDY = SamplingParams(temperature=0.0, repeat_penalty=1.0)


def chat(question: str) -> str:
    return f"<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n"


# --- the helper -------------------------------------------------------------------------------


def test_log_softmax_of_a_known_vector() -> None:
    logits = np.array([1.0, 2.0, 3.0, 4.0], dtype=np.float32)
    expected = logits.astype(np.float64) - math.log(sum(math.exp(x) for x in logits))
    chosen, top = log_softmax_at(logits, 1, 4)
    assert chosen == pytest.approx(expected[1], abs=1e-6)
    assert [i for i, _ in top] == [3, 2, 1, 0]  # most likely first
    assert [lp for _, lp in top] == pytest.approx(expected[::-1], abs=1e-6)
    assert sum(math.exp(lp) for _, lp in top) == pytest.approx(1.0, abs=1e-6)
    chosen2, top2 = log_softmax_at(logits, 0, 2)
    assert chosen2 == pytest.approx(expected[0], abs=1e-6)
    assert [i for i, _ in top2] == [3, 2]


def test_top_zero_and_top_past_the_vocabulary() -> None:
    logits = np.array([0.5, -1.0, 2.0], dtype=np.float32)
    assert log_softmax_at(logits, 2, 0)[1] == []
    assert [i for i, _ in log_softmax_at(logits, 2, 50)[1]] == [2, 0, 1]


def test_ties_are_ordered_by_token_id() -> None:
    logits = np.zeros(8, dtype=np.float32)
    chosen, top = log_softmax_at(logits, 5, 8)
    assert [i for i, _ in top] == list(range(8))
    assert chosen == pytest.approx(-math.log(8))


def test_every_logprob_is_at_most_zero_and_finite() -> None:
    # A peaked distribution (the rest underflows to 0 in float32) and one with -inf logits.
    peaked = np.array([1000.0, 0.0, -1e5], dtype=np.float32)
    chosen, top = log_softmax_at(peaked, 0, 3)
    assert chosen == 0.0 and math.copysign(1.0, chosen) == 1.0  # no -0.0
    assert top[1][1] == pytest.approx(-1000.0)
    assert top[2][1] == FLOOR  # -101000 clamps to OpenAI's "no measurable probability"
    masked = np.array([0.0, -np.inf, 0.0], dtype=np.float32)
    chosen, top = log_softmax_at(masked, 1, 3)
    assert chosen == FLOOR
    assert [lp for _, lp in top] == pytest.approx([-math.log(2), -math.log(2), FLOOR])
    rng = np.random.default_rng(7)
    big = (rng.standard_normal(49152) * 8).astype(np.float32)
    chosen, top = log_softmax_at(big, int(big.argmax()), 20)
    assert chosen <= 0.0 and all(lp <= 0.0 for _, lp in top)
    assert chosen == top[0][1]
    assert [lp for _, lp in top] == sorted((lp for _, lp in top), reverse=True)
    exact = big.astype(np.float64) - np.log(np.exp(big.astype(np.float64) - big.max()).sum()) - big.max()
    assert [lp for _, lp in top] == pytest.approx(sorted(exact, reverse=True)[:20], abs=1e-5)


# --- both engines ------------------------------------------------------------------------------


@dataclass
class Run:
    text: str
    finish: str
    stats: GenerationStats
    entries: list[TokenLogprob]
    events: list[GenerationEvent]


async def run(engine: ProcessEngine | LlamaEngine, prompt: list[int], **request: object) -> Run:
    events = [event async for event in engine.generate(GenerationRequest(prompt_tokens=prompt, **request))]  # type: ignore[arg-type]
    final = events[-1]
    assert final.done and final.stats is not None and final.finish_reason is not None
    entries = [lp for event in events for lp in event.logprobs]
    return Run("".join(e.text for e in events), final.finish_reason, final.stats, entries, events)


@pytest_asyncio.fixture(scope="module", loop_scope="session", params=["worker", "inprocess"])
async def engine(smollm2_gguf: Path, request: pytest.FixtureRequest) -> AsyncIterator[ProcessEngine | LlamaEngine]:
    """Each engine once per module: the worker process and the in-process Llama."""
    loaded: ProcessEngine | LlamaEngine
    if request.param == "worker":
        loaded = await ProcessEngineLoader().load(smollm2_gguf, LoadOptions(num_ctx=512, num_parallel=2))
    else:
        loaded = await asyncio.to_thread(LlamaEngine.open, smollm2_gguf, LoadOptions(num_ctx=512))
    yield loaded
    await loaded.close()


def check_entries(result: Run, top: int) -> None:
    assert len(result.entries) == result.stats.completion_tokens
    for entry in result.entries:
        assert entry.logprob <= 0.0
        assert entry.token == bytes(entry.bytes).decode("utf-8", errors="replace")
        assert len(entry.top) == top
        values = [t.logprob for t in entry.top]
        assert values == sorted(values, reverse=True) and all(v <= 0.0 for v in values)


@pytest.mark.asyncio(loop_scope="session")
async def test_greedy_tokens_are_the_top_alternative(engine: ProcessEngine | LlamaEngine) -> None:
    prompt = await engine.tokenize(chat("Name three colours."))
    result = await run(engine, prompt, max_tokens=8, sampling=GREEDY, logprobs=3)
    assert result.finish == "length" and result.stats.completion_tokens == 8
    check_entries(result, 3)
    for entry in result.entries:  # no penalty: greedy takes the raw top-1
        assert (entry.token, entry.logprob) == (entry.top[0].token, entry.top[0].logprob)
    assert "".join(e.token for e in result.entries) == result.text
    plain = await run(engine, prompt, max_tokens=8, sampling=GREEDY)
    assert plain.text == result.text and plain.entries == []  # off by default, and changes nothing
    bare = await run(engine, prompt, max_tokens=8, sampling=GREEDY, logprobs=0)
    assert [e.token for e in bare.entries] == [e.token for e in result.entries]
    assert all(e.top == () for e in bare.entries)


@pytest.mark.asyncio(loop_scope="session")
async def test_stop_sequences_and_held_back_text_keep_the_count(engine: ProcessEngine | LlamaEngine) -> None:
    prompt = await engine.tokenize(chat("Name three colours."))
    full = await run(engine, prompt, max_tokens=16, sampling=GREEDY, logprobs=1)
    check_entries(full, 1)
    # Stop strings that never appear but begin with common letters: a token ending in one is
    # held back until the next shows it is no stop. Its entry is sent at once all the same.
    held = await run(
        engine, prompt, max_tokens=16, sampling=GREEDY, logprobs=1, stop=tuple(f"{c}\u2603" for c in "aeinorst ")
    )
    assert held.text == full.text
    assert [e.token for e in held.entries] == [e.token for e in full.entries]
    assert any(len(e.logprobs) and "".join(lp.token for lp in e.logprobs) != e.text for e in held.events)
    # A stop string: its tokens were sampled and are counted, so they keep their entries.
    stop = full.text[6:11]
    cut = await run(engine, prompt, max_tokens=16, sampling=GREEDY, logprobs=1, stop=(stop,))
    assert cut.finish == "stop" and cut.text == full.text[: full.text.index(stop)]
    check_entries(cut, 1)
    sampled = "".join(e.token for e in cut.entries)
    assert sampled.startswith(cut.text) and stop in sampled[len(cut.text) :]
    assert [e.token for e in cut.entries] == [e.token for e in full.entries[: len(cut.entries)]]


@pytest.mark.asyncio(loop_scope="session")
async def test_end_of_generation_token_has_no_entry(engine: ProcessEngine | LlamaEngine) -> None:
    prompt = await engine.tokenize(chat("What is 2+2? Answer with the number only."))
    result = await run(engine, prompt, max_tokens=40, sampling=GREEDY, logprobs=2)
    assert result.finish == "stop"
    check_entries(result, 2)
    assert "<|im_end|>" not in [e.token for e in result.entries]
    assert "".join(e.token for e in result.entries) == result.text
