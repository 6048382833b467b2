"""Every request body is JSON, whatever Content-Type it claims, and is checked once, here.

Ollama treats every body as JSON, so `curl -d '{...}' /api/chat` (sent as form-encoded) works
there; without the rewrite FastAPI would not parse such a body as JSON at all.

Before any route (or pydantic) sees a body, it must be text the rest of ember can hold:
- valid JSON in UTF-8 (or UTF-16/32, as `json.loads` detects): else a 400 that says where;
- nested at most MAX_DEPTH arrays and objects deep: deeper bodies exhaust Python's recursion
  (the parser's, pydantic's, jsonschema's) and are a 400, never a RecursionError;
- no lone UTF-16 surrogate (`"\\ud800"` is valid JSON, but no UTF-8 text holds it, so the
  tokenizer, the logs and the response would fail on it): a 400 naming the field.
An empty body passes through (routes without a body take it; the others say it is missing); what
shape a route wants (an object with its fields) is the route's to judge. Errors are rendered in
the request's protocol by `error_body`, passed in.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from email.message import Message
from typing import Any

from starlette.types import ASGIApp, Receive, Scope, Send

from ember.errors import BadRequest, EmberError
from ember.guard.auth import STREAMED_BODIES, read_body, replay, send_error

_JSON = b"application/json"
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
MAX_DEPTH = 64  # arrays and objects inside one another
# A JSON escape of a UTF-16 surrogate: only a body with one can decode to a lone surrogate
# (raw surrogate bytes are not UTF-8, so they fail decoding).
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")
_SURROGATE = re.compile("[\ud800-\udfff]")

ErrorBody = Callable[[Scope, EmberError], dict[str, Any]]


def _is_json(content_type: bytes) -> bool:
    """application/json or application/<anything>+json, parameters (charset) aside."""
    message = Message()
    message["content-type"] = content_type.decode("latin-1")
    subtype = message.get_content_subtype()
    return message.get_content_maintype() == "application" and (subtype == "json" or subtype.endswith("+json"))


def parse_body(body: bytes) -> Any:
    """The JSON value of a non-empty body, or a BadRequest saying why it cannot be served."""
    try:
        value = json.loads(body)
    except RecursionError:
        raise BadRequest(f"the request body nests arrays and objects deeper than {MAX_DEPTH} levels") from None
    except json.JSONDecodeError as exc:
        raise BadRequest(f"the request body is not valid JSON: {exc}") from None
    except UnicodeDecodeError:
        raise BadRequest("the request body is not valid JSON: it is not UTF-8 text") from None
    if body.count(b"[") + body.count(b"{") > MAX_DEPTH:  # else it cannot nest that deep
        check_depth(value)
    if _SURROGATE_ESCAPE.search(body):
        check_surrogates(value)
    return value


def check_depth(value: Any) -> None:
    """Depth-first without recursion, so no body is too deep to be measured."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else None
        if children is None:
            continue
        if depth > MAX_DEPTH:
            raise BadRequest(f"the request body nests arrays and objects deeper than {MAX_DEPTH} levels")
        stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))


def check_surrogates(value: Any) -> None:
    """A 400 naming the first field (in document order) whose key or text has a lone surrogate."""
    for path, text in _strings(value, ()):
        match = _SURROGATE.search(text)
        if match is not None:
            where = field_path(path) or "the top level"
            raise BadRequest(
                f"the request has a lone UTF-16 surrogate (\\u{ord(match.group()):04x}) at {where}: "
                "text must be valid Unicode (a surrogate escape belongs in a pair)",
                param=field_path(path) or None,
            )


def _strings(value: Any, path: tuple[str | int, ...]) -> Iterator[tuple[tuple[str | int, ...], str]]:
    """(path, string) for every key and string value; check_depth bounds the recursion."""
    if isinstance(value, str):
        yield path, value
    elif isinstance(value, dict):
        for key, child in value.items():
            yield (*path, key), key
            yield from _strings(child, (*path, key))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            yield from _strings(child, (*path, index))


def field_path(path: tuple[str | int, ...]) -> str:
    """("messages", 0, "content") -> "messages[0].content" (a surrogate in a key escaped)."""
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return _SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", out)


class JsonBodyMiddleware:
    def __init__(self, app: ASGIApp, *, error_body: ErrorBody, max_body_bytes: int) -> None:
        self.app = app
        self._error_body = error_body
        self._max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in _BODY_METHODS or scope["path"] in STREAMED_BODIES:
            await self.app(scope, receive, send)
            return
        claimed = next((v for k, v in scope["headers"] if k == b"content-type"), b"")
        if not _is_json(claimed):
            headers = [(k, v) for k, v in scope["headers"] if k != b"content-type"]
            scope = {**scope, "headers": [*headers, (b"content-type", _JSON)]}
        try:
            # The guard has read (and bounded) the body already for every path that needs a key;
            # then this is one replayed message.
            body = await read_body(receive, self._max_body_bytes, None)
            if body:
                parse_body(body)
        except EmberError as exc:
            await send_error(send, self._error_body(scope, exc), exc)
            return
        await self.app(scope, replay(body, receive), send)
