"""The worker-process engine with continuous batching, on the real SmolLM2 model."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import llama_cpp
import pytest
import pytest_asyncio

from ember.engine.ipc import Update
from ember.engine.llama_engine import LlamaEngine
from ember.engine.process_engine import ProcessEngine, ProcessEngineLoader
from ember.engine.types import (
    GenerationEvent,
    GenerationRequest,
    GenerationStats,
    LoadOptions,
    SamplingParams,
)
from ember.errors import ModelLoadFailed, ServiceUnavailable

pytestmark = pytest.mark.asyncio(loop_scope="session")

GREEDY = SamplingParams(temperature=0.0, repeat_penalty=1.0)
QUESTIONS = [
    "What is the capital of France?",
    "Name three colours.",
    "Write a haiku about the sea.",
    "What is 2+2?",
    "Give me a synonym for happy.",
    "Who wrote Hamlet?",
    "Describe a cat in one sentence.",
    "What is the boiling point of water?",
]
COUNTING = "1, 2, 3, 4, 5, 6, 7, 8,"  # a raw prompt the model keeps continuing for thousands of tokens


def chat(question: str) -> str:
    return f"<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n"


@dataclass
class Answer:
    text: str
    finish: str
    stats: GenerationStats


async def ask(engine: ProcessEngine | LlamaEngine, prompt: list[int], **request: Any) -> Answer:
    parts: list[str] = []
    final: GenerationEvent | None = None
    async for event in engine.generate(GenerationRequest(prompt_tokens=prompt, **request)):
        parts.append(event.text)
        if event.done:
            final = event
    assert final is not None and final.stats is not None and final.finish_reason is not None
    return Answer("".join(parts), final.finish_reason, final.stats)


def worker_processes() -> set[int]:
    """PIDs of ember workers whose parent is this test process."""
    found: set[int] = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        if parent == os.getpid() and b"ember.engine.worker" in cmdline:
            found.add(int(entry.name))
    return found


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def engine(smollm2_gguf: Path) -> AsyncIterator[ProcessEngine]:
    started = time.perf_counter()
    loaded = await ProcessEngineLoader().load(smollm2_gguf, LoadOptions(num_ctx=2048, num_parallel=8))
    print(f"process engine loaded in {time.perf_counter() - started:.2f}s "
          f"(worker's own load {loaded.worker_load_seconds:.2f}s)")
    yield loaded
    await loaded.close()


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def reference(smollm2_gguf: Path) -> AsyncIterator[LlamaEngine]:
    """The in-process engine over the same llama.cpp settings as the worker.

    Flash attention on, as the worker has it (llama.cpp's default): its CPU
    kernel gives the same logits however a prompt is split into decodes. The
    stock LlamaEngine turns it off (llama-cpp-python's default), and then the
    two engines' greedy answers part after a few dozen tokens on near-ties.
    """
    options = LoadOptions(num_ctx=2048)
    threads = os.cpu_count() or 1
    llama = await asyncio.to_thread(
        llama_cpp.Llama, model_path=str(smollm2_gguf), n_ctx=options.num_ctx, n_batch=512,
        n_threads=threads, n_threads_batch=threads, n_gpu_layers=0, flash_attn=True, verbose=False)
    loaded = LlamaEngine(smollm2_gguf, options, llama)
    yield loaded
    await loaded.close()


async def test_loads_quickly_and_describes_itself(engine: ProcessEngine, smollm2_gguf: Path) -> None:
    assert engine.alive
    assert engine.context_length == 2048  # per slot
    assert engine.parallel == 8
    # Weights plus 8 x 2048 cells of f16 K and V (30 layers x 3 KV heads x 64 dims).
    kv_bytes = 2 * 2 * 8 * 2048 * 30 * 3 * 64
    expected = smollm2_gguf.stat().st_size + kv_bytes
    assert 0.9 * expected <= engine.memory_bytes < 2 * expected
    assert engine.worker_load_seconds < 10


async def test_tokenize_matches_in_process_engine(engine: ProcessEngine, reference: LlamaEngine) -> None:
    text = chat("Héllo, wörld! 🎉")
    assert await engine.tokenize(text) == await reference.tokenize(text)
    assert (await engine.tokenize(text))[:1] == [1]  # <|im_start|> parsed as a special token
    long_text = "lorem ipsum " * 2000  # tokenized off the event loop
    assert await engine.tokenize(long_text) == await reference.tokenize(long_text)


async def test_greedy_answer_equals_in_process_engine(engine: ProcessEngine, reference: LlamaEngine) -> None:
    for question in ("Who wrote Hamlet?", "Give me a synonym for happy."):
        prompt = await engine.tokenize(chat(question))
        ours = await ask(engine, prompt, max_tokens=40, sampling=GREEDY)
        theirs = await ask(reference, prompt, max_tokens=40, sampling=GREEDY)
        assert ours.text == theirs.text
        assert ours.stats.completion_tokens == theirs.stats.completion_tokens
        assert ours.finish == theirs.finish


async def test_penalties_equal_in_process_engine(engine: ProcessEngine, reference: LlamaEngine) -> None:
    """Both engines read every penalty field alike, repeat_last_n's 0 (off) and -1 (all) included."""
    loop = await engine.tokenize("Repeat after me: hello hello hello hello hello", add_special=False)
    unpenalised = await ask(engine, loop, max_tokens=24, sampling=GREEDY)
    assert unpenalised.text == " hello" * 24
    for penalties in ({"repeat_penalty": 1.5}, {"repeat_penalty": 1.5, "repeat_last_n": 0},
                      {"repeat_penalty": 1.5, "repeat_last_n": -1}, {"repeat_penalty": 1.0, "presence_penalty": 4.0},
                      {"repeat_penalty": 1.0, "frequency_penalty": 0.5}):
        sampling = SamplingParams(temperature=0.0, **penalties)  # type: ignore[arg-type]
        ours = await ask(engine, loop, max_tokens=24, sampling=sampling)
        theirs = await ask(reference, loop, max_tokens=24, sampling=sampling)
        assert ours.text == theirs.text, penalties
        # Off only where repeat_last_n says so.
        assert (ours.text == unpenalised.text) == (penalties.get("repeat_last_n") == 0), penalties


async def test_concurrent_requests_never_mix(engine: ProcessEngine) -> None:
    prompts = [await engine.tokenize(chat(q)) for q in QUESTIONS]
    alone = [await ask(engine, prompt, max_tokens=24, sampling=GREEDY) for prompt in prompts]
    together = await asyncio.gather(*(ask(engine, prompt, max_tokens=24, sampling=GREEDY)
                                      for prompt in prompts))
    assert len({answer.text for answer in alone}) == len(QUESTIONS)  # really different answers
    for solo, batched in zip(alone, together, strict=True):
        assert batched.text == solo.text
        assert batched.stats.completion_tokens == solo.stats.completion_tokens


async def test_same_seed_same_answer(engine: ProcessEngine) -> None:
    prompt = await engine.tokenize(chat("Write a sentence about the moon."))

    def sampling(seed: int) -> SamplingParams:
        return SamplingParams(temperature=0.9, top_k=40, top_p=0.95, seed=seed)

    first, second = await asyncio.gather(ask(engine, prompt, max_tokens=24, sampling=sampling(1234)),
                                         ask(engine, prompt, max_tokens=24, sampling=sampling(1234)))
    third = await ask(engine, prompt, max_tokens=24, sampling=sampling(1234))
    assert first.text == second.text == third.text
    others = {(await ask(engine, prompt, max_tokens=24, sampling=sampling(seed))).text for seed in (1, 2, 3)}
    assert others - {first.text}, "different seeds should give some different answer"


async def test_stop_string_across_tokens(engine: ProcessEngine) -> None:
    prompt = await engine.tokenize(chat("Name three colours."))
    full = await ask(engine, prompt, max_tokens=40, sampling=GREEDY)
    assert len(full.text) > 12
    stop = full.text[6:11]  # five characters from inside the answer, likely spanning tokens
    cut = await ask(engine, prompt, max_tokens=40, sampling=GREEDY, stop=(stop, "never appears"))
    assert cut.text == full.text[:full.text.index(stop)]
    assert cut.finish == "stop"
    assert cut.stats.completion_tokens < full.stats.completion_tokens


async def test_max_tokens_gives_length_and_exact_usage(engine: ProcessEngine) -> None:
    prompt = await engine.tokenize(COUNTING)
    answer = await ask(engine, prompt, max_tokens=5, sampling=GREEDY)
    assert answer.finish == "length"
    assert answer.stats.completion_tokens == 5
    assert answer.stats.prompt_tokens == len(prompt)
    assert answer.text.startswith(" 9,")


async def test_prompt_that_fills_the_context_ends_at_once(engine: ProcessEngine) -> None:
    prompt = (await engine.tokenize("word " * 3000))[:engine.context_length]
    answer = await ask(engine, prompt, sampling=GREEDY)
    assert answer.finish == "length"
    assert answer.stats.completion_tokens == 0


async def test_prefix_reuse_evaluates_only_the_new_part(engine: ProcessEngine) -> None:
    story = " ".join(f"Line {i}: the quick brown fox jumps over the lazy dog." for i in range(100))
    first_prompt = await engine.tokenize(chat(f"{story}\nHow many lines are there?"))
    second_prompt = await engine.tokenize(chat(f"{story}\nWhat animal jumps?"))
    assert len(first_prompt) > 1450
    first = await ask(engine, first_prompt, max_tokens=4, sampling=GREEDY)
    second = await ask(engine, second_prompt, max_tokens=4, sampling=GREEDY)
    shared = next(i for i, (a, b) in enumerate(zip(first_prompt, second_prompt, strict=False)) if a != b)
    assert first.stats.cached_prompt_tokens < 50
    assert second.stats.cached_prompt_tokens == shared
    assert second.stats.prompt_tokens == len(second_prompt)
    evaluated = len(second_prompt) - second.stats.cached_prompt_tokens
    assert evaluated < 30
    print(f"prompt eval: {first.stats.prompt_eval_seconds:.3f}s cold "
          f"({len(first_prompt)} tokens), {second.stats.prompt_eval_seconds:.3f}s warm ({evaluated} tokens)")
    # The very same prompt again: everything but the last token comes from the cache.
    again = await ask(engine, second_prompt, max_tokens=4, sampling=GREEDY)
    assert again.stats.cached_prompt_tokens == len(second_prompt) - 1
    assert again.text == second.text


def shared_story(topic: str) -> str:
    """A long prefix no other test uses (each slot's cache outlives its request)."""
    return " ".join(f"Note {i} about {topic}: the {topic} is kept in room {i * 7}." for i in range(45))


def shared_length(a: list[int], b: list[int]) -> int:
    return next(i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y)


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def sequential(smollm2_gguf: Path) -> AsyncIterator[ProcessEngine]:
    """A second engine, asked one request at a time: a later prompt finds the shared prefix in the
    free slot the earlier one left. Copying a busy slot's cache must answer exactly as that does
    (the same cache, read on from the same point; the in-process engine reads every prompt whole,
    and where a prompt is split into decodes moves the last bits of the logits)."""
    loaded = await ProcessEngineLoader().load(smollm2_gguf, LoadOptions(num_ctx=2048, num_parallel=2))
    yield loaded
    await loaded.close()


async def test_a_prefix_in_a_busy_slot_is_copied_not_read_again(
    engine: ProcessEngine, sequential: ProcessEngine
) -> None:
    story = shared_story("lamp")
    running = await engine.tokenize(chat(f"{story}\nList every room."))
    asked = await engine.tokenize(chat(f"{story}\nWhere is the lamp kept?"))
    shared = shared_length(running, asked)
    assert shared > 500
    events = engine.generate(GenerationRequest(prompt_tokens=running, max_tokens=400, sampling=GREEDY))
    try:
        async for event in events:  # once it is generating, its slot is busy and holds the story
            if event.text:
                break
        answer = await ask(engine, asked, max_tokens=12, sampling=GREEDY)
    finally:
        await events.aclose()
    assert answer.stats.cached_prompt_tokens == shared
    await ask(sequential, running, max_tokens=1, sampling=GREEDY)
    alone = await ask(sequential, asked, max_tokens=12, sampling=GREEDY)
    assert alone.stats.cached_prompt_tokens == shared
    assert answer.text == alone.text


async def test_prompts_sharing_a_cold_prefix_read_it_once(engine: ProcessEngine, sequential: ProcessEngine) -> None:
    """Arriving together, the first reads the prefix and the others wait for it and copy it.

    Their answers are not compared with solo answers: three suffixes read in one decode get
    logits a little different from each read alone (llama.cpp's CPU kernels), enough to flip a
    near-tie of greedy decoding after ~800 prompt tokens, with or without copying. That the
    copy itself is exact is the test above."""
    story = shared_story("clock")
    questions = ["Where is the clock kept?", "Which room is first?", "How many notes are there?", "Name a room."]
    prompts = [await engine.tokenize(chat(f"{story}\n{q}")) for q in questions]
    shared = [shared_length(prompts[0], p) for p in prompts[1:]]
    started = time.perf_counter()
    answers = await asyncio.gather(*(ask(engine, p, max_tokens=8, sampling=GREEDY) for p in prompts))
    together = time.perf_counter() - started
    cached = sorted(a.stats.cached_prompt_tokens for a in answers)
    assert cached[0] < 64 and cached[1:] == sorted(shared), (cached, shared)
    assert all(a.stats.completion_tokens == 8 and a.text for a in answers)
    started = time.perf_counter()
    for prompt in prompts:
        await ask(sequential, prompt, max_tokens=8, sampling=GREEDY)
    print(f"{len(prompts)} prompts sharing {min(shared)} tokens: {together:.2f}s together, "
          f"{time.perf_counter() - started:.2f}s one after another")


async def test_long_prompt_does_not_stall_running_streams(engine: ProcessEngine) -> None:
    counting = await engine.tokenize(COUNTING)
    novel = " ".join(f"Chapter {i}: a storm rolled over the hills and the river rose." for i in range(70))
    long_prompt = await engine.tokenize(chat(novel + "\nSummarise."))
    assert len(long_prompt) > 900
    arrivals: list[float] = []

    async def stream() -> None:
        events = engine.generate(GenerationRequest(prompt_tokens=counting, max_tokens=400, sampling=GREEDY))
        try:
            async for _ in events:
                arrivals.append(time.perf_counter())
                if len(arrivals) == 2:
                    started.set()
                if reading_done.is_set():
                    return
        finally:
            await events.aclose()  # cancels the rest

    started, reading_done = asyncio.Event(), asyncio.Event()
    runner = asyncio.create_task(stream())
    await started.wait()
    submitted = time.perf_counter()
    answer = await ask(engine, long_prompt, max_tokens=1, sampling=GREEDY)
    read_at = time.perf_counter()
    reading_done.set()
    await runner
    during = [t for t in arrivals if submitted < t < read_at]
    # The prompt is read 128 tokens per step next to the running stream, which
    # gets a token in every one of those steps (some may arrive merged).
    assert answer.stats.cached_prompt_tokens < 100
    assert len(during) >= 5, f"{len(during)} events while reading {len(long_prompt)} prompt tokens"


async def wait_until_finished_unread(engine: ProcessEngine, within: float = 30.0) -> None:
    """Wait until the one request in flight has its last update queued, unread by its consumer."""
    sinks = engine._channel._sinks
    deadline = time.monotonic() + within
    while True:
        assert len(sinks) == 1, "expected exactly one request in flight"
        queued = list(next(iter(sinks.values())).queue._queue)  # type: ignore[attr-defined]
        if any(isinstance(item, Update) and item.finish is not None for item in queued):
            return
        assert time.monotonic() < deadline, "the request did not finish in time"
        await asyncio.sleep(0.01)


async def test_slow_reader_gets_text_in_chunks(engine: ProcessEngine) -> None:
    prompt = await engine.tokenize(COUNTING)
    stream = engine.generate(GenerationRequest(prompt_tokens=prompt, max_tokens=40, sampling=GREEDY))
    events = [await anext(stream)]
    await wait_until_finished_unread(engine)  # the model went on to the end meanwhile
    events += [event async for event in stream]
    final = events[-1]
    assert final.done and final.stats is not None and final.stats.completion_tokens == 40
    # 40 tokens of text, yet what piled up while we did not read came as one event (then done).
    assert len(events) <= 3, [e.text for e in events]
    assert "".join(e.text for e in events).startswith(" 9, 10, 11,")


async def test_embeddings_are_normalised(engine: ProcessEngine, reference: LlamaEngine) -> None:
    texts = ["The cat sat on the mat.", "Stock markets fell sharply today.", "x" * 50]
    result = await engine.embed(texts)
    assert len(result.vectors) == 3
    assert all(len(vector) == 576 for vector in result.vectors)
    for vector in result.vectors:
        assert abs(sum(x * x for x in vector) - 1.0) < 1e-4
    expected_tokens = 0
    for text in texts:
        expected_tokens += len(await engine.tokenize(text, add_special=True))
    assert result.prompt_tokens == expected_tokens
    theirs = await reference.embed(texts)
    for ours, other in zip(result.vectors, theirs.vectors, strict=True):
        assert sum(a * b for a, b in zip(ours, other, strict=True)) > 0.99  # same model, same pooling
    assert engine.memory_bytes > 0


async def test_cancel_frees_the_slot_within_a_step(smollm2_gguf: Path) -> None:
    single = await ProcessEngineLoader().load(smollm2_gguf, LoadOptions(num_ctx=2560, num_parallel=1))
    try:
        prompt = await single.tokenize(COUNTING)
        stream = single.generate(GenerationRequest(prompt_tokens=prompt, max_tokens=2000, sampling=GREEDY))
        for _ in range(3):
            event = await anext(stream)
            assert not event.done
        await stream.aclose()  # the client went away
        started = time.perf_counter()
        # The only slot must be free now: without the cancel this would wait for 2000 tokens.
        answer = await asyncio.wait_for(ask(single, await single.tokenize(chat("Hi")), max_tokens=4,
                                            sampling=GREEDY), timeout=10)
        assert answer.stats.completion_tokens >= 1
        assert time.perf_counter() - started < 10
    finally:
        await single.close()


async def test_killed_worker_fails_requests_and_engine_reports_dead(smollm2_gguf: Path) -> None:
    doomed = await ProcessEngineLoader().load(smollm2_gguf, LoadOptions(num_ctx=2560, num_parallel=2))
    try:
        prompt = await doomed.tokenize(COUNTING)
        streaming = doomed.generate(GenerationRequest(prompt_tokens=prompt, max_tokens=2000, sampling=GREEDY))
        other = asyncio.create_task(ask(doomed, prompt, max_tokens=2000, sampling=GREEDY))
        await anext(streaming)
        os.kill(doomed.pid, signal.SIGKILL)
        started = time.perf_counter()
        with pytest.raises(ServiceUnavailable) as failure:
            async for _ in streaming:
                pass
        assert time.perf_counter() - started < 5
        assert failure.value.code == "worker_died"
        assert "exited unexpectedly" in failure.value.message
        assert "SIGKILL" in failure.value.message
        with pytest.raises(ServiceUnavailable):
            await asyncio.wait_for(other, timeout=5)
        assert not doomed.alive
        with pytest.raises(ServiceUnavailable):
            await ask(doomed, prompt, max_tokens=4)
        with pytest.raises(ServiceUnavailable):
            await doomed.embed(["still there?"])
        assert await doomed.tokenize("tokenizing needs no worker")
    finally:
        await doomed.close()
        await doomed.close()  # idempotent
    assert doomed.pid not in worker_processes()


async def test_close_stops_the_worker(smollm2_gguf: Path) -> None:
    closing = await ProcessEngineLoader().load(smollm2_gguf, LoadOptions(num_ctx=512, num_parallel=1))
    pid = closing.pid
    assert pid in worker_processes()
    await closing.close()
    await closing.close()
    assert not closing.alive
    assert pid not in worker_processes()
    with pytest.raises(ServiceUnavailable):
        await ask(closing, [1, 2, 3], max_tokens=1)


async def test_truncated_model_fails_to_load_without_leftovers(truncated_gguf: Path) -> None:
    before = worker_processes()
    with pytest.raises(ModelLoadFailed) as failure:
        await ProcessEngineLoader().load(truncated_gguf, LoadOptions(num_ctx=512, num_parallel=1))
    assert "truncated.gguf" in failure.value.message
    assert "corrupted or incomplete" in failure.value.message  # llama.cpp's own reason, passed on
    assert worker_processes() == before
