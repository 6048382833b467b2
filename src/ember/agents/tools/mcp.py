"""MCP servers as tool sources: one `McpSource` per `[[mcp_servers]]` table.

(Being built: this commit is the interface the runner and the config check code against.)
"""

from __future__ import annotations

import os

from ember.agents.tools.mcp_config import McpServerConfig
from ember.agents.types import AgentTool

__all__ = ["McpServerConfig", "McpSource"]


class McpSource:
    """One MCP server's tools, as `ToolSource`.

    - `start()` connects (stdio: spawns `command` with `env`; HTTP: streamable HTTP with
      `headers`), initializes and lists the tools. It never raises for the server's failure: a
      server that cannot be reached is logged and retried in the background, and its calls are
      tool errors until it comes up.
    - `tools()` lists "<server>__<tool>" tools (the server's description and inputSchema); a
      name that would not fit OpenAI's 64 characters is left out with a warning.
    - `AgentTool.call` never raises for a failure: a timeout, an MCP error result, a dead server
      is a `ToolOutcome(is_error=True)`. A dead server is restarted (with backoff, a few tries a
      minute) and its tools listed again.
    - `known_tool_names()` are the prefixed names listed so far (empty before the first listing).
    - `aclose()` ends the session and the child process.

    A missing "${VAR}" in env or headers raises ConfigError here, in the constructor.
    """

    def __init__(self, config: McpServerConfig, environ: dict[str, str] | None = None) -> None:
        self.config = config
        self.name = config.name
        environ = dict(os.environ) if environ is None else environ
        self._env = config.resolved_env(environ)
        self._headers = config.resolved_headers(environ)

    async def start(self) -> None:
        return None

    async def tools(self) -> list[AgentTool]:
        return []

    def known_tool_names(self) -> list[str]:
        return []

    async def aclose(self) -> None:
        return None
