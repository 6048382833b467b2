"""The tools both test MCP servers offer (a stdio one and a streamable-HTTP one)."""

from __future__ import annotations

import asyncio
import os

from mcp.server.mcpserver import Context, Image, MCPServer
from mcp.server.mcpserver.exceptions import ToolError


def build(name: str) -> MCPServer:
    server = MCPServer(name)

    @server.tool(description="Add two integers.")
    def add(a: int, b: int) -> int:
        return a + b

    @server.tool(description="Echo the text back.")
    def echo(text: str) -> str:
        return text

    @server.tool(description="Sleep for some seconds, then say so.")
    async def slow(seconds: float) -> str:
        await asyncio.sleep(seconds)
        return f"slept {seconds}"

    @server.tool(description="Kill this server's own process.")
    def crash() -> str:
        os._exit(3)

    @server.tool(description="Always fails with an MCP tool error.")
    def fail() -> str:
        raise ToolError("fail was asked to fail")

    @server.tool(description="The server's process id.")
    def pid() -> int:
        return os.getpid()

    @server.tool(description="A 1x1 PNG image.")
    def picture() -> Image:
        png = bytes.fromhex(
            "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
            "1f15c4890000000d49444154789c6360000002000154a24f5d0000000049454e44ae426082"
        )
        return Image(data=png, format="png")

    @server.tool(description="The value of an environment variable of the server.")
    def getenv(var: str) -> str:
        return os.environ.get(var, "")

    @server.tool(description="Add the tool 'extra' and tell the client the list changed.")
    async def grow(ctx: Context) -> str:
        def extra() -> str:
            return "extra here"

        server.add_tool(extra, name="extra", description="Added by grow.")
        await ctx.session.send_tool_list_changed()  # the plain notification (2025-11-25), as most servers send it
        return "grown"

    # Names that are no OpenAI function name once prefixed: the client leaves them out.
    @server.tool(name="has.dot", description="A dotted name.")
    def dotted() -> str:
        return "dot"

    @server.tool(name="x" * 62, description="A name too long with any prefix.")
    def long_name() -> str:
        return "long"

    return server
