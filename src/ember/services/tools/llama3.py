"""Llama 3.x tool calls: `{"name": "...", "parameters": {...}}`, optionally after `<|python_tag|>`.

The JSON call is the whole answer (or follows `<|python_tag|>`, a special token that the engine
does not show as text), so an answer whose first character is `{` is read as a call; if its
keys are not a call's (name, parameters or arguments, type, id), it is shown as the content
it was. Several calls may follow each other, separated by `;` or whitespace.
"""

from __future__ import annotations

from ember.services.tools.base import Block, FramedParser
from ember.services.tools.jsonstream import CALL_KEYS, CallReader

PYTHON_TAG = "<|python_tag|>"


class Llama3Parser(FramedParser):
    markers = (PYTHON_TAG,)
    leading = "{"
    separators = ";"

    def _open(self, opening: str) -> Block:
        return CallReader(self.slots, known_keys=CALL_KEYS)

    def _after(self) -> None:
        self._mode = "between"
