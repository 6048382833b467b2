"""Logprobs through the real server and model, with the real openai and ollama clients.

One entry per completion token (len == usage.completion_tokens), every logprob <= 0, the top
alternatives sorted most likely first and as many as asked; the numbers are the model's own
(log-softmax of the raw logits), so at temperature 0 the chosen token is the top-1 alternative
unless a repeat penalty (on by default) pushed that one down.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import ollama
import openai
import pytest
from tests.conftest import DEFAULT_MODEL

MODEL = DEFAULT_MODEL
MESSAGES = [{"role": "user", "content": "Name three colours."}]
PROMPT_TEXT = "You are a helpful AI assistant named SmolLM, trained by Hugging Face user Name three colours."


@pytest.fixture(scope="module")
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url("/v1"), api_key="unused", max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def oll(server) -> ollama.Client:
    return ollama.Client(host=server.base_url, timeout=120)


def check_chat_entries(entries: list[Any], completion_tokens: int, top: int, *, seen: str = "") -> None:
    """The OpenAI chat shape: token, logprob, bytes, top_logprobs."""
    assert len(entries) == completion_tokens
    for entry in entries:
        assert entry.logprob <= 0.0
        assert entry.token == bytes(entry.bytes).decode("utf-8", errors="replace")
        assert len(entry.top_logprobs) == top
        values = [t.logprob for t in entry.top_logprobs]
        assert values == sorted(values, reverse=True) and all(v <= 0.0 for v in values)
        if top:
            best = entry.top_logprobs[0]
            # Greedy takes the raw top-1, unless the repeat penalty lowered a token already seen.
            assert entry.token == best.token or best.token.strip() in seen, (entry.token, best.token)
            same = [t for t in entry.top_logprobs if t.token == entry.token]
            if same:
                assert same[0].logprob == pytest.approx(entry.logprob)
        seen += entry.token


def test_chat_logprobs_whole_and_streamed(client: openai.OpenAI) -> None:
    whole = client.chat.completions.create(
        model=MODEL, messages=MESSAGES, temperature=0, max_tokens=8, logprobs=True, top_logprobs=3
    )
    content = whole.choices[0].logprobs.content
    check_chat_entries(content, whole.usage.completion_tokens, 3, seen=PROMPT_TEXT)
    assert "".join(e.token for e in content) == whole.choices[0].message.content

    stream = client.chat.completions.create(
        model=MODEL,
        messages=MESSAGES,
        temperature=0,
        max_tokens=8,
        logprobs=True,
        top_logprobs=3,
        stream=True,
        stream_options={"include_usage": True},
    )
    streamed: list[Any] = []
    text, usage = "", None
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            text += choice.delta.content or ""
            if choice.logprobs is not None:
                streamed.extend(choice.logprobs.content)
    assert usage is not None
    check_chat_entries(streamed, usage.completion_tokens, 3, seen=PROMPT_TEXT)
    assert text == whole.choices[0].message.content
    assert [e.token for e in streamed] == [e.token for e in content]
    assert [e.logprob for e in streamed] == pytest.approx([e.logprob for e in content], abs=1e-3)


def test_chat_top_logprobs_zero_and_off(client: openai.OpenAI) -> None:
    bare = client.chat.completions.create(
        model=MODEL, messages=MESSAGES, temperature=0, max_tokens=4, logprobs=True, top_logprobs=0
    )
    check_chat_entries(bare.choices[0].logprobs.content, bare.usage.completion_tokens, 0)
    off = client.chat.completions.create(model=MODEL, messages=MESSAGES, temperature=0, max_tokens=4)
    assert off.choices[0].logprobs is None


def test_completions_legacy_shape(client: openai.OpenAI) -> None:
    prompt = "The capital of France is"
    reply = client.completions.create(model=MODEL, prompt=prompt, temperature=0, max_tokens=6, logprobs=2)
    choice = reply.choices[0]
    lp = choice.logprobs
    n = reply.usage.completion_tokens
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset) == n
    assert "".join(lp.tokens) == choice.text
    assert all(v <= 0.0 for v in lp.token_logprobs)
    for top in lp.top_logprobs:
        assert len(top) == 2 and all(v <= 0.0 for v in top.values())
        assert list(top.values()) == sorted(top.values(), reverse=True)  # most likely first
    assert lp.text_offset[0] == 0
    assert lp.text_offset == [sum(len(t) for t in lp.tokens[:i]) for i in range(n)]

    streamed_tokens: list[str] = []
    for chunk in client.completions.create(
        model=MODEL, prompt=prompt, temperature=0, max_tokens=6, logprobs=2, stream=True
    ):
        if chunk.choices and chunk.choices[0].logprobs is not None:
            streamed_tokens.extend(chunk.choices[0].logprobs.tokens)
    assert streamed_tokens == lp.tokens


def check_ollama_entries(entries: Any, count: int, top: int) -> None:
    assert entries is not None and len(entries) == count
    for entry in entries:
        assert entry.logprob <= 0.0
        values = [t.logprob for t in entry.top_logprobs]
        assert len(values) == top and values == sorted(values, reverse=True)
        # repeat_penalty 1: greedy is the raw top-1.
        assert (entry.token, entry.logprob) == (entry.top_logprobs[0].token, pytest.approx(values[0]))


GREEDY = {"temperature": 0, "num_predict": 8, "repeat_penalty": 1.0}


def test_ollama_chat_and_generate(oll: ollama.Client) -> None:
    chat = oll.chat(model=MODEL, messages=MESSAGES, options=GREEDY, logprobs=True, top_logprobs=2)
    check_ollama_entries(chat.logprobs, chat.eval_count, 2)
    assert "".join(e.token for e in chat.logprobs) == chat.message.content

    streamed: list[Any] = []
    count = 0
    for part in oll.chat(model=MODEL, messages=MESSAGES, options=GREEDY, logprobs=True, top_logprobs=2, stream=True):
        streamed.extend(part.logprobs or [])
        if part.done:
            count = part.eval_count
    check_ollama_entries(streamed, count, 2)
    assert [e.token for e in streamed] == [e.token for e in chat.logprobs]

    gen = oll.generate(model=MODEL, prompt="Why is the sky blue?", options=GREEDY, logprobs=True, top_logprobs=2)
    check_ollama_entries(gen.logprobs, gen.eval_count, 2)
    assert "".join(e.token for e in gen.logprobs) == gen.response
    plain = oll.generate(model=MODEL, prompt="Why is the sky blue?", options=GREEDY)
    assert plain.logprobs is None and plain.response == gen.response


@pytest.mark.slow  # a server of its own
def test_inprocess_engine_gives_the_same_entries(server_factory, fresh_home: Path, client: openai.OpenAI) -> None:
    other = server_factory(fresh_home, EMBER_ENGINE="inprocess", EMBER_NUM_CTX="1024")
    inproc = openai.OpenAI(base_url=other.url("/v1"), api_key="unused", max_retries=0, timeout=120)
    ask: dict[str, Any] = {
        "model": MODEL,
        "messages": MESSAGES,
        "temperature": 0,
        "max_tokens": 6,
        "logprobs": True,
        "top_logprobs": 3,
    }
    theirs = inproc.chat.completions.create(**ask)
    ours = client.chat.completions.create(**ask)
    content = theirs.choices[0].logprobs.content
    check_chat_entries(content, theirs.usage.completion_tokens, 3, seen=PROMPT_TEXT)
    assert [e.token for e in content] == [e.token for e in ours.choices[0].logprobs.content]
    # Not the same numbers: the worker uses flash attention and the in-process Llama does not, which
    # moves SmolLM2's logits by up to ~0.5 (see engine/worker.py); the same tokens all the same.
    theirs_lps = [e.logprob for e in content]
    ours_lps = [e.logprob for e in ours.choices[0].logprobs.content]
    assert theirs_lps == pytest.approx(ours_lps, abs=0.5)
