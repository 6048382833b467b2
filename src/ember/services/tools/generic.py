"""The generic envelope: ember's tool-call format for templates that know no tools.

The model answers with one JSON object, held to this shape by a grammar (services/tools/
grammar.py builds it from the tools' schemas):

    {"tool_calls":[{"name":"<tool>","arguments":{<that tool's arguments>}},...]}
    {"response":"<the answer as text>"}

(compact: the grammar allows no whitespace between JSON tokens; the parser takes any).

The parser streams the `response` string's content as text (its escapes decoded, one held
back until complete) and each call as tool-call deltas: the id and name once, then the
arguments' JSON text as the model writes it. Keys other than these are skipped. An answer
that is not such an object (which the grammar rules out) is shown as the content it is.
"""

from __future__ import annotations

from ember.services.tools.base import ToolParser
from ember.services.tools.jsonstream import CallArray, CallSlots, RawValue, StringDecoder, skip_whitespace

RESPONSE_KEY = "response"
CALLS_KEY = "tool_calls"


class GenericParser(ToolParser):
    def __init__(self, slots: CallSlots) -> None:
        super().__init__(slots)
        self._state = "open"
        self._decoder = StringDecoder()
        self._parts: list[str] = []
        self._key = ""
        self._array: CallArray | None = None
        self._value = RawValue()
        self._raw: list[str] = []  # what was read while nothing was shown: shown if it is not an envelope
        self._shown = False

    def _run(self, *, final: bool) -> None:
        buf, i = self._buf, 0
        while i < len(buf):
            state = self._state
            start = i
            if state == "text":
                self._text.append(buf[i:])
                i = len(buf)
            elif state == "done":
                i = len(buf)  # what follows the envelope (whitespace) is not part of the answer
            elif state in ("open", "key_or_end", "colon", "value", "after"):
                i = skip_whitespace(buf, i)
                if i < len(buf):
                    i = self._punctuation(buf, i)
            elif state in ("key", "response"):
                piece, used = self._decoder.feed(buf[i:])
                i += used
                if state == "response":
                    self._show(piece)
                else:
                    self._parts.append(piece)
                if self._decoder.closed:
                    if state == "key":
                        self._key = "".join(self._parts)
                        self._state = "colon"
                    else:
                        self._state = "after"
            elif state == "calls":
                assert self._array is not None
                used, deltas = self._array.feed(buf[i:])
                i += used
                if deltas:
                    self._shown = True
                    self._deltas.extend(deltas)
                if self._array.failed:
                    self._fail()
                elif self._array.done:
                    self._state = "after"
            else:  # "skip": a value of another key
                i += self._value.feed(buf[i:])
                if self._value.done:
                    self._state = "after"
            if not self._shown and self._state != "text":
                self._raw.append(buf[start:i])
            if self._state == "failed":
                self._state = "text" if not self._shown else "done"
                if self._state == "text":
                    self._text.append("".join(self._raw))
                self._raw = []
        self._buf = ""

    def _punctuation(self, buf: str, i: int) -> int:
        """One structural character at buf[i] for the current state; the index after it."""
        ch, state = buf[i], self._state
        if state == "open":
            return self._expect(ch == "{", "key_or_end", i)
        if state == "key_or_end":
            if ch == "}":
                return self._expect(True, "done", i)
            self._decoder, self._parts = StringDecoder(), []
            return self._expect(ch == '"', "key", i)
        if state == "colon":
            return self._expect(ch == ":", "value", i)
        if state == "after":
            if ch == "}":
                return self._expect(True, "done", i)
            return self._expect(ch == ",", "key_or_end", i)
        # "value"
        if self._key == RESPONSE_KEY and ch == '"':
            self._decoder = StringDecoder()
            self._state = "response"
            return i + 1
        if self._key == CALLS_KEY and ch == "[":
            self._array = CallArray(self.slots)
            self._state = "calls"
            return i  # the array reads its own bracket
        self._value = RawValue()
        self._state = "skip"
        return i

    def _expect(self, ok: bool, next_state: str, i: int) -> int:
        if not ok:
            self._fail()
            return i
        self._state = next_state
        return i + 1

    def _fail(self) -> None:
        self._state = "failed"

    def _show(self, text: str) -> None:
        if text:
            self._shown = True
            self._text.append(text)

    def _close(self) -> None:
        if self._array is not None and self._state == "calls":
            self._deltas.extend(self._array.close())
        if not self._shown and self._state not in ("text", "done") and self._key not in (RESPONSE_KEY, CALLS_KEY):
            self._text.append("".join(self._raw))  # never an envelope: what it was is the answer
        self._raw = []
