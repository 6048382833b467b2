"""Which wire protocol a request speaks: chosen once, from its path, by ProtocolMiddleware.

Everything that renders for a client (error handlers, the guard's refusals, stream framing)
asks `protocol_of(scope)` rather than looking at the path again. A new protocol is one more
package under api/ with a render module, and one more entry in PROTOCOLS.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any

from ember.api.anthropic import render as anthropic_render
from ember.api.ollama import render as ollama_render
from ember.api.openai import render as openai_render
from ember.api.responses import render as responses_render
from ember.errors import EmberError

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


@dataclass(frozen=True)
class WireProtocol:
    name: str
    prefixes: tuple[str, ...]  # paths it owns; the longest matching prefix wins
    error_body: Callable[[EmberError], dict[str, Any]]
    frame: Callable[[dict[str, Any]], str]  # one streamed chunk in the protocol's framing
    stream_end: str  # what closes a stream ("" for none)
    media_type: str  # of a streamed response

    def stream_error(self, error: EmberError) -> str:
        """An error after the stream has begun: the status is sent, so it goes in-band."""
        return self.frame(self.error_body(error))


OPENAI = WireProtocol(
    name="openai",
    prefixes=("/v1",),
    error_body=openai_render.error_body,
    frame=openai_render.frame,
    stream_end=openai_render.STREAM_END,
    media_type=openai_render.MEDIA_TYPE,
)
# Ollama's plain {"error": "..."} is also the shape of every path that is no API's (/admin, /).
OLLAMA = WireProtocol(
    name="ollama",
    prefixes=("/api", ""),
    error_body=ollama_render.error_body,
    frame=ollama_render.frame,
    stream_end=ollama_render.STREAM_END,
    media_type=ollama_render.MEDIA_TYPE,
)
ANTHROPIC = WireProtocol(
    name="anthropic",
    prefixes=("/v1/messages",),
    error_body=anthropic_render.error_body,
    frame=anthropic_render.frame,
    stream_end=anthropic_render.STREAM_END,
    media_type=anthropic_render.MEDIA_TYPE,
)
# The Responses API: OpenAI's error shape, named SSE events (`event: <type>`), no [DONE].
RESPONSES = WireProtocol(
    name="responses",
    prefixes=("/v1/responses",),
    error_body=responses_render.error_body,
    frame=responses_render.frame,
    stream_end=responses_render.STREAM_END,
    media_type=responses_render.MEDIA_TYPE,
)
PROTOCOLS = (OPENAI, OLLAMA, ANTHROPIC, RESPONSES)

_BY_PREFIX = sorted(((prefix, p) for p in PROTOCOLS for prefix in p.prefixes), key=lambda item: -len(item[0]))


def protocol_for_path(path: str) -> WireProtocol:
    for prefix, protocol in _BY_PREFIX:
        if path == prefix or path.startswith(prefix + "/") or not prefix:
            return protocol
    raise AssertionError("the empty prefix matches every path")


def protocol_of(scope: Scope) -> WireProtocol:
    """The protocol ProtocolMiddleware chose for this request."""
    chosen = scope.get("state", {}).get("protocol")
    return chosen if isinstance(chosen, WireProtocol) else protocol_for_path(scope.get("path", ""))


def error_body_for(scope: Scope, error: EmberError) -> dict[str, Any]:
    return protocol_of(scope).error_body(error)


def protocol_name(scope: Scope) -> str:
    return protocol_of(scope).name


class ProtocolMiddleware:
    """Outermost: decides the request's protocol once and keeps it in scope["state"]."""

    def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]]) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            scope.setdefault("state", {})["protocol"] = protocol_for_path(scope["path"])
        await self.app(scope, receive, send)
