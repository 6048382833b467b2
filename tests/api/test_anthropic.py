"""The Anthropic Messages API, driven by the official anthropic client against the real server
and model (smollm2:135m: the tests check mechanics, forced by grammars and tool_choice)."""

from __future__ import annotations

import json

import anthropic
import httpx
import jsonschema
import openai
import pytest

MODEL = "smollm2:135m"
GREEDY = {"temperature": 0}  # this SDK has no temperature argument: sent as an extra body field
WEATHER = {
    "name": "get_weather",
    "description": "The weather in a city.",
    "input_schema": {
        "type": "object",
        "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
        "required": ["city", "days"],
    },
}


@pytest.fixture(scope="module")
def client(server) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=server.url(""), api_key="unused", max_retries=0, timeout=120)


def post(server, path: str, body: object, **headers: str) -> httpx.Response:
    return httpx.post(server.url(path), json=body, headers=headers, timeout=120)


def test_create_answers_as_chat_completions_does(client: anthropic.Anthropic, server) -> None:
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    reply = client.messages.create(model=MODEL, max_tokens=24, system="Answer briefly.", messages=messages,
                                   extra_body=GREEDY)
    assert reply.type == "message" and reply.role == "assistant" and reply.id.startswith("msg_")
    assert reply.model == MODEL
    assert [b.type for b in reply.content] == ["text"]
    assert reply.stop_reason in ("end_turn", "max_tokens") and reply.stop_sequence is None
    chat = openai.OpenAI(base_url=server.url("/v1"), api_key="x", max_retries=0).chat.completions.create(
        model=MODEL, max_tokens=24, temperature=0,
        messages=[{"role": "system", "content": "Answer briefly."}, *messages],
    )
    assert reply.content[0].text == chat.choices[0].message.content  # one neutral path
    u = reply.usage
    assert u.input_tokens + u.cache_read_input_tokens == chat.usage.prompt_tokens
    assert u.output_tokens == chat.usage.completion_tokens
    assert u.cache_creation_input_tokens == 0


def test_stream_final_message_equals_create(client: anthropic.Anthropic) -> None:
    kwargs = {"model": MODEL, "max_tokens": 20, "messages": [{"role": "user", "content": "Name three colours."}],
              "extra_body": GREEDY}
    whole = client.messages.create(**kwargs)
    with client.messages.stream(**kwargs) as stream:
        texts = list(stream.text_stream)
        final = stream.get_final_message()
    assert "".join(texts) == whole.content[0].text == final.content[0].text
    assert final.stop_reason == whole.stop_reason
    assert final.usage.output_tokens == whole.usage.output_tokens
    assert (final.usage.input_tokens + final.usage.cache_read_input_tokens
            == whole.usage.input_tokens + whole.usage.cache_read_input_tokens)


def test_stream_wire_order(server) -> None:
    """The SSE framing and event order the SDK's accumulator relies on."""
    body = {"model": MODEL, "max_tokens": 8, "stream": True, "messages": [{"role": "user", "content": "Hi"}]}
    with httpx.stream("POST", server.url("/v1/messages"), json=body, timeout=120) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        raw = response.read().decode()
    frames = [f for f in raw.split("\n\n") if f.strip()]
    events = []
    for frame in frames:
        name, data = frame.split("\n")
        assert name.startswith("event: ") and data.startswith("data: ")
        payload = json.loads(data.removeprefix("data: "))
        assert payload["type"] == name.removeprefix("event: ")
        events.append(payload)
    types = [e["type"] for e in events if e["type"] != "ping"]
    assert types[0] == "message_start" and types[-2:] == ["message_delta", "message_stop"]
    assert types[1] == "content_block_start" and types[-3] == "content_block_stop"
    start = events[0]["message"]
    assert start["content"] == [] and start["usage"]["input_tokens"] > 0
    assert {e.get("index") for e in events if e["type"].startswith("content_block")} == {0}
    assert events[-2]["delta"]["stop_reason"] == "max_tokens" and events[-2]["usage"]["output_tokens"] == 8


def test_forced_tool_use_streams_json_input(client: anthropic.Anthropic) -> None:
    messages = [{"role": "user", "content": "What is the weather in Paris for the next 3 days?"}]
    with client.messages.stream(model=MODEL, max_tokens=80, messages=messages, tools=[WEATHER],
                                tool_choice={"type": "tool", "name": "get_weather"}) as stream:
        fragments = [e.partial_json for e in stream if e.type == "input_json"]
        final = stream.get_final_message()
    assert final.stop_reason == "tool_use"
    calls = [b for b in final.content if b.type == "tool_use"]
    assert len(calls) == 1 and calls[0].name == "get_weather" and calls[0].id.startswith("toolu_")
    jsonschema.validate(calls[0].input, WEATHER["input_schema"])
    assert json.loads("".join(fragments)) == calls[0].input
    assert len(fragments) > 1  # streamed in pieces, not as one blob at the end


def test_a_call_cut_off_by_max_tokens_is_text_not_a_broken_tool_use(client: anthropic.Anthropic) -> None:
    ask = {"model": MODEL, "tools": [WEATHER], "tool_choice": {"type": "tool", "name": "get_weather"},
           "messages": [{"role": "user", "content": "Weather in Paris for 3 days?"}], "extra_body": GREEDY}
    cut = []
    for limit in (4, 20):  # before the call's name, inside its arguments
        reply = client.messages.create(max_tokens=limit, **ask)
        assert reply.stop_reason == "max_tokens"
        assert all(b.type == "text" or isinstance(b.input, dict) for b in reply.content)
        cut += [json.loads(b.text) for b in reply.content if b.type == "text" and b.text.startswith('{"name"')]
        with client.messages.stream(max_tokens=limit, **ask) as stream:
            assert stream.get_final_message().stop_reason == "max_tokens"
    assert cut and all(c["name"] == "get_weather" for c in cut)  # what the model wrote of the call, as text


def test_tool_result_round_trip(client: anthropic.Anthropic) -> None:
    ask = {"role": "user", "content": "What is the weather in Paris for the next 3 days?"}
    first = client.messages.create(model=MODEL, max_tokens=80, messages=[ask], tools=[WEATHER],
                                   tool_choice={"type": "any", "disable_parallel_tool_use": True}, extra_body=GREEDY)
    assert first.stop_reason == "tool_use"
    assert [b.type for b in first.content].count("tool_use") == 1
    call = next(b for b in first.content if b.type == "tool_use")
    result = {"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": call.id, "content": "Sunny, 24 C, all three days."}]}
    second = client.messages.create(
        model=MODEL, max_tokens=40, tools=[WEATHER], extra_body=GREEDY,
        messages=[ask, {"role": "assistant", "content": [b.model_dump() for b in first.content]}, result],
        tool_choice={"type": "none"},
    )
    assert second.stop_reason in ("end_turn", "max_tokens")
    assert [b.type for b in second.content] == ["text"] and second.content[0].text


def test_stop_sequence_is_named(client: anthropic.Anthropic) -> None:
    messages = [{"role": "user", "content": "Count from 1 to 10, separated by commas."}]
    plain = client.messages.create(model=MODEL, max_tokens=40, messages=messages, extra_body=GREEDY)
    text = plain.content[0].text
    stop = next(ch for ch in ("5", "4", "3", ",", " ") if ch in text)
    reply = client.messages.create(model=MODEL, max_tokens=40, messages=messages, extra_body=GREEDY,
                                   stop_sequences=["NEVER-SEEN", stop])
    assert reply.stop_reason == "stop_sequence" and reply.stop_sequence == stop
    assert reply.content[0].text == text[: text.index(stop)]
    with client.messages.stream(model=MODEL, max_tokens=40, messages=messages, extra_body=GREEDY,
                                stop_sequences=[stop]) as stream:
        final = stream.get_final_message()
    assert final.stop_reason == "stop_sequence" and final.stop_sequence == stop


def test_max_tokens_stop_reason(client: anthropic.Anthropic) -> None:
    reply = client.messages.create(model=MODEL, max_tokens=3, messages=[{"role": "user", "content": "Tell a story."}])
    assert reply.stop_reason == "max_tokens" and reply.usage.output_tokens == 3


def test_count_tokens_equals_reported_input(client: anthropic.Anthropic) -> None:
    for extra in ({}, {"tools": [WEATHER], "tool_choice": {"type": "tool", "name": "get_weather"}}):
        request = {"model": MODEL, "system": "Be brief.",
                   "messages": [{"role": "user", "content": "Weather in Oslo for 2 days?"}], **extra}
        counted = client.messages.count_tokens(**request)
        reply = client.messages.create(max_tokens=5, **request)
        assert counted.input_tokens == reply.usage.input_tokens + reply.usage.cache_read_input_tokens
    assert counted.input_tokens > 40  # the tool instructions are counted too


def test_beta_path_and_headers_accepted(client: anthropic.Anthropic, server) -> None:
    reply = client.beta.messages.create(model=MODEL, max_tokens=3, messages=[{"role": "user", "content": "Hi"}],
                                        betas=["made-up-beta-2099-01-01"])
    assert reply.stop_reason == "max_tokens"
    counted = client.beta.messages.count_tokens(model=MODEL, messages=[{"role": "user", "content": "Hi"}])
    assert counted.input_tokens > 0
    response = post(server, "/v1/messages?beta=true", {"model": MODEL, "max_tokens": 2,
                                                         "messages": [{"role": "user", "content": "Hi"}]},
                    **{"anthropic-version": "2023-06-01", "anthropic-beta": "unknown-beta,another"})
    assert response.status_code == 200 and response.json()["type"] == "message"


def test_metadata_and_disabled_thinking_accepted(client: anthropic.Anthropic) -> None:
    reply = client.messages.create(model=MODEL, max_tokens=2, messages=[{"role": "user", "content": "Hi"}],
                                   metadata={"user_id": "u-1"}, thinking={"type": "disabled"},
                                   extra_body={"top_k": 5, "top_p": 0.5})
    assert reply.usage.output_tokens == 2


def test_consecutive_user_turns_are_merged(client: anthropic.Anthropic) -> None:
    merged = client.messages.count_tokens(model=MODEL, messages=[
        {"role": "user", "content": "Hello."}, {"role": "user", "content": [{"type": "text", "text": "Bye."}]}])
    one = client.messages.count_tokens(model=MODEL, messages=[{"role": "user", "content": "Hello.\n\nBye."}])
    assert merged.input_tokens == one.input_tokens


HI = [{"role": "user", "content": "Hi"}]
BAD = [
    ({"model": MODEL, "messages": HI}, "max_tokens"),
    ({"model": MODEL, "max_tokens": 0, "messages": HI}, "max_tokens"),
    ({"model": MODEL, "max_tokens": 5, "messages": []}, "at least one message"),
    ({"model": MODEL, "max_tokens": 5, "messages": [{"role": "assistant", "content": "Hi"}]}, "first message"),
    ({"model": MODEL, "max_tokens": 5, "messages": [*HI, {"role": "assistant", "content": "Sure"}]}, "prefill"),
    ({"model": MODEL, "max_tokens": 5, "messages": [{"role": "system", "content": "x"}]}, "messages[0].role"),
    ({"model": MODEL, "max_tokens": 5, "messages": [{"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": "toolu_nope", "content": "x"}]}]}, "toolu_nope"),
    ({"model": MODEL, "max_tokens": 5, "messages": [{"role": "user", "content": [
        {"type": "document", "source": {}}]}]}, "'document' block"),
    ({"model": MODEL, "max_tokens": 5, "messages": [{"role": "user", "content": [
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}}]}]},
     "image"),
    ({"model": MODEL, "max_tokens": 5, "messages": HI, "thinking": {"type": "enabled", "budget_tokens": 1024}},
     "thinking"),
    ({"model": MODEL, "max_tokens": 5, "messages": HI, "frobnicate": True}, "frobnicate"),
    ({"model": MODEL, "max_tokens": 5, "messages": HI, "metadata": {"user_id": "a", "secret": 1}}, "secret"),
    ({"model": MODEL, "max_tokens": 5, "messages": HI, "tools": [WEATHER],
      "tool_choice": {"type": "tool", "name": "nope"}}, "nope"),
    ({"model": MODEL, "max_tokens": 5, "messages": HI, "tool_choice": {"type": "any"}}, "at least one tool"),
    ({"model": MODEL, "max_tokens": 5, "messages": HI,
      "tools": [{"type": "web_search_20250305", "name": "web_search"}]}, "server tool"),
    ({"model": MODEL, "max_tokens": 5, "messages": HI,
      "tools": [{"name": "t", "input_schema": {"type": "string"}}]}, "input_schema"),
    ({"model": MODEL, "max_tokens": 5, "messages": HI, "stop_sequences": [""]}, "stop_sequences[0]"),
    ({"model": MODEL, "max_tokens": 5, "messages": HI, "temperature": 1.5}, "temperature"),
    ({"model": MODEL, "max_tokens": 5, "messages": [*HI, {"role": "assistant", "content": [
        {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": "not an object"}]}, *HI]},
     ".input must be an object"),
    ({"model": MODEL, "max_tokens": 5, "messages": [*HI, {"role": "assistant", "content": [
        {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {}},
        {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {}}]}, *HI]}, "used twice"),
    ({"model": MODEL, "max_tokens": 5, "messages": [{"role": "user", "content": []}]}, "content is empty"),
    ({"model": MODEL, "max_tokens": 5, "messages": HI, "system": [{"type": "image", "source": {}}]}, "system[0]"),
    ({"model": MODEL, "max_tokens": 5, "messages": [{"role": "user", "content": [
        {"type": "image", "source": {"type": "file", "file_id": "f"}}]}]}, "content[0].source"),
    ({"model": MODEL, "max_tokens": 5, "messages": [*HI, {"role": "assistant", "content": [
        {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {}}]}, {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "toolu_1", "content": [{"type": "document"}]}]}]},
     "a tool_result holds text and image blocks"),
    ({"model": MODEL, "max_tokens": 5, "messages": HI, "stop_sequences": ["x"] * 65}, "at most 64"),
    ({"model": MODEL, "max_tokens": 5, "messages": HI, "output_config": {"effort": "high"}}, "effort"),
    ({"model": MODEL, "max_tokens": 5, "messages": HI, "mcp_servers": [{"type": "url", "url": "http://x"}]},
     "mcp_servers"),
    ({"model": MODEL, "max_tokens": 5, "messages": [{"role": "user", "content": [
        {"type": "thinking", "thinking": "hmm"}]}]}, "do not reason"),
    ({"model": MODEL, "max_tokens": 5, "messages": [*HI, {"role": "assistant", "content": [
        {"type": "tool_result", "tool_use_id": "toolu_1", "content": "x"}]}, *HI]}, "belongs in a user message"),
]


@pytest.mark.parametrize(("body", "words"), BAD, ids=[w for _, w in BAD])
def test_bad_input_is_a_400_in_anthropic_shape(server, body: dict, words: str) -> None:
    response = post(server, "/v1/messages", body)
    assert response.status_code == 400, response.text
    error = response.json()
    assert error["type"] == "error" and error["error"]["type"] == "invalid_request_error"
    assert words in error["error"]["message"], error


def test_sdk_raises_typed_errors(client: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.BadRequestError) as bad:
        client.messages.create(model=MODEL, max_tokens=5, messages=[])
    assert bad.value.body["error"]["type"] == "invalid_request_error"
    with pytest.raises(anthropic.NotFoundError) as missing:
        client.messages.create(model="no-such-model:1b", max_tokens=5, messages=HI)
    assert missing.value.body["error"]["type"] == "not_found_error"
    with pytest.raises(anthropic.NotFoundError):
        client.messages.stream(model="no-such-model:1b", max_tokens=5, messages=HI).__enter__()


def test_bodies_the_edge_refuses_are_in_anthropic_shape(server) -> None:
    cases = [
        (httpx.post(server.url("/v1/messages"), content=b"{not json", timeout=30), 400, "invalid_request_error"),
        (httpx.post(server.url("/v1/messages"), content=b"x" * (5 * 1024**2), timeout=30), 413, "request_too_large"),
        (httpx.get(server.url("/v1/messages"), timeout=30), 405, "invalid_request_error"),
        (httpx.post(server.url("/v1/messages/nope"), json={}, timeout=30), 404, "not_found_error"),
    ]
    for response, status, kind in cases:
        assert response.status_code == status
        assert response.json()["type"] == "error" and response.json()["error"]["type"] == kind


def test_count_tokens_bad_input(server) -> None:
    response = post(server, "/v1/messages/count_tokens", {"model": MODEL, "messages": HI, "max_tokens": 5})
    assert response.status_code == 400 and response.json()["error"]["type"] == "invalid_request_error"
    assert "max_tokens" in response.json()["error"]["message"]


def test_output_config_format_holds_the_answer_to_a_schema(client: anthropic.Anthropic) -> None:
    schema = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 20}}, "required": ["city"]}
    reply = client.messages.create(model=MODEL, max_tokens=40, messages=[{"role": "user", "content": "A city?"}],
                                   output_config={"format": {"type": "json_schema", "schema": schema}})
    assert reply.stop_reason == "end_turn"
    jsonschema.validate(json.loads(reply.content[0].text), schema)


# -- units: no server -------------------------------------------------------------------------


def test_error_types_by_status() -> None:
    from ember.api.anthropic.render import error_body, error_type
    from ember.errors import RateLimited, ServiceUnavailable

    expected = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
                404: "not_found_error", 413: "request_too_large", 422: "invalid_request_error",
                429: "rate_limit_error", 500: "api_error", 502: "api_error", 503: "overloaded_error",
                504: "api_error", 529: "overloaded_error"}
    assert {status: error_type(status) for status in expected} == expected
    busy = ServiceUnavailable("busy", retry_after=3)
    assert error_body(busy) == {"type": "error", "error": {"type": "overloaded_error", "message": "busy"}}
    assert busy.headers == {"Retry-After": "3"}
    assert error_body(RateLimited("slow down", retry_after=2))["error"]["type"] == "rate_limit_error"


def test_stop_reasons_usage_and_ids() -> None:
    from ember.api.anthropic.render import stop_reason, tool_use_id, usage
    from ember.engine.types import GenerationStats

    assert stop_reason("stop", None, False) == "end_turn"
    assert stop_reason("stop", "END", False) == "stop_sequence"
    assert stop_reason("length", None, True) == "max_tokens"
    assert stop_reason("tool_calls", None, True) == stop_reason("stop", None, True) == "tool_use"
    assert stop_reason("tool_calls", None, False) == "end_turn"  # no call left that is one
    stats = GenerationStats(prompt_tokens=30, completion_tokens=5, prompt_eval_seconds=0, eval_seconds=0,
                            cached_prompt_tokens=12)
    assert usage(stats) == {"input_tokens": 18, "output_tokens": 5, "cache_read_input_tokens": 12,
                            "cache_creation_input_tokens": 0}
    assert tool_use_id("call_abc") == "toolu_abc" and tool_use_id("toolu_x") == "toolu_x"


def test_the_matched_stop_sequence_survives_the_cache() -> None:
    from ember.cache.entry import CachedAnswer
    from ember.engine.types import GenerationStats

    stats = GenerationStats(prompt_tokens=3, completion_tokens=2, prompt_eval_seconds=0, eval_seconds=0)
    answer = CachedAnswer(model="m", provider="local", pieces=("a",), finish_reason="stop", stats=stats,
                          stop_sequence="END")
    assert CachedAnswer.decode(answer.encode()) == answer
    plain = CachedAnswer(model="m", provider="local", pieces=("a",), finish_reason="stop", stats=stats)
    assert CachedAnswer.decode(plain.encode()) == plain


@pytest.mark.slow  # a server of its own
def test_the_inprocess_engine_names_the_stop_sequence_too(model_home, tmp_path) -> None:
    import shutil

    from tests.conftest import start_server

    home = tmp_path / "home"
    shutil.copytree(model_home, home, ignore=shutil.ignore_patterns("state"))
    handle = start_server(home, tmp_path, EMBER_ENGINE="inprocess", EMBER_NUM_CTX="1024")
    try:
        client = anthropic.Anthropic(base_url=handle.url(""), api_key="x", max_retries=0, timeout=120)
        messages = [{"role": "user", "content": "Count from 1 to 10, separated by commas."}]
        text = client.messages.create(model=MODEL, max_tokens=30, messages=messages, extra_body=GREEDY).content[0].text
        stop = next(ch for ch in ("5", "4", "3", ",", " ") if ch in text)
        ask = {"model": MODEL, "max_tokens": 30, "messages": messages, "stop_sequences": ["NEVER", stop],
               "extra_body": GREEDY}
        with client.messages.stream(**ask) as events:
            streamed = events.get_final_message()
        for reply in (client.messages.create(**ask), streamed):
            assert reply.stop_reason == "stop_sequence" and reply.stop_sequence == stop
            assert reply.content[0].text == text[: text.index(stop)]
    finally:
        handle.stop()
