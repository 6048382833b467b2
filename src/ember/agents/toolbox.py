"""Every tool an agent may reach, by name: the built-ins and each MCP server's tools.

The built-ins are built once from `[tools.*]`; an MCP server is a `ToolSource` with a life
(started with the app, closed with it) whose tool list is known only once it runs, and may
change when it restarts. `refresh()` reads the sources' lists (a run calls it when it starts),
so `spec`/`tool` answer from memory while a run builds its requests.

Invariants: a name is "<server>__<tool>" for an MCP tool and a bare name for a built-in, so
the two never collide; a source that fails to start or list is logged, never raised: its
tools are missing until it comes up, and calling one is a tool error the runner feeds back.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence

from ember.agents.tools.mcp_config import SEPARATOR
from ember.agents.types import AgentTool, ToolSource, ToolSpec

log = logging.getLogger("ember.agents")


class Toolbox:
    def __init__(self, builtins: Mapping[str, AgentTool], sources: Sequence[ToolSource] = ()) -> None:
        self._builtins = dict(builtins)
        self._sources = {source.name: source for source in sources}
        self._listed: dict[str, AgentTool] = {}  # the MCP tools, by prefixed name, as last listed

    async def start(self) -> None:
        """Start every source at once (each may take up to its startup timeout)."""

        async def one(name: str, source: ToolSource) -> None:
            try:
                await source.start()
            except Exception:  # a source's own failure must not stop the server
                log.exception("tool source %s failed to start; its tools are unavailable until it does", name)

        await asyncio.gather(*(one(name, source) for name, source in self._sources.items()))
        await self.refresh()

    async def refresh(self) -> None:
        listed: dict[str, AgentTool] = {}
        for name, source in self._sources.items():
            try:
                for tool in await source.tools():
                    listed[tool.spec.name] = tool
            except Exception:
                log.exception("listing the tools of %s failed", name)
        self._listed = listed

    def expand(self, names: Sequence[str]) -> list[str]:
        """An agent's tool names with "<server>__*" replaced by that server's listed tools."""
        out: list[str] = []
        for name in names:
            server, sep, rest = name.partition(SEPARATOR)
            if sep and rest == "*":
                out.extend(n for n in self._listed if n.partition(SEPARATOR)[0] == server)
            else:
                out.append(name)
        return out

    def tool(self, name: str) -> AgentTool | None:
        return self._builtins.get(name) or self._listed.get(name)

    def spec(self, name: str) -> ToolSpec | None:
        tool = self.tool(name)
        return tool.spec if tool is not None else None

    def unavailable(self, name: str) -> str:
        """Why a configured tool cannot be called now (fed back to the model as a tool error)."""
        server, sep, _ = name.partition(SEPARATOR)
        if sep and server in self._sources:
            return f"tool '{name}' is not available now: MCP server '{server}' is not up or does not list it"
        return f"tool '{name}' is not available on this server"

    def names(self) -> list[str]:
        return [*self._builtins, *self._listed]

    async def aclose(self) -> None:
        for name, source in self._sources.items():
            try:
                await source.aclose()
            except Exception:
                log.exception("closing tool source %s failed", name)
