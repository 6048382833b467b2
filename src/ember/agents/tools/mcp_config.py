"""`[[mcp_servers]]` in ember.toml: one MCP server whose tools agents may call.

Invariants:
- exactly one transport: `command` (argv of a stdio server) or `url` (streamable HTTP);
- `name` is the tool prefix: its tools are "<name>__<tool>", so it holds only [A-Za-z0-9_-] and
  no "__" (the separator must split a prefixed name one way only);
- "${VAR}" in an `env` or `headers` value is replaced from ember's environment when the source is
  built (at start); a variable that is not set is a ConfigError naming it, never an empty string
  sent silently.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ember.errors import ConfigError

SEPARATOR = "__"  # between the server's name and its tool's name
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


class McpServerConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(pattern=r"^[A-Za-z0-9_-]+$", max_length=40)
    command: list[str] | None = Field(None, min_length=1)  # stdio: argv of the server
    url: str | None = None  # streamable HTTP: the MCP endpoint, e.g. http://host:port/mcp
    env: dict[str, str] = Field(default_factory=dict)  # stdio: added to the child's environment
    headers: dict[str, str] = Field(default_factory=dict)  # HTTP: sent with every request
    timeout: float = Field(30.0, gt=0)  # seconds per tool call
    startup_timeout: float = Field(20.0, gt=0)  # seconds to connect, initialize and list tools
    require_approval: list[str] | Literal["*"] = Field(default_factory=list)  # tool names, or all ("*", true)
    tools: list[str] | None = None  # the server's tool names agents may see (None: all of them)

    @field_validator("require_approval", mode="before")
    @classmethod
    def _all_or_none(cls, value: object) -> object:
        # `true` / `false` as the built-in tools' tables take it: every tool, or none.
        if value is True:
            return "*"
        if value is False:
            return []
        if value != "*" and not isinstance(value, list):
            raise ValueError(f'require_approval is a list of tool names, "*" or true, not {value!r}')
        return value

    @model_validator(mode="after")
    def _one_transport(self) -> McpServerConfig:
        if SEPARATOR in self.name or self.name.startswith("_") or self.name.endswith("_"):
            raise ValueError(f"mcp server name {self.name!r} may not contain '__' or start or end with '_'")
        if (self.command is None) == (self.url is None):
            raise ValueError(f"mcp server '{self.name}' needs exactly one of command (stdio) and url (HTTP)")
        if self.command is not None:
            if not self.command[0]:
                raise ValueError(f"mcp server '{self.name}': command[0] is empty")
            if self.headers:
                raise ValueError(f"mcp server '{self.name}': headers are for url servers, not command")
        if self.url is not None:
            if not re.match(r"^https?://", self.url):
                raise ValueError(f"mcp server '{self.name}': url must start with http:// or https://")
            if self.env:
                raise ValueError(f"mcp server '{self.name}': env is for command servers, not url")
        if self.tools is not None and isinstance(self.require_approval, list):
            outside = sorted(set(self.require_approval) - set(self.tools))
            if outside:
                raise ValueError(
                    f"mcp server '{self.name}': require_approval names {', '.join(outside)}, not in its tools list"
                )
        return self

    @property
    def transport(self) -> Literal["stdio", "http"]:
        return "stdio" if self.command is not None else "http"

    def prefixed(self, tool: str) -> str:
        return f"{self.name}{SEPARATOR}{tool}"

    def needs_approval(self, tool: str) -> bool:
        return self.require_approval == "*" or tool in self.require_approval

    def resolved_env(self, environ: Mapping[str, str]) -> dict[str, str]:
        return {key: _expand(self.name, f"env.{key}", value, environ) for key, value in self.env.items()}

    def resolved_headers(self, environ: Mapping[str, str]) -> dict[str, str]:
        return {key: _expand(self.name, f"headers.{key}", value, environ) for key, value in self.headers.items()}


def _expand(server: str, where: str, value: str, environ: Mapping[str, str]) -> str:
    def one(match: re.Match[str]) -> str:
        var = match.group(1)
        if var not in environ:
            raise ConfigError(
                f"mcp server '{server}': {where} uses ${{{var}}}, but the environment variable {var} is not set"
            )
        return environ[var]

    return _VAR.sub(one, value)
