"""Treat every request body as JSON, whatever Content-Type it claims.

Ollama does, so `curl -d '{...}' /api/chat` (sent as form-encoded) works there;
without this FastAPI would not parse such a body as JSON at all.
"""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

_JSON = b"application/json"


class JsonBodyMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] in ("POST", "PUT", "PATCH", "DELETE"):
            claimed = next((v for k, v in scope["headers"] if k == b"content-type"), b"")
            if not claimed.startswith(_JSON):
                headers = [(k, v) for k, v in scope["headers"] if k != b"content-type"]
                scope = {**scope, "headers": [*headers, (b"content-type", _JSON)]}
        await self.app(scope, receive, send)
