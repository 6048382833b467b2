"""The agents' part of ember.toml: what loads, and what fails `ember serve` with file:line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from ember.agents.config import load_agents_config
from ember.errors import ConfigError
from ember.gateway.config import load_gateway_config

GOOD = """
[tools.shell]
allow = ["echo"]

[tools.fs]
root = "files"

[[mcp_servers]]
name = "docs"
command = ["python3", "-c", "pass"]

[agents_defaults]
max_steps = 5
deadline = "2m"

[[agents]]
name = "triage"
model = "smollm2:135m"
instructions = "Sort the question."
tools = ["shell", "docs__search", "docs__*"]
mode = "swarm"
members = ["billing"]
max_handoffs = 2
require_approval = ["shell", "docs__fetch"]

[[agents.auto_approve]]
tool = "shell"
arguments = '"echo"'

[[agents]]
name = "billing"
model = "up/gpt-test"
tools = ["fs_read"]
deadline = "90s"
tool_concurrency = 2
first_tool_choice = "required"
tool_choice = "none"
"""


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "ember.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_a_good_config_loads(tmp_path: Path) -> None:
    path = _write(tmp_path, GOOD)
    load_gateway_config(path)  # the agents' tables are not "a typo" to the gateway
    specs = load_agents_config(path).specs()
    triage, billing = specs["triage"], specs["billing"]
    assert triage.mode == "swarm" and triage.members == ("billing",)
    assert triage.tools == ("shell", "docs__search", "docs__*")
    assert triage.limits.max_steps == 5 and triage.limits.deadline == 120 and triage.limits.max_handoffs == 2
    assert triage.options["require_approval"] == ["shell", "docs__fetch"]
    assert triage.options["auto_approve"] == [{"tool": "shell", "arguments": '"echo"'}]
    assert billing.limits.deadline == 90 and billing.limits.tool_concurrency == 2
    assert billing.options["first_tool_choice"] == "required" and billing.options["tool_choice"] == "none"
    assert billing.mode == "tools"


def test_no_file_means_no_agents() -> None:
    assert load_agents_config(None).specs() == {}


@pytest.mark.parametrize(
    ("body", "line", "words"),
    [
        ('[[agents]]\nname = "a"\nmodel = "m"\ntools = ["rm_rf"]\n', 4, "unknown tool 'rm_rf'"),
        ('[[agents]]\nname = "a"\nmodel = "m"\ntools = ["shell"]\n', 4, "needs [tools.shell]"),
        ('[[agents]]\nname = "a"\nmodel = "m"\ntools = ["nope__x"]\n', 4, "no [[mcp_servers]] is named 'nope'"),
        ('[[agents]]\nname = "a"\nmodel = "m"\nmode = "dreaming"\n', 4, "unknown mode 'dreaming'"),
        ('[[agents]]\nname = "a"\nmodel = "agent/b"\n', 3, "not another agent"),
        (
            '[[agents]]\nname = "a"\nmodel = "m"\nmode = "swarm"\nmembers = ["ghost"]\n',
            5,
            "'ghost' is not a configured agent",
        ),
        ('[[agents]]\nname = "a"\nmodel = "m"\ndeadline = "soon"\n', 4, "invalid duration"),
        ('[[agents]]\nname = "a"\nmodel = "m"\nmax_steps = 0\n', 4, "max_steps"),
        ('[[agents]]\nname = "a"\nmodel = "m"\nrequire_approval = ["shell"]\n', 4, "not one of the agent's tools"),
        ('[[agents]]\nname = "a"\nmodel = "m"\n\n[[agents]]\nname = "a"\nmodel = "m"\n', 6, "defined twice"),
        ('[[agents]]\nname = "a"\nmodel = "m"\ncolour = "red"\n', 4, "colour"),
        ('[[agents]]\nname = "mode:tools"\nmodel = "m"\n', 2, "name"),
        (
            '[[mcp_servers]]\nname = "a"\nurl = "http://x/mcp"\n[[mcp_servers]]\nname = "a"\nurl = "http://y/mcp"\n',
            5,
            "twice",
        ),
        ('[[agents]]\nname = "a"\nmodel = "m"\n\n[[agents.auto_approve]]\ntool = "x"\narguments = "("\n', 7, "regular"),
    ],
)
def test_bad_agents_name_file_and_line(tmp_path: Path, body: str, line: int, words: str) -> None:
    path = _write(tmp_path, body)
    with pytest.raises(ConfigError) as caught:
        load_agents_config(path)
    message = caught.value.message
    assert message.startswith(f"{path}:{line}: "), message
    assert words in message
    assert "\n" not in message


def test_serve_refuses_an_unknown_tool(tmp_path: Path) -> None:
    path = _write(tmp_path, '[[agents]]\nname = "a"\nmodel = "m"\ntools = ["shell", "teleport"]\n')
    env = {**os.environ, "EMBER_HOME": str(tmp_path / "home"), "EMBER_CONFIG": str(path), "EMBER_HOST": "127.0.0.1:1"}
    done = subprocess.run([sys.executable, "-m", "ember", "serve"], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert f"{path}:4: agents[0].tools:" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
