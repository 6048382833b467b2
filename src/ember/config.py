"""Settings: defaults < ember.toml (path in EMBER_CONFIG) < EMBER_* environment < explicit values.

Explicit values are what the CLI passes from its flags, as keyword arguments.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

DEFAULT_PORT = 11434
DEFAULT_MODEL = "smollm2:135m"

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(value: str | int | float | None) -> float | None:
    """Seconds from an Ollama-style duration ("5m", "1h30m", "300", 300, "-1").

    None means "not given". A negative value means "forever" and is returned as -1.
    """
    if value is None:
        return None
    if isinstance(value, bool):
        raise ValueError(f"invalid duration {value!r}")
    if isinstance(value, (int, float)):
        seconds = float(value)
    elif not isinstance(value, str):
        raise ValueError(f"invalid duration {value!r}")
    else:
        text = value.strip()
        if not text:
            raise ValueError("empty duration")
        try:
            seconds = float(text)
        except ValueError:
            negative = text.startswith("-")
            body = text.lstrip("-")
            pos = 0
            seconds = 0.0
            for match in _DURATION_PART.finditer(body):
                if match.start() != pos:
                    break
                seconds += float(match.group(1)) * _UNITS[match.group(2)]
                pos = match.end()
            if pos != len(body) or pos == 0:
                raise ValueError(f"invalid duration {value!r}: use e.g. 30s, 5m, 1h or a number of seconds") from None
            if negative:
                seconds = -seconds
    return -1.0 if seconds < 0 else seconds


_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?i?b?)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "m": 1000**2,
    "g": 1000**3,
    "t": 1000**4,
    "ki": 1024,
    "mi": 1024**2,
    "gi": 1024**3,
    "ti": 1024**4,
}


def parse_size(value: str | int | float) -> int:
    """Bytes from 8000000000, "8GB", "7.5GiB", "512MiB"."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return int(value)
    match = _SIZE.match(str(value))
    if not match:
        raise ValueError(f"invalid size {value!r}: use e.g. 8GiB, 512MB or a number of bytes")
    unit = (match.group(2) or "").lower().removesuffix("b")
    return int(float(match.group(1)) * _SIZE_UNITS[unit])


def _default_max_memory() -> int:
    # Three quarters of physical memory: room for the server, the OS and the page cache.
    try:
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") * 0.75)
    except (ValueError, OSError):
        return 8 * 1024**3


def split_host(host: str) -> tuple[str, int]:
    """'127.0.0.1:11434', 'http://h:1', '0.0.0.0', ':8080', '[::1]:9' -> (host, port)."""
    text = host.strip()
    for scheme in ("http://", "https://"):
        if text.startswith(scheme):
            text = text[len(scheme) :]
    text = text.rstrip("/")
    if text.startswith("["):
        addr, _, rest = text[1:].partition("]")
        port = int(rest[1:]) if rest.startswith(":") else DEFAULT_PORT
        return addr, port
    if text.count(":") == 1:
        addr, port_text = text.split(":")
        return addr or "127.0.0.1", int(port_text)
    if text.count(":") > 1:  # bare IPv6 without brackets
        return text, DEFAULT_PORT
    return text or "127.0.0.1", DEFAULT_PORT


def _default_home() -> Path:
    return Path.home() / ".ember"


class _Overridden(PydanticBaseSettingsSource):
    """A source without the keys a higher one sets.

    pydantic-settings merges tables from different sources key by key; a setting given in the
    environment must replace the file's whole value instead (EMBER_MODEL_PARALLEL='{}' clears
    ember.toml's [model_parallel]), as every other setting does.
    """

    def __init__(
        self,
        settings_cls: type[BaseSettings],
        source: PydanticBaseSettingsSource,
        above: tuple[PydanticBaseSettingsSource, ...],
    ) -> None:
        super().__init__(settings_cls)
        self._source = source
        self._above = above

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return self._source.get_field_value(field, field_name)

    def __call__(self) -> dict[str, Any]:
        taken = {key for source in self._above for key in source()}
        return {key: value for key, value in self._source().items() if key not in taken}


class Settings(BaseSettings):
    """Every knob of ember. Each field reads EMBER_<NAME> from the environment."""

    model_config = SettingsConfigDict(env_prefix="EMBER_", extra="ignore", validate_default=True)

    home: Path = Field(default_factory=_default_home, description="Where models and state live.")
    host: str = Field(f"127.0.0.1:{DEFAULT_PORT}", description="Address the server binds and the CLI calls.")
    config: Path | None = Field(None, description="Path of ember.toml.")
    keep_alive: float = Field(600.0, description="Seconds an idle model stays loaded; negative keeps it forever.")
    max_loaded_models: int = Field(3, ge=0, description="Most models resident at once; 0 means no limit.")
    num_parallel: int = Field(4, ge=1, description="Concurrent sequences per model.")
    model_parallel: dict[str, int] = Field(
        default_factory=dict,
        description='Per-model slot counts overriding num_parallel, e.g. {"smollm2:135m": 8} '
        "(JSON in EMBER_MODEL_PARALLEL, a table in ember.toml).",
    )
    max_queue: int = Field(512, ge=0, description="Requests waiting per model beyond its slots before 503.")
    max_memory: int = Field(
        default_factory=_default_max_memory, description="Memory budget for resident models (bytes, or e.g. 8GiB)."
    )
    num_ctx: int = Field(4096, ge=64, description="Default context length, capped at the model's own.")
    num_thread: int | None = Field(None, ge=1, description="CPU threads per model; default all cores.")
    num_gpu: int = Field(0, description="Layers to offload to a GPU (-1: all).")
    engine: Literal["process", "inprocess"] = Field(
        "process",
        description="process: a worker process per model with continuous batching; "
        "inprocess: llama-cpp-python's Llama in the server, one request at a time.",
    )
    spare_worker: Literal["preload", "preload-only", "imports", "off"] = Field(
        "preload",
        description="The process engine's spare worker. preload: while no model is loaded, one worker holds "
        "the default model ready (a load after start or after an unload takes a millisecond; it keeps that "
        "model's memory while idle), and while one is loaded a worker waits with its imports done; "
        "preload-only: the same without that second worker (~57 MiB less); imports: only the latter "
        "(a load saves ~0.3 s); off: none.",
    )
    hf_endpoint: str = Field("https://huggingface.co", description="Base URL for hf:// pulls.")
    log_level: str = Field("info", description="debug, info, warning or error.")
    default_model: str = Field(DEFAULT_MODEL, description="The model `make run` pulls and serves.")
    # Guardrails (guard/, cache/, telemetry.py)
    auth: Literal["auto", "required", "off"] = Field(
        "auto", description="API keys: auto requires them when bound beyond loopback; required; off."
    )
    redis_url: str | None = Field(None, description="Redis for limits, budgets and the cache shared by replicas.")
    audit_prompts: bool = Field(False, description="Keep prompt text in the audit log, encrypted (needs audit_key).")
    audit_key: str | None = Field(None, description="AES-256-GCM key for audited prompts: 64 hex digits or base64.")
    cache: Literal["off", "memory", "sqlite", "redis"] = Field(
        "memory", description="Response cache for deterministic requests (temperature 0 or a seed)."
    )
    cache_ttl: float = Field(3600.0, description="How long a cached response is served (duration).")
    cache_max_entries: int = Field(
        1024, ge=1, description="Entries the response cache keeps (least recently used go first; SQLite: oldest)."
    )
    max_body_bytes: int = Field(4 * 1024**2, description="Largest request body (bytes or e.g. 4MiB); 413 above.")
    max_messages: int = Field(1024, ge=1, description="Most messages in one chat request; 400 above.")
    max_tokens_limit: int | None = Field(None, ge=1, description="Largest max_tokens a request may ask; 400 above.")
    # Batch jobs (jobs/): /v1/files and /v1/batches
    max_file_bytes: int = Field(
        200 * 1024**2, description="Largest file POST /v1/files takes (bytes or e.g. 200MiB); 413 above."
    )
    batch_max_lines: int = Field(50_000, ge=1, description="Most requests in one batch's input file.")
    batch_max_attempts: int = Field(
        5, ge=1, description="Tries of a batch line that fails with 5xx, 429 or a timeout before it is failed."
    )
    batch_concurrency: int = Field(
        0, ge=0, description="Batch lines run at once; 0: the loaded model's slot count (interactive requests first)."
    )
    # Batch lines across nodes (jobs/redis_queue.py)
    batch_claim_idle: float = Field(
        60.0,
        gt=0,
        description="With EMBER_REDIS_URL: how long a node may go silent on the batch lines it holds "
        "before another node takes them over (duration).",
    )
    # Fleets (fleet/config.py): each, when given, overrides the same key of ember.toml's [fleet].
    fleet_join: str | None = Field(None, description="Redis URL of the fleet registry this node joins (--join).")
    fleet_role: Literal["both", "member", "gateway"] | None = Field(
        None, description="member: announce this node; gateway: read the registry; both (the default)."
    )
    fleet_name: str | None = Field(None, description="This node's readable name in the fleet (default: host name).")
    fleet_advertise_url: str | None = Field(None, description="The URL other nodes reach this one at.")
    fleet_labels: dict[str, str] | None = Field(None, description='Labels, e.g. {"tier": "edge", "region": "eu"}.')
    fleet_allowlist: list[str] | None = Field(None, description="Node ids or public keys a gateway accepts.")
    fleet_ttl: float | None = Field(None, gt=0, description="Seconds a node's record stands without a heartbeat.")
    fleet_heartbeat: float | None = Field(None, gt=0, description="Seconds between heartbeats (default ttl/3).")

    @field_validator("config", mode="before")
    @classmethod
    def _no_config_file(cls, value: Any) -> Any:
        # EMBER_CONFIG= (set but empty) means no file, as the TOML source already reads it;
        # Path("") would be the current directory.
        return None if value == "" else value

    @field_validator("keep_alive", mode="before")
    @classmethod
    def _duration(cls, value: Any) -> float:
        seconds = parse_duration(value)
        return 600.0 if seconds is None else seconds

    @field_validator("cache_ttl", mode="before")
    @classmethod
    def _ttl(cls, value: Any) -> float:
        seconds = parse_duration(value)
        return 3600.0 if seconds is None else seconds

    @field_validator("batch_claim_idle", mode="before")
    @classmethod
    def _claim_idle(cls, value: Any) -> float:
        seconds = parse_duration(value)
        return 60.0 if seconds is None else seconds

    @field_validator("max_memory", "max_body_bytes", "max_file_bytes", mode="before")
    @classmethod
    def _size(cls, value: Any) -> int:
        return parse_size(value)

    @field_validator("home", mode="before")
    @classmethod
    def _expand_home(cls, value: Any) -> Any:
        return Path(value).expanduser() if isinstance(value, (str, Path)) else value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        toml_path = os.environ.get("EMBER_CONFIG")
        if toml_path:
            toml = TomlConfigSettingsSource(settings_cls, toml_file=Path(toml_path))
            sources.append(_Overridden(settings_cls, toml, above=(init_settings, env_settings)))
        return tuple(sources)

    @property
    def state_dir(self) -> Path:
        """Where SQLite state lives: keys, usage, audit log, cache."""
        return self.home / "state"

    @property
    def bind(self) -> tuple[str, int]:
        return split_host(self.host)

    @property
    def base_url(self) -> str:
        addr, port = self.bind
        if addr in ("0.0.0.0", ""):
            addr = "127.0.0.1"
        elif addr == "::":
            addr = "::1"
        if ":" in addr:
            addr = f"[{addr}]"
        return f"http://{addr}:{port}"
