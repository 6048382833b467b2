"""The fleet's part of ember.toml: a `[fleet]` table and its `[[fleet.nodes]]` enrolments.

```toml
[fleet]
join = "redis://10.0.0.5:6379/0"   # the registry (or `ember serve --join URL`, EMBER_FLEET_JOIN)
role = "both"                      # member: announce; gateway: read the registry; both
join_token_env = "EMBER_FLEET_TOKEN"
allowlist = ["<node id or public key>"]
labels = { tier = "edge", region = "eu" }
advertise_url = "http://10.0.0.7:11434"
ttl = 10                           # seconds; heartbeat defaults to ttl / 3

[[fleet.nodes]]                    # a server that cannot sign: vLLM, llama-server, any OpenAI API
name = "vllm-a"
kind = "vllm"
base_url = "http://10.0.0.9:8000"
labels = { tier = "cloud" }
api_key_env = "VLLM_KEY"
```

Invariants:
- EMBER_FLEET_* settings (and `ember serve --join`) override the table's keys one by one.
- A bad value fails at start as one line naming the file and line (as gateway/config.py does).
- The allowlist holds node ids only once loaded: a public key given there is turned into its id,
  so the registry compares one kind of thing.
- The join token itself is never in the file: `join_token_env` names the variable that holds it.
"""

from __future__ import annotations

import os
import re
import socket
import tomllib
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ember.config import Settings
from ember.errors import ConfigError
from ember.fleet.identity import decode_key, fingerprint
from ember.gateway.config import line_of

_HEX_ID = re.compile(r"^[0-9a-f]{64}$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class EnrolledNode(_Strict):
    """An engine the operator puts in the fleet by hand; its models and load are read over HTTP."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    kind: Literal["llama-server", "vllm", "openai"]
    base_url: str  # the server's root; a trailing /v1 is taken off (its API is at base_url/v1)
    labels: dict[str, str] = Field(default_factory=dict)
    api_key_env: str | None = None  # the environment variable holding its API key
    slots: int | None = Field(None, ge=1)  # for servers that publish running/waiting but no slot count

    @field_validator("base_url")
    @classmethod
    def _root(cls, value: str) -> str:
        if not re.match(r"^https?://[^/]", value):
            raise ValueError(f"base_url must start with http:// or https://, not {value!r}")
        return value.rstrip("/").removesuffix("/v1")

    def api_key(self) -> str | None:
        return os.environ.get(self.api_key_env) if self.api_key_env else None


class FleetConfig(_Strict):
    join: str | None = None  # Redis URL of the registry
    role: Literal["both", "member", "gateway"] = "both"
    name: str | None = Field(None, min_length=1, max_length=128)
    join_token_env: str = "EMBER_FLEET_TOKEN"
    allowlist: list[str] = Field(default_factory=list)
    labels: dict[str, str] = Field(default_factory=dict)
    advertise_url: str | None = None
    ttl: float = Field(10.0, gt=0, le=3600)
    heartbeat: float | None = Field(None, gt=0)
    refresh: float = Field(1.0, gt=0, le=60)  # how often a gateway re-reads the registry
    scrape: float = Field(3.0, gt=0, le=300)  # how often enrolled nodes' models and load are read
    prefix: str = Field("ember:fleet:", min_length=1)  # the registry's Redis keys start with this
    node_api_key_env: str | None = None  # the key a gateway sends to member nodes that require keys
    nodes: list[EnrolledNode] = Field(default_factory=list)

    @field_validator("join")
    @classmethod
    def _redis_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if not re.match(r"^(redis|rediss|unix)://", value):
            raise ValueError(f"join must be a Redis URL (redis://host:6379/0), not {value!r}")
        from redis.connection import parse_url  # checks the URL's parts; connects to nothing

        try:
            parse_url(value)
        except ValueError as exc:
            raise ValueError(f"join is not a valid Redis URL: {exc}") from None
        return value

    @field_validator("advertise_url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        if value is not None and not re.match(r"^https?://[^/]", value):
            raise ValueError(f"advertise_url must start with http:// or https://, not {value!r}")
        return None if value is None else value.rstrip("/")

    @field_validator("allowlist")
    @classmethod
    def _ids(cls, entries: list[str]) -> list[str]:
        ids = []
        for entry in entries:
            text = entry.strip().lower() if _HEX_ID.match(entry.strip().lower()) else entry.strip()
            if _HEX_ID.match(text):
                ids.append(text)
                continue
            raw = decode_key(text)
            if raw is None:
                raise ValueError(f"{entry!r} is neither a node id (64 hex digits) nor a public key (base64)")
            ids.append(fingerprint(raw))
        return ids

    @model_validator(mode="after")
    def _consistent(self) -> FleetConfig:
        if self.heartbeat is not None and self.heartbeat >= self.ttl:
            raise ValueError(f"heartbeat ({self.heartbeat:g} s) must be shorter than ttl ({self.ttl:g} s)")
        names = [n.name for n in self.nodes]
        for name in names:
            if names.count(name) > 1:
                raise ValueError(f"fleet node name '{name}' is used twice")
        return self

    @property
    def heartbeat_s(self) -> float:
        return self.heartbeat if self.heartbeat is not None else self.ttl / 3

    @property
    def announces(self) -> bool:
        return self.join is not None and self.role in ("both", "member")

    @property
    def reads_registry(self) -> bool:
        return self.join is not None and self.role in ("both", "gateway")

    @property
    def active(self) -> bool:
        """Whether this node takes part in a fleet at all (a registry, or enrolled nodes)."""
        return self.join is not None or bool(self.nodes)

    def join_token(self) -> str | None:
        return os.environ.get(self.join_token_env) or None

    def node_api_key(self) -> str | None:
        return os.environ.get(self.node_api_key_env) if self.node_api_key_env else None

    def node_name(self) -> str:
        return self.name or socket.gethostname()

    def advertised(self, settings: Settings) -> str:
        """What others reach this node at: advertise_url, else the bind address (a wildcard bind
        is advertised under the host's name, which is what other machines can resolve)."""
        if self.advertise_url:
            return self.advertise_url
        addr, port = settings.bind
        if addr in ("0.0.0.0", "::", ""):
            return f"http://{socket.gethostname()}:{port}"
        return settings.base_url


# Settings fields (EMBER_FLEET_*) and the [fleet] keys they override.
_OVERRIDES = {
    "fleet_join": "join",
    "fleet_role": "role",
    "fleet_name": "name",
    "fleet_advertise_url": "advertise_url",
    "fleet_labels": "labels",
    "fleet_allowlist": "allowlist",
    "fleet_ttl": "ttl",
    "fleet_heartbeat": "heartbeat",
}


def load_fleet_config(settings: Settings) -> FleetConfig:
    """[fleet] from ember.toml with the EMBER_FLEET_* settings over it; an inactive one if neither."""
    path = settings.config
    table: dict[str, Any] = {}
    text = ""
    if path is not None:
        try:
            text = path.read_text(encoding="utf-8")
            data = tomllib.loads(text)
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"{path}: {exc}") from exc
        raw = data.get("fleet", {})
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}:{line_of(text, ['fleet']) or '?'}: fleet must be a table ([fleet])")
        table = dict(raw)
    overridden = set()
    for field, key in _OVERRIDES.items():
        value = getattr(settings, field)
        if value is not None:
            table[key] = value
            overridden.add(key)
    try:
        return FleetConfig.model_validate(table)
    except ValidationError as exc:
        raise _error(path, text, overridden, exc) from exc


def redacted_url(url: str | None) -> str | None:
    """A URL fit for logs and answers: its password (a Redis URL may carry one) replaced by ***."""
    if url is None:
        return None
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username or ''}:***@{parts.hostname or ''}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def _error(path: Path | None, text: str, overridden: set[str], exc: ValidationError) -> ConfigError:
    first = exc.errors()[0]
    loc = [p for p in first.get("loc", ()) if p not in ("function-after",)]
    message = str(first.get("msg", "invalid value")).removeprefix("Value error, ")
    where = ".".join(f"[{p}]" if isinstance(p, int) else str(p) for p in ["fleet", *loc]).replace(".[", "[")
    key = str(loc[0]) if loc else None
    if path is None or (key is not None and key in overridden):
        # The value came from the environment or a flag: name the variable.
        setting = next((f for f, k in _OVERRIDES.items() if k == key), None)
        source = f"EMBER_{setting.upper()}" if setting else "the fleet settings"
        if setting == "fleet_join":
            source = "--join or " + source
        return ConfigError(f"{source}: {where}: {message}")
    line = _line(text, loc)
    return ConfigError(f"{path}:{line}: {where}: {message}" if line else f"{path}: {where}: {message}")


def _line(text: str, loc: list[Any]) -> int | None:
    if len(loc) >= 2 and loc[0] == "nodes" and isinstance(loc[1], int):
        return line_of(text, ["fleet.nodes", *loc[1:]])
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if re.match(r"^\s*\[\s*fleet\s*\]", line)), None)
    if start is None:
        return line_of(text, ["fleet"])
    if loc:
        assignment = re.compile(rf"^\s*{re.escape(str(loc[0]))}\s*=")
        for i in range(start + 1, len(lines)):
            if re.match(r"^\s*\[", lines[i]):
                break
            if assignment.match(lines[i]):
                return i + 1
    return start + 1
