"""Incremental readers of the JSON a model writes for its tool calls.

Each reader is fed the unread text so far and says how many characters of it it consumed;
what it did not consume is given to it again, with more, on the next call. So a reader never
needs its input split in any particular place: a string escape, a key or a marker may arrive
one character at a time.

- `StringDecoder` decodes the content of a JSON string (after its opening quote), holding back
  an escape until it is complete (`\\u` escapes and surrogate pairs included).
- `RawValue` finds where one JSON value ends without decoding it.
- `CallReader` reads one call object, `{"name": "...", "arguments": {...}}`, and turns it into
  `ToolCallDelta`s: the id and name first, once the name is known, then the arguments' JSON text
  in fragments as it arrives (a string-encoded arguments value is decoded and sent whole).
- `CallSlots` numbers the calls of one answer, gives each its id and stops at a limit.
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Callable
from typing import Literal

from ember.services.types import ToolCallDelta

WHITESPACE = " \t\n\r"
_SPECIAL = re.compile(r'["\\]')
_ESCAPES = {'"': '"', "\\": "\\", "/": "/", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t"}
_REPLACEMENT = "\ufffd"


def new_call_id() -> str:
    """An OpenAI-style call id: `call_` and 24 random hex digits."""
    return "call_" + secrets.token_hex(12)


def skip_whitespace(text: str, i: int) -> int:
    n = len(text)
    while i < n and text[i] in WHITESPACE:
        i += 1
    return i


class CallSlots:
    """Indexes and ids for the calls of one answer; past `limit` calls, `open` says no."""

    def __init__(self, limit: int | None = None, new_id: Callable[[], str] = new_call_id) -> None:
        self.limit = limit
        self.count = 0
        self._new_id = new_id

    def open(self) -> tuple[int, str] | None:
        if self.limit is not None and self.count >= self.limit:
            return None
        index = self.count
        self.count += 1
        return index, self._new_id()


def _escape(buf: str, j: int) -> tuple[str, int]:
    """The escape at buf[j] (a backslash): its text and length; length 0 if it is not complete yet."""
    n = len(buf)
    if j + 1 >= n:
        return "", 0
    kind = buf[j + 1]
    if kind != "u":
        return _ESCAPES.get(kind, kind), 2
    if j + 6 > n:
        return "", 0
    try:
        code = int(buf[j + 2 : j + 6], 16)
    except ValueError:
        return _REPLACEMENT, 2
    if 0xDC00 <= code <= 0xDFFF:
        return _REPLACEMENT, 6  # a low surrogate alone
    if not 0xD800 <= code <= 0xDBFF:
        return chr(code), 6
    # A high surrogate: the low one must follow as a second \u escape.
    if (j + 6 < n and buf[j + 6] != "\\") or (j + 7 < n and buf[j + 7] != "u"):
        return _REPLACEMENT, 6
    if j + 12 > n:
        return "", 0
    try:
        low = int(buf[j + 8 : j + 12], 16)
    except ValueError:
        return _REPLACEMENT, 6
    if not 0xDC00 <= low <= 0xDFFF:
        return _REPLACEMENT, 6
    return chr(0x10000 + ((code - 0xD800) << 10) + (low - 0xDC00)), 12


class StringDecoder:
    """The content of one JSON string, decoded a piece at a time; `closed` after its closing quote."""

    def __init__(self) -> None:
        self._held = ""  # an escape not complete yet
        self.closed = False

    def feed(self, text: str) -> tuple[str, int]:
        """The text decoded from `text` and how many of its characters were consumed: all of
        them, unless the string closed (then up to and with the closing quote)."""
        held, self._held = self._held, ""
        buf = held + text
        out: list[str] = []
        i, n = 0, len(buf)
        while i < n:
            match = _SPECIAL.search(buf, i)
            if match is None:
                out.append(buf[i:])
                break
            j = match.start()
            out.append(buf[i:j])
            if buf[j] == '"':
                self.closed = True
                return "".join(out), j + 1 - len(held)
            decoded, used = _escape(buf, j)
            if used == 0:
                self._held = buf[j:]
                break
            out.append(decoded)
            i = j + used
        return "".join(out), len(text)


class RawValue:
    """Where one JSON value ends, found a piece at a time, its text left as it is.

    The value's first character must be the first one fed (whitespace before it is the
    caller's). A number or literal ends at the first character that cannot continue it, which
    is not consumed; at the end of the stream it ends where the text does (`close`).
    """

    def __init__(self) -> None:
        self.kind: Literal["container", "string", "scalar"] | None = None
        self.done = False
        self._depth = 0
        self._in_string = False
        self._escaped = False

    def feed(self, text: str) -> int:
        i, n = 0, len(text)
        if self.kind is None and n:
            first = text[0]
            if first in "{[":
                self.kind, self._depth, i = "container", 1, 1
            elif first == '"':
                self.kind, self._in_string, i = "string", True, 1
            else:
                self.kind = "scalar"
        while i < n and not self.done:
            ch = text[i]
            if self.kind == "scalar":
                if ch in ",}]" or ch in WHITESPACE:
                    self.done = True
                    return i
            elif self._in_string:
                if self._escaped:
                    self._escaped = False
                elif ch == "\\":
                    self._escaped = True
                elif ch == '"':
                    self._in_string = False
                    if self.kind == "string":
                        self.done = True
            elif ch == '"':
                self._in_string = True
            elif ch in "{[":
                self._depth += 1
            elif ch in "}]":
                self._depth -= 1
                if self._depth == 0:
                    self.done = True
            i += 1
        return i

    def close(self) -> None:
        """The stream ended: a number or literal ends with it."""
        if self.kind == "scalar":
            self.done = True


NAME_KEY = "name"
ARGUMENT_KEYS = frozenset({"arguments", "parameters"})
CALL_KEYS = frozenset({"name", "arguments", "parameters", "type", "id"})


class CallReader:
    """One call object, `{"name": "...", "arguments": {...}}`, read into tool-call deltas.

    The first delta has the call's index, id and name; the arguments' text follows in
    fragments, exactly as the model wrote it (a string-encoded object is decoded, and sent
    whole once it closes; a call without arguments gets "{}"). Arguments written before the
    name are held until the name is known. With `known_keys`, a key outside them makes the
    object not a call (`failed`), so that plain JSON answers are recognised early. When
    `slots` has no room, the call is read to its end but produces no deltas.
    """

    def __init__(self, slots: CallSlots, *, known_keys: frozenset[str] | None = None) -> None:
        self._slots = slots
        self._known = known_keys
        self._state = "open"
        self._decoder = StringDecoder()
        self._parts: list[str] = []
        self._key = ""
        self._value = RawValue()
        self._held_args: list[str] = []  # arguments text seen before the name
        self._string_args: list[str] = []  # a string-encoded arguments value, raw
        self._args_seen = False
        self.name: str | None = None
        self.index: int | None = None  # set once the call is announced (None also when dropped)
        self.announced = False
        self.done = False
        self.failed = False

    def feed(self, text: str) -> tuple[int, list[ToolCallDelta]]:
        out: list[ToolCallDelta] = []
        i, n = 0, len(text)
        while i < n and not (self.done or self.failed):
            state = self._state
            if state in ("open", "key_or_end", "colon", "value", "after"):
                i = skip_whitespace(text, i)
                if i >= n:
                    break
                ch = text[i]
                if state == "open":
                    self._expect(ch == "{", "key_or_end")
                elif state == "key_or_end":
                    if ch == "}":
                        self._finish(out)
                    else:
                        self._expect(ch == '"', "key")
                        self._decoder, self._parts = StringDecoder(), []
                elif state == "colon":
                    self._expect(ch == ":", "value")
                elif state == "after":
                    if ch == "}":
                        self._finish(out)
                    else:
                        self._expect(ch == ",", "key_or_end")
                else:  # a value starts here
                    self._start_value(ch)
                    if self.failed:
                        break
                    if self._state in ("arguments", "skip"):
                        continue  # RawValue reads the value from its first character
                i += 1
            elif state in ("key", "name"):
                piece, used = self._decoder.feed(text[i:])
                self._parts.append(piece)
                i += used
                if self._decoder.closed:
                    self._string_done(out)
            else:  # "arguments" or "skip": a raw value
                used = self._value.feed(text[i:])
                if state == "arguments":
                    self._arguments(text[i : i + used], out)
                i += used
                if self._value.done:
                    if state == "arguments":
                        self._arguments_done(out)
                    self._state = "after"
        return i, out

    def close(self) -> list[ToolCallDelta]:
        """The stream ended: a trailing number or literal in the arguments is complete."""
        out: list[ToolCallDelta] = []
        if self._state == "arguments" and self._value.kind == "scalar":
            self._value.close()
            self._arguments_done(out)
        return out

    # --- steps ---------------------------------------------------------------------------

    def _expect(self, ok: bool, next_state: str) -> None:
        if ok:
            self._state = next_state
        else:
            self.failed = True

    def _start_value(self, ch: str) -> None:
        if self._key == NAME_KEY:
            self._expect(ch == '"' and self.name is None, "name")
            self._decoder, self._parts = StringDecoder(), []
        elif self._key in ARGUMENT_KEYS and not self._args_seen:
            self._args_seen = True
            self._value = RawValue()
            self._state = "arguments"
        else:
            self._value = RawValue()
            self._state = "skip"

    def _string_done(self, out: list[ToolCallDelta]) -> None:
        text = "".join(self._parts)
        if self._state == "key":
            self._key = text
            if self._known is not None and text not in self._known:
                self.failed = True
            self._state = "colon"
            return
        self.name = text
        self._state = "after"
        slot = self._slots.open()
        self.announced = True
        if slot is None:
            return
        self.index, call_id = slot
        out.append(ToolCallDelta(index=self.index, id=call_id, name=text))
        if self._held_args:
            out.append(ToolCallDelta(index=self.index, arguments="".join(self._held_args)))
            self._held_args.clear()

    def _send(self, fragment: str, out: list[ToolCallDelta]) -> None:
        if not fragment:
            return
        if self.name is None:
            self._held_args.append(fragment)
        elif self.index is not None:
            if out and out[-1].index == self.index and out[-1].id is None:
                out[-1] = ToolCallDelta(index=self.index, arguments=out[-1].arguments + fragment)
            else:
                out.append(ToolCallDelta(index=self.index, arguments=fragment))

    def _arguments(self, raw: str, out: list[ToolCallDelta]) -> None:
        if self._value.kind == "container":
            self._send(raw, out)
        else:
            self._string_args.append(raw)

    def _arguments_done(self, out: list[ToolCallDelta]) -> None:
        raw = "".join(self._string_args)
        if self._value.kind == "string":
            try:
                decoded = json.loads(raw)
            except ValueError:
                decoded = raw
            self._send(decoded if isinstance(decoded, str) else raw, out)
        elif self._value.kind == "scalar":
            self._send("{}" if raw.strip() == "null" else raw, out)

    def _finish(self, out: list[ToolCallDelta]) -> None:
        if self.name is None:
            self.failed = True
            return
        if not self._args_seen:
            self._send("{}", out)
        self.done = True


class CallArray:
    """A JSON array of call objects, `[{...}, {...}]`, from its opening bracket, read into deltas."""

    def __init__(self, slots: CallSlots, *, known_keys: frozenset[str] | None = None) -> None:
        self._slots = slots
        self._known = known_keys
        self._state = "open"
        self._reader: CallReader | None = None
        self.announced = False
        self.done = False
        self.failed = False

    def feed(self, text: str) -> tuple[int, list[ToolCallDelta]]:
        out: list[ToolCallDelta] = []
        i, n = 0, len(text)
        while i < n and not (self.done or self.failed):
            if self._reader is not None:
                used, deltas = self._reader.feed(text[i:])
                i += used
                out.extend(deltas)
                self.announced = self.announced or self._reader.announced
                if self._reader.failed:
                    self.failed = True
                elif self._reader.done:
                    self._reader = None
                    self._state = "after"
                continue
            i = skip_whitespace(text, i)
            if i >= n:
                break
            ch = text[i]
            if self._state == "open":
                self.failed = ch != "["
                self._state = "first"
                i += 1
            elif self._state == "first" and ch == "]":
                self.done = True
                i += 1
            elif self._state in ("first", "item"):
                self._reader = CallReader(self._slots, known_keys=self._known)
            elif ch == ",":
                self._state = "item"
                i += 1
            else:
                self.done = ch == "]"
                self.failed = not self.done
                i += 1 if self.done else 0
        return i, out

    def close(self) -> list[ToolCallDelta]:
        return self._reader.close() if self._reader is not None else []
