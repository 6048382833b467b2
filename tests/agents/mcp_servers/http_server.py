"""A streamable-HTTP MCP server for the tests: `python -m tests.agents.mcp_servers.http_server PORT TOKEN`.

Every request must carry `Authorization: Bearer TOKEN`, else it is refused with 401 (so a test
can see that ember sends the header it took from the environment).
"""

from __future__ import annotations

import sys

import uvicorn
from starlette.types import ASGIApp, Receive, Scope, Send
from tests.agents.mcp_servers.tools import build


class RequireToken:
    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app = app
        self.expected = f"Bearer {token}".encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and dict(scope["headers"]).get(b"authorization") != self.expected:
            await send({"type": "http.response.start", "status": 401, "headers": [(b"content-type", b"text/plain")]})
            await send({"type": "http.response.body", "body": b"bad token"})
            return
        await self.app(scope, receive, send)


if __name__ == "__main__":
    port, token = int(sys.argv[1]), sys.argv[2]
    app = build("http-test").streamable_http_app()
    uvicorn.run(RequireToken(app, token), host="127.0.0.1", port=port, log_level="warning")
