"""Stop strings that span token boundaries and UTF-8 split across tokens."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from ember.engine.text import StopMatcher, Utf8Stream


def run(pieces: list[str], stops: list[str]) -> tuple[str, bool]:
    matcher = StopMatcher(stops)
    out = "".join(matcher.feed(p) for p in pieces)
    return out + matcher.flush(), matcher.stopped


def test_stop_inside_one_piece() -> None:
    assert run(["Hello, world"], [","]) == ("Hello", True)


def test_stop_spanning_pieces_is_held_back_then_cut() -> None:
    matcher = StopMatcher(["</end>"])
    assert matcher.feed("answer </") == "answer "
    assert matcher.feed("en") == ""
    assert matcher.feed("d> trailing") == ""
    assert matcher.stopped


def test_false_alarm_is_released() -> None:
    assert run(["abc <", "/e", "nd but not"], ["</end>"]) == ("abc </end but not", False)


def test_earliest_of_several_stops_wins() -> None:
    assert run(["one two three"], ["three", "two"]) == ("one ", True)


def test_the_matched_stop_is_named() -> None:
    matcher = StopMatcher(["three", "", "two", "tw"])
    assert matcher.matched is None
    assert matcher.feed("one t") == "one "
    assert matcher.feed("wo three") == ""
    assert matcher.stopped and matcher.matched == "two"  # earliest; at one position, the first listed
    unmatched = StopMatcher(["zzz"])
    assert unmatched.feed("abc") == "abc" and unmatched.flush() == ""
    assert not unmatched.stopped and unmatched.matched is None


def test_no_stops_passes_through() -> None:
    assert run(["a", "b", "c"], []) == ("abc", False)


@given(st.text(min_size=0, max_size=40), st.lists(st.integers(1, 5), max_size=20),
       st.sampled_from(["x", "ab", "<|end|>", "\n\n"]))
def test_chunking_never_changes_the_result(text: str, cuts: list[int], stop: str) -> None:
    pieces, pos = [], 0
    for cut in cuts:
        pieces.append(text[pos:pos + cut])
        pos += cut
    pieces.append(text[pos:])
    expected = text[: text.find(stop)] if stop in text else text
    assert run(pieces, [stop])[0] == expected


def test_utf8_split_across_tokens() -> None:
    data = "héllo 🌍".encode()
    stream = Utf8Stream()
    out = "".join(stream.feed(data[i:i + 1]) for i in range(len(data))) + stream.flush()
    assert out == "héllo 🌍"
