"""Auto-approve rules: which tool calls of an agent run without waiting for a human.

A rule, as `[[agents.auto_approve]]` in ember.toml writes it (agents/config.py checks it at
start and hands it over in `AgentSpec.options["auto_approve"]` as a plain dict):

    [[agents.auto_approve]]
    tool = "fs_*"                              # a tool name, or a glob of names
    arguments = '^\\{"path":"notes/[a-z]+\\.md"\\}$'  # a regex searched in the arguments' JSON

Invariants (auto-approval runs a tool nobody looked at, so a rule errs on the side of "no"):
- the regex is searched (`re.search`) in the call's arguments re-written as compact JSON with
  sorted keys (`{"cmd":"echo hi","cwd":"."}`), so what a rule sees does not depend on the
  model's spacing or key order; anchor it (`^...$`) to match the whole call;
- arguments that are not a JSON object match no rule with an `arguments` pattern other than
  the default (".*", every call of the tool);
- the first rule that matches decides; no rule matching leaves the call pending.
"""

from __future__ import annotations

import fnmatch
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

ANY_ARGUMENTS = ".*"


@dataclass(frozen=True)
class AutoApproveRule:
    tool: str  # a name or an fnmatch glob, matched case-sensitively
    arguments: re.Pattern[str]

    def matches(self, tool: str, canonical_arguments: str | None) -> bool:
        if not fnmatch.fnmatchcase(tool, self.tool):
            return False
        if self.arguments.pattern == ANY_ARGUMENTS:
            return True
        return canonical_arguments is not None and self.arguments.search(canonical_arguments) is not None


def parse_rules(raw: Any) -> tuple[AutoApproveRule, ...]:
    """Rules from config data (a list of {tool, arguments} dicts); ValueError saying what is
    wrong with which rule."""
    if raw is None:
        return ()
    if not isinstance(raw, Sequence) or isinstance(raw, (str, bytes)):
        raise ValueError("auto_approve must be a list of tables ([[agents.auto_approve]])")
    return tuple(_parse_rule(i, item) for i, item in enumerate(raw))


def _parse_rule(index: int, item: Any) -> AutoApproveRule:
    where = f"auto_approve[{index}]"
    if not isinstance(item, Mapping):
        raise ValueError(f"{where} must be a table with `tool` and optionally `arguments`")
    tool = item.get("tool")
    if not isinstance(tool, str) or not tool:
        raise ValueError(f'{where}.tool must be a tool name or glob, e.g. "fs_read" or "fs_*"')
    pattern = item.get("arguments", ANY_ARGUMENTS)
    if not isinstance(pattern, str):
        raise ValueError(f"{where}.arguments must be a regex (a string)")
    try:
        return AutoApproveRule(tool=tool, arguments=re.compile(pattern))
    except re.error as exc:
        raise ValueError(f"{where}.arguments: bad regex {pattern!r}: {exc}") from None


def canonical_arguments(arguments_text: str) -> str | None:
    """The arguments as compact JSON with sorted keys; None when they are not a JSON object."""
    try:
        parsed = json.loads(arguments_text) if arguments_text.strip() else {}
    except ValueError:
        return None
    if not isinstance(parsed, dict):
        return None
    return json.dumps(parsed, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def first_match(rules: Sequence[AutoApproveRule], tool: str, arguments_text: str) -> int | None:
    """The index of the first rule approving this call, or None."""
    canonical = canonical_arguments(arguments_text)
    for index, rule in enumerate(rules):
        if rule.matches(tool, canonical):
            return index
    return None
