"""The OpenAI API, driven by the official openai client against the real server and model."""

from __future__ import annotations

import base64
import struct

import openai
import pytest

MODEL = "smollm2:135m"


@pytest.fixture(scope="module")
def client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url("/v1"), api_key="unused", max_retries=0, timeout=120)


def test_models_list_and_get(client: openai.OpenAI) -> None:
    ids = [m.id for m in client.models.list()]
    assert MODEL in ids
    model = client.models.retrieve(MODEL)
    assert model.id == MODEL and model.owned_by == "ember"


def test_chat_answers_with_exact_usage(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "What is the capital of France?"}],
        temperature=0, max_tokens=48,
    )
    text = reply.choices[0].message.content
    assert "Paris" in text
    assert reply.choices[0].message.role == "assistant"
    assert reply.choices[0].finish_reason in ("stop", "length")
    assert reply.usage.prompt_tokens > 10
    assert 0 < reply.usage.completion_tokens <= 48
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens


def test_chat_max_tokens_gives_length(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Write a long story about a dragon."}],
        temperature=0, max_completion_tokens=5,
    )
    assert reply.choices[0].finish_reason == "length"
    assert reply.usage.completion_tokens == 5


def test_chat_stream_matches_non_stream_and_reports_usage(client: openai.OpenAI) -> None:
    messages = [{"role": "user", "content": "Name three colours."}]
    whole = client.chat.completions.create(model=MODEL, messages=messages, temperature=0, max_tokens=32)
    stream = client.chat.completions.create(model=MODEL, messages=messages, temperature=0, max_tokens=32,
                                            stream=True, stream_options={"include_usage": True})
    pieces, finish, usage, roles = [], None, None, []
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            if choice.delta.role:
                roles.append(choice.delta.role)
            if choice.delta.content:
                pieces.append(choice.delta.content)
            if choice.finish_reason:
                finish = choice.finish_reason
    assert roles == ["assistant"]
    assert "".join(pieces) == whole.choices[0].message.content
    assert len(pieces) > 1
    assert finish == whole.choices[0].finish_reason
    assert usage is not None and usage.completion_tokens == whole.usage.completion_tokens
    assert usage.prompt_tokens == whole.usage.prompt_tokens


def test_stop_string_cuts_text(client: openai.OpenAI) -> None:
    messages = [{"role": "user", "content": "Count from one to ten in words."}]
    free = client.chat.completions.create(model=MODEL, messages=messages, temperature=0, max_tokens=40)
    text = free.choices[0].message.content
    # A stop string from the middle of the free answer, likely spanning tokens.
    stop = text[len(text) // 2: len(text) // 2 + 3]
    stopped = client.chat.completions.create(model=MODEL, messages=messages, temperature=0,
                                             max_tokens=40, stop=[stop, "\u0000never"])
    assert stopped.choices[0].message.content == text[: text.find(stop)]
    assert stopped.choices[0].finish_reason == "stop"


def test_seed_makes_sampling_repeatable(client: openai.OpenAI) -> None:
    kwargs = dict(model=MODEL, messages=[{"role": "user", "content": "Invent a name for a cat."}],
                  temperature=1.0, top_p=0.95, max_tokens=16, seed=1234)
    first = client.chat.completions.create(**kwargs).choices[0].message.content
    second = client.chat.completions.create(**kwargs).choices[0].message.content
    assert first == second


def test_penalties_are_accepted(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Say hello."}], temperature=0,
        max_tokens=8, presence_penalty=1.5, frequency_penalty=1.0,
    )
    assert reply.choices[0].message.content


def test_completions_raw_prompt(client: openai.OpenAI) -> None:
    reply = client.completions.create(model=MODEL, prompt="The capital of France is", max_tokens=8,
                                      temperature=0)
    assert "Paris" in reply.choices[0].text
    assert reply.usage.completion_tokens <= 8


def test_completions_stream(client: openai.OpenAI) -> None:
    chunks = list(client.completions.create(model=MODEL, prompt="One, two, three,", max_tokens=10,
                                            temperature=0, stream=True))
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text.strip()
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")


def test_embeddings_float_and_base64(client: openai.OpenAI) -> None:
    result = client.embeddings.create(model=MODEL, input=["the cat sat", "a dog barked"])
    assert [d.index for d in result.data] == [0, 1]
    vec = result.data[0].embedding
    assert len(vec) == 576
    assert abs(sum(x * x for x in vec) - 1.0) < 1e-3
    assert result.usage.prompt_tokens > 0
    raw = client.embeddings.with_raw_response.create(model=MODEL, input="the cat sat",
                                                     encoding_format="base64")
    encoded = raw.http_response.json()["data"][0]["embedding"]
    decoded = struct.unpack(f"<{len(vec)}f", base64.b64decode(encoded))
    assert max(abs(a - b) for a, b in zip(decoded, vec)) < 1e-5


def test_similar_texts_embed_closer(client: openai.OpenAI) -> None:
    data = client.embeddings.create(model=MODEL, input=[
        "I love my cat", "I adore my kitten", "Quarterly tax filing deadlines"]).data
    a, b, c = (d.embedding for d in data)
    dot = lambda x, y: sum(p * q for p, q in zip(x, y))  # noqa: E731
    assert dot(a, b) > dot(a, c)


def test_unknown_model_is_404_model_not_found(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="nope:1b", messages=[{"role": "user", "content": "hi"}])
    assert info.value.body["code"] == "model_not_found"
    assert "nope:1b" in info.value.body["message"]


def test_usage_reports_cached_prompt_tokens(client: openai.OpenAI) -> None:
    system = "You are a careful assistant. " * 40
    ask = lambda q: client.chat.completions.create(  # noqa: E731
        model=MODEL, temperature=0, max_tokens=4,
        messages=[{"role": "system", "content": system}, {"role": "user", "content": q}])
    ask("First question?")
    second = ask("Second question?")
    cached = second.usage.prompt_tokens_details.cached_tokens
    assert 200 < cached < second.usage.prompt_tokens


def test_completions_with_several_prompts_and_n(client: openai.OpenAI) -> None:
    prompts = ["The capital of France is", "One, two, three,"]
    alone = [client.completions.create(model=MODEL, prompt=p, max_tokens=6, temperature=0) for p in prompts]
    reply = client.completions.create(model=MODEL, prompt=prompts, max_tokens=6, temperature=0, n=2)
    assert [c.index for c in reply.choices] == [0, 1, 2, 3]
    assert [c.text for c in reply.choices] == [alone[0].choices[0].text] * 2 + [alone[1].choices[0].text] * 2
    assert reply.usage.prompt_tokens == sum(a.usage.prompt_tokens for a in alone)
    assert reply.usage.completion_tokens == 2 * sum(a.usage.completion_tokens for a in alone)
