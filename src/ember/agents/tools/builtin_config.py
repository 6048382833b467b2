"""The built-in tools' part of ember.toml: the `[tools.shell]`, `[tools.fs]` and `[tools.http_fetch]`
tables.

A tool whose table is missing is not built (agents/config.py says "tool X needs [tools.Y]").
Durations are seconds (a number, or "30s", "2m"), sizes bytes unless the name says MB. Nothing
here runs anything: the tools (shell.py, fs.py, http_fetch.py) take these frozen models as
their settings.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator

from ember.config import parse_duration

# The tool names the built-ins answer to, and the table each one needs.
BUILTIN_TOOL_NAMES = ("http_fetch", "shell", "fs_read", "fs_write", "fs_list")
TOOL_TABLE = {
    "http_fetch": "http_fetch",
    "shell": "shell",
    "fs_read": "fs",
    "fs_write": "fs",
    "fs_list": "fs",
}

_HOST = re.compile(r"^(\*|(\*\.)?[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*)$")


def _seconds(value: Any) -> Any:
    """ "30s", "2m", "500ms" or a number of seconds, as the agents' `deadline` takes."""
    return parse_duration(value) if isinstance(value, str) else value


Seconds = Annotated[float, BeforeValidator(_seconds)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ShellConfig(_Strict):
    """`[tools.shell]`: which commands may run, and the limits of each run."""

    allow: tuple[str, ...] = Field(min_length=1)  # bare command names, e.g. ["echo", "ls"]
    cpu_seconds: int = Field(10, ge=1)  # RLIMIT_CPU
    memory_mb: int = Field(512, ge=16)  # RLIMIT_AS (address space, not resident memory)
    max_files: int = Field(64, ge=8)  # RLIMIT_NOFILE
    max_processes: int = Field(32, ge=1)  # processes in the run (see sandbox.py for how)
    max_file_mb: int = Field(16, ge=1)  # RLIMIT_FSIZE
    timeout: Seconds = Field(30.0, gt=0)  # wall clock; the whole process group is killed after
    max_output_bytes: int = Field(65536, ge=256)  # each of stdout and stderr
    bubblewrap: Literal["auto", "always", "never"] = "auto"
    require_approval: bool = False

    @field_validator("allow")
    @classmethod
    def _bare_names(cls, names: tuple[str, ...]) -> tuple[str, ...]:
        for name in names:
            if not re.fullmatch(r"[A-Za-z0-9_.+-]+", name) or name in (".", ".."):
                raise ValueError(f"allow holds bare command names (no path, no spaces), not {name!r}")
        return names


class FsConfig(_Strict):
    """`[tools.fs]`: the directory fs_read / fs_write / fs_list work under."""

    root: str = Field(min_length=1)  # relative paths are under EMBER_HOME
    max_bytes: int = Field(1 << 20, ge=1)  # the most a read returns or a write takes
    writable: bool = False  # fs_write is built only when true
    max_entries: int = Field(1000, ge=1)  # the most names fs_list returns
    require_approval: bool = False


class HttpFetchConfig(_Strict):
    """`[tools.http_fetch]`: which hosts may be fetched, and the caps of one fetch."""

    # Host names or IP addresses. "*" (any host) and "*.example.com" (its subdomains) match only
    # hosts whose every address is public; a private or loopback address must be named exactly.
    allow_hosts: tuple[str, ...] = Field(min_length=1)
    max_bytes: int = Field(1 << 20, ge=1)  # of the body; the rest is cut
    timeout: Seconds = Field(15.0, gt=0)  # the whole fetch, redirects included
    max_redirects: int = Field(5, ge=0)
    methods: tuple[Literal["GET", "POST"], ...] = Field(("GET",), min_length=1)
    require_approval: bool = False

    @field_validator("allow_hosts")
    @classmethod
    def _hosts(cls, hosts: tuple[str, ...]) -> tuple[str, ...]:
        out = []
        for host in hosts:
            name = host.strip().lower().removeprefix("[").removesuffix("]")
            try:
                out.append(str(ipaddress.ip_address(name)))
                continue
            except ValueError:
                pass
            if not _HOST.match(name):
                raise ValueError(f"allow_hosts holds host names or IPs (no scheme, port or path), not {host!r}")
            out.append(name)
        return tuple(out)


class BuiltinToolsConfig(_Strict):
    """The `[tools]` table: one optional sub-table per built-in family."""

    shell: ShellConfig | None = None
    fs: FsConfig | None = None
    http_fetch: HttpFetchConfig | None = None

    def unavailable(self, tool: str) -> str | None:
        """Why a built-in tool cannot be built from this config ("needs [tools.fs] in
        ember.toml"), or None when it can. `tool` is one of BUILTIN_TOOL_NAMES."""
        tables: dict[str, ShellConfig | FsConfig | HttpFetchConfig | None] = {
            "shell": self.shell,
            "fs": self.fs,
            "http_fetch": self.http_fetch,
        }
        table = TOOL_TABLE[tool]
        if tables[table] is None:
            return f"needs [tools.{table}] in ember.toml"
        if tool == "fs_write" and self.fs is not None and not self.fs.writable:
            return "needs writable = true in [tools.fs]"
        return None
