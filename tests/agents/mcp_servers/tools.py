"""The tools both test MCP servers offer (a stdio one and a streamable-HTTP one)."""

from __future__ import annotations

import asyncio
import os

from mcp.server.mcpserver import Image, MCPServer
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

    return server
