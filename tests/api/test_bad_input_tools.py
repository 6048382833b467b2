"""Tools, tool results, response formats and logprobs that cannot be served: each a 400 in the
protocol's own error format whose message names the field, found before anything is generated."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

MODEL = "smollm2:135m"
USER = [{"role": "user", "content": "What is the weather in Paris?"}]
WEATHER = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}


def openai(server, **fields: Any) -> dict[str, Any]:
    """The error of a /v1/chat/completions request that must be refused."""
    body = {"model": MODEL, "messages": USER, "max_tokens": 1, **fields}
    response = httpx.post(server.url("/v1/chat/completions"), json=body, timeout=60)
    assert response.status_code == 400, response.text
    assert set(response.json()) == {"error"}, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error" and error["message"]
    return error


def ollama(server, path: str = "/api/chat", **fields: Any) -> str:
    """The error of an Ollama request that must be refused."""
    body = {"model": MODEL, "stream": False, "options": {"num_predict": 1}, **fields}
    if path == "/api/chat":
        body.setdefault("messages", USER)
    response = httpx.post(server.url(path), json=body, timeout=60)
    assert response.status_code == 400, response.text
    assert list(response.json()) == ["error"] and isinstance(response.json()["error"], str), response.text
    return response.json()["error"]


def tool(parameters: Any, name: str = "get_weather") -> dict[str, Any]:
    return {"type": "function", "function": {"name": name, "description": "Weather", "parameters": parameters}}


@pytest.mark.parametrize(
    ("parameters", "says"),
    [
        ({"type": "string"}, "must describe an object (type 'object'), not 'string'"),
        ({"type": 5}, "is not a valid JSON schema"),
        ({"type": "object", "properties": 3}, "is not a valid JSON schema: 3 is not of type 'object'"),
        ([{"type": "object"}], "must be a JSON schema (an object), not list"),
        ("object", "must be a JSON schema (an object), not str"),
    ],
)
def test_tool_parameters_that_are_not_an_object_schema(server, parameters: Any, says: str) -> None:
    error = openai(server, tools=[tool(WEATHER, "ok"), tool(parameters)])
    assert error["param"] == "tools[1].parameters"
    assert error["message"].startswith("tools[1].parameters ") and says in error["message"], error["message"]
    message = ollama(server, tools=[tool(WEATHER, "ok"), tool(parameters)])
    assert message.startswith("tools[1].parameters ") and says in message, message
    # The legacy `functions` are the same tools.
    error = openai(server, functions=[{"name": "f", "parameters": parameters}])
    assert error["param"] == "tools[0].parameters" and says in error["message"]


def test_tool_choice_naming_a_tool_that_is_not_in_tools(server) -> None:
    choice = {"type": "function", "function": {"name": "nope"}}
    error = openai(server, tools=[tool(WEATHER)], tool_choice=choice)
    assert error["param"] == "tool_choice"
    assert error["message"] == "tool_choice names the function 'nope', which is not in tools (tools: get_weather)"
    error = openai(server, tool_choice=choice)  # no tools at all
    assert error["param"] == "tool_choice" and "(tools: none)" in error["message"]
    error = openai(server, functions=[{"name": "f", "parameters": WEATHER}], function_call={"name": "nope"})
    assert error["param"] == "tool_choice" and "'nope'" in error["message"]
    error = openai(server, tool_choice="required")
    assert error["param"] == "tool_choice" and "needs at least one tool" in error["message"]


def test_a_tool_message_answering_no_earlier_call(server) -> None:
    call = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}}
    asked = [*USER, {"role": "assistant", "content": "", "tool_calls": [call]}]
    error = openai(
        server, tools=[tool(WEATHER)], messages=[*asked, {"role": "tool", "tool_call_id": "call_9", "content": "sunny"}]
    )
    assert error["param"] == "messages[2].tool_call_id"
    assert "'call_9'" in error["message"] and "no earlier assistant message called" in error["message"]
    error = openai(server, messages=[*USER, {"role": "tool", "tool_call_id": "call_1", "content": "sunny"}])
    assert error["param"] == "messages[1].tool_call_id"
    error = openai(server, messages=[*USER, {"role": "tool", "content": "sunny"}])
    assert error["param"] == "messages[1].tool_call_id" and "no tool_call_id" in error["message"]

    # Ollama's calls have no ids: a result answers an unanswered call of its tool_name.
    calls = [{"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]
    asked = [*USER, {"role": "assistant", "content": "", "tool_calls": calls}]
    message = ollama(server, messages=[*asked, {"role": "tool", "tool_name": "get_time", "content": "noon"}])
    assert message.startswith("messages[2] is a tool result from 'get_time'"), message
    message = ollama(server, messages=[*USER, {"role": "tool", "content": "sunny"}])
    assert message.startswith("messages[1] is a tool result, but no earlier assistant message"), message
    answered = [*asked, {"role": "tool", "tool_name": "get_weather", "content": "sunny"}]
    message = ollama(server, messages=[*answered, {"role": "tool", "tool_name": "get_weather", "content": "rain"}])
    assert message.startswith("messages[3] is a tool result from 'get_weather'"), message


def test_a_json_schema_format_without_a_schema(server) -> None:
    error = openai(server, response_format={"type": "json_schema", "json_schema": {"name": "answer"}})
    assert error["param"] == "response_format.json_schema.schema"
    assert error["message"].startswith("response_format.json_schema.schema is missing")
    error = openai(server, response_format={"type": "json_schema"})
    assert error["param"] == "response_format.json_schema"
    error = openai(server, response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": 5}}})
    assert error["param"] == "response_format.json_schema.schema" and "not a valid JSON schema" in error["message"]
    error = openai(server, response_format={"type": "yaml"})
    assert error["param"] == "response_format.type"
    for path in ("/api/chat", "/api/generate"):
        assert ollama(server, path, prompt="hi", format=5) == 'format must be "json" or a JSON schema object, not 5'
        assert ollama(server, path, prompt="hi", format=[1]).startswith("format must be")
        message = ollama(server, path, prompt="hi", format={"type": 5})
        assert message.startswith("format is not a valid JSON schema"), message


def test_top_logprobs_over_20(server) -> None:
    error = openai(server, logprobs=True, top_logprobs=21)
    assert error["param"] == "top_logprobs" and error["message"] == "top_logprobs must be between 0 and 20, not 21"
    error = openai(server, logprobs=True, top_logprobs=-1)
    assert error["param"] == "top_logprobs"
    error = openai(server, top_logprobs=3)
    assert error["param"] == "top_logprobs" and "needs logprobs: true" in error["message"]
    response = httpx.post(server.url("/v1/completions"), json={"model": MODEL, "prompt": "hi", "logprobs": 21})
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "logprobs"  # the legacy endpoint's name for it
    assert response.json()["error"]["message"] == "logprobs must be between 0 and 20, not 21"
    for path in ("/api/chat", "/api/generate"):
        message = ollama(server, path, prompt="hi", logprobs=True, top_logprobs=21)
        assert message == "top_logprobs must be between 0 and 20, not 21"
