"""The CLI against a server with EMBER_AUTH=required: a key made by `ember keys create` in its
EMBER_HOME, sent from EMBER_API_KEY; without it (or with a wrong one) each command fails with
one line, and `ember run` does not quietly answer from a private in-process server instead."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.conftest import ServerHandle, start_server

from .helpers import FAST, MODEL, Ember, assert_one_line_error

UNAUTHORIZED = "invalid or missing API key"


@pytest.fixture
def locked(fresh_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[ServerHandle]:
    monkeypatch.delenv("EMBER_API_KEY", raising=False)  # "without a key" must mean without one
    handle = start_server(fresh_home, tmp_path, EMBER_AUTH="required")
    try:
        yield handle
    finally:
        handle.stop()


@pytest.mark.slow
def test_cli_needs_ember_api_key(ember: Ember, locked: ServerHandle) -> None:
    made = ember("keys", "create", "--name", "cli", "--scopes", "chat,models", env=locked.env)
    assert made.returncode == 0, made.stderr
    secret = made.stdout.strip()
    assert re.fullmatch(r"ember-\S+", secret), made.stdout

    for args in (["list"], ["ps"], ["run", MODEL, "Hi", *FAST]):
        assert_one_line_error(ember(*args, env=locked.env), contains=UNAUTHORIZED)
    assert_one_line_error(ember("run", MODEL, "Hi", *FAST, env={**locked.env, "EMBER_API_KEY": "ember-wrong"}),
                          contains=UNAUTHORIZED)

    keyed = {**locked.env, "EMBER_API_KEY": secret}
    listed = ember("list", env=keyed)
    assert listed.returncode == 0, listed.stderr
    assert MODEL in listed.stdout
    ran = ember("run", MODEL, "Hi", *FAST, env=keyed)
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.strip()
    # It was the locked server that answered: the model is loaded there now.
    shown = ember("ps", env=keyed)
    assert shown.returncode == 0 and MODEL in shown.stdout, shown.stdout + shown.stderr
    # A key without the admin scope is refused admin work, also in one line.
    assert_one_line_error(ember("usage", env=keyed), contains="admin")
