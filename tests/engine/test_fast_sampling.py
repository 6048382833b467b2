"""The sampling shortcuts give llama.cpp's full chain's token, step after step.

The reference is a chain built the old way (one flat llama.cpp chain: penalties, then greedy or
top_k -> typical -> top_p -> min_p -> temp -> dist) sampled with llama_sampler_sample over the
whole vocabulary; both chains see the same logits and accept the same tokens. On the real
model's logits (a real generation, each config a few dozen steps), and on made-up logits full
of equal values, NaNs and -inf, where the shortcut must either agree or step aside.
"""

from __future__ import annotations

import ctypes
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import llama_cpp
import numpy as np
import numpy.typing as npt
import pytest

from ember.engine.constrained import _TOKEN_DATA
from ember.engine.fast_sampling import PenaltyWindow
from ember.engine.sampling import SamplerChain, tokenize
from ember.engine.types import SamplingParams

CONTEXT = 512


def reference_chain(params: SamplingParams, *, n_vocab: int, history: int) -> llama_cpp.llama_sampler_p:
    """The chain as ember built it before the shortcuts: one flat llama.cpp chain."""
    last_n = history if params.repeat_last_n < 0 else params.repeat_last_n
    chain = llama_cpp.llama_sampler_chain_init(llama_cpp.llama_sampler_chain_default_params())
    samplers = [
        llama_cpp.llama_sampler_init_penalties(
            n_vocab, last_n, params.repeat_penalty, params.frequency_penalty, params.presence_penalty
        )
    ]
    if params.temperature <= 0:
        samplers.append(llama_cpp.llama_sampler_init_greedy())
    else:
        assert params.seed is not None
        samplers += [
            llama_cpp.llama_sampler_init_top_k(params.top_k),
            llama_cpp.llama_sampler_init_typical(params.typical_p, 1),
            llama_cpp.llama_sampler_init_top_p(params.top_p, 1),
            llama_cpp.llama_sampler_init_min_p(params.min_p, 1),
            llama_cpp.llama_sampler_init_temp(params.temperature),
            llama_cpp.llama_sampler_init_dist(params.seed),
        ]
    for sampler in samplers:
        llama_cpp.llama_sampler_chain_add(chain, sampler)
    return chain


def reference_history(chain: llama_cpp.llama_sampler_p, params: SamplingParams, prompt: list[int]) -> None:
    last_n = CONTEXT if params.repeat_last_n < 0 else params.repeat_last_n
    for token in prompt[-last_n:] if last_n > 0 else []:
        llama_cpp.llama_sampler_accept(chain, token)


GREEDY = [
    SamplingParams(temperature=0, repeat_penalty=1.1),
    SamplingParams(temperature=0, repeat_penalty=1.3),
    SamplingParams(temperature=0, repeat_penalty=1.3, repeat_last_n=-1),
    SamplingParams(temperature=0, repeat_penalty=1.3, repeat_last_n=0),
    SamplingParams(temperature=0, repeat_penalty=1.0),
    SamplingParams(temperature=0, repeat_penalty=1.0, frequency_penalty=0.7, presence_penalty=0.4),
    SamplingParams(temperature=0, repeat_penalty=0.8, frequency_penalty=-0.5, presence_penalty=-0.3),
]
SAMPLED = [
    SamplingParams(temperature=0.8, top_k=40, top_p=0.9, repeat_penalty=1.1, seed=7),
    SamplingParams(temperature=1.2, top_k=40, top_p=0.95, min_p=0.05, repeat_penalty=1.3, repeat_last_n=-1, seed=8),
    SamplingParams(temperature=0.9, top_k=200, typical_p=0.9, frequency_penalty=0.5, presence_penalty=0.5, seed=9),
    SamplingParams(temperature=0.8, top_k=0, repeat_penalty=1.1, seed=10),  # top_k off: the full path
    SamplingParams(temperature=0.8, top_k=40, repeat_penalty=0.9, seed=11),  # raises logits: the full path
]


@dataclass
class Model:
    model: llama_cpp.llama_model_p
    ctx: llama_cpp.llama_context_p
    vocab: llama_cpp.llama_vocab_p
    n_vocab: int

    def decode(self, tokens: list[int]) -> None:
        array = (llama_cpp.llama_token * len(tokens))(*tokens)
        assert llama_cpp.llama_decode(self.ctx, llama_cpp.llama_batch_get_one(array, len(tokens))) == 0


@pytest.fixture(scope="module")
def real(smollm2_gguf: Path) -> Iterator[Model]:
    llama_cpp.llama_backend_init()
    model = llama_cpp.llama_model_load_from_file(str(smollm2_gguf).encode(), llama_cpp.llama_model_default_params())
    assert model
    params = llama_cpp.llama_context_default_params()
    params.n_ctx, params.n_threads, params.n_threads_batch = CONTEXT, 1, 1
    ctx = llama_cpp.llama_init_from_model(model, params)
    assert ctx
    vocab = llama_cpp.llama_model_get_vocab(model)
    yield Model(model, ctx, vocab, llama_cpp.llama_vocab_n_tokens(vocab))
    llama_cpp.llama_free(ctx)
    llama_cpp.llama_model_free(model)


PROMPT = "<|im_start|>user\nWrite a story about a dragon who repeats himself.<|im_end|>\n<|im_start|>assistant\n"


@pytest.mark.parametrize("params", GREEDY + SAMPLED, ids=repr)
def test_the_chain_gives_the_old_chains_tokens_on_a_real_generation(real: Model, params: SamplingParams) -> None:
    llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(real.ctx), True)
    prompt = tokenize(real.vocab, PROMPT, add_special=False, parse_special=True)
    reference = reference_chain(params, n_vocab=real.n_vocab, history=CONTEXT)
    reference_history(reference, params, prompt)
    chain = SamplerChain.build(params, n_vocab=real.n_vocab, history=CONTEXT)
    chain.accept_history(prompt)
    shortcuts = 0
    try:
        real.decode(prompt)
        for _ in range(32):
            expected = int(llama_cpp.llama_sampler_sample(reference, real.ctx, -1))
            if chain.shortcut is not None:  # count the steps it took (without changing them)
                probe = llama_cpp.llama_sampler_clone(chain.handle)
                shortcuts += chain.shortcut.sample(probe, real.ctx, -1) is not None
                llama_cpp.llama_sampler_free(probe)
            got = chain.sample(real.ctx, -1)
            assert got == expected, (got, expected, shortcuts, _)
            if llama_cpp.llama_vocab_is_eog(real.vocab, expected):
                break
            real.decode([expected])
    finally:
        chain.free()
        llama_cpp.llama_sampler_free(reference)
    exact_shortcut = params.temperature <= 0 or (params.top_k > 0 and params.repeat_penalty >= 1.0)
    assert (shortcuts > 0) == exact_shortcut


def full_path(chain: llama_cpp.llama_sampler_p, logits: npt.NDArray[np.float32]) -> int:
    """What llama_sampler_sample does with a context's logits, with these."""
    data = np.zeros(len(logits), dtype=_TOKEN_DATA)
    data["id"] = np.arange(len(logits))
    data["logit"] = logits
    array = llama_cpp.llama_token_data_array(
        data=data.ctypes.data_as(llama_cpp.llama_token_data_p), size=len(logits), selected=-1, sorted=False
    )
    llama_cpp.llama_sampler_apply(chain, ctypes.byref(array))
    token = int(data["id"][array.selected])
    llama_cpp.llama_sampler_accept(chain, token)
    return token


def made_up_logits(rng: np.random.Generator, n_vocab: int, kind: str) -> npt.NDArray[np.float32]:
    logits = rng.normal(0.0, 3.0, n_vocab).astype(np.float32)
    if kind == "coarse":  # a few dozen distinct values: equal logits everywhere, the top included
        logits = np.round(logits * 2) / 2
    elif kind == "plateau":  # the top values all equal
        logits[rng.choice(n_vocab, 60, replace=False)] = 12.0
    elif kind == "masked":  # most of the vocabulary impossible, as under a logit bias
        logits[rng.random(n_vocab) < 0.995] = -np.inf
    return logits


@pytest.mark.parametrize("n_vocab", [49152, 5003])  # the default model's; one that fills no whole column
@pytest.mark.parametrize("kind", ["plain", "coarse", "plateau", "masked"])
@pytest.mark.parametrize("params", GREEDY + SAMPLED[:3], ids=repr)
def test_the_shortcut_agrees_or_steps_aside_on_equal_logits(n_vocab: int, kind: str, params: SamplingParams) -> None:
    rng = np.random.default_rng(n_vocab + len(kind))
    reference = reference_chain(params, n_vocab=n_vocab, history=CONTEXT)
    chain = SamplerChain.build(params, n_vocab=n_vocab, history=CONTEXT)
    prompt = [int(t) for t in rng.integers(0, 200, 80)]  # a small alphabet: repeats in the window
    reference_history(reference, params, prompt)
    chain.accept_history(prompt)
    assert chain.shortcut is not None
    taken = 0
    try:
        for _ in range(40):
            logits = made_up_logits(rng, n_vocab, kind)
            logits[rng.integers(0, 200, 30)] += 4.0  # the window's tokens among the likeliest
            untouched = logits.copy()
            expected = full_path(reference, logits)
            token = chain.shortcut.choose(chain.handle, logits)
            taken += token is not None
            if token is None:
                token = full_path(chain.handle, logits)
            assert token == expected
            if chain.window is not None:  # None: the penalties are off
                chain.window.push(token)
            np.testing.assert_array_equal(logits, untouched)  # logprobs read them after
    finally:
        chain.free()
        llama_cpp.llama_sampler_free(reference)
    # Greedy always can; top-k on a large vocabulary without equal logits at the top too.
    if params.temperature <= 0 or (kind == "plain" and n_vocab == 49152):
        assert taken > 0


def test_greedy_leaves_nan_logits_to_llama_cpp() -> None:
    chain = SamplerChain.build(SamplingParams(temperature=0), n_vocab=100, history=CONTEXT)
    try:
        logits = np.zeros(100, dtype=np.float32)
        logits[3] = np.nan
        assert chain.shortcut is not None
        assert chain.shortcut.choose(chain.handle, logits) is None
    finally:
        chain.free()


def test_the_window_counts_the_last_n_tokens() -> None:
    window = PenaltyWindow(3)
    for token in [5, 5, 7, 9, 5, 9]:
        window.push(token)
    assert window.counts == {5: 1, 9: 2}
    assert sorted(window.ids().tolist()) == [5, 9]
