"""The README keeps up with the code: every setting, command and option is documented there.

Cheap checks on data the code already has (Settings' fields, the typer app's commands), so a
new flag or setting without a README line fails here rather than surprising a user.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import typer.main

from ember.cli.main import app
from ember.config import Settings

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text(encoding="utf-8")

# EMBER_* variables read outside Settings (the CLI's key, read by cli/client.py).
NOT_SETTINGS = {"EMBER_API_KEY"}


def _section(title: str) -> str:
    """The README's text from the '## title' heading up to the next '## ' heading."""
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", README, re.MULTILINE | re.DOTALL)
    assert match, f"the README has no '## {title}' section"
    return match.group(1)


def _table_variables() -> set[str]:
    return set(re.findall(r"^\| `(EMBER_[A-Z_]+)` \|", _section("Configuration"), re.MULTILINE))


# Duck-typed on purpose: newer typer vendors its own copy of click, whose classes are not click's.
def _is_group(command: Any) -> bool:
    return hasattr(command, "commands")


def _commands(group: Any, prefix: str = "ember") -> list[tuple[str, Any]]:
    """(`ember keys create`, its command) for every visible command, groups included."""
    found: list[tuple[str, Any]] = []
    for name, command in sorted(group.commands.items()):
        if command.hidden:
            continue
        path = f"{prefix} {name}"
        found.append((path, command))
        if _is_group(command):
            found += _commands(command, path)
    return found


COMMANDS = _commands(typer.main.get_command(app))


def test_every_setting_has_a_row_in_the_configuration_table() -> None:
    documented = _table_variables()
    missing = sorted(f"EMBER_{name.upper()}" for name in Settings.model_fields
                     if f"EMBER_{name.upper()}" not in documented)
    assert not missing, f"settings without a row in the README's configuration table: {missing}"


def test_every_row_of_the_configuration_table_is_a_setting() -> None:
    known = {f"EMBER_{name.upper()}" for name in Settings.model_fields} | NOT_SETTINGS
    unknown = sorted(_table_variables() - known)
    assert not unknown, f"README rows for variables ember does not read: {unknown}"


@pytest.mark.parametrize("path", [path for path, command in COMMANDS if not _is_group(command)])
def test_every_command_is_in_the_readme(path: str) -> None:
    assert f"`{path}" in _section("The CLI"), f"`{path}` is missing from the README's CLI section"


def _rows_of(path: str) -> list[str]:
    """The CLI section's table rows whose first cell names the command (`ember run NAME`, ...)."""
    rows = [line for line in _section("The CLI").splitlines() if line.startswith("|")]
    return [row for row in rows if re.search(rf"`{re.escape(path)}(?=[ `])", row.split("|")[1])]


@pytest.mark.parametrize(("path", "option"), [
    (path, option)
    for path, command in COMMANDS
    for param in command.params if param.param_type_name == "option"
    for option in param.opts + param.secondary_opts
    if option not in ("-h", "--help")
])
def test_every_option_is_in_its_commands_row(path: str, option: str) -> None:
    rows = _rows_of(path)
    assert rows, f"`{path}` has no row in the README's CLI tables"
    pattern = rf"(?<![\w-]){re.escape(option)}(?![\w-])"
    assert any(re.search(pattern, row) for row in rows), \
        f"{path}'s option {option} is missing from its row in the README's CLI tables"


def _shown(default: Any) -> str:
    return f"{default:g}" if isinstance(default, float) else str(default)


@pytest.mark.parametrize(("path", "param"), [
    (path, param)
    for path, command in COMMANDS
    for param in command.params
    if param.param_type_name == "option" and not param.is_flag and param.default is not None
], ids=lambda value: value if isinstance(value, str) else value.name)
def test_every_default_is_in_its_commands_row(path: str, param: Any) -> None:
    # The README writes a default after the option: `--by day`, `-n`/`--lines 20`.
    shown = [f"{option} {_shown(param.default)}" for option in param.opts]
    assert any(text in row for row in _rows_of(path) for text in shown), \
        f"{path}: the README's row does not give {param.opts[0]}'s default ({shown[0]!r})"


def test_the_readme_links_the_architecture_in_the_repository() -> None:
    assert (ROOT / "docs" / "architecture.md").is_file()
    assert "docs/architecture.md" in README
    assert "../shared" not in README, "the README links a file outside the repository"
