"""Turning token bytes into text that stops exactly at a stop string.

Tokens can end in the middle of a UTF-8 character, and a stop string can span
several tokens, so text is held back until it can no longer be part of either.
"""

from __future__ import annotations

import codecs


class StopMatcher:
    """Feeds text, emits what is safe to show, and reports when a stop string appears."""

    def __init__(self, stops: tuple[str, ...] | list[str]) -> None:
        self._stops = tuple(s for s in stops if s)
        self._held = ""
        self.stopped = False
        self.matched: str | None = None  # the stop string that ended the text, once stopped

    def feed(self, text: str) -> str:
        if self.stopped:
            return ""
        buffer = self._held + text
        if not self._stops:
            self._held = ""
            return buffer
        # The earliest match wins; at one position, the stop listed first.
        found = min(((i, n) for n, i in enumerate(buffer.find(s) for s in self._stops) if i >= 0), default=None)
        if found is not None:
            first = found[0]
            self.stopped = True
            self.matched = self._stops[found[1]]
            self._held = ""
            return buffer[:first]
        keep = self._partial_suffix(buffer)
        self._held = buffer[len(buffer) - keep :] if keep else ""
        return buffer[: len(buffer) - keep]

    def flush(self) -> str:
        """Text held back when generation ends for another reason."""
        held, self._held = self._held, ""
        return "" if self.stopped else held

    def _partial_suffix(self, buffer: str) -> int:
        """Length of the longest end of buffer that begins some stop string."""
        best = 0
        for stop in self._stops:
            for n in range(min(len(stop) - 1, len(buffer)), best, -1):
                if buffer.endswith(stop[:n]):
                    best = n
                    break
        return best


class Utf8Stream:
    """Decodes a byte stream that may split characters between chunks."""

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def feed(self, data: bytes) -> str:
        return self._decoder.decode(data)

    def flush(self) -> str:
        return self._decoder.decode(b"", final=True)
