"""Helpers shared by the guard's tests: a model-less home, keys made straight in the key store."""

from __future__ import annotations

import shutil
import socket
import sys
import time
from pathlib import Path
from typing import Any

import httpx

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


def read_head(sock: socket.socket) -> bytes:
    """Bytes up to the end of one response head (status line and headers)."""
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(1)
        if not chunk:
            break
        head += chunk
    return head


def eventually_ok(url: str, key: str, within: float = 10.0) -> bool:
    """Whether a GET with the key answers 200 before the deadline (polled, no fixed sleep)."""
    deadline = time.monotonic() + within
    while True:
        if httpx.get(url, headers={"x-api-key": key}).status_code == 200:
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
