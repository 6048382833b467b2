"""One request's tool plan: what its chat template gets, the grammar, the parser (see the table
in the package's docstring)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ember.services.tools.base import ToolParser
from ember.services.tools.families import Family, detect_family, knows_tool_role, parser_for
from ember.services.tools.grammar import chosen_tools, envelope_grammar, family_grammar, max_calls
from ember.services.tools.jsonstream import CallSlots, new_call_id
from ember.services.tools.prompt import envelope_instructions, envelope_messages, family_messages, template_tools
from ember.services.types import TextRequest


@dataclass(frozen=True)
class ToolPlan:
    family: Family
    messages: list[dict[str, Any]]  # what the chat template renders
    tools: list[dict[str, Any]] | None  # the template's `tools` variable (None: not given)
    grammar: str | None  # GBNF the answer must match
    parse: bool  # whether the answer is read for calls
    max_calls: int | None

    def parser(self, new_id: Callable[[], str] = new_call_id) -> ToolParser | None:
        """A fresh parser for one answer (None when the answer is not read for calls)."""
        if not self.parse:
            return None
        return parser_for(self.family, CallSlots(self.max_calls, new_id))


def has_tool_history(request: TextRequest) -> bool:
    return any(m.tool_calls or m.role == "tool" for m in request.messages or ())


def plan_tools(request: TextRequest, template: str) -> ToolPlan | None:
    """How `request` (a chat) is rendered, held and read for tool calls; None for the plain path."""
    if request.messages is None or not (request.tools or has_tool_history(request)):
        return None
    choice, parallel = request.tool_choice, request.parallel_tool_calls
    active = bool(request.tools) and choice.mode != "none"
    family = detect_family(template)
    limit = max_calls(choice, parallel)
    if family == "generic":
        instructions = envelope_instructions(chosen_tools(request.tools, choice), choice, parallel) if active else None
        return ToolPlan(
            family=family,
            messages=envelope_messages(
                request.messages, instructions=instructions, tool_role=knows_tool_role(template)
            ),
            tools=None,
            grammar=envelope_grammar(request.tools, choice, parallel) if active else None,
            parse=active,
            max_calls=limit,
        )
    return ToolPlan(
        family=family,
        messages=family_messages(request.messages, family),
        tools=template_tools(request.tools) if active else None,
        grammar=family_grammar(family, request.tools, choice, parallel) if active else None,
        parse=active,
        max_calls=limit,
    )
