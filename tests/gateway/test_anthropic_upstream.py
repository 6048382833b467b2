"""A provider of kind anthropic, end to end: a second real ember on loopback stands in for
Anthropic's cloud (its own /v1/messages, keys required), and a gateway ember routes to it.

The real openai, ollama and anthropic clients call the gateway; what they get is compared with
what the cloud ember answers when asked directly (temperature 0: the same neutral path on both
sides, so the greedy text is the same). The faults a real ember does not make (529 with
Retry-After, an overloaded_error event, a dropped stream) come from the fake upstream's
/v1/messages (ember.bench.upstream_anthropic).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anthropic
import httpx
import ollama
import openai
import pytest
from tests.conftest import DEFAULT_MODEL, ServerHandle, free_port, start_server
from tests.gateway.conftest import UpstreamHandle, write_config

from ember.guard.keys import KeyStore, parse_scopes

pytestmark = pytest.mark.slow  # three servers: the cloud ember, the gateway and the fake upstream

PRICE_IN, PRICE_OUT = 3.0, 15.0
QUESTION: Any = [{"role": "user", "content": "Name three colours."}]
WEATHER: Any = {
    "type": "function",
    "function": {
        "name": "weather",
        "description": "The weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


@dataclass
class Cloud:
    server: ServerHandle
    key: str


@pytest.fixture(scope="module")
def cloud(model_home: Path, logs: Path) -> Iterator[Cloud]:
    """The stand-in for Anthropic: an ember with keys required, in a home of its own (the model
    hard-linked from the session's home, no state)."""
    home = logs / "cloud-home"
    shutil.copytree(model_home, home, ignore=shutil.ignore_patterns("state"), copy_function=os.link)
    store = KeyStore(home / "state" / "keys.db")
    try:
        key, _ = store.create("gateway", parse_scopes("chat,models"))
    finally:
        store.close()
    handle = start_server(home, logs, EMBER_AUTH="required")
    try:
        yield Cloud(handle, key)
    finally:
        handle.stop()


@pytest.fixture(scope="module")
def gateway(cloud: Cloud, fake: UpstreamHandle, logs: Path) -> Iterator[ServerHandle]:
    dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    config = write_config(
        logs,
        f"""
[[providers]]
name = "claude"
kind = "anthropic"
base_url = "{cloud.server.base_url}"
api_key_env = "CLOUD_KEY"
price_in = {PRICE_IN}
price_out = {PRICE_OUT}

[[providers]]
name = "wrongkey"
kind = "anthropic"
base_url = "{cloud.server.base_url}"
api_key_env = "WRONG_KEY"

[[providers]]
name = "dead"
kind = "anthropic"
base_url = "{dead}"
connect_timeout = 2

[[providers]]
name = "fakeclaude"
kind = "anthropic"
base_url = "{fake.url}"
api_key_env = "CLOUD_KEY"
anthropic_version = "2024-01-01"
default_max_tokens = 6

[[routes]]
model = "chat"
targets = ["claude/{DEFAULT_MODEL}"]

[[routes]]
model = "flaky"
targets = ["fakeclaude/m", "claude/{DEFAULT_MODEL}"]
breaker = {{ failures = 100, cooldown = 1 }}

[[routes]]
model = "badkey"
targets = ["wrongkey/{DEFAULT_MODEL}"]
retry = {{ passes = 1 }}

[[routes]]
model = "fallback"
targets = ["dead/{DEFAULT_MODEL}", "claude/{DEFAULT_MODEL}"]
""",
    )
    home = logs / "gateway-home"
    home.mkdir()
    handle = start_server(home, logs, EMBER_CONFIG=str(config), CLOUD_KEY=cloud.key, WRONG_KEY="sk-not-the-key")
    try:
        yield handle
    finally:
        handle.stop()


def openai_client(server: ServerHandle, key: str = "unused") -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url("/v1"), api_key=key, max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def direct(cloud: Cloud) -> str:
    """The cloud ember's own greedy answer to QUESTION (what every client should get through)."""
    answer = openai_client(cloud.server, cloud.key).chat.completions.create(
        model=DEFAULT_MODEL, messages=QUESTION, temperature=0, max_tokens=24
    )
    text = answer.choices[0].message.content
    assert text
    return text


# -- an OpenAI chat client -----------------------------------------------------------------------


def test_openai_chat_through_an_anthropic_target_is_the_upstreams_own_answer(gateway: ServerHandle, direct: str) -> None:
    raw = openai_client(gateway).chat.completions.with_raw_response.create(
        model="chat", messages=QUESTION, temperature=0, max_tokens=24
    )
    answer = raw.parse()
    assert raw.headers["x-ember-provider"] == "claude"
    assert answer.choices[0].message.content == direct
    assert answer.choices[0].finish_reason == "length"  # 24 tokens were not enough: max_tokens -> length
    assert answer.usage is not None
    assert answer.usage.prompt_tokens > 0 and answer.usage.completion_tokens == 24


def test_openai_chat_streams_through_an_anthropic_target(gateway: ServerHandle, direct: str) -> None:
    chunks = list(
        openai_client(gateway).chat.completions.create(
            model="chat",
            messages=QUESTION,
            temperature=0,
            max_tokens=24,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == direct
    assert len([c for c in chunks if c.choices and c.choices[0].delta.content]) > 1  # streamed, not one piece
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 24


def test_a_forced_tool_call_round_trip(gateway: ServerHandle) -> None:
    client = openai_client(gateway)
    question: Any = [{"role": "user", "content": "What is the weather in Oslo?"}]
    first = client.chat.completions.create(
        model="chat",
        messages=question,
        tools=[WEATHER],
        tool_choice={"type": "function", "function": {"name": "weather"}},
        temperature=0,
        max_tokens=60,
    )
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls"
    (call,) = choice.message.tool_calls or []
    assert call.type == "function" and call.function.name == "weather"
    assert isinstance(json.loads(call.function.arguments)["city"], str)
    assert call.id
    # Streamed, the same call comes as an id and name, then argument fragments.
    chunks = list(
        client.chat.completions.create(
            model="chat",
            messages=question,
            tools=[WEATHER],
            tool_choice="required",
            parallel_tool_calls=False,
            temperature=0,
            max_tokens=60,
            stream=True,
        )
    )
    deltas = [d for c in chunks if c.choices for d in c.choices[0].delta.tool_calls or ()]
    assert deltas[0].id and deltas[0].function and deltas[0].function.name == "weather"
    assert isinstance(json.loads("".join(d.function.arguments or "" for d in deltas if d.function))["city"], str)
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["tool_calls"]
    # The result goes back as a tool message: the upstream gets tool_use and tool_result blocks.
    history: Any = [
        *question,
        {"role": "assistant", "content": None, "tool_calls": [call.model_dump(exclude_none=True)]},
        {"role": "tool", "tool_call_id": call.id, "content": "-3 C and snowing"},
    ]
    second = client.chat.completions.create(model="chat", messages=history, temperature=0, max_tokens=20)
    assert second.choices[0].message.content
    assert second.choices[0].finish_reason in ("stop", "length")


def test_a_json_schema_format_is_answered_through_a_forced_tool(gateway: ServerHandle) -> None:
    schema = {"type": "object", "properties": {"colour": {"type": "string"}}, "required": ["colour"]}
    answer = openai_client(gateway).chat.completions.create(
        model="chat",
        messages=[{"role": "user", "content": "Pick a colour."}],
        response_format={"type": "json_schema", "json_schema": {"name": "pick", "schema": schema}},
        temperature=0,
        max_tokens=40,
    )
    assert answer.choices[0].finish_reason == "stop"
    assert isinstance(json.loads(answer.choices[0].message.content or "")["colour"], str)
    # Ollama's format (a schema) goes the same way.
    ollama_answer = ollama.Client(host=gateway.base_url, timeout=120).chat(
        model="chat",
        messages=[{"role": "user", "content": "Pick a colour."}],
        format=schema,
        options={"temperature": 0, "num_predict": 40},
    )
    assert isinstance(json.loads(ollama_answer.message.content or "")["colour"], str)


def test_logprobs_and_embeddings_are_400s_naming_what_anthropic_cannot_do(gateway: ServerHandle) -> None:
    client = openai_client(gateway)
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="chat", messages=QUESTION, logprobs=True, max_tokens=4)
    assert "logprobs" in caught.value.message
    with pytest.raises(openai.BadRequestError) as caught:
        client.embeddings.create(model="chat", input="hello")
    assert "no embeddings" in caught.value.message


def test_hints_the_api_cannot_take_are_named_in_the_dropped_fields_header(gateway: ServerHandle) -> None:
    raw = openai_client(gateway).chat.completions.with_raw_response.create(
        model="chat", messages=QUESTION, max_tokens=4, seed=7, presence_penalty=0.5
    )
    assert raw.headers["x-ember-dropped-fields"] == "seed, presence_penalty"


def test_stop_sequences_finish_as_stop_sequence(gateway: ServerHandle, direct: str) -> None:
    word = direct.split()[1]  # a word the greedy answer is sure to reach
    answer = openai_client(gateway).chat.completions.create(
        model="chat", messages=QUESTION, temperature=0, max_tokens=24, stop=[word]
    )
    assert answer.choices[0].finish_reason == "stop"
    assert answer.choices[0].message.content == direct[: direct.index(word)]
    # An Anthropic client of the gateway sees which stop sequence ended it (carried through both ways).
    claude = anthropic.Anthropic(base_url=gateway.base_url, api_key="unused", max_retries=0)
    # (this SDK's create() has no temperature argument any more: it goes as an extra field)
    greedy: Any = {"temperature": 0}
    message = claude.messages.create(
        model="chat", max_tokens=24, stop_sequences=[word], messages=QUESTION, extra_body=greedy
    )
    assert (message.stop_reason, message.stop_sequence) == ("stop_sequence", word)
    short = claude.messages.create(model="chat", max_tokens=3, messages=QUESTION, extra_body=greedy)
    assert short.stop_reason == "max_tokens" and short.usage.output_tokens == 3


def test_count_tokens_is_the_upstreams_count(gateway: ServerHandle, cloud: Cloud) -> None:
    direct = anthropic.Anthropic(base_url=cloud.server.base_url, api_key=cloud.key, max_retries=0)
    through = anthropic.Anthropic(base_url=gateway.base_url, api_key="unused", max_retries=0)
    expected = direct.messages.count_tokens(model=DEFAULT_MODEL, messages=QUESTION).input_tokens
    assert expected > 0
    assert through.messages.count_tokens(model="chat", messages=QUESTION).input_tokens == expected


# -- an Ollama client, an OpenAI Responses client ------------------------------------------------------


def test_ollama_client_through_an_anthropic_target(gateway: ServerHandle, direct: str) -> None:
    client = ollama.Client(host=gateway.base_url, timeout=120)
    answer = client.chat(model="chat", messages=QUESTION, options={"temperature": 0, "num_predict": 24})
    assert answer.message.content == direct
    assert answer.done_reason == "length"
    parts = list(
        client.chat(model="chat", messages=QUESTION, options={"temperature": 0, "num_predict": 24}, stream=True)
    )
    assert "".join(p.message.content or "" for p in parts) == direct
    # Ollama's API cannot force a call: the tools go (auto), and a call, if the model makes one, parses.
    called = client.chat(
        model="chat",
        messages=[{"role": "user", "content": "What is the weather in Oslo?"}],
        tools=[WEATHER],
        options={"temperature": 0, "num_predict": 30},
    )
    assert called.message.content or called.message.tool_calls
    for call in called.message.tool_calls or ():
        assert call.function.name == "weather" and isinstance(call.function.arguments, dict)
    generated = client.generate(model="chat", prompt="The sky is", options={"temperature": 0, "num_predict": 8})
    assert generated.response and generated.eval_count == 8


def test_responses_client_through_an_anthropic_target(gateway: ServerHandle, direct: str) -> None:
    client = openai_client(gateway)
    response = client.responses.create(
        model="chat", input=QUESTION, temperature=0, max_output_tokens=24, store=False
    )
    assert response.output_text == direct
    with client.responses.stream(
        model="chat", input=QUESTION, temperature=0, max_output_tokens=24, store=False
    ) as stream:
        streamed = "".join(e.delta for e in stream if e.type == "response.output_text.delta")
    assert streamed == direct
    called = client.responses.create(
        model="chat",
        input="What is the weather in Oslo?",
        tools=[{"type": "function", **WEATHER["function"]}],
        tool_choice="required",
        max_output_tokens=60,
        store=False,
    )
    calls = [item for item in called.output if item.type == "function_call"]
    assert calls and calls[0].name == "weather" and isinstance(json.loads(calls[0].arguments)["city"], str)


# -- keys, fallback, usage ----------------------------------------------------------------------------


def test_the_key_is_sent_as_x_api_key_and_a_wrong_one_is_the_upstreams_401(
    gateway: ServerHandle, cloud: Cloud
) -> None:
    # The cloud requires keys: every answer above came with the configured one. Its own check:
    refused = httpx.post(
        cloud.server.url("/v1/messages"),
        json={"model": DEFAULT_MODEL, "max_tokens": 4, "messages": QUESTION},
        headers={"x-api-key": "sk-not-the-key", "anthropic-version": "2023-06-01"},
        timeout=30,
    )
    assert refused.status_code == 401
    with pytest.raises(openai.APIStatusError) as caught:
        openai_client(gateway).chat.completions.create(model="badkey", messages=QUESTION, max_tokens=4)
    assert caught.value.status_code == 502
    assert "401" in caught.value.message and "wrongkey" in caught.value.message


def test_a_dead_anthropic_target_falls_back_to_the_next(gateway: ServerHandle, direct: str) -> None:
    raw = openai_client(gateway).chat.completions.with_raw_response.create(
        model="fallback", messages=QUESTION, temperature=0, max_tokens=24
    )
    assert raw.headers["x-ember-provider"] == "claude"
    assert int(raw.headers["x-ember-attempts"]) == 2
    assert raw.parse().choices[0].message.content == direct


def test_usage_rows_and_cost_for_the_anthropic_provider(gateway: ServerHandle) -> None:
    before = _provider_row(gateway)
    answer = openai_client(gateway).chat.completions.create(model="chat", messages=QUESTION, max_tokens=5)
    assert answer.usage is not None
    after = _provider_row(gateway)
    assert after["requests"] == before["requests"] + 1
    tokens_in = after["tokens_in"] - before["tokens_in"]
    tokens_out = after["tokens_out"] - before["tokens_out"]
    assert (tokens_in, tokens_out) == (answer.usage.prompt_tokens, answer.usage.completion_tokens)
    cost = (tokens_in * PRICE_IN + tokens_out * PRICE_OUT) / 1e6
    assert after["cost"] - before["cost"] == pytest.approx(cost, abs=1e-9)


def _provider_row(gateway: ServerHandle) -> dict[str, Any]:
    rows = httpx.get(gateway.url("/admin/usage"), params={"by": "provider"}, timeout=10).json()["rows"]
    return next((r for r in rows if r["provider"] == "claude"), {"requests": 0, "tokens_in": 0, "tokens_out": 0,
                                                                 "cost": 0.0})


# -- faults, from the fake upstream's /v1/messages -------------------------------------------------------


@pytest.mark.usefixtures("clean_fake")
def test_the_configured_key_version_and_default_max_tokens_are_sent(
    gateway: ServerHandle, fake: UpstreamHandle, cloud: Cloud
) -> None:
    answer = openai_client(gateway).chat.completions.create(
        model="fakeclaude/m", messages=[{"role": "system", "content": "Be brief."}, *QUESTION]
    )
    assert answer.choices[0].message.content == "tok0 tok1 tok2 tok3 tok4 tok5 "
    assert answer.choices[0].finish_reason == "length"
    last = httpx.get(fake.url + "/_last", timeout=5).json()
    assert last["path"] == "/v1/messages"
    assert last["headers"]["x-api-key"] == cloud.key
    assert last["headers"]["anthropic-version"] == "2024-01-01"
    assert "authorization" not in last["headers"]
    assert last["body"]["max_tokens"] == 6 and last["body"]["stream"] is True
    assert last["body"]["system"] == "Be brief."


@pytest.mark.usefixtures("clean_fake")
def test_text_then_tool_calls_stream_as_openai_deltas(gateway: ServerHandle, fake: UpstreamHandle) -> None:
    httpx.post(fake.url + "/_script", timeout=5, json={
        "text": "Checking.", "tool_calls": [{"name": "weather", "arguments": {"city": "Oslo"}}, {"name": "clock"}],
        "fragments": 3}).raise_for_status()
    chunks = list(openai_client(gateway).chat.completions.create(
        model="fakeclaude/m", messages=QUESTION, tools=[WEATHER], max_tokens=50, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Checking."
    deltas = [d for c in chunks if c.choices for d in c.choices[0].delta.tool_calls or ()]
    firsts = [(d.index, d.id, d.function.name if d.function else None) for d in deltas if d.id]
    assert firsts == [(0, "toolu_fake0", "weather"), (1, "toolu_fake1", "clock")]
    arguments = ["".join(d.function.arguments or "" for d in deltas if d.index == i and d.function) for i in (0, 1)]
    assert [json.loads(a) for a in arguments] == [{"city": "Oslo"}, {}]
    assert len([d for d in deltas if d.index == 0]) > 2  # the fragments came as they were sent
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


@pytest.mark.usefixtures("clean_fake")
@pytest.mark.parametrize("fault", [
    {"mode": "error", "status": 529},
    {"mode": "error", "status": 429, "retry_after": 0.2},
    {"mode": "inband", "drop_after": 0},  # an overloaded_error event before any text
    {"mode": "drop", "drop_after": 0},  # the connection closed before any text
])
def test_an_overloaded_anthropic_target_fails_over(
    gateway: ServerHandle, fake: UpstreamHandle, direct: str, fault: dict[str, Any]
) -> None:
    fake.control(times=1, **fault)
    raw = openai_client(gateway).chat.completions.with_raw_response.create(
        model="flaky", messages=QUESTION, temperature=0, max_tokens=4
    )
    assert raw.headers["x-ember-provider"] == "claude" and raw.headers["x-ember-attempts"] == "2"
    assert direct.startswith(raw.parse().choices[0].message.content or "-")
    assert fake.stats()["by_path"]["/v1/messages"] == 1


@pytest.mark.usefixtures("clean_fake")
def test_an_anthropic_400_is_the_clients_answer_with_the_upstreams_message(
    gateway: ServerHandle, fake: UpstreamHandle
) -> None:
    fake.control(mode="error", status=400)
    with pytest.raises(openai.BadRequestError) as caught:
        openai_client(gateway).chat.completions.create(model="flaky", messages=QUESTION, max_tokens=4)
    assert "fake upstream error 400" in caught.value.message
    assert fake.stats()["by_path"]["/v1/messages"] == 1  # not tried again, and no fallback


@pytest.mark.usefixtures("clean_fake")
def test_a_stream_broken_after_its_first_tokens_ends_with_an_error(
    gateway: ServerHandle, fake: UpstreamHandle
) -> None:
    fake.control(mode="inband", drop_after=2)
    text = ""
    with pytest.raises(openai.APIError) as caught:
        for chunk in openai_client(gateway).chat.completions.create(
            model="fakeclaude/m", messages=QUESTION, max_tokens=8, stream=True
        ):
            text += (chunk.choices[0].delta.content or "") if chunk.choices else ""
    assert text == "tok0 tok1 "
    assert "overloaded_error" in caught.value.message
