"""The gateway's part of ember.toml: [[providers]], [[routes]] and their defaults.

A bad file fails at start with the file, the line and what is wrong: tomllib gives the
line of a syntax error; for a wrong value we find the line of the key in its table.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ember.errors import ConfigError

LOCAL = "local"  # the provider name of this node's own models; always there
FLEET = "fleet"  # route targets "fleet/MODEL": the fleet's nodes that serve MODEL (reserved)

Strategy = Literal["fallback", "race", "cheapest", "fastest", "least-busy", "weighted", "auto", "fleet"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ProviderConfig(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    kind: Literal["local", "openai", "ollama", "anthropic"]
    base_url: str | None = None  # openai: ".../v1"; ollama, anthropic: the server's root URL
    api_key_env: str | None = None  # the environment variable holding the key
    price_in: float = Field(0.0, ge=0)  # USD per million prompt tokens
    price_out: float = Field(0.0, ge=0)  # USD per million completion tokens
    connect_timeout: float = Field(5.0, gt=0)
    first_token_timeout: float = Field(60.0, gt=0)
    total_timeout: float = Field(600.0, gt=0)
    max_connections: int = Field(256, ge=1)
    # Idle pooled connections are dropped after this long: below the upstream's own keep-alive
    # (uvicorn's and llama-server's is 5 s), so ember never sends on one the upstream is closing.
    keepalive_expiry: float = Field(2.0, ge=0)
    headers: dict[str, str] = Field(default_factory=dict)
    # kind = "anthropic" only: the anthropic-version header (None: "2023-06-01"), and the
    # max_tokens sent when a request has none, which Anthropic's API requires (None: 4096).
    anthropic_version: str | None = Field(None, min_length=1)
    default_max_tokens: int | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _url_for_remote(self) -> ProviderConfig:
        if self.kind != "local" and not self.base_url:
            raise ValueError(f"provider '{self.name}' of kind {self.kind} needs base_url")
        if self.base_url and not re.match(r"^https?://", self.base_url):
            raise ValueError(f"base_url must start with http:// or https://, not {self.base_url!r}")
        if self.kind == "anthropic" and self.base_url and self.base_url.rstrip("/").endswith("/v1"):
            # The paths add /v1 (as the anthropic SDK's do): ".../v1/v1/messages" would be a 404.
            raise ValueError(
                f"base_url of an anthropic provider is the API's root, without /v1 (as the anthropic SDK's "
                f"base_url): {self.base_url.rstrip('/').removesuffix('/v1')!r}, not {self.base_url!r}"
            )
        if self.kind != "anthropic":
            for key in ("anthropic_version", "default_max_tokens"):
                if getattr(self, key) is not None:
                    raise ValueError(f"{key} is for providers of kind anthropic, not {self.kind}")
        return self


class BreakerConfig(_Strict):
    failures: int = Field(5, ge=1)  # consecutive failures that open the breaker
    cooldown: float = Field(30.0, gt=0)  # seconds open before one probe is let through (half-open)


class RetryConfig(_Strict):
    passes: int = Field(2, ge=1)  # times the whole chain may be walked
    backoff: float = Field(0.1, ge=0)  # first pause between passes, doubled each time, with jitter
    max_backoff: float = Field(2.0, ge=0)
    deadline: float = Field(30.0, gt=0)  # no new attempt starts after this many seconds


class AutoRule(_Strict):
    """`auto`: short, simple requests to `small`; long or demanding ones to `strong`."""

    small: str
    strong: str
    max_prompt_chars: int = Field(2000, ge=0)  # longer prompts are demanding
    max_tokens: int = Field(512, ge=0)  # larger max_tokens is demanding
    tools_to_strong: bool = True
    priority_header: str = "high"  # X-Ember-Priority value that means demanding


class RouteConfig(_Strict):
    model: str = Field(min_length=1)  # the name clients ask for
    targets: list[str] = Field(min_length=1)  # "provider/model"
    strategy: Strategy = "fallback"
    weights: list[float] | None = None  # weighted: one per target
    race: int = Field(2, ge=2)  # race: how many targets start at once
    retry: RetryConfig | None = None
    breaker: BreakerConfig | None = None
    auto: AutoRule | None = None
    # fleet: the nodes' `tier` labels allowed, in order of preference (e.g. ["edge", "cloud"]);
    # empty: every node that serves the model
    tiers: list[str] = Field(default_factory=list)

    @field_validator("targets")
    @classmethod
    def _provider_slash_model(cls, targets: list[str]) -> list[str]:
        for target in targets:
            provider, _, model = target.partition("/")
            if not provider or not model:
                raise ValueError(f"target {target!r} must be written provider/model, e.g. local/smollm2:135m")
        return targets

    @model_validator(mode="after")
    def _strategy_needs(self) -> RouteConfig:
        if self.strategy == "weighted":
            if self.weights is None or len(self.weights) != len(self.targets):
                raise ValueError("strategy weighted needs weights, one per target")
            if any(w < 0 for w in self.weights) or sum(self.weights) <= 0:
                raise ValueError("weights must be non-negative and not all zero")
        if self.strategy == "auto":
            if self.auto is None:
                raise ValueError("strategy auto needs an [routes.auto] table with small and strong")
            for target in (self.auto.small, self.auto.strong):
                if target not in self.targets:
                    raise ValueError(f"auto target {target!r} is not one of the route's targets")
        fleet_targets = [t for t in self.targets if t.partition("/")[0] == FLEET]
        if self.strategy == "fleet" and not fleet_targets:
            raise ValueError('strategy fleet needs a target "fleet/MODEL" (the fleet\'s nodes that serve MODEL)')
        if self.strategy != "fleet" and fleet_targets:
            raise ValueError(f"target {fleet_targets[0]!r} is the fleet's: it needs strategy fleet")
        if self.tiers and self.strategy != "fleet":
            raise ValueError("tiers is for strategy fleet")
        if len(set(self.tiers)) != len(self.tiers) or not all(self.tiers):
            raise ValueError("tiers must be distinct, non-empty tier labels")
        return self


class GatewayConfig(_Strict):
    providers: list[ProviderConfig] = Field(default_factory=list)
    routes: list[RouteConfig] = Field(default_factory=list)
    retry: RetryConfig = Field(default_factory=RetryConfig)
    breaker: BreakerConfig = Field(default_factory=BreakerConfig)

    @model_validator(mode="after")
    def _names(self) -> GatewayConfig:
        names = [p.name for p in self.providers]
        for name in names:
            if names.count(name) > 1:
                raise ValueError(f"provider name '{name}' is used twice")
        # One node has one set of local models: a second local entry would be a provider
        # that routes name but that the gateway never builds.
        locals_ = [i for i, p in enumerate(self.providers) if p.kind == "local"]
        if len(locals_) > 1:
            raise ValueError(f"providers[{locals_[1]}].kind: only one provider may be of kind local")
        if FLEET in names:
            raise ValueError(f"providers[{names.index(FLEET)}].name: '{FLEET}' is reserved for the fleet's nodes")
        known = set(names) | {LOCAL, FLEET}
        models = [r.model for r in self.routes]
        for i, route in enumerate(self.routes):
            if models.count(route.model) > 1:
                raise ValueError(f"route model '{route.model}' is defined twice")
            for target in route.targets:
                provider = target.partition("/")[0]
                if provider not in known:
                    raise ValueError(f"routes[{i}].targets: {target!r} names no provider '{provider}'")
        return self


_GATEWAY_KEYS = ("providers", "routes", "retry", "breaker")
# Top-level tables another part reads from the same file (agents/config.py, fleet/config.py): not typos here.
OTHER_TABLES = ("agents", "agents_defaults", "mcp_servers", "tools", "fleet")


# The keys of ember.toml that belong to Settings (config.py) rather than the gateway.
def _gateway_part(data: dict[str, Any]) -> dict[str, Any]:
    return {k: data[k] for k in _GATEWAY_KEYS if k in data}


def _unknown_key(data: dict[str, Any]) -> str | None:
    """A top-level key that is neither a setting nor a gateway table (a typo, say)."""
    from ember.config import Settings

    known = set(Settings.model_fields) | set(_GATEWAY_KEYS) | set(OTHER_TABLES)
    return next((key for key in data if key not in known), None)


def load_gateway_config(path: Path | None) -> GatewayConfig:
    """The gateway config from ember.toml, or an empty one when there is no file."""
    if path is None:
        return GatewayConfig()
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the config file: {exc.strerror or exc}") from exc
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: {exc}") from exc  # the message carries "(at line N, column M)"
    unknown = _unknown_key(data)
    if unknown is not None:
        line = line_of(text, [unknown])
        raise ConfigError(
            f"{path}:{line}: {unknown}: not a setting or a gateway table (a typo?)"
            if line
            else f"{path}: {unknown}: not a setting or a gateway table (a typo?)"
        )
    try:
        return GatewayConfig.model_validate(_gateway_part(data))
    except ValidationError as exc:
        raise config_error(path, text, exc) from exc


def config_error(path: Path, text: str, exc: ValidationError) -> ConfigError:
    """The first validation error as one line naming the file, the line and the key."""
    first = exc.errors()[0]
    loc = [p for p in first.get("loc", ()) if p not in ("function-after",)]
    message = str(first.get("msg", "invalid value")).removeprefix("Value error, ")
    line = line_of(text, loc or _loc_in_message(message))
    where = ".".join(f"[{p}]" if isinstance(p, int) else str(p) for p in loc).replace(".[", "[")
    prefix = f"{path}:{line}" if line else str(path)
    return ConfigError(f"{prefix}: {where + ': ' if where else ''}{message}")


def _loc_in_message(message: str) -> list[Any]:
    """Checks across tables name their place in the message ("routes[1].targets: ...")."""
    match = re.match(r"(\w+)\[(\d+)\]\.(\w+)", message)
    return [match.group(1), int(match.group(2)), match.group(3)] if match else []


def line_of(text: str, loc: list[Any]) -> int | None:
    """The 1-based line of loc (e.g. ["routes", 1, "strategy"], or ["agents", 0, "auto_approve",
    1, "tool"] in an array of tables inside one) in the TOML text, best effort."""
    lines = text.splitlines()
    if not loc:
        return None
    table = str(loc[0])
    index = loc[1] if len(loc) > 1 and isinstance(loc[1], int) else None
    rest = list(loc[2:]) if index is not None else list(loc[1:])
    starts = _headers(lines, table, 0, len(lines))
    if index is None or index >= len(starts):
        for i, line in enumerate(lines):
            if re.match(rf"^\s*(\[+\s*)?{re.escape(table)}\b", line):
                return i + 1
        return None
    start = starts[index]
    end = _table_end(lines, table, start, len(lines))
    # Arrays of tables inside this one ([[agents.auto_approve]]): narrow to the one loc names.
    while len(rest) >= 2 and not isinstance(rest[0], int) and isinstance(rest[1], int):
        inner = f"{table}.{rest[0]}"
        found = _headers(lines, inner, start, end)
        if rest[1] >= len(found):
            break
        start, end = found[rest[1]], _table_end(lines, inner, found[rest[1]], end)
        table, rest = inner, rest[2:]
    own_end = next((i for i in range(start + 1, end) if re.match(r"^\s*\[", lines[i])), end)
    for key in reversed([str(p) for p in rest if not isinstance(p, int)]):
        assignment = re.compile(rf"^\s*{re.escape(key)}\s*=")
        subtable = re.compile(rf"^\s*\[+\s*{re.escape(table)}\.{re.escape(key)}\s*\]")
        for i in range(start, end):
            if (i < own_end and assignment.match(lines[i])) or subtable.match(lines[i]):
                return i + 1
    return start + 1


def _headers(lines: list[str], table: str, start: int, end: int) -> list[int]:
    """The lines (0-based) in [start, end) that open an element of the array of tables `table`."""
    header = re.compile(rf"^\s*\[\[\s*{re.escape(table)}\s*\]\]")
    return [i for i in range(start, end) if header.match(lines[i])]


def _table_end(lines: list[str], table: str, start: int, end: int) -> int:
    """Where the table opened at `start` ends: the next header that is not one of its sub-tables."""
    inside = re.compile(rf"^\s*\[+\s*{re.escape(table)}\.")
    return next((i for i in range(start + 1, end) if re.match(r"^\s*\[", lines[i]) and not inside.match(lines[i])), end)
