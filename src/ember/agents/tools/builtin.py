"""The built-in tools, built from the `[tools.*]` tables (builtin_config.py).

`builtin_tools(config, home)` returns the tools the config makes available, by name: a family
whose table is missing is not built, and fs_write only when `[tools.fs] writable = true`.
Building starts nothing (no process, no probe): bubblewrap is tried at the first shell run.
"""

from __future__ import annotations

from pathlib import Path

from ember.agents.tools.builtin_config import BUILTIN_TOOL_NAMES, BuiltinToolsConfig
from ember.agents.tools.fs import FsListTool, FsReadTool, FsRoot, FsWriteTool
from ember.agents.tools.http_fetch import HttpFetchTool
from ember.agents.tools.shell import ShellTool
from ember.agents.types import AgentTool

__all__ = ["BUILTIN_TOOL_NAMES", "builtin_tools"]


def builtin_tools(config: BuiltinToolsConfig, home: Path) -> dict[str, AgentTool]:
    """The built-in tools this config enables, by name (a subset of BUILTIN_TOOL_NAMES).
    `home` is EMBER_HOME: a relative `[tools.fs] root` is under it."""
    tools: list[AgentTool] = []
    if config.shell is not None:
        tools.append(ShellTool(config.shell))
    if config.fs is not None:
        root = FsRoot(config.fs, home)
        tools += [FsReadTool(root), FsListTool(root)]
        if config.fs.writable:
            tools.append(FsWriteTool(root))
    if config.http_fetch is not None:
        tools.append(HttpFetchTool(config.http_fetch))
    return {tool.spec.name: tool for tool in tools}
