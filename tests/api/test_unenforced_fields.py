"""A local answer names what it did not act on in X-Ember-Dropped-Fields, never a 200 that drops
it without a word: a JSON response format when a tool grammar constrains the answer instead.
Tools and formats alone are acted on (tests/api/test_tools.py, test_structured_output.py)."""

from __future__ import annotations

from typing import Any

import httpx

DEFAULT_MODEL = "smollm2:135m"

TOOL = {
    "type": "function",
    "function": {
        "name": "weather",
        "description": "The weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 8}}},
    },
}
ASK = [{"role": "user", "content": "Weather in Oslo?"}]


def post(server: Any, path: str, body: dict[str, Any]) -> httpx.Response:
    response = httpx.post(server.url(path), json=body, timeout=120)
    assert response.status_code == 200, response.text
    return response


def test_openai_chat_names_response_format_but_not_tools(server: Any) -> None:
    base = {"model": DEFAULT_MODEL, "messages": ASK, "max_tokens": 2, "temperature": 0}
    assert "x-ember-dropped-fields" not in post(server, "/v1/chat/completions", base).headers
    auto = post(server, "/v1/chat/completions", {**base, "tools": [TOOL]})
    assert "x-ember-dropped-fields" not in auto.headers
    forced = post(
        server,
        "/v1/chat/completions",
        {**base, "tools": [TOOL], "tool_choice": "required", "response_format": {"type": "json_object"}},
    )
    assert forced.headers["x-ember-dropped-fields"] == "response_format"
    none = post(server, "/v1/chat/completions", {**base, "tools": [TOOL], "tool_choice": "none"})
    assert "x-ember-dropped-fields" not in none.headers
    with httpx.stream(
        "POST",
        server.url("/v1/chat/completions"),
        json={**base, "stream": True, "tools": [TOOL], "response_format": {"type": "json_object"}},
        timeout=120,
    ) as streamed:
        assert streamed.status_code == 200 and streamed.headers["x-ember-dropped-fields"] == "response_format"
        streamed.read()


def test_ollama_chat_names_a_format_beside_tools_and_generate_enforces_it(server: Any) -> None:
    options = {"num_predict": 2, "temperature": 0}
    chat = post(
        server,
        "/api/chat",
        {
            "model": DEFAULT_MODEL,
            "messages": ASK,
            "tools": [TOOL],
            "format": "json",
            "options": options,
            "stream": False,
        },
    )
    assert chat.headers["x-ember-dropped-fields"] == "response_format"
    generate = post(
        server,
        "/api/generate",
        {"model": DEFAULT_MODEL, "prompt": "Hi", "format": {"type": "object"}, "options": options},
    )
    assert "x-ember-dropped-fields" not in generate.headers  # a format alone is enforced
