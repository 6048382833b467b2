"""The anthropic provider's pure translation: the neutral request -> a Messages body, and a
Messages SSE stream -> neutral events (gateway/remote_anthropic.py). End to end, over a second
real ember standing in for Anthropic: test_anthropic_upstream.py."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest

from ember.engine.types import SamplingParams
from ember.errors import BadRequest, UnsupportedParameter, UpstreamError
from ember.gateway.config import ProviderConfig
from ember.gateway.remote import StreamState, client_headers, error_message
from ember.gateway.remote_anthropic import (
    DEFAULT_MAX_TOKENS,
    FORMAT_TOOL,
    anthropic_headers,
    dropped_fields,
    parse_stream,
    translate,
)
from ember.services.types import (
    ChatMessage,
    GenerationEvent,
    ImagePart,
    LogprobOptions,
    ResponseFormat,
    TextRequest,
    Tool,
    ToolCall,
    ToolChoice,
)

WEATHER = Tool(
    name="weather",
    description="The weather in a city",
    parameters={"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
)
CLOCK = Tool(name="clock")


def chat(*messages: ChatMessage, **fields: Any) -> TextRequest:
    return TextRequest(model="claude", messages=list(messages), **fields)


def body(request: TextRequest, **kw: Any) -> dict[str, Any]:
    return translate(request, "claude-x", **kw).body


# -- the request ------------------------------------------------------------------------------------


def test_a_plain_chat_has_max_tokens_always_and_only_the_sampling_knobs_a_client_moved() -> None:
    out = body(chat(ChatMessage(role="user", content="hi")))
    assert out == {
        "model": "claude-x",
        "max_tokens": DEFAULT_MAX_TOKENS,
        "stream": True,
        "messages": [{"role": "user", "content": "hi"}],
    }
    moved = SamplingParams(temperature=0.0, top_p=0.5, top_k=7)
    out = body(chat(ChatMessage(role="user", content="hi"), max_tokens=12, stop=("END",), sampling=moved))
    assert (out["max_tokens"], out["temperature"], out["top_p"], out["top_k"]) == (12, 0.0, 0.5, 7)
    assert out["stop_sequences"] == ["END"]
    assert body(chat(ChatMessage(role="user", content="hi")), default_max_tokens=9)["max_tokens"] == 9


def test_system_and_developer_messages_are_joined_into_system() -> None:
    out = body(
        chat(
            ChatMessage(role="system", content="Be brief."),
            ChatMessage(role="developer", content="Answer in French."),
            ChatMessage(role="user", content="hi"),
        )
    )
    assert out["system"] == "Be brief.\n\nAnswer in French."
    assert out["messages"] == [{"role": "user", "content": "hi"}]
    with pytest.raises(BadRequest) as caught:
        body(chat(ChatMessage(role="system", content="Be brief.")))
    assert caught.value.param == "messages"


def test_a_plain_completion_is_one_user_message() -> None:
    out = body(TextRequest(model="m", prompt="Once upon a time", max_tokens=16))
    assert out["messages"] == [{"role": "user", "content": "Once upon a time"}]
    assert out["max_tokens"] == 16


def test_tool_calls_and_results_become_tool_use_and_tool_result_blocks_merged_per_turn() -> None:
    calls = (
        ToolCall(id="call_1", name="weather", arguments='{"city": "Oslo"}'),
        ToolCall(id="call.2", name="clock", arguments=""),
    )
    out = body(
        chat(
            ChatMessage(role="user", content="Weather and time?"),
            ChatMessage(role="assistant", content="Looking.", tool_calls=calls),
            ChatMessage(role="tool", content="-3 C", tool_call_id="call_1"),
            ChatMessage(role="tool", content="12:00", tool_call_id="call.2"),
            ChatMessage(role="user", content="Thanks, and?"),
            ChatMessage(role="user", content="Also: tomorrow?"),
            ChatMessage(role="assistant", content=""),  # empty: nothing to say, not an empty block
            tools=(WEATHER, CLOCK),
        )
    )
    assert out["messages"] == [
        {"role": "user", "content": "Weather and time?"},
        {
            "role": "assistant",
            "content": [
                {"type": "text", "text": "Looking."},
                {"type": "tool_use", "id": "call_1", "name": "weather", "input": {"city": "Oslo"}},
                {"type": "tool_use", "id": "call_2", "name": "clock", "input": {}},
            ],
        },
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "call_1", "content": "-3 C"},
                {"type": "tool_result", "tool_use_id": "call_2", "content": "12:00"},
                {"type": "text", "text": "Thanks, and?"},
                {"type": "text", "text": "Also: tomorrow?"},
            ],
        },
    ]
    assert out["tools"] == [
        {"name": "weather", "description": "The weather in a city", "input_schema": WEATHER.parameters},
        {"name": "clock", "input_schema": {"type": "object", "properties": {}}},
    ]
    assert out["tool_choice"] == {"type": "auto"}


def test_a_tool_result_without_a_call_id_answers_the_oldest_unanswered_call_of_its_name() -> None:
    calls = (
        ToolCall(id="call_0_0", name="weather", arguments="{}"),
        ToolCall(id="call_0_1", name="clock", arguments="{}"),
    )
    out = body(
        chat(
            ChatMessage(role="assistant", tool_calls=calls),
            ChatMessage(role="tool", content="noon", name="clock"),
            ChatMessage(role="tool", content="cold"),
        )
    )
    ids = [b["tool_use_id"] for b in out["messages"][1]["content"]]
    assert ids == ["call_0_1", "call_0_0"]
    with pytest.raises(BadRequest) as caught:
        body(chat(ChatMessage(role="user", content="x"), ChatMessage(role="tool", content="y")))
    assert caught.value.param == "messages[1]"


def test_call_arguments_that_are_not_an_object_are_a_400_naming_the_call() -> None:
    bad = ToolCall(id="c", name="weather", arguments="[1, 2]")
    with pytest.raises(UnsupportedParameter) as caught:
        body(chat(ChatMessage(role="assistant", tool_calls=(bad,))))
    assert caught.value.param == "messages[0].tool_calls[0].function.arguments"


@pytest.mark.parametrize(
    ("choice", "parallel", "expected"),
    [
        (ToolChoice(), True, {"type": "auto"}),
        (ToolChoice(mode="required"), True, {"type": "any"}),
        (ToolChoice(mode="function", name="weather"), True, {"type": "tool", "name": "weather"}),
        (ToolChoice(mode="none"), True, {"type": "none"}),
        (ToolChoice(), False, {"type": "auto", "disable_parallel_tool_use": True}),
        (ToolChoice(mode="required"), False, {"type": "any", "disable_parallel_tool_use": True}),
        (ToolChoice(mode="none"), False, {"type": "none"}),
    ],
)
def test_tool_choice(choice: ToolChoice, parallel: bool, expected: dict[str, Any]) -> None:
    out = body(chat(ChatMessage(role="user", content="x"), tools=(WEATHER,), tool_choice=choice,
                    parallel_tool_calls=parallel))
    assert out["tool_choice"] == expected


def test_images_go_as_url_or_base64_sources() -> None:
    parts = (
        ImagePart(source="https://example.invalid/cat.png"),
        ImagePart(source="data:image/jpeg;base64,/9j/AAAA"),
        ImagePart(source="iVBORw0KGgo"),  # Ollama's bare base64
    )
    out = body(chat(ChatMessage(role="user", content="what is it?", attachments=parts)))
    assert out["messages"][0]["content"] == [
        {"type": "text", "text": "what is it?"},
        {"type": "image", "source": {"type": "url", "url": "https://example.invalid/cat.png"}},
        {"type": "image", "source": {"type": "base64", "media_type": "image/jpeg", "data": "/9j/AAAA"}},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo"}},
    ]


def test_a_json_format_is_one_forced_tool_and_what_cannot_be_said_is_refused() -> None:
    schema = {"type": "object", "properties": {"answer": {"type": "string"}}, "required": ["answer"]}
    question = ChatMessage(role="user", content="x")
    out = translate(chat(question, response_format=ResponseFormat(type="json_schema", schema=schema, name="reply")),
                    "m")
    assert out.format_tool == "reply"
    assert out.body["tools"][0]["input_schema"] == schema
    assert out.body["tool_choice"] == {"type": "tool", "name": "reply"}
    out = translate(chat(question, response_format=ResponseFormat(type="json_object")), "m")
    assert out.format_tool == FORMAT_TOOL
    assert out.body["tools"][0]["input_schema"] == {"type": "object"}
    with pytest.raises(UnsupportedParameter) as caught:
        translate(chat(question, response_format=ResponseFormat(type="json_schema", schema={"type": "array"})), "m")
    assert caught.value.param == "response_format"
    with pytest.raises(UnsupportedParameter):
        translate(chat(question, tools=(WEATHER,), response_format=ResponseFormat(type="json_object")), "m")
    with pytest.raises(UnsupportedParameter) as caught:
        translate(chat(question, logprobs=LogprobOptions(top=2)), "m")
    assert caught.value.param == "logprobs"


def test_hints_the_api_has_no_word_for_are_named_when_set() -> None:
    question = ChatMessage(role="user", content="x")
    assert dropped_fields(chat(question)) == []
    moved = SamplingParams(seed=1, presence_penalty=0.5, repeat_penalty=1.0)
    strict = Tool(name="t", strict=True)
    assert dropped_fields(chat(question, sampling=moved, tools=(strict,))) == [
        "seed",
        "presence_penalty",
        "repeat_penalty",
        "tools.strict",
    ]


def test_the_key_goes_as_x_api_key_with_the_version_header(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLAUDE_KEY", "sk-ant-test")
    config = ProviderConfig(name="claude", kind="anthropic", base_url="http://127.0.0.1:9", api_key_env="CLAUDE_KEY")
    headers = client_headers(config, credentials=lambda key: anthropic_headers("2023-06-01", key))
    assert headers["x-api-key"] == "sk-ant-test"
    assert headers["anthropic-version"] == "2023-06-01"
    assert "Authorization" not in headers


def test_config_base_url_is_the_root_and_anthropic_keys_only_on_anthropic() -> None:
    with pytest.raises(ValueError, match="without /v1"):
        ProviderConfig(name="c", kind="anthropic", base_url="https://api.anthropic.com/v1")
    with pytest.raises(ValueError, match="anthropic_version is for providers of kind anthropic"):
        ProviderConfig(name="o", kind="openai", base_url="http://127.0.0.1:1/v1", anthropic_version="2023-06-01")
    ok = ProviderConfig(name="c", kind="anthropic", base_url="https://api.anthropic.com", default_max_tokens=8192)
    assert ok.default_max_tokens == 8192


def test_anthropic_error_bodies_give_their_message() -> None:
    assert error_message({"type": "error", "error": {"type": "authentication_error", "message": "bad key"}}) == (
        "bad key"
    )


# -- the stream -------------------------------------------------------------------------------------


def sse(*events: dict[str, Any]) -> bytes:
    return b"".join(f"event: {e['type']}\ndata: {json.dumps(e)}\n\n".encode() for e in events)


def read(raw: bytes, format_tool: str | None = None) -> tuple[list[GenerationEvent], StreamState]:
    state = StreamState(model="asked", started=0.0)

    async def gather() -> list[GenerationEvent]:
        async def body() -> AsyncIterator[bytes]:
            yield raw

        return [e async for e in parse_stream("claude", format_tool, body(), state)]

    return asyncio.run(gather()), state


START = {
    "type": "message_start",
    "message": {
        "id": "msg_1", "type": "message", "role": "assistant", "model": "claude-served", "content": [],
        "stop_reason": None, "usage": {"input_tokens": 10, "cache_read_input_tokens": 4, "output_tokens": 1},
    },
}


def test_text_and_tool_use_stream_as_neutral_events_with_usage() -> None:
    events, state = read(sse(
        START,
        {"type": "ping"},
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Let me see."}},
        {"type": "content_block_stop", "index": 0},
        {"type": "content_block_start", "index": 1,
         "content_block": {"type": "tool_use", "id": "toolu_1", "name": "weather", "input": {}}},
        {"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": ""}},
        {"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": '{"city"'}},
        {"type": "content_block_delta", "index": 1, "delta": {"type": "input_json_delta", "partial_json": ': "Oslo"}'}},
        {"type": "content_block_stop", "index": 1},
        {"type": "content_block_start", "index": 2,
         "content_block": {"type": "tool_use", "id": "toolu_2", "name": "clock", "input": {}}},
        {"type": "content_block_stop", "index": 2},
        {"type": "message_delta", "delta": {"stop_reason": "tool_use", "stop_sequence": None},
         "usage": {"output_tokens": 21}},
        {"type": "message_stop"},
    ))
    assert state.model == "claude-served"
    assert events[0].text == "Let me see."
    calls = [d for e in events for d in e.tool_calls]
    assert [(d.index, d.id, d.name, d.arguments) for d in calls] == [
        (0, "toolu_1", "weather", ""),
        (0, None, None, '{"city"'),
        (0, None, None, ': "Oslo"}'),
        (1, "toolu_2", "clock", ""),
        (1, None, None, "{}"),  # no fragments at all: still an object
    ]
    final = events[-1]
    assert final.done and final.finish_reason == "tool_calls" and final.stop_sequence is None
    assert final.stats is not None
    assert (final.stats.prompt_tokens, final.stats.completion_tokens, final.stats.cached_prompt_tokens) == (14, 21, 4)


@pytest.mark.parametrize(
    ("reason", "sequence", "finish", "stop"),
    [
        ("end_turn", None, "stop", None),
        ("stop_sequence", "END", "stop", "END"),
        ("max_tokens", None, "length", None),
    ],
)
def test_stop_reasons(reason: str, sequence: str | None, finish: str, stop: str | None) -> None:
    events, _ = read(sse(
        START,
        {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hi"}},
        {"type": "content_block_stop", "index": 0},
        {"type": "message_delta", "delta": {"stop_reason": reason, "stop_sequence": sequence},
         "usage": {"output_tokens": 2}},
        {"type": "message_stop"},
    ))
    assert (events[-1].finish_reason, events[-1].stop_sequence) == (finish, stop)


def test_the_format_tool_input_is_the_answer_text() -> None:
    events, _ = read(sse(
        START,
        {"type": "content_block_start", "index": 0,
         "content_block": {"type": "tool_use", "id": "toolu_1", "name": "reply", "input": {}}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "input_json_delta", "partial_json": '{"a":'}},
        {"type": "content_block_delta", "index": 0, "delta": {"type": "input_json_delta", "partial_json": " 1}"}},
        {"type": "content_block_stop", "index": 0},
        {"type": "message_delta", "delta": {"stop_reason": "tool_use"}, "usage": {"output_tokens": 5}},
        {"type": "message_stop"},
    ), format_tool="reply")
    assert "".join(e.text for e in events) == '{"a": 1}'
    assert not any(e.tool_calls for e in events)
    assert events[-1].finish_reason == "stop"


def test_an_error_event_is_an_upstream_error_overloaded_fails_over_invalid_request_does_not() -> None:
    overloaded = {"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}
    with pytest.raises(UpstreamError) as caught:
        read(sse(START, overloaded))
    assert caught.value.upstream_status == 529 and caught.value.status_code == 502
    assert "Overloaded" in caught.value.message
    invalid = {"type": "error", "error": {"type": "invalid_request_error", "message": "no"}}
    with pytest.raises(UpstreamError) as caught:
        read(sse(START, invalid))
    assert caught.value.upstream_status == 400 and caught.value.status_code == 400


def test_a_stream_cut_before_message_stop_or_a_malformed_event_is_broken() -> None:
    with pytest.raises(UpstreamError, match="before message_stop"):
        read(sse(START, {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": "a"}}))
    with pytest.raises(UpstreamError, match="malformed"):
        read(b"data: {not json\n\n")
    with pytest.raises(UpstreamError, match="malformed content_block_delta"):
        read(sse(START, {"type": "content_block_delta", "index": 0}))
