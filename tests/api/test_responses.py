"""The OpenAI Responses API (/v1/responses) over a real server and model, with the real openai SDK.

One server for the module, with keys required (two keys, so a response's owner can be told
from another caller) and a max_tokens cap; the mechanics are what is tested (grammars and a
forced tool_choice make the shapes certain), not what a 135M model says.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import openai
import pytest
from pydantic import BaseModel, Field

from ember.api.responses.render import StreamRenderer
from ember.engine.types import GenerationStats
from ember.errors import UpstreamError
from ember.guard import required_scope
from ember.services.types import GenerationEvent, ToolCallDelta
from tests.conftest import DEFAULT_MODEL, ServerHandle, start_server
from tests.gateway.conftest import UpstreamHandle, start_upstream, write_config
from tests.guard import copy_home, make_key

MODEL = DEFAULT_MODEL
CAP = 256  # EMBER_MAX_TOKENS_LIMIT of the module's server
WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather in a city",
    "parameters": {
        "type": "object",
        "properties": {"city": {"type": "string", "maxLength": 12}},
        "required": ["city"],
        "additionalProperties": False,
    },
}
FORCE_WEATHER = {"type": "function", "name": "get_weather"}


class Keys:
    def __init__(self, home: Path) -> None:
        self.alice = make_key(home, "alice", "chat")
        self.bob = make_key(home, "bob", "chat")
        self.embedder = make_key(home, "embedder", "embed")


@pytest.fixture(scope="module")
def env(model_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerHandle, Keys]]:
    base = tmp_path_factory.mktemp("responses")
    home = copy_home(model_home, base / "home")
    keys = Keys(home)
    handle = start_server(home, base, EMBER_AUTH="required", EMBER_MAX_TOKENS_LIMIT=str(CAP),
                          EMBER_MAX_MESSAGES="8")
    try:
        yield handle, keys
    finally:
        handle.stop()


@pytest.fixture(scope="module")
def srv(env: tuple[ServerHandle, Keys]) -> ServerHandle:
    return env[0]


@pytest.fixture(scope="module")
def keys(env: tuple[ServerHandle, Keys]) -> Keys:
    return env[1]


@pytest.fixture(scope="module")
def client(srv: ServerHandle, keys: Keys) -> openai.OpenAI:
    return openai.OpenAI(base_url=srv.url("/v1"), api_key=keys.alice, max_retries=0, timeout=120)


def raw(srv: ServerHandle, key: str, method: str, path: str, body: dict[str, Any] | None = None) -> httpx.Response:
    return httpx.request(
        method, srv.url(path), json=body, headers={"Authorization": f"Bearer {key}"}, timeout=120
    )


def post(srv: ServerHandle, key: str, body: dict[str, Any]) -> httpx.Response:
    return raw(srv, key, "POST", "/v1/responses", {"model": MODEL, **body})


# -- text -------------------------------------------------------------------------------------------


def test_create_is_the_chat_completions_answer(srv: ServerHandle, keys: Keys, client: openai.OpenAI) -> None:
    """Greedy, the same messages get the same answer on both endpoints (the same sampling
    defaults, repeat penalty included); instructions are the system message."""
    question = "Name three colours."
    response = client.responses.create(
        model=MODEL, instructions="You are terse.", input=question, temperature=0, max_output_tokens=24
    )
    chat = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "system", "content": "You are terse."}, {"role": "user", "content": question}],
        temperature=0,
        max_tokens=24,
    )
    assert response.output_text == chat.choices[0].message.content
    assert response.id.startswith("resp_") and response.object == "response"
    assert response.model == MODEL and response.instructions == "You are terse."
    assert response.temperature == 0 and response.max_output_tokens == 24 and response.store is True
    [item] = response.output
    assert item.type == "message" and item.id.startswith("msg_") and item.role == "assistant"
    assert item.content[0].type == "output_text" and item.content[0].annotations == []
    usage = response.usage
    assert usage is not None and chat.usage is not None
    assert usage.input_tokens == chat.usage.prompt_tokens and usage.output_tokens == chat.usage.completion_tokens
    assert usage.total_tokens == usage.input_tokens + usage.output_tokens
    assert usage.output_tokens_details.reasoning_tokens == 0
    # output_text is in the JSON too, not only computed by the SDK.
    body = post(srv, keys.alice, {"input": question, "instructions": "You are terse.", "temperature": 0,
                                  "max_output_tokens": 24, "store": False}).json()
    assert body["output_text"] == chat.choices[0].message.content


def test_message_items_and_content_parts(client: openai.OpenAI) -> None:
    """Input as items: typed and untyped messages, text parts, an earlier assistant turn."""
    items: Any = [
        {"role": "developer", "content": "Answer in one word."},
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Hi"}]},
        {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Hello"}]},
        {"role": "user", "content": "What is 2+2?"},
    ]
    response = client.responses.create(model=MODEL, input=items, temperature=0, max_output_tokens=8, store=False)
    assert response.status in ("completed", "incomplete") and response.output[0].type == "message"


def test_stream_is_the_created_answer(client: openai.OpenAI) -> None:
    # Short enough to end by itself: the SDK's get_final_response wants response.completed.
    kwargs: Any = {"model": MODEL, "input": "Say hello.", "temperature": 0, "max_output_tokens": 60}
    whole = client.responses.create(**kwargs, store=False)
    with client.responses.stream(**kwargs, store=False) as stream:
        events = list(stream)
        final = stream.get_final_response()
    assert whole.status == "completed" and final.output_text == whole.output_text
    assert [e.sequence_number for e in events] == list(range(len(events)))
    types = [e.type for e in events]
    assert types[:5] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        "response.output_text.delta",
    ]
    assert types[-4:] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    deltas = [e for e in events if e.type == "response.output_text.delta"]
    assert "".join(e.delta for e in deltas) == whole.output_text
    assert {e.item_id for e in deltas} == {final.output[0].id}
    assert all(e.output_index == 0 and e.content_index == 0 for e in deltas)
    assert final.id == events[0].response.id  # type: ignore[union-attr]


def test_stream_framing(srv: ServerHandle, keys: Keys) -> None:
    """SSE with named events, one JSON object each, and no [DONE]."""
    body = {"model": MODEL, "input": "Hi", "max_output_tokens": 4, "stream": True, "store": False}
    with httpx.stream("POST", srv.url("/v1/responses"), json=body, timeout=60,
                      headers={"Authorization": f"Bearer {keys.alice}"}) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        text = "".join(response.iter_text())
    frames = [f for f in text.split("\n\n") if f]
    assert "[DONE]" not in text
    for frame in frames:
        event_line, data_line = frame.split("\n")
        assert event_line.removeprefix("event: ") == json.loads(data_line.removeprefix("data: "))["type"]


def test_max_output_tokens_is_incomplete(client: openai.OpenAI) -> None:
    response = client.responses.create(model=MODEL, input="Write a long story.", max_output_tokens=3, store=False)
    assert response.status == "incomplete"
    assert response.incomplete_details is not None and response.incomplete_details.reason == "max_output_tokens"
    assert response.usage is not None and response.usage.output_tokens == 3
    with client.responses.stream(model=MODEL, input="Write a long story.", max_output_tokens=3, store=False) as s:
        last = list(s)[-1]
    assert last.type == "response.incomplete" and last.response.status == "incomplete"


def test_json_schema_format(client: openai.OpenAI) -> None:
    schema = {
        "type": "object",
        "properties": {"name": {"type": "string", "maxLength": 8}, "age": {"type": "integer"}},
        "required": ["name", "age"],
        "additionalProperties": False,
    }
    response = client.responses.create(
        model=MODEL,
        input="Make up a person.",
        text={"format": {"type": "json_schema", "name": "person", "schema": schema, "strict": True}},
        max_output_tokens=60,
        store=False,
    )
    jsonschema.validate(json.loads(response.output_text), schema)
    assert response.text is not None and response.text.format is not None
    assert response.text.format.type == "json_schema"

    class City(BaseModel):  # the SDK's parse(): a strict schema made from the model, output parsed back
        name: str = Field(max_length=10)
        population: int

    parsed = client.responses.parse(model=MODEL, input="A city, please.", text_format=City, max_output_tokens=40,
                                    store=False)
    assert isinstance(parsed.output_parsed, City)


# -- function calls -----------------------------------------------------------------------------------


def test_function_call_round_trip(client: openai.OpenAI) -> None:
    first = client.responses.create(
        model=MODEL, input="What is the weather in Paris?", tools=[WEATHER], tool_choice=FORCE_WEATHER, store=False
    )
    calls = [item for item in first.output if item.type == "function_call"]
    assert calls and first.status == "completed"
    call = calls[0]
    assert call.name == "get_weather" and call.call_id.startswith("call_") and call.id and call.id.startswith("fc_")
    assert "city" in json.loads(call.arguments)
    assert first.tools[0].name == "get_weather"  # type: ignore[union-attr]
    assert first.tool_choice.type == "function"  # type: ignore[union-attr]
    # The next request carries the call and its output, as a stateless client sends them.
    second = client.responses.create(
        model=MODEL,
        input=[
            {"role": "user", "content": "What is the weather in Paris?"},
            call.model_dump(exclude_none=True),
            {"type": "function_call_output", "call_id": call.call_id, "output": "sunny, 21 C"},
        ],
        tools=[WEATHER],
        tool_choice="none",
        max_output_tokens=16,
        store=False,
    )
    assert second.output and second.output[0].type == "message" and second.output_text


def test_allowed_tools(client: openai.OpenAI) -> None:
    """tool_choice allowed_tools: the model may call only the tools named, every tool is echoed."""
    clock = {"type": "function", "name": "get_time", "parameters": {"type": "object", "properties": {}}}
    response = client.responses.create(
        model=MODEL, input="What time is it?", tools=[WEATHER, clock], store=False,  # type: ignore[list-item]
        tool_choice={"type": "allowed_tools", "mode": "required", "tools": [{"type": "function", "name": "get_time"}]},
    )
    assert {item.name for item in response.output if item.type == "function_call"} == {"get_time"}
    assert [t.name for t in response.tools] == ["get_weather", "get_time"]  # type: ignore[union-attr]
    assert response.tool_choice.type == "allowed_tools"  # type: ignore[union-attr]


def test_stream_forced_function_call(client: openai.OpenAI) -> None:
    with client.responses.stream(
        model=MODEL, input="Weather in Rome?", tools=[WEATHER], tool_choice=FORCE_WEATHER, store=False
    ) as stream:
        events = list(stream)
        final = stream.get_final_response()
    [call] = [item for item in final.output if item.type == "function_call"]
    assert json.loads(call.arguments).keys() == {"city"}
    deltas = [e for e in events if e.type == "response.function_call_arguments.delta"]
    [done] = [e for e in events if e.type == "response.function_call_arguments.done"]
    assert "".join(e.delta for e in deltas) == done.arguments == call.arguments
    assert {e.item_id for e in deltas} == {done.item_id} == {call.id}
    added = [e for e in events if e.type == "response.output_item.added"]
    assert added[0].item.type == "function_call" and added[0].item.call_id == call.call_id  # type: ignore[union-attr]
    assert [e.sequence_number for e in events] == list(range(len(events)))


# -- stored responses ---------------------------------------------------------------------------------


def test_previous_response_id_continues_from_the_cache(client: openai.OpenAI) -> None:
    first = client.responses.create(
        model=MODEL, input="My name is Ada. Say hi.", temperature=0, max_output_tokens=12
    )
    second = client.responses.create(
        model=MODEL, previous_response_id=first.id, input="What is my name?", temperature=0, max_output_tokens=12
    )
    assert second.previous_response_id == first.id and second.status in ("completed", "incomplete")
    assert first.usage is not None and second.usage is not None
    # The stored conversation is the new prompt's beginning: its tokens came from the KV cache.
    assert second.usage.input_tokens > first.usage.input_tokens + first.usage.output_tokens
    assert second.usage.input_tokens_details.cached_tokens > first.usage.input_tokens // 2
    # A chain of three, through a function call answered in the continuation.
    third = client.responses.create(
        model=MODEL, previous_response_id=second.id, input="And the weather?", tools=[WEATHER],
        tool_choice=FORCE_WEATHER,
    )
    call = next(item for item in third.output if item.type == "function_call")
    fourth = client.responses.create(
        model=MODEL, previous_response_id=third.id, max_output_tokens=8,
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "rain"}],
    )
    assert fourth.output[0].type == "message"


def test_unknown_previous_response_id_is_404(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        client.responses.create(model=MODEL, previous_response_id="resp_nope", input="hi")
    error = caught.value.response.json()["error"]
    assert error["param"] == "previous_response_id" and error["code"] == "previous_response_not_found"
    assert "resp_nope" in error["message"]


def test_get_and_delete(srv: ServerHandle, keys: Keys, client: openai.OpenAI) -> None:
    created = post(srv, keys.alice, {"input": "Hello", "max_output_tokens": 6, "metadata": {"ticket": "42"}})
    assert created.status_code == 200
    body = created.json()
    fetched = raw(srv, keys.alice, "GET", f"/v1/responses/{body['id']}")
    assert fetched.status_code == 200 and fetched.json() == body and body["metadata"] == {"ticket": "42"}
    assert client.responses.retrieve(body["id"]).output_text == body["output_text"]
    client.responses.delete(body["id"])
    for method in ("GET", "DELETE"):
        gone = raw(srv, keys.alice, method, f"/v1/responses/{body['id']}")
        assert gone.status_code == 404
        assert gone.json()["error"]["type"] == "invalid_request_error" and body["id"] in gone.json()["error"]["message"]
    deleted = post(srv, keys.alice, {"input": "Hi", "max_output_tokens": 2})
    answer = raw(srv, keys.alice, "DELETE", f"/v1/responses/{deleted.json()['id']}")
    assert answer.json() == {"id": deleted.json()["id"], "object": "response", "deleted": True}
    assert post(srv, keys.alice, {"input": "Hi", "previous_response_id": deleted.json()["id"]}).status_code == 404


def test_input_items(client: openai.OpenAI) -> None:
    """GET /v1/responses/{id}/input_items: this response's own input, newest first unless asked."""
    items: Any = [
        {"role": "user", "content": "Hi"},
        {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Hello"}]},
        {"role": "user", "content": [{"type": "input_text", "text": "Bye"}]},
    ]
    response = client.responses.create(model=MODEL, input=items, max_output_tokens=2)
    listed = client.responses.input_items.list(response.id)
    assert [i.role for i in listed.data] == ["user", "assistant", "user"]  # type: ignore[union-attr]
    assert listed.data[0].content[0].text == "Bye"  # type: ignore[union-attr]
    first = client.responses.input_items.list(response.id, order="asc", limit=2)
    assert first.has_more and [i.content[0].text for i in first.data] == ["Hi", "Hello"]  # type: ignore[union-attr]
    rest = client.responses.input_items.list(response.id, order="asc", after=first.last_id)
    assert not rest.has_more and [i.content[0].text for i in rest.data] == ["Bye"]  # type: ignore[union-attr]
    with pytest.raises(openai.NotFoundError):
        client.responses.input_items.list("resp_unknown")


def test_stored_stream_is_retrievable(client: openai.OpenAI) -> None:
    with client.responses.stream(model=MODEL, input="Hi there", max_output_tokens=6) as stream:
        last = list(stream)[-1]
    assert last.type == "response.incomplete"
    final = last.response
    stored = client.responses.retrieve(final.id)
    assert stored.status == "incomplete" and stored.output_text == final.output_text and stored.usage == final.usage


def test_store_false_keeps_nothing(client: openai.OpenAI) -> None:
    response = client.responses.create(model=MODEL, input="Hello", max_output_tokens=4, store=False)
    assert response.store is False
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(response.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.create(model=MODEL, previous_response_id=response.id, input="more")


def test_a_response_belongs_to_its_key(srv: ServerHandle, keys: Keys) -> None:
    mine = post(srv, keys.alice, {"input": "Hello", "max_output_tokens": 4}).json()["id"]
    path = f"/v1/responses/{mine}"
    assert raw(srv, keys.bob, "GET", path).status_code == 404
    assert raw(srv, keys.bob, "DELETE", path).status_code == 404
    foreign = post(srv, keys.bob, {"input": "Hi", "previous_response_id": mine})
    assert foreign.status_code == 404 and foreign.json()["error"]["param"] == "previous_response_id"
    assert raw(srv, keys.alice, "GET", path).status_code == 200  # bob's DELETE did nothing
    assert raw(srv, keys.embedder, "GET", path).status_code == 403  # the chat scope, as for chat
    assert post(srv, keys.embedder, {"input": "Hi"}).status_code == 403


def test_scope_table() -> None:
    assert required_scope("/v1/responses") == "chat" and required_scope("/v1/responses/resp_1") == "chat"


# -- bad input ----------------------------------------------------------------------------------------

BAD: list[tuple[str, dict[str, Any], str | None]] = [
    ("empty string", {"input": ""}, "input"),
    ("empty list", {"input": []}, "input"),
    ("no input", {}, "input"),
    ("unknown role", {"input": [{"role": "robot", "content": "hi"}]}, "input[0].role"),
    ("tool role", {"input": [{"role": "tool", "content": "hi"}]}, "input[0].role"),
    ("wrong item type", {"input": [{"type": "reasoning", "summary": []}]}, "input[0].type"),
    ("item without type or role", {"input": [{"content": "hi"}]}, "input[0].type"),
    ("message without content", {"input": [{"role": "user"}]}, "input[0].content"),
    ("wrong part type", {"input": [{"role": "user", "content": [{"type": "input_audio"}]}]}, "input[0].content[0].type"),
    ("image on a local model", {"input": [{"role": "user", "content": [
        {"type": "input_image", "image_url": "data:image/png;base64,AAAA"}]}]}, "input[0].content"),
    ("unanswered call output",
     {"input": [{"role": "user", "content": "hi"}, {"type": "function_call_output", "call_id": "call_x", "output": "1"}]},
     "input[1].call_id"),
    ("call without call_id", {"input": [{"type": "function_call", "name": "f", "arguments": "{}"}]}, "input[0].call_id"),
    ("bad json schema", {"input": "hi", "text": {"format": {"type": "json_schema", "name": "x", "schema": {"type": 12}}}},
     "text.format.schema"),
    ("schema the grammar cannot enforce", {"input": "hi", "text": {"format": {
        "type": "json_schema", "name": "x", "schema": {"$ref": "#/$defs/missing"}}}}, "text.format.schema"),
    ("json_schema without schema", {"input": "hi", "text": {"format": {"type": "json_schema", "name": "x"}}},
     "text.format.schema"),
    ("unknown format", {"input": "hi", "text": {"format": {"type": "yaml"}}}, "text.format.type"),
    ("built-in tool", {"input": "hi", "tools": [{"type": "web_search"}]}, "tools[0].type"),
    ("mcp tool", {"input": "hi", "tools": [{"type": "mcp", "server_label": "x"}]}, "tools[0].type"),
    ("chat-shaped tool", {"input": "hi", "tools": [{"type": "function", "function": {"name": "f"}}]}, "tools[0].name"),
    ("tool choice of no tool", {"input": "hi", "tools": [WEATHER], "tool_choice": {"type": "function", "name": "g"}},
     "tool_choice"),
    ("required without tools", {"input": "hi", "tool_choice": "required"}, "tool_choice"),
    ("unknown tool choice", {"input": "hi", "tool_choice": "sometimes"}, "tool_choice"),
    ("built-in tool choice", {"input": "hi", "tool_choice": {"type": "file_search"}}, "tool_choice.type"),
    ("allowed tool not declared", {"input": "hi", "tools": [WEATHER], "tool_choice": {
        "type": "allowed_tools", "mode": "auto", "tools": [{"type": "function", "name": "g"}]}}, "tool_choice.tools[0].name"),
    ("allowed tools mode", {"input": "hi", "tools": [WEATHER], "tool_choice": {
        "type": "allowed_tools", "mode": "always", "tools": [{"type": "function", "name": "get_weather"}]}},
     "tool_choice.mode"),
    ("reasoning effort", {"input": "hi", "reasoning": {"effort": "high"}}, "reasoning.effort"),
    ("background", {"input": "hi", "background": True}, "background"),
    ("include", {"input": "hi", "include": ["file_search_call.results"]}, "include[0]"),
    ("truncation auto", {"input": "hi", "truncation": "auto"}, "truncation"),
    ("conversation", {"input": "hi", "conversation": "conv_1"}, "conversation"),
    ("unknown parameter", {"input": "hi", "frobnicate": 1}, "frobnicate"),
    ("max_output_tokens 0", {"input": "hi", "max_output_tokens": 0}, "max_output_tokens"),
    ("over the cap", {"input": "hi", "max_output_tokens": CAP + 1}, "max_output_tokens"),
    ("temperature", {"input": "hi", "temperature": 3}, "temperature"),
    ("too much metadata", {"input": "hi", "metadata": {str(i): "v" for i in range(17)}}, "metadata"),
    ("unknown model", {"model": "nope:1b", "input": "hi"}, "model"),
    ("bad format name", {"input": "hi", "text": {"format": {"type": "json_schema", "name": "a b", "schema": {}}}},
     "text.format.name"),
    ("too many items", {"input": [{"role": "user", "content": "hi"}] * 9}, "input"),
]


@pytest.mark.parametrize(("body", "param"), [(b, p) for _, b, p in BAD], ids=[name for name, _, _ in BAD])
def test_bad_input_is_400(srv: ServerHandle, keys: Keys, body: dict[str, Any], param: str | None) -> None:
    for stream in (False, True):
        response = post(srv, keys.alice, {**body, "stream": stream})
        expected = 404 if body.get("model") == "nope:1b" else 400
        assert response.status_code == expected, response.text
        error = response.json()["error"]
        assert error["type"] == "invalid_request_error" and error["message"]
        assert error["param"] == param, error


def test_harmless_fields_are_accepted(srv: ServerHandle, keys: Keys) -> None:
    response = post(srv, keys.alice, {
        "input": "hi", "max_output_tokens": 2, "store": False, "user": "u1", "service_tier": "auto",
        "prompt_cache_key": "k", "safety_identifier": "s", "parallel_tool_calls": False, "truncation": "disabled",
        "reasoning": {"effort": "none"}, "include": ["reasoning.encrypted_content"], "text": {"verbosity": "low"},
        "stream_options": {"include_obfuscation": False},
    })
    assert response.status_code == 200, response.text
    assert response.headers["x-ember-dropped-fields"] == "text.verbosity"
    assert response.json()["parallel_tool_calls"] is False and response.json()["user"] == "u1"


def test_get_unknown_and_bad_paths(srv: ServerHandle, keys: Keys) -> None:
    missing = raw(srv, keys.alice, "GET", "/v1/responses/resp_unknown")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
    assert raw(srv, keys.alice, "GET", "/v1/responses/resp_x?stream=true").status_code == 400
    not_json = httpx.post(srv.url("/v1/responses"), content=b"{", timeout=30,
                          headers={"Authorization": f"Bearer {keys.alice}"})
    assert not_json.status_code == 400 and "error" in not_json.json()


# -- through a route to another server ------------------------------------------------------------------


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerHandle, UpstreamHandle]]:
    """A server with no model of its own whose route `cloud` goes to a fake OpenAI upstream."""
    base = tmp_path_factory.mktemp("responses-gw")
    upstream = start_upstream(base)
    config = write_config(base, (
        f'[[providers]]\nname = "fake"\nkind = "openai"\nbase_url = "{upstream.v1}"\n\n'
        '[[routes]]\nmodel = "cloud"\ntargets = ["fake/gpt-test"]\n'
    ))
    home = base / "home"
    home.mkdir()
    handle = start_server(home, base, EMBER_CONFIG=str(config))
    try:
        yield handle, upstream
    finally:
        handle.stop()
        upstream.stop()


def script(upstream: UpstreamHandle, body: dict[str, Any]) -> None:
    httpx.post(upstream.url + "/_script", json=body, timeout=5).raise_for_status()


CALLS = [{"name": "get_weather", "arguments": {"city": "Oslo"}}, {"name": "get_weather", "arguments": {"city": "Rome"}}]


def test_route_text_then_two_calls(gw: tuple[ServerHandle, UpstreamHandle]) -> None:
    handle, upstream = gw
    upstream.reset()
    script(upstream, {"text": "Checking.", "tool_calls": CALLS})
    client = openai.OpenAI(base_url=handle.url("/v1"), api_key="none", max_retries=0)
    whole = client.responses.create(model="cloud", input="Weather in Oslo and Rome?", tools=[WEATHER], store=False)
    with client.responses.stream(model="cloud", input="Weather in Oslo and Rome?", tools=[WEATHER]) as stream:
        events = list(stream)
        final = stream.get_final_response()
    for response in (whole, final):
        assert [item.type for item in response.output] == ["message", "function_call", "function_call"]
        assert response.output_text == "Checking."
        calls = [item for item in response.output if item.type == "function_call"]
        assert [json.loads(c.arguments)["city"] for c in calls] == ["Oslo", "Rome"]
        assert [c.call_id for c in calls] == ["call_fake0", "call_fake1"]
    kinds = [(e.type, getattr(e, "output_index", None)) for e in events if "output_item" in e.type]
    assert kinds == [("response.output_item.added", 0), ("response.output_item.done", 0),
                     ("response.output_item.added", 1), ("response.output_item.added", 2),
                     ("response.output_item.done", 1), ("response.output_item.done", 2)]


def test_route_continuation_sends_the_conversation(gw: tuple[ServerHandle, UpstreamHandle]) -> None:
    handle, upstream = gw
    upstream.reset()
    script(upstream, {"tool_calls": CALLS})
    client = openai.OpenAI(base_url=handle.url("/v1"), api_key="none", max_retries=0)
    first = client.responses.create(model="cloud", instructions="Be brief.", input="Weather?", tools=[WEATHER])
    script(upstream, {})
    outputs: Any = [{"type": "function_call_output", "call_id": f"call_fake{i}", "output": f"{i} C"} for i in (0, 1)]
    second = client.responses.create(model="cloud", previous_response_id=first.id, input=outputs, tools=[WEATHER])
    assert second.output_text.startswith("tok0")
    sent = httpx.get(upstream.url + "/_last", timeout=5).json()["body"]["messages"]
    # Instructions are not carried over; the stored turn and the new outputs are.
    assert [m["role"] for m in sent] == ["user", "assistant", "tool", "tool"]
    assert [c["id"] for c in sent[1]["tool_calls"]] == ["call_fake0", "call_fake1"]
    assert [m["tool_call_id"] for m in sent[2:]] == ["call_fake0", "call_fake1"] and sent[3]["content"] == "1 C"


def test_route_failure_mid_stream(gw: tuple[ServerHandle, UpstreamHandle]) -> None:
    handle, upstream = gw
    upstream.reset()
    upstream.control(mode="inband", drop_after=2, times=1)
    client = openai.OpenAI(base_url=handle.url("/v1"), api_key="none", max_retries=0)
    seen: list[Any] = []
    with pytest.raises(openai.APIError) as caught:
        with client.responses.stream(model="cloud", input="hi") as stream:
            for event in stream:
                seen.append(event)
    types = [e.type for e in seen]
    assert types[0] == "response.created" and types[-1] == "response.failed"
    assert "response.output_text.delta" in types
    assert seen[-1].response.status == "failed" and "broke" in seen[-1].response.error.message
    assert "broke" in caught.value.message
    with pytest.raises(openai.NotFoundError):  # nothing half-written is stored
        client.responses.retrieve(seen[0].response.id)


# -- the stream renderer on its own (event shapes for answers a small model seldom gives) --------------


def _final(reason: str = "stop") -> Any:
    return GenerationEvent(done=True, finish_reason=reason,  # type: ignore[arg-type]
                           stats=GenerationStats(prompt_tokens=5, completion_tokens=3, prompt_eval_seconds=0.0,
                                                 eval_seconds=0.0))


def _render(*pieces: Any, reason: str = "stop") -> tuple[list[dict[str, Any]], dict[str, Any]]:
    renderer = StreamRenderer({"id": "resp_1", "object": "response", "created_at": 0, "model": "m"})
    events = renderer.start()
    for piece in pieces:
        events += renderer.feed(piece)
    closing, response = renderer.finish(_final(reason))
    events += closing
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    return events, response


def test_renderer_whitespace_around_calls_is_no_message() -> None:
    events, response = _render(
        GenerationEvent(text="\n "),
        GenerationEvent(tool_calls=(ToolCallDelta(index=0, id="call_a", name="f", arguments='{"x":'),)),
        GenerationEvent(tool_calls=(ToolCallDelta(index=0, arguments="1}"),)),
        GenerationEvent(text="\n"),
    )
    assert [item["type"] for item in response["output"]] == ["function_call"]
    assert response["output"][0]["arguments"] == '{"x":1}' and response["output_text"] == ""
    assert events[-1]["type"] == "response.completed"


def test_renderer_text_after_a_call_is_a_new_message() -> None:
    _, response = _render(
        GenerationEvent(text="Let me see."),
        GenerationEvent(tool_calls=(ToolCallDelta(index=0, id="call_a", name="f", arguments="{}"),)),
        GenerationEvent(text="Done."),
    )
    assert [item["type"] for item in response["output"]] == ["message", "function_call", "message"]
    assert response["output_text"] == "Let me see.Done."


def test_renderer_empty_and_cut_answers() -> None:
    events, response = _render()
    assert response["output"][0]["content"][0]["text"] == "" and response["status"] == "completed"
    events, response = _render(GenerationEvent(text="abc"), reason="length")
    assert response["status"] == "incomplete" and response["incomplete_details"] == {"reason": "max_output_tokens"}
    assert response["output"][0]["status"] == "incomplete" and events[-1]["type"] == "response.incomplete"


def test_renderer_failure_continues_the_numbering() -> None:
    renderer = StreamRenderer({"id": "resp_1", "object": "response", "created_at": 0, "model": "m"})
    events = renderer.start() + renderer.feed(GenerationEvent(text="ab"))
    failed, error = renderer.fail(UpstreamError("the upstream broke"))
    assert failed["sequence_number"] == len(events) and error["sequence_number"] == len(events) + 1
    assert failed["response"]["status"] == "failed" and failed["response"]["error"]["message"] == "the upstream broke"
    assert error["type"] == "error" and error["error"]["message"] == "the upstream broke"
