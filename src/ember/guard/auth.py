"""The guard's ASGI middleware and its tables: which scope each route needs, when keys are required.

Pure ASGI (not BaseHTTPMiddleware) so streaming responses pass through untouched and the cost per
request stays a few microseconds. It runs before the JSON-body middleware and the routes, so a
rejection never reaches a route; it sends errors itself, in the body the API layer renders for the
request's protocol (passed in as `error_body`).
"""

from __future__ import annotations

import ipaddress
import json
import time
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ember.config import Settings
from ember.errors import BadRequest, EmberError, Forbidden, PayloadTooLarge, RateLimited

if TYPE_CHECKING:
    from ember.guard import Guard
    from ember.guard.keys import KeyRecord

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

OPEN = "open"  # no key needed
ANY = ""  # a valid key, whatever its scopes

_OPEN_PATHS = frozenset({"/", "/health", "/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json", "/ui", "/ui/"})
# The dashboard's page and files hold no secret (dashboard/router.py); every API call it makes is checked.
_OPEN_PREFIXES = ("/ui/static/",)
_EXACT = {
    "/v1/chat/completions": "chat",
    "/v1/completions": "chat",
    "/v1/responses": "chat",
    "/v1/messages": "chat",
    "/v1/messages/count_tokens": "chat",
    "/api/chat": "chat",
    "/api/generate": "chat",
    "/v1/embeddings": "embed",
    "/api/embed": "embed",
    "/api/embeddings": "embed",
    "/v1/models": "models",
    "/api/tags": "models",
    "/api/ps": "models",
    "/api/show": "models",
    "/api/version": "models",
    "/api/pull": "admin",
    "/api/delete": "admin",
    "/api/copy": "admin",
    "/api/push": "admin",
    "/api/create": "admin",
    "/metrics": "admin",
    "/v1/files": ANY,
    "/v1/batches": ANY,
}
_PREFIXES = (("/v1/models/", "models"), ("/v1/responses/", "chat"), ("/admin/", "admin"), ("/api/blobs/", "admin"))
# Files and batches: any valid key; each batch line is checked against its own endpoint's scope.
_JOB_PREFIXES = (("/v1/files/", ANY), ("/v1/batches/", ANY))


def unmetered(path: str) -> bool:
    """Managing files and batches spends nothing and is not limited (a spent budget must not keep a
    key from its results); each line a batch runs is admitted, limited and counted on its own."""
    return any(path == p.rstrip("/") or path.startswith(p) for p, _ in _JOB_PREFIXES)


# Uploads: the route reads and bounds these bodies itself (EMBER_MAX_FILE_BYTES), streamed to disk.
STREAMED_BODIES = frozenset({"/v1/files"})
# A batch line runs in-process as its batch's key (jobs/runner.py): the runner puts the key's
# record in the ASGI scope under this name. Only code in this process can set a scope key (a
# network client controls headers, never the scope), and the key store keeps only hashes, so
# there is no secret to present; the record is still checked (expiry, revocation, scopes, limits).
BATCH_KEY = "ember.batch_key"
# Bodies of these are peeked at for the message and max_tokens caps.
_GENERATION = frozenset(
    {"/v1/chat/completions", "/v1/completions", "/v1/messages", "/v1/responses", "/api/chat", "/api/generate"}
)
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


def required_scope(path: str) -> str:
    """OPEN, ANY (a valid key) or the scope a route needs."""
    if path in _OPEN_PATHS or path.startswith(_OPEN_PREFIXES):
        return OPEN
    scope = _EXACT.get(path.rstrip("/") or "/")
    if scope is not None:
        return scope
    for prefix, needed in _PREFIXES + _JOB_PREFIXES:
        if path.startswith(prefix) or path == prefix.rstrip("/"):
            return needed
    return ANY  # unknown routes still need a key: a 404 must not be a way around auth


def is_loopback(addr: str) -> bool:
    if addr == "localhost":
        return True
    try:
        return ipaddress.ip_address(addr).is_loopback
    except ValueError:
        return False  # a host name or "": could be any interface


def auth_enabled(settings: Settings) -> bool:
    """Keys are required when asked, or when the server listens beyond loopback (unless turned off)."""
    if settings.auth == "off":
        return False
    if settings.auth == "required":
        return True
    return not is_loopback(settings.bind[0])


@dataclass(frozen=True)
class Principal:
    """Who is calling: what `request.state.principal` holds for routes and the usage log."""

    name: str
    scopes: frozenset[str]
    key: KeyRecord


def presented_key(headers: list[tuple[bytes, bytes]]) -> str | None:
    for name, value in headers:
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip()
        elif name == b"x-api-key" and value:
            return value.decode("latin-1").strip()
    return None


def check_caps(settings: Settings, path: str, body: bytes) -> None:
    """400 for too many messages or too large a max_tokens. A body that is not JSON is the route's to judge."""
    if path not in _GENERATION or not body:
        return
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):  # not JSON, or nested too deep: the JSON-body check says so
        return
    if not isinstance(data, dict):
        return
    field = "input" if path == "/v1/responses" else "messages"  # a Responses input is a list of items
    messages = data.get(field)
    if isinstance(messages, list) and len(messages) > settings.max_messages:
        raise BadRequest(f"too many messages: {len(messages)}, at most {settings.max_messages}", param=field)
    limit = settings.max_tokens_limit
    if limit is None:
        return
    options = data.get("options")
    asked = [
        ("max_tokens", data.get("max_tokens")),
        ("max_completion_tokens", data.get("max_completion_tokens")),
        ("max_output_tokens", data.get("max_output_tokens")),  # /v1/responses
        ("num_predict", options.get("num_predict") if isinstance(options, dict) else None),
    ]
    for param, value in asked:
        if isinstance(value, int) and not isinstance(value, bool) and value > limit:
            raise BadRequest(f"{param} {value} is above this server's limit of {limit}", param=param)


async def read_body(receive: Receive, limit: int, declared: int | None) -> bytes:
    """The whole body, counted as it streams in: 413 past `limit` whatever Content-Length said."""
    too_large = PayloadTooLarge(f"request body larger than this server's limit of {limit} bytes")
    if declared is not None and declared > limit:
        raise too_large
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break  # disconnect: let the route see an empty body; nobody is listening anyway
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise too_large
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


def replay(body: bytes, receive: Receive) -> Receive:
    """A receive that hands the buffered body once, then the client's own (for disconnects)."""
    sent = False

    async def again() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return again


# The API layer's renderer: an error as the body the request's protocol answers with.
ErrorBody = Callable[[Scope, EmberError], dict[str, Any]]


async def send_error(
    send: Send, body_of: dict[str, Any], error: EmberError, extra: dict[str, str] | None = None
) -> None:
    body = json.dumps(body_of).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(k.lower().encode(), v.encode()) for k, v in {**(extra or {}), **error.headers}.items()]
    await send({"type": "http.response.start", "status": error.status_code, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _declared_length(headers: list[tuple[bytes, bytes]]) -> int | None:
    for name, value in headers:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


class GuardMiddleware:
    """Authenticate, authorise, cap and limit; sets scope["state"]["principal"]."""

    def __init__(self, app: Any, *, error_body: ErrorBody, protocol_name: Callable[[Scope], str]) -> None:
        self.app = app
        self._error_body = error_body
        self._protocol_name = protocol_name

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        services = (
            getattr(getattr(scope.get("app"), "state", None), "services", None) if scope["type"] == "http" else None
        )
        guard: Guard | None = getattr(services, "guard", None)
        if guard is None:  # lifespan not run (or not HTTP): nothing is served without it anyway
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        path: str = scope["path"]
        needed = required_scope(path)
        key = None
        admission = None
        body: bytes | None = None
        try:
            if guard.enabled and needed != OPEN:
                trusted = scope.get(BATCH_KEY)
                if trusted is not None:
                    key = guard.trust(trusted)
                else:
                    key = guard.authenticate(presented_key(scope["headers"]))
                if needed and needed not in key.scopes:
                    raise Forbidden(f"this key lacks the '{needed}' scope")
            # Admission before the body: a slow upload holds its concurrency slot like any request.
            if key is not None and key.limited and not unmetered(path):
                admission = await guard.admit(key)
                if not admission.ok:
                    code = "insufficient_quota" if admission.reason == "budget" else None
                    raise RateLimited(admission.message, retry_after=admission.retry_after, code=code)
            if scope["method"] in _BODY_METHODS and needed != OPEN and path not in STREAMED_BODIES:
                body = await read_body(receive, guard.settings.max_body_bytes, _declared_length(scope["headers"]))
                check_caps(guard.settings, path, body)
                receive = replay(body, receive)
        except EmberError as exc:
            refusal = admission.reason if admission is not None and not admission.ok else None
            guard.reject(scope, exc, key, body, started, refusal, protocol=self._protocol_name(scope))
            if admission is not None and admission.ok and key is not None:
                guard.release(key, admission)  # admitted, then refused for its body
            await send_error(send, self._error_body(scope, exc), exc, admission.headers if admission else None)
            return
        if key is not None:
            scope.setdefault("state", {})["principal"] = Principal(key.name, key.scopes, key)
        extra = [(k.encode(), v.encode()) for k, v in admission.headers.items()] if admission else []

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        try:
            await self.app(scope, receive, send_with_headers if extra else send)
        finally:
            if admission is not None and key is not None:
                guard.release(key, admission)
