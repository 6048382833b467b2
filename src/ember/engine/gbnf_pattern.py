"""GBNF for the JSON string literals whose value matches a regular expression (`pattern`).

The pattern is parsed with Python's own regular-expression parser (the one
jsonschema validates with), and its tree turned into GBNF. Invariants:

- What the grammar writes is JSON text: a character that JSON must escape
  (`"`, `\\`, tab, newline, carriage return) is written as its escape; other
  control characters are never written.
- Every string the grammar allows matches the pattern: it matches it whole
  (a string that fullmatches a pattern also contains a match, which is what
  JSON Schema asks), and where the parser's classes are Unicode-wide (`\\w`,
  `\\d`, `\\s`) the grammar keeps to their ASCII members, which it knows exactly.
- What cannot be kept exactly (look-around, back-references, word
  boundaries, flags, possessive or atomic groups, anchors inside the
  pattern) is refused with a PatternError naming it, never approximated.
"""

from __future__ import annotations

import re

# The parser behind `re` and its opcodes: private modules, but what `re` itself is built on
# (typeshed has no stubs for them).
import re._constants as sre  # type: ignore[import-not-found]  # the stdlib regex parser is private: no stubs
import re._parser as sre_parse  # type: ignore[import-not-found]  # likewise

MAX_REPEAT = 2000  # the most repetitions a pattern may require; larger upper bounds are lowered to this
_UNICODE_MAX = 0x10FFFF
_ASCII_MAX = 0x7F

Ranges = list[tuple[int, int]]  # sorted, disjoint, inclusive code point ranges

# Code points JSON text cannot hold as themselves inside a string.
_NEEDS_ESCAPE: Ranges = [(0x00, 0x1F), (0x22, 0x22), (0x5C, 0x5C), (0x7F, 0x7F)]
# The ones the grammar writes as escapes; the other control characters are left out.
_ESCAPES = {0x22: '\\"', 0x5C: "\\\\", 0x09: "\\t", 0x0A: "\\n", 0x0D: "\\r"}

# ASCII members of the parser's categories, exactly (str.isspace and str.isalnum on ASCII).
_CATEGORIES: dict[object, Ranges] = {
    sre.CATEGORY_DIGIT: [(0x30, 0x39)],
    sre.CATEGORY_WORD: [(0x30, 0x39), (0x41, 0x5A), (0x5F, 0x5F), (0x61, 0x7A)],
    sre.CATEGORY_SPACE: [(0x09, 0x0D), (0x1C, 0x20)],
}
_NEGATED_CATEGORIES = {
    sre.CATEGORY_NOT_DIGIT: sre.CATEGORY_DIGIT,
    sre.CATEGORY_NOT_WORD: sre.CATEGORY_WORD,
    sre.CATEGORY_NOT_SPACE: sre.CATEGORY_SPACE,
}


class PatternError(ValueError):
    """The pattern is not a regular expression, or uses what the grammar cannot keep exactly."""


# --- code point sets -----------------------------------------------------------


def _normalise(ranges: Ranges) -> Ranges:
    merged: Ranges = []
    for low, high in sorted(ranges):
        if merged and low <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(merged[-1][1], high))
        else:
            merged.append((low, high))
    return merged


def _complement(ranges: Ranges, top: int) -> Ranges:
    result: Ranges = []
    start = 0
    for low, high in _normalise(ranges):
        if low > top:
            break
        if low > start:
            result.append((start, low - 1))
        start = max(start, high + 1)
    if start <= top:
        result.append((start, top))
    return result


def _subtract(ranges: Ranges, removed: Ranges) -> Ranges:
    kept = _complement(removed, _UNICODE_MAX)
    result: Ranges = []
    for low, high in _normalise(ranges):
        for keep_low, keep_high in kept:
            a, b = max(low, keep_low), min(high, keep_high)
            if a <= b:
                result.append((a, b))
    return result


def _contains(ranges: Ranges, code: int) -> bool:
    return any(low <= code <= high for low, high in ranges)


# --- GBNF text -----------------------------------------------------------------


def _escape_code(code: int) -> str:
    if code < 0x100:
        return f"\\x{code:02X}"
    if code < 0x10000:
        return f"\\u{code:04X}"
    return f"\\U{code:08X}"


def _class_char(code: int) -> str:
    char = chr(code)
    return char if char.isascii() and char.isalnum() else _escape_code(code)


def gbnf_string(text: str) -> str:
    """A GBNF literal matching text exactly."""
    out = []
    for char in text:
        if char in '"\\':
            out.append("\\" + char)
        elif char.isprintable():
            out.append(char)
        else:
            out.append(_escape_code(ord(char)))
    return '"' + "".join(out) + '"'


def _json_text(code: int) -> str:
    """How JSON writes this code point inside a string."""
    if code in _ESCAPES:
        return _ESCAPES[code]
    if code < 0x20:
        return {0x08: "\\b", 0x0C: "\\f"}.get(code, f"\\u{code:04x}")
    if 0xD800 <= code <= 0xDFFF:
        raise PatternError("the pattern names a lone surrogate code point")
    return chr(code)


def _set_expr(ranges: Ranges) -> str:
    plain = _subtract(ranges, _NEEDS_ESCAPE)
    alternatives = []
    if plain:
        body = "".join(
            _class_char(low) if low == high else f"{_class_char(low)}-{_class_char(high)}" for low, high in plain
        )
        alternatives.append(f"[{body}]")
    alternatives.extend(gbnf_string(text) for code, text in _ESCAPES.items() if _contains(ranges, code))
    if not alternatives:
        raise PatternError("a character class in the pattern holds no character a JSON string can have")
    return alternatives[0] if len(alternatives) == 1 else "(" + " | ".join(alternatives) + ")"


# --- the tree --------------------------------------------------------------------


def _class_ranges(items: list[tuple[object, object]]) -> Ranges:
    """The code points of one [...] class; kept within ASCII when it involves a category."""
    negate = False
    ranges: Ranges = []
    ascii_only = False
    for op, arg in items:
        if op is sre.NEGATE:
            negate = True
        elif op is sre.LITERAL:
            assert isinstance(arg, int)
            ranges.append((arg, arg))
        elif op is sre.RANGE:
            assert isinstance(arg, tuple)
            ranges.append((arg[0], arg[1]))
        elif op is sre.CATEGORY:
            ascii_only = True
            if arg in _CATEGORIES:
                ranges.extend(_CATEGORIES[arg])
            elif arg in _NEGATED_CATEGORIES:
                ranges.extend(_complement(_CATEGORIES[_NEGATED_CATEGORIES[arg]], _ASCII_MAX))
            else:
                raise PatternError(f"the pattern uses a character category ember does not know ({arg})")
        else:
            raise PatternError(f"the pattern uses {op} inside a character class, which ember cannot enforce")
    top = _ASCII_MAX if ascii_only else _UNICODE_MAX
    if ascii_only:
        ranges = [(low, min(high, top)) for low, high in ranges if low <= top]
    return _complement(ranges, top) if negate else _normalise(ranges)


def _repeat(item: str, low: int, high: int) -> str:
    if low > MAX_REPEAT:
        raise PatternError(f"the pattern repeats something at least {low} times; ember enforces at most {MAX_REPEAT}")
    unbounded = high == sre.MAXREPEAT
    if not unbounded:
        high = min(high, max(low, MAX_REPEAT))
    atom = item if _is_atom(item) else f"({item})"
    if unbounded:
        return {0: f"{atom}*", 1: f"{atom}+"}.get(low, f"{atom}{{{low},}}")
    if (low, high) == (0, 1):
        return f"{atom}?"
    if high == 0:
        return '""'
    return f"{atom}{{{low}}}" if low == high else f"{atom}{{{low},{high}}}"


def _is_atom(expr: str) -> bool:
    """True for a single literal, class or parenthesised group (safe to put a quantifier after)."""
    if expr.startswith("(") and expr.endswith(")"):
        depth = 0
        for i, char in enumerate(expr):
            depth += char == "("
            depth -= char == ")"
            if depth == 0 and i < len(expr) - 1:
                return False
        return True
    if expr.startswith("[") and expr.endswith("]") and expr.count("]") == 1:
        return True
    return bool(re.fullmatch(r'"([^"\\]|\\.)*"', expr))


def _sequence(items: list[tuple[object, object]]) -> str:
    parts: list[str] = []
    text = ""  # literal characters not yet written out, merged into one GBNF literal

    def flush() -> None:
        nonlocal text
        if text:
            parts.append(gbnf_string(text))
            text = ""

    for op, arg in items:
        if op is sre.LITERAL:
            assert isinstance(arg, int)
            text += _json_text(arg)
            continue
        flush()
        parts.append(_node(op, arg))
    flush()
    return " ".join(parts) if parts else '""'


def _node(op: object, arg: object) -> str:
    if op is sre.NOT_LITERAL:
        assert isinstance(arg, int)
        return _set_expr(_complement([(arg, arg)], _UNICODE_MAX))
    if op is sre.ANY:
        return _set_expr(_complement([(0x0A, 0x0A)], _UNICODE_MAX))
    if op is sre.IN:
        assert isinstance(arg, list)
        return _set_expr(_class_ranges(arg))
    if op is sre.BRANCH:
        assert isinstance(arg, tuple)
        return "(" + " | ".join(_sequence(list(branch)) for branch in arg[1]) + ")"
    if op is sre.SUBPATTERN:
        assert isinstance(arg, tuple)
        _group, add_flags, del_flags, sub = arg
        if add_flags or del_flags:
            raise PatternError("the pattern sets flags inside a group, which ember cannot enforce")
        return f"({_sequence(list(sub))})"
    if op is sre.MAX_REPEAT or op is sre.MIN_REPEAT:
        assert isinstance(arg, tuple)
        low, high, sub = arg
        return _repeat(_sequence(list(sub)), low, high)
    if op is sre.AT:
        raise PatternError("the pattern has an anchor or boundary (^, $, \\b) inside it, which ember cannot enforce")
    names = {
        sre.GROUPREF: "a back-reference",
        sre.GROUPREF_EXISTS: "a conditional group",
        sre.ASSERT: "a look-ahead or look-behind",
        sre.ASSERT_NOT: "a negative look-around",
        sre.ATOMIC_GROUP: "an atomic group",
        sre.POSSESSIVE_REPEAT: "a possessive quantifier",
    }
    raise PatternError(f"the pattern uses {names.get(op, str(op))}, which ember cannot enforce")


def _strip_anchors(items: list[tuple[object, object]]) -> list[tuple[object, object]]:
    starts = (sre.AT_BEGINNING, sre.AT_BEGINNING_STRING)
    ends = (sre.AT_END, sre.AT_END_STRING)
    if items and items[0][0] is sre.AT and items[0][1] in starts:
        items = items[1:]
    if items and items[-1][0] is sre.AT and items[-1][1] in ends:
        items = items[:-1]
    return items


def pattern_to_gbnf(pattern: str) -> str:
    """GBNF for the text between the quotes of JSON strings that match `pattern` whole."""
    try:
        parsed = sre_parse.parse(pattern)
    except re.error as exc:
        raise PatternError(f"the pattern is not a valid regular expression: {exc}") from None
    except RecursionError:
        raise PatternError("the pattern is nested too deeply") from None
    if parsed.state.flags & ~(sre.SRE_FLAG_UNICODE):
        raise PatternError("the pattern sets flags ((?i), (?s), ...), which ember cannot enforce")
    items = list(parsed)
    if len(items) == 1 and items[0][0] is sre.BRANCH:
        branches = items[0][1]
        assert isinstance(branches, tuple)
        return "(" + " | ".join(_sequence(_strip_anchors(list(b))) for b in branches[1]) + ")"
    return _sequence(_strip_anchors(items))
