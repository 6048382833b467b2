"""Hostile bodies a new user can send by accident: each is a 400 in the protocol's own error
format that says what is wrong (never a 500), on every endpoint that takes a body."""

from __future__ import annotations

import json

import httpx
import pytest

MODEL = "smollm2:135m"
JSON = {"content-type": "application/json"}

# Each endpoint with a body whose one text field is {text} (JSON text, spliced in as is).
BODIES = {
    "/v1/chat/completions": '{"model": "%s", "messages": [{"role": "user", "content": %s}], "max_tokens": 1}',
    "/v1/completions": '{"model": "%s", "prompt": %s, "max_tokens": 1}',
    "/v1/embeddings": '{"model": "%s", "input": %s}',
    "/api/chat": '{"model": "%s", "messages": [{"role": "user", "content": %s}], "stream": false}',
    "/api/generate": '{"model": "%s", "prompt": %s, "stream": false}',
    "/api/embed": '{"model": "%s", "input": %s}',
    "/api/embeddings": '{"model": "%s", "prompt": %s}',
}
FIELD = {
    "/v1/chat/completions": "messages[0].content",
    "/v1/completions": "prompt",
    "/v1/embeddings": "input",
    "/api/chat": "messages[0].content",
    "/api/generate": "prompt",
    "/api/embed": "input",
    "/api/embeddings": "prompt",
}


def error_of(response: httpx.Response, path: str) -> tuple[str, str | None]:
    """The message (and OpenAI's param) of a 400, after checking the protocol's body shape."""
    assert response.status_code == 400, response.text
    body = response.json()
    if path.startswith("/v1"):
        assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}, body
        assert body["error"]["type"] == "invalid_request_error"
        return body["error"]["message"], body["error"]["param"]
    assert list(body) == ["error"] and isinstance(body["error"], str), body
    return body["error"], None


def post(server, path: str, content: bytes | str, headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.post(server.url(path), content=content, headers=JSON if headers is None else headers, timeout=60)


@pytest.mark.parametrize("path", list(BODIES))
def test_a_lone_surrogate_is_a_400_naming_the_field(server, path: str) -> None:
    response = post(server, path, BODIES[path] % (MODEL, '"\\ud800 hi"'))
    message, param = error_of(response, path)
    assert f"lone UTF-16 surrogate (\\ud800) at {FIELD[path]}" in message
    if path.startswith("/v1"):
        assert param == FIELD[path]


def test_surrogates_elsewhere_in_the_body(server) -> None:
    # A low surrogate alone, in a stop sequence; and one in an object's key (shown escaped).
    body = json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "stop": ["ok", "@"]})
    body = body.replace('"@"', '"x\\udfff"')
    message, param = error_of(post(server, "/v1/chat/completions", body), "/v1/chat/completions")
    assert "(\\udfff) at stop[1]" in message and param == "stop[1]"
    body = json.dumps({"model": MODEL, "prompt": "hi", "options": {"@": 1}, "stream": False})
    body = body.replace('"@"', '"\\udc00x"')
    message, _ = error_of(post(server, "/api/generate", body), "/api/generate")
    assert "at options.\\udc00x" in message
    # Refused by the guard (too many messages) before the body is checked: its usage and audit
    # rows are still written (the model name escaped), see the last test.
    crowd = json.dumps({"model": "@", "messages": [{"role": "user", "content": "x"}] * 1025}).replace("@", "\\ud800")
    message, _ = error_of(post(server, "/v1/chat/completions", crowd), "/v1")
    assert message.startswith("too many messages")


def test_a_surrogate_pair_is_text(server) -> None:
    body = BODIES["/v1/embeddings"] % (MODEL, '"smile \\ud83d\\ude00"')
    response = post(server, "/v1/embeddings", body)
    assert response.status_code == 200, response.text
    assert response.json()["data"][0]["embedding"]


@pytest.mark.parametrize("path", list(BODIES))
def test_a_deeply_nested_body_is_a_400(server, path: str) -> None:
    deep = "[" * 100_000 + "]" * 100_000
    message, _ = error_of(post(server, path, deep), path)
    assert message == "the request body nests arrays and objects deeper than 64 levels"
    # The same inside a valid object (a field the route does not even read).
    nested = BODIES[path][:-1] % (MODEL, '"hi"') + ', "extra": ' + "[" * 65 + "]" * 65 + "}"
    message, _ = error_of(post(server, path, nested), path)
    assert "deeper than 64 levels" in message


def test_nesting_up_to_the_limit_is_fine(server) -> None:
    body = json.dumps({"model": MODEL, "input": "hi", "extra": "@"}).replace('"@"', "[" * 63 + "]" * 63)  # 64 deep
    assert post(server, "/v1/embeddings", body).status_code == 200


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/api/chat", "/v1/embeddings", "/api/generate"])
def test_a_body_that_is_not_json_says_so(server, path: str) -> None:
    for content, content_type in (
        (b"hello there", "text/plain"),
        (b"model=smollm2", "application/x-www-form-urlencoded"),
        (b'{"model": ', "application/json"),
        (b"\xff\xfe\xfa", "application/json"),
    ):
        message, param = error_of(post(server, path, content, {"content-type": content_type}), path)
        assert message.startswith("the request body is not valid JSON: "), message
        assert param is None
    message, _ = error_of(post(server, path, b"hello there"), path)
    assert message == "the request body is not valid JSON: Expecting value: line 1 column 1 (char 0)"


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/api/chat", "/v1/embeddings", "/api/embed"])
def test_a_body_that_is_not_an_object_says_so(server, path: str) -> None:
    for content, kind in ((b"[1, 2]", "an array"), (b"3", "a number"), (b'"hi"', "a string"), (b"null", "null")):
        message, _ = error_of(post(server, path, content), path)
        assert message == f"the request body must be a JSON object, not {kind}"
    message, _ = error_of(post(server, path, b""), path)
    assert message == "the request body is empty: send a JSON object"


def test_a_json_media_type_is_parsed_as_json(server) -> None:
    """application/<x>+json and charset parameters are JSON; application/jsonp is not a JSON type
    (so the body is taken as JSON anyway, as every body is)."""
    body = BODIES["/v1/embeddings"] % (MODEL, '"hi"')
    for content_type in ("application/json; charset=utf-8", "application/vnd.api+json", "application/jsonp"):
        response = post(server, "/v1/embeddings", body, {"content-type": content_type})
        assert response.status_code == 200, (content_type, response.text)


def test_wrong_types_in_a_union_field_name_the_field(server) -> None:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "tool_choice": "bogus"}
    message, param = error_of(httpx.post(server.url("/v1/chat/completions"), json=body), "/v1")
    assert param == "tool_choice" and "'auto', 'none' or 'required'" in message
    body = {"model": MODEL, "messages": [{"role": "user", "content": 5}]}
    message, param = error_of(httpx.post(server.url("/v1/chat/completions"), json=body), "/v1")
    assert param == "messages[0].content", message
    assert message == "invalid value for 'messages[0].content': Input should be a valid string or a valid list"


def test_the_server_is_still_up(server) -> None:
    assert httpx.get(server.url("/health")).status_code == 200
    log = server.log()
    assert "RecursionError" not in log and "UnicodeEncodeError" not in log and "could not write" not in log
