"""Auto-approve rules: which tool calls of an agent run without waiting for a human.

A rule, as `[[agents.auto_approve]]` in ember.toml writes it:

    [[agents.auto_approve]]
    tool = "fs_*"                                  # a tool name, or a glob of names
    arguments = { "/path" = "notes/[a-z0-9_]+\\.md" }  # JSON pointer -> regex

Invariants (auto-approval runs a tool nobody looked at, so a rule errs on the side of "no"):
- each regex must match the pointed-at value *in full* (`re.fullmatch`), so `echo .*` does not
  approve `rm -rf / ; echo hi`; a string value is matched as is, any other value as its
  compact JSON text (`{"a":1}`, `true`, `3`);
- a pointer that is not in the call's arguments, or arguments that are not a JSON object,
  match nothing; a rule without `arguments` approves every call of its tools;
- the first rule that matches decides; no rule matching leaves the call pending.
"""

from __future__ import annotations

import fnmatch
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

_MISSING = object()


@dataclass(frozen=True)
class AutoApproveRule:
    tool: str  # a name or an fnmatch glob, matched case-sensitively
    arguments: tuple[tuple[str, re.Pattern[str]], ...] = ()  # (JSON pointer, pattern) pairs

    def matches(self, tool: str, arguments: Mapping[str, Any] | None) -> bool:
        if not fnmatch.fnmatchcase(tool, self.tool):
            return False
        if not self.arguments:
            return True
        if arguments is None:
            return False
        for pointer, pattern in self.arguments:
            value = resolve_pointer(arguments, pointer)
            if value is _MISSING:
                return False
            text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, separators=(",", ":"))
            if pattern.fullmatch(text) is None:
                return False
        return True


def parse_rules(raw: Any) -> tuple[AutoApproveRule, ...]:
    """Rules from config data (a list of {tool, arguments} tables); ValueError saying what is
    wrong with which rule, for the config loader to put its file:line on."""
    if raw is None:
        return ()
    if not isinstance(raw, Sequence) or isinstance(raw, (str, bytes)):
        raise ValueError("auto_approve must be a list of tables ([[agents.auto_approve]])")
    return tuple(_parse_rule(i, item) for i, item in enumerate(raw))


def _parse_rule(index: int, item: Any) -> AutoApproveRule:
    where = f"auto_approve[{index}]"
    if not isinstance(item, Mapping):
        raise ValueError(f"{where} must be a table with `tool` and optionally `arguments`")
    unknown = sorted(set(item) - {"tool", "arguments"})
    if unknown:
        raise ValueError(f"{where}: unknown field(s) {', '.join(unknown)} (known: tool, arguments)")
    tool = item.get("tool")
    if not isinstance(tool, str) or not tool:
        raise ValueError(f'{where}.tool must be a tool name or glob, e.g. "fs_read" or "fs_*"')
    arguments = item.get("arguments", {})
    if not isinstance(arguments, Mapping):
        raise ValueError(f'{where}.arguments must map JSON pointers to regexes, e.g. {{ "/path" = "notes/.*" }}')
    pairs: list[tuple[str, re.Pattern[str]]] = []
    for pointer, pattern in arguments.items():
        if not isinstance(pointer, str) or not pointer.startswith("/"):
            raise ValueError(f"{where}.arguments: {pointer!r} is not a JSON pointer (it starts with '/')")
        if not isinstance(pattern, str):
            raise ValueError(f"{where}.arguments[{pointer!r}] must be a regex string")
        try:
            pairs.append((pointer, re.compile(pattern)))
        except re.error as exc:
            raise ValueError(f"{where}.arguments[{pointer!r}]: bad regex {pattern!r}: {exc}") from None
    return AutoApproveRule(tool=tool, arguments=tuple(pairs))


def resolve_pointer(document: Any, pointer: str) -> Any:
    """The value at an RFC 6901 JSON pointer, or `_MISSING`."""
    value = document
    for token in pointer.split("/")[1:]:
        token = token.replace("~1", "/").replace("~0", "~")
        if isinstance(value, Mapping):
            if token not in value:
                return _MISSING
            value = value[token]
        elif isinstance(value, list):
            if not token.isdigit() or (token != "0" and token.startswith("0")) or int(token) >= len(value):
                return _MISSING
            value = value[int(token)]
        else:
            return _MISSING
    return value


def first_match(rules: Sequence[AutoApproveRule], tool: str, arguments_text: str) -> int | None:
    """The index of the first rule approving this call, or None."""
    try:
        parsed = json.loads(arguments_text) if arguments_text.strip() else {}
    except ValueError:
        parsed = None
    arguments = parsed if isinstance(parsed, dict) else None
    for index, rule in enumerate(rules):
        if rule.matches(tool, arguments):
            return index
    return None
