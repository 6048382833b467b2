"""Mistral tool calls: `[TOOL_CALLS][{"name": "...", "arguments": {...}, "id": "..."}]`.

`[TOOL_CALLS]` is a special token, which the engine does not show as text, so an answer
whose first character is `[` is read as the array of calls too (shown as content if it turns
out not to be one). The model's own 9-character ids are not used: ember gives each call its id.
"""

from __future__ import annotations

from ember.services.tools.base import Block, FramedParser
from ember.services.tools.jsonstream import CALL_KEYS, CallArray, CallReader, CallSlots, skip_whitespace
from ember.services.types import ToolCallDelta

TOOL_CALLS = "[TOOL_CALLS]"


class _MistralBlock:
    """After the marker: an array of calls, or a single call object."""

    def __init__(self, slots: CallSlots) -> None:
        self._slots = slots
        self._inner: CallArray | CallReader | None = None
        self.announced = False
        self.done = False
        self.failed = False

    def feed(self, text: str) -> tuple[int, list[ToolCallDelta]]:
        i = 0
        if self._inner is None:
            i = skip_whitespace(text, 0)
            if i == len(text):
                return i, []
            if text[i] == "[":
                self._inner = CallArray(self._slots)
            elif text[i] == "{":
                self._inner = CallReader(self._slots)
            else:
                self.failed = True
                return i, []
        used, deltas = self._inner.feed(text[i:])
        self.announced, self.done, self.failed = self._inner.announced, self._inner.done, self._inner.failed
        return i + used, deltas

    def close(self) -> list[ToolCallDelta]:
        return self._inner.close() if self._inner is not None else []


class MistralParser(FramedParser):
    markers = (TOOL_CALLS,)
    leading = "["

    def _open(self, opening: str) -> Block:
        if opening:
            return _MistralBlock(self.slots)
        return CallArray(self.slots, known_keys=CALL_KEYS)
