"""Hermes / Qwen 2.5 tool calls: `<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>`.

Each call is one block, opened by `<tool_call>` anywhere in the answer and closed by
`</tool_call>`; parallel calls are several blocks. Text around the blocks is content.
"""

from __future__ import annotations

from ember.services.tools.base import Block, FramedParser
from ember.services.tools.jsonstream import CallReader, CallSlots, skip_whitespace
from ember.services.types import ToolCallDelta

OPEN = "<tool_call>"
CLOSE = "</tool_call>"


class _HermesBlock:
    """One call object, then its closing tag (which a cut-off answer may lack)."""

    def __init__(self, slots: CallSlots) -> None:
        self._reader = CallReader(slots)
        self._closing = ""  # the closing tag, as far as it has come
        self.announced = False
        self.done = False
        self.failed = False

    def feed(self, text: str) -> tuple[int, list[ToolCallDelta]]:
        if not self._reader.done:
            used, deltas = self._reader.feed(text)
            self.announced = self._reader.announced
            self.failed = self._reader.failed
            if not self._reader.done:
                return used, deltas
            return used + self._tag(text[used:]), deltas
        return self._tag(text), []

    def _tag(self, text: str) -> int:
        """Consume the closing tag (after whitespace); anything else ends the block unconsumed."""
        i = 0 if self._closing else skip_whitespace(text, 0)
        while i < len(text) and len(self._closing) < len(CLOSE):
            if text[i] != CLOSE[len(self._closing)]:
                self.done = True
                return i  # what matched of the tag so far is dropped with it
            self._closing += text[i]
            i += 1
        self.done = len(self._closing) == len(CLOSE)
        return i

    def close(self) -> list[ToolCallDelta]:
        return self._reader.close()


class HermesParser(FramedParser):
    markers = (OPEN,)

    def _open(self, opening: str) -> Block:
        return _HermesBlock(self.slots)
