"""An Anthropic client through the gateway's routes: to the session's second ember over the
OpenAI kind (a real model), and to the fake upstream over the OpenAI and Ollama kinds (scripted
tool calls, faults; each fault on a model name of its own, so its target's breaker opens
alone). The gateway server requires keys, so x-api-key and Bearer auth and the
Anthropic shape of the guard's refusals are checked on the way."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai
import pytest

from tests.conftest import DEFAULT_MODEL, ServerHandle, start_server
from tests.gateway.conftest import UpstreamHandle, write_config
from tests.guard import make_key

NODE = f"nodev1/{DEFAULT_MODEL}"
HI: Any = [{"role": "user", "content": "What is the capital of France?"}]
WEATHER: Any = {
    "name": "weather",
    "description": "The weather in a city",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}


@pytest.fixture(scope="module")
def keys(logs: Path) -> dict[str, str]:
    home = logs / "anthropic-gateway-home"
    home.mkdir()
    return {"home": str(home), "chat": make_key(home, "chatter"), "models": make_key(home, "lister", "models")}


@pytest.fixture(scope="module")
def gateway(fake: UpstreamHandle, server: ServerHandle, logs: Path, keys: dict[str, str]) -> Iterator[ServerHandle]:
    config = write_config(
        logs,
        f"""
[[providers]]
name = "fake"
kind = "openai"
base_url = "{fake.v1}"

[[providers]]
name = "fakeollama"
kind = "ollama"
base_url = "{fake.url}"

[[providers]]
name = "nodev1"
kind = "openai"
base_url = "{server.base_url}/v1"

[[routes]]
model = "smart"
targets = ["nodev1/{DEFAULT_MODEL}"]
""",
    )
    handle = start_server(Path(keys["home"]), logs, EMBER_CONFIG=str(config), EMBER_AUTH="required",
                          EMBER_MAX_TOKENS_LIMIT="1000")
    try:
        yield handle
    finally:
        handle.stop()


@pytest.fixture
def client(gateway: ServerHandle, keys: dict[str, str], clean_fake: None) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=gateway.url(""), api_key=keys["chat"], max_retries=0, timeout=120)


def script(fake: UpstreamHandle, **fields: Any) -> None:
    httpx.post(fake.url + "/_script", json=fields, timeout=5).raise_for_status()


def last_body(fake: UpstreamHandle) -> dict[str, Any]:
    return httpx.get(fake.url + "/_last", timeout=5).json()["body"]


def test_a_real_model_behind_an_openai_kind_route_answers_as_it_does_directly(
    client: anthropic.Anthropic, server: ServerHandle
) -> None:
    direct = openai.OpenAI(base_url=server.url("/v1"), api_key="x", max_retries=0).chat.completions.create(
        model=DEFAULT_MODEL, messages=HI, max_tokens=16, temperature=0
    )
    for model in ("smart", NODE):
        reply = client.messages.create(model=model, max_tokens=16, messages=HI, extra_body={"temperature": 0})
        assert reply.content[0].text == direct.choices[0].message.content
        assert reply.usage.input_tokens + reply.usage.cache_read_input_tokens == direct.usage.prompt_tokens
        assert reply.usage.output_tokens == direct.usage.completion_tokens
        # Exact through a route too: one generated token's usage (the OpenAI kind has no count endpoint).
        assert client.messages.count_tokens(model=model, messages=HI).input_tokens == direct.usage.prompt_tokens
    with client.messages.stream(model="smart", max_tokens=16, messages=HI, extra_body={"temperature": 0}) as stream:
        assert stream.get_final_message().content[0].text == direct.choices[0].message.content


def test_scripted_tool_calls_from_an_openai_upstream_come_back_as_tool_use(
    client: anthropic.Anthropic, fake: UpstreamHandle
) -> None:
    script(fake, text="Let me look.", tool_calls=[{"name": "weather", "arguments": {"city": "Oslo"}}], fragments=3)
    ask: Any = {"model": "fake/gpt-test", "max_tokens": 50, "messages": HI, "tools": [WEATHER],
                "tool_choice": {"type": "tool", "name": "weather", "disable_parallel_tool_use": True}}
    reply = client.messages.create(**ask)
    sent = last_body(fake)
    assert sent["tools"][0]["function"]["name"] == "weather"
    assert sent["tool_choice"] == {"type": "function", "function": {"name": "weather"}}
    assert sent["parallel_tool_calls"] is False
    assert reply.stop_reason == "tool_use"
    assert [b.type for b in reply.content] == ["text", "tool_use"]
    assert reply.content[0].text == "Let me look."
    call = reply.content[1]
    assert call.name == "weather" and call.input == {"city": "Oslo"} and call.id.startswith("toolu_")
    with client.messages.stream(**ask) as stream:
        fragments = [e.partial_json for e in stream if e.type == "input_json"]
        final = stream.get_final_message()
    assert len(fragments) == 3 and json.loads("".join(fragments)) == {"city": "Oslo"}
    assert [b.model_dump(exclude={"id"}) for b in final.content] == [
        b.model_dump(exclude={"id"}) for b in reply.content
    ]
    # The tool_result goes back to the upstream as OpenAI's tool message, answering the call's id.
    script(fake, text="Sunny.")
    history = [*HI, {"role": "assistant", "content": [b.model_dump() for b in reply.content]},
               {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call.id, "content": "sunny"}]}]
    after = client.messages.create(model="fake/gpt-test", max_tokens=20, messages=history, tools=[WEATHER])
    assert after.content[0].text == "Sunny." and after.stop_reason == "end_turn"
    sent = last_body(fake)["messages"]
    assert sent[1]["tool_calls"][0]["id"] == call.id
    assert sent[2] == {"role": "tool", "content": "sunny", "tool_call_id": call.id} or (
        sent[2]["role"] == "tool" and sent[2]["tool_call_id"] == call.id and sent[2]["content"] == "sunny"
    )


def test_an_ollama_upstream_and_images_on_a_route(client: anthropic.Anthropic, fake: UpstreamHandle) -> None:
    reply = client.messages.create(model="fakeollama/llama3", max_tokens=3, messages=HI)
    assert reply.content[0].text == "tok0 tok1 tok2 " and reply.stop_reason == "max_tokens"
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}}
    client.messages.create(model="fake/gpt-test", max_tokens=2,
                           messages=[{"role": "user", "content": [{"type": "text", "text": "What is it?"}, image]}])
    parts = last_body(fake)["messages"][0]["content"]
    assert {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}} in [
        {k: v for k, v in p.items() if k in ("type", "image_url")} for p in parts
    ]


def test_a_stream_that_breaks_midway_ends_with_an_error_event(gateway: ServerHandle, keys: dict[str, str],
                                                              fake: UpstreamHandle, clean_fake: None) -> None:
    fake.control(mode="inband", drop_after=2)
    body = {"model": "fake/breaks", "max_tokens": 8, "stream": True, "messages": HI}
    with httpx.stream("POST", gateway.url("/v1/messages"), json=body, headers={"x-api-key": keys["chat"]},
                      timeout=60) as response:
        assert response.status_code == 200
        raw = response.read().decode()
    frames = [f for f in raw.split("\n\n") if f.strip()]
    assert frames[-1].startswith("event: error\ndata: ")
    error = json.loads(frames[-1].split("data: ", 1)[1])
    assert error["type"] == "error" and error["error"]["type"] in ("api_error", "overloaded_error")
    assert "event: message_stop" not in raw
    client = anthropic.Anthropic(base_url=gateway.url(""), api_key=keys["chat"], max_retries=0)
    fake.control(mode="inband", drop_after=2)
    with pytest.raises(anthropic.APIStatusError), client.messages.stream(model="fake/breaks", max_tokens=8,
                                                                         messages=HI) as stream:
        stream.get_final_message()


def test_upstream_refusals_keep_anthropic_types_and_retry_after(client: anthropic.Anthropic,
                                                                fake: UpstreamHandle) -> None:
    fake.control(mode="error", status=429, retry_after=1)
    with pytest.raises(anthropic.RateLimitError) as limited:
        client.messages.create(model="fake/limited", max_tokens=3, messages=HI)
    assert limited.value.body["error"]["type"] == "rate_limit_error"
    assert limited.value.response.headers["retry-after"] == "1"
    fake.control(mode="error", status=500)
    with pytest.raises(anthropic.APIStatusError) as failed:
        client.messages.create(model="fake/failing", max_tokens=3, messages=HI)
    assert failed.value.status_code >= 500 and failed.value.body["type"] == "error"


def test_keys_by_x_api_key_and_bearer_and_refusals_in_anthropic_shape(
    gateway: ServerHandle, keys: dict[str, str], clean_fake: None
) -> None:
    ask: Any = {"model": "fake/gpt-test", "max_tokens": 2, "messages": HI}
    by_header = anthropic.Anthropic(base_url=gateway.url(""), api_key=keys["chat"], max_retries=0)
    assert by_header.messages.create(**ask).content[0].text == "tok0 tok1 "
    bearer = anthropic.Anthropic(base_url=gateway.url(""), auth_token=keys["chat"], max_retries=0)
    assert bearer.messages.count_tokens(model="fake/gpt-test", messages=HI).input_tokens > 0
    with pytest.raises(anthropic.AuthenticationError) as wrong:
        anthropic.Anthropic(base_url=gateway.url(""), api_key="ek-wrong", max_retries=0).messages.create(**ask)
    assert wrong.value.body == {"type": "error", "error": {"type": "authentication_error",
                                                           "message": wrong.value.body["error"]["message"]}}
    with pytest.raises(anthropic.PermissionDeniedError) as scoped:
        anthropic.Anthropic(base_url=gateway.url(""), api_key=keys["models"], max_retries=0).messages.create(**ask)
    assert scoped.value.body["error"]["type"] == "permission_error"
    response = httpx.post(gateway.url("/v1/messages/count_tokens"), json={"model": "fake/gpt-test", "messages": HI})
    assert response.status_code == 401 and response.json()["error"]["type"] == "authentication_error"


def test_the_guard_caps_max_tokens_in_anthropic_shape(client: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.BadRequestError) as capped:
        client.messages.create(model="fake/gpt-test", max_tokens=5000, messages=HI)
    assert capped.value.body["error"]["type"] == "invalid_request_error"
    assert "max_tokens 5000 is above this server's limit of 1000" in capped.value.body["error"]["message"]
