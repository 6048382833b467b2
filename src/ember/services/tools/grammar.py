"""GBNF grammars that hold a model's answer to tool calls, built from the tools' schemas.

- The generic envelope (generic.py): one JSON object, described as a JSON schema and turned
  into GBNF by the engine's converter (`schema_to_gbnf`):

      anyOf: [ {tool_calls: [ anyOf over tools {name: const <tool>, arguments: <its schema>} ]},
               {response: string} ]

  `required` drops the `response` branch; a named function leaves that tool alone, and one
  call; `parallel_tool_calls: false` allows one call (`maxItems: 1`). `name` comes before
  `arguments`, so the name can be streamed first. The JSON is compact: no whitespace between
  tokens, as the envelope's prompt shows it.
- A template family's own format, for `required` and a named function (with `auto` such a
  model is not held: its answer is parsed as it comes): the same call objects (`parameters`
  for Llama 3.x) framed by the family's markers.

Each tool's schema is converted alone first, so a schema the grammar cannot enforce is a 400
naming that tool. A tool's `$ref`s point into its own schema; in the combined schema each
tool's schema is also kept under `$defs/ember-tool-<i>`, and its refs are rewritten to point
there.
"""

from __future__ import annotations

import re
from typing import Any

from ember.engine.grammar import GrammarError, schema_to_gbnf
from ember.services.tools.families import Family
from ember.services.tools.hermes import CLOSE as HERMES_CLOSE
from ember.services.tools.hermes import OPEN as HERMES_OPEN
from ember.services.tools.mistral import TOOL_CALLS
from ember.services.types import Tool, ToolChoice

CALL_RULE = "ember-tool-call"  # the rule of one call object, in the family grammars
_ROOT = re.compile(r"^root ::= ", re.MULTILINE)
_SPACE_RULE = re.compile(r'^space ::= " "\?$', re.MULTILINE)


def chosen_tools(tools: tuple[Tool, ...], choice: ToolChoice) -> tuple[Tool, ...]:
    """The tools an answer may call: the named one, or all."""
    if choice.mode == "function":
        return tuple(t for t in tools if t.name == choice.name)
    return tools


def max_calls(choice: ToolChoice, parallel: bool) -> int | None:
    """At most one call for a named function or `parallel_tool_calls: false`; else no limit."""
    return 1 if choice.mode == "function" or not parallel else None


def check_tools(tools: tuple[Tool, ...], chosen: tuple[Tool, ...]) -> None:
    """A GrammarError (400) naming the first chosen tool whose schema cannot be enforced."""
    for i, tool in enumerate(tools):
        if tool not in chosen:
            continue
        try:
            schema_to_gbnf(tool.parameters)
        except GrammarError as exc:
            raise GrammarError(
                f"tools[{i}] ('{tool.name}'): its parameters cannot be enforced: {exc.message}",
                keyword=exc.keyword,
                path=exc.path,
                param=f"tools[{i}].function.parameters",
            ) from None


def envelope_grammar(tools: tuple[Tool, ...], choice: ToolChoice, parallel: bool) -> str:
    chosen = chosen_tools(tools, choice)
    check_tools(tools, chosen)
    limit = max_calls(choice, parallel)
    array: dict[str, Any] = {"type": "array", "items": _calls_schema(chosen, "arguments"), "minItems": 1}
    if limit is not None:
        array["maxItems"] = limit
    calls = {"type": "object", "properties": {"tool_calls": array}, "required": ["tool_calls"]}
    branches = [calls]
    if choice.mode == "auto":
        branches.append({"type": "object", "properties": {"response": {"type": "string"}}, "required": ["response"]})
    return _convert({"anyOf": branches, "$defs": _defs(chosen)}, compact=True)


def family_grammar(family: Family, tools: tuple[Tool, ...], choice: ToolChoice, parallel: bool) -> str | None:
    """The grammar of a forced call in a template family's format; None where the answer is free."""
    if family == "generic" or choice.mode not in ("required", "function"):
        return None
    chosen = chosen_tools(tools, choice)
    check_tools(tools, chosen)
    key = "parameters" if family == "llama3" else "arguments"
    call = _rename_root(_convert({**_calls_schema(chosen, key), "$defs": _defs(chosen)}, compact=False), CALL_RULE)
    several = max_calls(choice, parallel) is None
    if family == "hermes":
        block = f"{_literal(HERMES_OPEN + chr(10))} {CALL_RULE} {_literal(chr(10) + HERMES_CLOSE)}"
        root = f'{block} ("\\n" {block})*' if several else block
    elif family == "mistral":
        more = f' ("," " "? {CALL_RULE})*' if several else ""
        root = f'{_literal(TOOL_CALLS)} "[" {CALL_RULE}{more} "]"'
    else:  # llama3: one call (its templates take one call per message)
        root = CALL_RULE
    return f"root ::= {root}\n{call}"


# --- schemas -------------------------------------------------------------------------------


def _calls_schema(chosen: tuple[Tool, ...], key: str) -> dict[str, Any]:
    """anyOf over the chosen tools' call objects, each `{"name": const, key: its arguments}`."""
    options = [
        {
            "type": "object",
            "properties": {"name": {"const": tool.name}, key: _rebased(tool.parameters, i)},
            "required": ["name", key],
        }
        for i, tool in enumerate(chosen)
    ]
    return {"anyOf": options}


def _defs(chosen: tuple[Tool, ...]) -> dict[str, Any]:
    return {f"ember-tool-{i}": _rebased(tool.parameters, i) for i, tool in enumerate(chosen)}


_DATA_KEYWORDS = frozenset({"const", "enum", "default", "examples"})  # their values are data, not schemas


def _rebased(schema: Any, i: int) -> Any:
    """A copy of tool i's schema whose local refs ("#/...") point into its copy under $defs."""
    if isinstance(schema, list):
        return [_rebased(item, i) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key == "$ref" and isinstance(value, str) and value.startswith("#/"):
            out[key] = f"#/$defs/ember-tool-{i}/{value[2:]}"
        elif key in _DATA_KEYWORDS:
            out[key] = value
        else:
            out[key] = _rebased(value, i)
    return out


def _convert(schema: dict[str, Any], *, compact: bool) -> str:
    try:
        gbnf = schema_to_gbnf(schema)
    except GrammarError as exc:
        raise GrammarError(
            f"the tools cannot be enforced together: {exc.message}", keyword=exc.keyword, param="tools"
        ) from None
    return _compact(gbnf) if compact else gbnf


def _compact(gbnf: str) -> str:
    """The grammar with no whitespace between JSON tokens (`{"a":1,"b":[2]}`, as OpenAI writes
    arguments), for the envelope, whose prompt shows it so. The converter allows one optional
    space at each place; such a choice means nothing, and at temperature 0 a near-tie between
    `{"` and `{ "` flips on the smallest change in the logits (a prompt read whole or taken from
    the prefix cache), changing all that follows. A family's own format keeps its spaces."""
    compacted, count = _SPACE_RULE.subn('space ::= ""', gbnf)
    if count != 1:
        raise GrammarError("the tools' grammar has no single whitespace rule", param="tools")
    return compacted


def _rename_root(gbnf: str, name: str) -> str:
    renamed, count = _ROOT.subn(f"{name} ::= ", gbnf)
    if count != 1:
        raise GrammarError("the tools' grammar has no single root rule", param="tools")
    return renamed


def _literal(text: str) -> str:
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'
