"""What every tool-call parser does: text in, content and tool-call deltas out, a piece at a time.

A parser is made for one answer. `feed(text)` takes the model's next text and returns the
content that is safe to show and the tool-call deltas it completed; `finish()` returns what
was held back. The output never depends on how the text was split into pieces: a marker, an
escape or a key may arrive one character at a time, and text that could still be the start of
a marker is held back, never shown as content.

`FramedParser` is the shape of the template families: content, until a marker (or, for some
families, a bracket opening the answer) starts a block of calls; content again after it.
A block that turns out not to be calls (no name before it fails) is shown as the content it
was. Whitespace next to calls is not content: what stands between, before or after calls is
dropped, so an answer that is only calls has no content.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Protocol

from ember.services.tools.jsonstream import WHITESPACE, CallSlots
from ember.services.types import ToolCallDelta

Output = tuple[str, tuple[ToolCallDelta, ...]]


class ToolParser(ABC):
    """Reads one answer's text into content and tool-call deltas."""

    def __init__(self, slots: CallSlots) -> None:
        self.slots = slots
        self._buf = ""
        self._text: list[str] = []
        self._deltas: list[ToolCallDelta] = []

    @property
    def calls(self) -> int:
        """Calls announced so far (those past the limit are read, never announced)."""
        return self.slots.count

    def feed(self, text: str) -> Output:
        if text:
            self._buf += text
            self._run(final=False)
        return self._take()

    def finish(self) -> Output:
        self._run(final=True)
        self._close()
        return self._take()

    @abstractmethod
    def _run(self, *, final: bool) -> None:
        """Consume what can be consumed of `_buf`, appending to `_text` and `_deltas`."""

    def _close(self) -> None:  # noqa: B027 - a hook, empty by default
        """The stream has ended: give back anything still held."""

    def _take(self) -> Output:
        text = "".join(self._text)
        deltas = tuple(self._deltas)
        self._text.clear()
        self._deltas.clear()
        return text, deltas


def partial_suffix(text: str, markers: tuple[str, ...]) -> int:
    """Length of the longest end of `text` that begins one of `markers` (and is not all of it)."""
    best = 0
    for marker in markers:
        for n in range(min(len(marker) - 1, len(text)), best, -1):
            if text.endswith(marker[:n]):
                best = n
                break
    return best


def find_marker(text: str, markers: tuple[str, ...]) -> tuple[int, str] | None:
    found = [(i, m) for m in markers if (i := text.find(m)) >= 0]
    return min(found) if found else None


class Block(Protocol):
    """A run of calls inside an answer (CallReader, CallArray, or a family's own frame)."""

    announced: bool  # a call of it has been announced: it is calls, whatever follows
    done: bool
    failed: bool

    def feed(self, text: str) -> tuple[int, list[ToolCallDelta]]: ...

    def close(self) -> list[ToolCallDelta]: ...


class FramedParser(ToolParser):
    """Content around blocks of calls, each opened by a marker (or `leading`, see below)."""

    markers: tuple[str, ...] = ()
    # Characters that open a block when they are the answer's first non-whitespace (for
    # families whose marker is a special token the engine does not show as text).
    leading: str = ""
    # Characters that may stand between two blocks (besides whitespace), dropped there.
    separators: str = ""

    def __init__(self, slots: CallSlots) -> None:
        super().__init__(slots)
        self._mode = "start"
        self._block: Block | None = None
        self._opening = ""  # the marker that opened the block (shown again if it is not calls)
        self._raw: list[str] = []  # the block's text, while it may still turn out not to be calls
        self._space = ""  # whitespace at the end of the content, held until more content comes
        self._dropped = ""  # the whitespace before the open block (content again if it is not calls)
        self._after_call = False  # whitespace right after a block is not content
        self._called = False

    @abstractmethod
    def _open(self, opening: str) -> Block:
        """The block that `opening` (a marker, or a `leading` character not yet consumed) starts."""

    def _after(self) -> None:
        """After a block of calls: what may come next (by default, content)."""
        self._mode = "content"

    def _run(self, *, final: bool) -> None:
        while self._buf:
            before = (self._mode, len(self._buf))
            if self._mode in ("start", "between"):
                self._start(final)
            elif self._mode == "content":
                self._content_step(final)
            else:
                self._block_step()
            if (self._mode, len(self._buf)) == before:
                break

    def _close(self) -> None:
        if self._block is not None:
            self._deltas.extend(self._block.close())
            if not self._block.announced:
                self._content(self._dropped + self._opening + "".join(self._raw) + self._buf)
            self._buf = ""  # an unfinished block of calls ends with the answer
            self._block = None
        if self._buf:  # a marker's beginning, or whitespace before the first character
            self._content(self._buf)
            self._buf = ""
        if not self._called:
            self._text.append(self._space)
        self._space = ""

    def _start(self, final: bool) -> None:
        """At the answer's start, or between blocks: a `leading` character opens a block."""
        skip = WHITESPACE + self.separators if self._mode == "between" else WHITESPACE
        i = 0
        while i < len(self._buf) and self._buf[i] in skip:
            i += 1
        if self._mode == "between":
            self._buf = self._buf[i:]
            i = 0
        if i == len(self._buf):
            if final:
                self._mode = "content"
            return
        rest = self._buf[i:]
        if not final and any(m.startswith(rest) for m in self.markers):
            return  # perhaps a marker: wait for the rest of it
        if self.leading and rest[0] in self.leading and not any(rest.startswith(m) for m in self.markers):
            self._buf = self._buf[i:]
            self._begin_block("")
        else:
            self._mode = "content"

    def _content_step(self, final: bool) -> None:
        found = find_marker(self._buf, self.markers)
        if found is not None:
            pos, marker = found
            self._content(self._buf[:pos])
            self._buf = self._buf[pos + len(marker) :]
            self._begin_block(marker)
            return
        keep = 0 if final else partial_suffix(self._buf, self.markers)
        self._content(self._buf[: len(self._buf) - keep])
        self._buf = self._buf[len(self._buf) - keep :]

    def _begin_block(self, opening: str) -> None:
        self._dropped, self._space = self._space, ""
        self._block = self._open(opening)
        self._opening = opening
        self._raw = []
        self._mode = "block"

    def _block_step(self) -> None:
        block = self._block
        assert block is not None
        used, deltas = block.feed(self._buf)
        self._deltas.extend(deltas)
        if not block.announced:
            self._raw.append(self._buf[:used])
        self._buf = self._buf[used:]
        if block.announced:
            self._called = True
            self._raw = []
        if block.failed and not block.announced:
            self._block = None
            self._mode = "content"
            self._content(self._dropped + self._opening + "".join(self._raw))
            self._raw = []
        elif block.done or block.failed:
            self._block = None
            self._after_call = True
            self._after()

    def _content(self, text: str) -> None:
        if self._after_call:
            text = text.lstrip(WHITESPACE)
            if not text:
                return
            self._after_call = False
        text = self._space + text
        body = text.rstrip(WHITESPACE)
        self._space = text[len(body) :]
        if body:
            self._text.append(body)
