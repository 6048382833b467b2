"""The step scheduler's prompt admission, on the real model: bursts, shortest-first, shared prefixes.

The scheduler is driven directly (no worker process, no server), one step at a time, with a
small batch so that the orders tested here show up within a few hundred prompt tokens.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import llama_cpp
import pytest
from hypothesis import given
from hypothesis import strategies as st

from ember.engine.batching import MIN_SHARED_COPY, OLDEST_SHARE, BatchConfig, BatchScheduler, Reading, plan_prompts
from ember.engine.ipc import Load, Update
from ember.engine.sampling import tokenize
from ember.engine.types import GenerationRequest, LoadOptions, SamplingParams
from ember.engine.worker import LlamaLog, Model, load_model

GREEDY = SamplingParams(temperature=0.0, repeat_penalty=1.0)
SLOTS = 8


@pytest.fixture(scope="module")
def model(smollm2_gguf: Path) -> Iterator[Model]:
    # Not installed as llama.cpp's log callback: a callback freed with this fixture while llama.cpp
    # still holds it crashes the next test that logs (a model load in tests/services did, in CI).
    log = LlamaLog()
    loaded = load_model(Load(path=smollm2_gguf, options=LoadOptions(num_ctx=512, num_parallel=SLOTS)), log)
    yield loaded
    loaded.close()


@pytest.fixture
def make(model: Model) -> Iterator[object]:
    """A fresh scheduler over the module's context, its KV cache emptied first."""
    made: list[BatchScheduler] = []

    def factory(batch_tokens: int = 512, prefill: int = 128) -> BatchScheduler:
        llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(model.ctx), True)
        config = BatchConfig(slots=SLOTS, slot_context=512, batch_tokens=batch_tokens, prefill_while_generating=prefill)
        made.append(BatchScheduler(model.ctx, model.model, config))
        return made[-1]

    yield factory
    for scheduler in made:
        scheduler.close()


def tokens(model: Model, text: str) -> list[int]:
    return tokenize(llama_cpp.llama_model_get_vocab(model.model), text, add_special=False, parse_special=False)


def one_token(prompt: list[int]) -> GenerationRequest:
    """Finishes ("length") with the first sampled token: its Update marks that token's step."""
    return GenerationRequest(prompt_tokens=prompt, max_tokens=1, sampling=GREEDY)


def finished(updates: list[Update]) -> set[int]:
    return {u.rid for u in updates if u.finish is not None}


def batch_seq_ids(scheduler: BatchScheduler) -> list[int]:
    batch = scheduler._batch
    return [batch.seq_id[i][0] for i in range(batch.n_tokens)]


def test_a_burst_is_read_in_one_step_in_seq_id_order(model: Model, make) -> None:
    scheduler = make()
    prompts = [tokens(model, f"Question {i}: what is {i} plus {i + 1}? Answer briefly.") for i in range(SLOTS)]
    for rid, prompt in enumerate(prompts):
        assert scheduler.submit(rid, one_token(prompt)) is None
    done = finished(scheduler.step())
    assert done == set(range(SLOTS))  # every first token from the first decode
    assert scheduler.counters.prompt_tokens == sum(len(p) for p in prompts)
    seq_ids = batch_seq_ids(scheduler)
    assert seq_ids == sorted(seq_ids)


def test_prompts_joining_generating_streams_are_laid_out_by_seq_id(model: Model, make) -> None:
    scheduler = make()
    counting = tokens(model, "1, 2, 3, 4,")
    for rid in range(3):
        scheduler.submit(rid, GenerationRequest(prompt_tokens=counting, max_tokens=20, sampling=GREEDY))
    scheduler.step()  # three streams generating in slots 0-2
    scheduler.cancel(1)  # slot 1 is free again, and holds the longest prefix of the next prompt
    scheduler.submit(9, one_token(counting + tokens(model, " 5, 6, 7, 8,")))
    updates = scheduler.step()
    assert 9 in finished(updates)
    seq_ids = batch_seq_ids(scheduler)
    assert seq_ids == sorted(seq_ids) and set(seq_ids) == {0, 1, 2}


def test_a_warm_suffix_is_answered_before_a_long_cold_prompt(model: Model, make) -> None:
    scheduler = make(batch_tokens=32)
    prefix = tokens(model, "Rules: keep the door closed and the lights off.")
    scheduler.submit(0, one_token(prefix))
    while scheduler.busy:
        scheduler.step()  # a free slot now holds the prefix
    cold = tokens(model, " ".join(f"Story {i}: the wind blew over the hill." for i in range(10)))
    assert len(cold) > 3 * 32
    scheduler.submit(1, one_token(cold))
    assert not finished(scheduler.step())  # the cold prompt's first 32 tokens
    read_before = scheduler.counters.prompt_tokens
    scheduler.submit(2, one_token(prefix + tokens(model, " Is the door open?")))
    # The warm request reads only its suffix, ahead of the cold prompt's rest, and gets its
    # token in this step; the cold prompt still advances by its share and what is left over.
    assert finished(scheduler.step()) == {2}
    assert scheduler.counters.prompt_tokens - read_before == 32
    for _ in range(-(-len(cold) // 32)):
        if 1 in finished(scheduler.step()):
            break
    else:
        pytest.fail("the cold prompt was not read in as many steps as it has batches")


FIRST_WORDS = ["Apples", "Rivers", "Candles", "Mountains", "Bicycles", "Clouds", "Lemons", "Owls"]


def test_a_stream_of_short_prompts_does_not_starve_a_long_one(model: Model, make) -> None:
    scheduler = make(batch_tokens=64, prefill=32)
    scheduler.submit(0, GenerationRequest(prompt_tokens=tokens(model, "1, 2, 3,"), max_tokens=40, sampling=GREEDY))
    scheduler.step()  # a stream generating: the prompt budget is 32 tokens a step from here on
    cold = tokens(model, " ".join(f"Line {i}: the river runs to the sea." for i in range(4)))
    scheduler.submit(1, one_token(cold))
    share = 32 // OLDEST_SHARE
    rid = 100
    for _ in range(-(-len(cold) // share)):
        # Shorter prompts than the long one's rest, more than the budget: shortest-first alone
        # would give the long prompt nothing while they keep coming.
        for word in FIRST_WORDS[:4]:
            rid += 1
            scheduler.submit(rid, one_token(tokens(model, f"{word} {rid} are nice, I think.")))
        if 1 in finished(scheduler.step()):
            break
    else:
        pytest.fail("the long prompt starved behind short ones")


def test_a_cold_shared_prefix_is_read_once(model: Model, make) -> None:
    scheduler = make()
    system = tokens(model, " ".join(f"Policy {i}: answer politely and briefly." for i in range(10)))
    questions = [tokens(model, f" Question {i}: why is the sky blue?") for i in range(SLOTS)]
    prompts = [system + q for q in questions]
    shared = min(next(i for i, (a, b) in enumerate(zip(prompts[0], p, strict=False)) if a != b) for p in prompts[1:])
    assert shared >= MIN_SHARED_COPY
    for rid, prompt in enumerate(prompts):
        scheduler.submit(rid, one_token(prompt))
    done: set[int] = set()
    while scheduler.busy:
        done |= finished(scheduler.step())
    assert done == set(range(SLOTS))
    counters = scheduler.counters
    # One slot read the prefix; the others copied its cache (or found it in the slot the first
    # one left) and read only their own ends.
    assert counters.copies >= SLOTS - 2
    assert counters.prompt_tokens <= len(prompts[0]) + sum(len(p) - shared for p in prompts[1:])
    assert counters.prompt_tokens < 2 * len(system)


readings = st.lists(
    st.tuples(st.integers(1, 600), st.integers(0, 50)), min_size=1, max_size=SLOTS, unique_by=lambda t: t[1]
).map(lambda items: [Reading(seq_id=i, left=left, admitted=adm) for i, (left, adm) in enumerate(items)])


@given(readings, st.integers(1, 512))
def test_plan_fits_the_budget_shortest_first_and_the_oldest_always_moves(reading: list[Reading], budget: int) -> None:
    plan = plan_prompts(reading, budget)
    by_seq = {r.seq_id: r for r in reading}
    assert sum(plan.values()) == min(budget, sum(r.left for r in reading))
    assert all(0 < n <= by_seq[seq].left for seq, n in plan.items())
    oldest = min(reading, key=lambda r: r.admitted)
    assert plan.get(oldest.seq_id, 0) >= min(oldest.left, max(1, budget // OLDEST_SHARE))
    # Apart from the oldest, a prompt gets tokens only once every shorter one is complete.
    for r in reading:
        if r is oldest or not plan.get(r.seq_id):
            continue
        shorter = [o for o in reading if o is not oldest and (o.left, o.admitted) < (r.left, r.admitted)]
        assert all(plan.get(o.seq_id) == o.left for o in shorter)
