"""The README's definition of each agent mode is the one the code follows.

Each line of the README's "### Modes" list names a mode, the trace of a run as a pattern of
step kinds, and the mode's options with their defaults. Here: every registered mode has one
line, and the defaults are the code's. tests/agents/test_modes.py runs scripted scenarios and
matches each run's trace against its mode's pattern (`trace_pattern`), so the README cannot
say one thing while a mode does another.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from ember.agents.config import AgentsDefaults
from ember.agents.modes import MODES, planning, reflection

README = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")


def _modes_section() -> str:
    match = re.search(r"^### Modes\n(.*?)(?=^##|\Z)", README, re.MULTILINE | re.DOTALL)
    assert match, "the README has no '### Modes' section"
    return match.group(1)


def definitions() -> dict[str, tuple[str, str]]:
    """mode -> (its trace pattern, its whole definition text), from the README."""
    found: dict[str, tuple[str, str]] = {}
    for item in re.split(r"^- ", _modes_section(), flags=re.MULTILINE)[1:]:
        text = " ".join(item.split())
        match = re.match(r"`(\w+)` — trace `([^`]+)`\.", text)
        assert match, f"a Modes item does not start with `mode` — trace `pattern`.: {text[:80]}"
        found[match.group(1)] = (match.group(2), text)
    return found


def option_defaults(mode: str) -> dict[str, str]:
    """The "`name` (default value)" pairs a mode's definition states."""
    return dict(re.findall(r"`(\w+)` \(default ([\w.]+)\)", definitions()[mode][1]))


def trace_pattern(mode: str, **options: int) -> re.Pattern[str]:
    """The README's trace pattern for `mode` as a regex over `trace_text`, with the options
    named in quantifiers ({0,rounds}) given their values."""
    pattern = definitions()[mode][0]

    def bound(match: re.Match[str]) -> str:
        parts = [p.strip() for p in match.group(1).split(",")]
        return "{" + ",".join(str(options[p]) if p in options else p for p in parts) + "}"

    pattern = re.sub(r"\{([^}]*)\}", bound, pattern)
    assert not re.search(r"\{[^}]*[a-z]", pattern), f"give a value for each option in {pattern}"

    def step(match: re.Match[str]) -> str:
        kind, _, name = match.group(0).partition(":")
        # \x20, not " ": the pattern's own spaces are dropped after this.
        names = re.escape(name) if name else r"[^\x20]*"
        return f"(?:{kind}:{names}" + r"\x20)"

    regex = re.sub(r"[a-z_]+(?::[a-z_]+)?", step, pattern).replace(" ", "")
    return re.compile(regex)


def trace_text(steps: list[dict[str, Any]]) -> str:
    """A trace as "kind:name " per step, for `trace_pattern`."""
    return "".join(f"{s['kind']}:{s['name'].replace(' ', '_')} " for s in steps)


def test_every_mode_has_a_definition() -> None:
    assert sorted(definitions()) == sorted(MODES)


def test_the_stated_defaults_are_the_code_defaults() -> None:
    assert option_defaults("reflection") == {
        "threshold": str(reflection.DEFAULT_THRESHOLD),
        "rounds": str(reflection.DEFAULT_ROUNDS),
    }
    assert option_defaults("planning") == {"max_plan_steps": str(planning.DEFAULT_MAX_PLAN_STEPS)}
    assert option_defaults("swarm") == {"max_handoffs": str(AgentsDefaults().max_handoffs)}
    assert option_defaults("tools") == {"first_tool_choice": "auto", "tool_choice": "auto"}
    assert f"goals of at most {planning.MAX_GOAL_CHARS} characters" in definitions()["planning"][1]


def test_the_patterns_read_as_the_definitions_say() -> None:
    tools = trace_pattern("tools")
    assert tools.fullmatch(trace_text([{"kind": "model", "name": "m"}]))
    assert tools.fullmatch("model:m tool:fs_list tool:shell model:m ")
    assert not tools.fullmatch("model:m tool:fs_list ")
    reflect = trace_pattern("reflection", rounds=1)
    assert reflect.fullmatch("model:m critique:m critique:verdict model:m critique:m critique:verdict ")
    assert not reflect.fullmatch("model:m critique:m critique:verdict " * 3)
    assert not reflect.fullmatch("model:m critique:m critique:m ")
    assert reflect.fullmatch("model:m tool:t model:m critique:m critique:verdict ")
    plan = trace_pattern("planning", max_plan_steps=2)
    assert plan.fullmatch("plan:m plan:m plan:plan model:m tool:t model:m plan:goal model:m ")
    assert not plan.fullmatch("plan:m plan:m plan:m plan:plan model:m plan:goal model:m ")
    assert trace_pattern("swarm").fullmatch("model:m tool:t handoff:transfer_to_b model:m ")
