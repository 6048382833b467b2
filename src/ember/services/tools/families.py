"""Which tool-call format a chat template speaks, read from the template's source.

The markers are those llama.cpp looks for: a template that takes `tools` and writes
`<tool_call>` is Hermes / Qwen 2.5; one that writes an `ipython` header or `<|python_tag|>` is
Llama 3.x; one that writes `[TOOL_CALLS]` is Mistral. Any other template (SmolLM2's, Gemma's,
ember's ChatML fallback) gets the generic envelope (generic.py).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Literal

from ember.services.tools.base import ToolParser
from ember.services.tools.generic import GenericParser
from ember.services.tools.hermes import HermesParser
from ember.services.tools.jsonstream import CallSlots
from ember.services.tools.llama3 import Llama3Parser
from ember.services.tools.mistral import MistralParser

Family = Literal["hermes", "llama3", "mistral", "generic"]

_PARSERS: dict[Family, type[ToolParser]] = {
    "hermes": HermesParser,
    "llama3": Llama3Parser,
    "mistral": MistralParser,
    "generic": GenericParser,
}


@lru_cache(maxsize=64)
def detect_family(template: str) -> Family:
    if "tools" not in template:
        return "generic"
    if "<tool_call>" in template:
        return "hermes"
    if "<|start_header_id|>ipython" in template or "<|python_tag|>" in template:
        return "llama3"
    if "[TOOL_CALLS]" in template:
        return "mistral"
    return "generic"


@lru_cache(maxsize=64)
def knows_tool_role(template: str) -> bool:
    """Whether the template names the `tool` role (else tool results are shown as user text)."""
    return "'tool'" in template or '"tool"' in template


def parser_for(family: Family, slots: CallSlots) -> ToolParser:
    return _PARSERS[family](slots)
