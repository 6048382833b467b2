"""Each penalty and filter moves the real model's output the way it should, through the server.

Greedy decoding (temperature 0) makes every answer fixed, so a change in the text is the
penalty's doing. The loop: after "Repeat after me: hello hello ..." the model says " hello" for
as long as it may, unless something pushes the repeated token down. Filters (top_k, min_p) are
shown at a high temperature: narrowed to one candidate, sampling must give the greedy answer.
"""

from __future__ import annotations

from typing import Any

import ollama
import openai
import pytest

MODEL = "smollm2:135m"
N = 32  # tokens per answer: the loop fills them all with " hello"
LOOP_5 = "Repeat after me: hello hello hello hello hello"
LOOP_20 = "Repeat after me:" + " hello" * 20  # a loop that ember's default repeat penalty does not break


@pytest.fixture(scope="module")
def oll(server) -> ollama.Client:
    return ollama.Client(host=server.base_url, timeout=120)


@pytest.fixture(scope="module")
def oai(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url("/v1"), api_key="unused", max_retries=0)


def raw(oll: ollama.Client, prompt: str, **options: Any) -> str:
    """A greedy raw continuation with Ollama's option names (ember's defaults for the rest)."""
    reply = oll.generate(model=MODEL, prompt=prompt, raw=True,
                         options={"temperature": 0, "num_predict": N, **options})
    return reply.response


def hellos(text: str) -> int:
    return text.count("hello")


def test_repeat_penalty_breaks_the_loop(oll: ollama.Client) -> None:
    looping = raw(oll, LOOP_5, repeat_penalty=1.0)  # 1.0: no penalty
    assert looping == " hello" * N
    assert hellos(raw(oll, LOOP_5)) == 0  # ember's default, 1.1, already breaks this one
    assert hellos(raw(oll, LOOP_5, repeat_penalty=1.5)) == 0
    assert hellos(raw(oll, LOOP_5, repeat_penalty=1.05)) == N  # too weak for it


def test_repeat_last_n_is_the_window_the_penalty_sees(oll: ollama.Client) -> None:
    unpenalised = raw(oll, LOOP_5, repeat_penalty=1.0)
    # 0: look back on nothing, which turns the penalty off.
    assert raw(oll, LOOP_5, repeat_penalty=1.5, repeat_last_n=0) == unpenalised
    # -1: the whole context (Ollama's meaning); 1: only the last token, still a " hello".
    assert hellos(raw(oll, LOOP_5, repeat_penalty=1.5, repeat_last_n=-1)) == 0
    assert hellos(raw(oll, LOOP_5, repeat_penalty=1.5, repeat_last_n=1)) <= 2


def test_presence_and_frequency_penalties_push_repeats_down(oll: ollama.Client) -> None:
    # Without the repeat penalty, so only the penalty under test acts.
    assert hellos(raw(oll, LOOP_5, repeat_penalty=1.0)) == N
    assert hellos(raw(oll, LOOP_5, repeat_penalty=1.0, presence_penalty=4.0)) == 0
    assert hellos(raw(oll, LOOP_5, repeat_penalty=1.0, frequency_penalty=1.0)) <= 1
    # The frequency penalty grows with each repeat, the presence penalty does not: at the same
    # strength the first breaks the loop sooner.
    by_frequency = hellos(raw(oll, LOOP_5, repeat_penalty=1.0, frequency_penalty=0.5))
    by_presence = hellos(raw(oll, LOOP_5, repeat_penalty=1.0, presence_penalty=0.5))
    assert by_frequency < by_presence
    # Negative values reward repeats: they undo the default repeat penalty's break.
    assert hellos(raw(oll, LOOP_5)) == 0
    assert raw(oll, LOOP_5, presence_penalty=-1.0) == " hello" * N
    assert raw(oll, LOOP_5, frequency_penalty=-0.5) == " hello" * N


def test_openai_penalties_act_like_ollamas(oai: openai.OpenAI, oll: ollama.Client) -> None:
    """OpenAI's presence_penalty and frequency_penalty are Ollama's: the same sampler, the same text."""

    def complete(prompt: str, **penalties: float) -> str:
        reply = oai.completions.create(model=MODEL, prompt=prompt, temperature=0, max_tokens=N, **penalties)
        text = reply.choices[0].text
        # Unset options take the same defaults in both protocols, so the answers match exactly.
        assert text == raw(oll, prompt, **penalties), penalties
        return text

    assert complete(LOOP_20) == " hello" * N
    assert hellos(complete(LOOP_20, presence_penalty=2.0)) <= 1
    assert hellos(complete(LOOP_20, frequency_penalty=2.0)) <= 1
    assert hellos(complete(LOOP_5)) == 0
    assert complete(LOOP_5, presence_penalty=-2.0) == " hello" * N
    assert complete(LOOP_5, frequency_penalty=-2.0) == " hello" * N


QUESTION = "Write one sentence about the sea."
HOT = {"temperature": 1.5, "num_predict": 24}
SEEDS = (1, 2, 3)


@pytest.fixture(scope="module")
def greedy(oll: ollama.Client) -> str:
    return oll.generate(model=MODEL, prompt=QUESTION, options={"temperature": 0, "num_predict": 24}).response


def hot(oll: ollama.Client, seed: int, **options: Any) -> str:
    return oll.generate(model=MODEL, prompt=QUESTION, options={**HOT, "seed": seed, **options}).response


def test_sampling_hot_strays_from_greedy(oll: ollama.Client, greedy: str) -> None:
    # The control for the two below: at this temperature the default filters let other words in.
    assert all(hot(oll, seed) != greedy for seed in SEEDS)


def test_top_k_one_is_greedy(oll: ollama.Client, greedy: str) -> None:
    assert [hot(oll, seed, top_k=1) for seed in SEEDS] == [greedy] * len(SEEDS)


def test_min_p_one_is_greedy(oll: ollama.Client, greedy: str) -> None:
    # min_p keeps tokens at least min_p times as likely as the best: at 1, only the best.
    assert [hot(oll, seed, min_p=1.0) for seed in SEEDS] == [greedy] * len(SEEDS)


def test_openai_api_takes_llama_servers_sampling_extensions(oai: openai.OpenAI) -> None:
    """top_k, min_p, repeat_penalty (and vLLM's repetition_penalty), repeat_last_n on /v1 mean what
    they mean in Ollama's options: the same sampler, the same text."""

    def complete(prompt: str, max_tokens: Any = N, **extra: Any) -> str:
        return oai.completions.create(
            model=MODEL, prompt=prompt, max_tokens=max_tokens, extra_body=extra
        ).choices[0].text

    assert complete(LOOP_5, temperature=0, repeat_penalty=1.0) == " hello" * N
    assert complete(LOOP_5, temperature=0, repetition_penalty=1.0) == " hello" * N
    assert complete(LOOP_5, temperature=0, repeat_penalty=1.5, repeat_last_n=0) == " hello" * N

    def chat(**extra: Any) -> str:
        messages: Any = [{"role": "user", "content": QUESTION}]
        reply = oai.chat.completions.create(model=MODEL, messages=messages, max_tokens=24, extra_body=extra)
        return reply.choices[0].message.content or ""

    cold = chat(temperature=0)
    assert all(chat(temperature=1.5, seed=seed) != cold for seed in SEEDS)  # the control
    for name, value in (("top_k", 1), ("min_p", 1.0)):
        answers = [chat(temperature=1.5, seed=seed, **{name: value}) for seed in SEEDS]
        assert answers == [cold] * len(SEEDS), name
    with pytest.raises(openai.BadRequestError, match="one setting"):
        complete(LOOP_5, repeat_penalty=1.0, repetition_penalty=1.2)
    with pytest.raises(openai.BadRequestError, match="top_k"):
        complete(LOOP_5, top_k=-1)
