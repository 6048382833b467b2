"""Helpers shared by the guard's tests: a model-less home, keys made straight in the key store."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import Any

from ember.guard.keys import KeyStore, parse_scopes

CLI_ARGV = [sys.executable, "-m", "ember"]


def make_key(home: Path, name: str, scopes: str = "chat,embed,models", **limits: Any) -> str:
    store = KeyStore(home / "state" / "keys.db")
    try:
        secret, _ = store.create(name, parse_scopes(scopes), **limits)
    finally:
        store.close()
    return secret


def copy_home(source: Path, target: Path) -> Path:
    shutil.copytree(source, target, ignore=shutil.ignore_patterns("state"))
    return target
