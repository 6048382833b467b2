"""`--help` on every command and subcommand the typer app registers, found by walking the app.

Walking it (rather than listing names) means a command added later is covered the day it lands.
"""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from ember.cli.main import app

from .conftest import cli_env

# typer carries its own copy of click, so commands are told apart by what they hold.
Command = Any


def subcommands(command: Command) -> dict[str, Command]:
    return dict(getattr(command, "commands", None) or {})


def _walk(command: Command, path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], Command]]:
    found: list[tuple[tuple[str, ...], Command]] = []
    if path:
        found.append((path, command))
    for name, sub in sorted(subcommands(command).items()):
        found += _walk(sub, (*path, name))
    return found


COMMANDS = _walk(typer.main.get_command(app))


def test_the_walk_finds_the_whole_app() -> None:
    names = {" ".join(path) for path, _ in COMMANDS}
    # The commands the README's table names, groups and their subcommands included.
    expected = {"serve", "run", "pull", "import", "list", "ls", "ps", "show", "rm", "cp", "stop", "doctor",
                "version", "bench", "routes", "usage", "keys", "keys create", "keys list", "keys revoke",
                "audit", "audit verify", "audit tail"}
    assert expected <= names, expected - names


@pytest.mark.parametrize(("path", "command"), COMMANDS, ids=[" ".join(path) for path, _ in COMMANDS])
def test_help(path: tuple[str, ...], command: Command) -> None:
    # In-process: --help only parses arguments, and a subprocess per command would cost seconds.
    result = CliRunner().invoke(app, [*path, "--help"])
    assert result.exit_code == 0, result.output
    assert f"Usage: ember {' '.join(path)} " in result.output, result.output
    assert "Traceback" not in result.output
    # Every command says what it does, in its help and in its parent's list.
    assert (command.help or "").strip(), f"`ember {' '.join(path)}` has no help text"
    for option in command.params:
        if option.param_type_name == "option" and not option.hidden and option.name != "help":
            assert (option.help or "").strip(), f"`ember {' '.join(path)}` option {option.opts[0]} has no help"
    for name, sub in subcommands(command).items():
        if not sub.hidden:
            assert name in result.output, f"`ember {' '.join(path)} --help` does not list {name}"


def test_top_level_help_lists_every_visible_command() -> None:
    result = subprocess.run([sys.executable, "-m", "ember", "--help"], env=cli_env({}),
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "Usage: ember [OPTIONS] COMMAND" in result.stdout, result.stdout
    for path, command in COMMANDS:
        if len(path) == 1 and not command.hidden:
            assert f" {path[0]} " in result.stdout, f"{path[0]} missing from `ember --help`"
