"""GBNF for JSON numbers between bounds: digit-range rules, written for ember.

Integers: a canonical decimal (no leading zeros, no "-0") between two bounds is
matched by splitting the range by digit count and, within one digit count, by
the first digit where the bounds part: `[lo, hi]` of equal length is the
bound's first digit followed by the rest of its range, the digits strictly
between followed by any digits, and the other bound's first digit followed by
the rest of its range.

Numbers: an integer part followed by at most `places` decimals and no
exponent. A decimal `I.F` lies in `[a, b]` when its integer part lies strictly
between theirs (any fraction), or equals one bound's integer part and its
fraction compares with that bound's fraction digit by digit. Exclusive bounds
become inclusive ones `10**-places` further in: no answer has more decimals
than that, so none lies in between. `places` is at most FRACTION_DIGITS, and
fewer next to an exclusive bound with a large integer part, so that the step
in stays visible once the answer is read as a float (see `places_for`).

Every expression here matches a subset of the values the bounds allow: the
side a schema leaves open is capped at `OPEN_DIGITS` digits (JSON parsers
lose integers past 2**53 anyway), and nothing else is given up.
"""

from __future__ import annotations

from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal

OPEN_DIGITS = 15  # digits of the integer part on a side the schema leaves unbounded
FRACTION_DIGITS = 15  # the most decimals a bounded number is written with
_FLOAT_DIGITS = 15  # significant decimal digits a float always keeps


def _paren(expr: str) -> str:
    return f"({expr})" if "|" in expr else expr


def _lit(text: str) -> str:
    return f'"{text}"'


def _any_digits(n: int) -> str:
    return " ".join(["[0-9]"] * n)


def _same_length(x: str, y: str) -> str:
    """Digit strings of len(x) from x to y inclusive (x <= y, equal lengths; leading zeros as given)."""
    if x == y:
        return _lit(x)
    if len(x) == 1:
        return f"[{x}-{y}]"
    if x[0] == y[0]:
        return f"{_lit(x[0])} {_paren(_same_length(x[1:], y[1:]))}"
    rest = len(x) - 1
    x_from_zero = x[1:] == "0" * rest
    y_to_nines = y[1:] == "9" * rest
    first = int(x[0]) if x_from_zero else int(x[0]) + 1
    last = int(y[0]) if y_to_nines else int(y[0]) - 1
    parts = []
    if not x_from_zero:
        parts.append(f"{_lit(x[0])} {_paren(_same_length(x[1:], '9' * rest))}")
    if first <= last:
        digit = _lit(str(first)) if first == last else f"[{first}-{last}]"
        parts.append(f"{digit} {_any_digits(rest)}")
    if not y_to_nines:
        parts.append(f"{_lit(y[0])} {_paren(_same_length('0' * rest, y[1:]))}")
    return " | ".join(parts)


def natural_range(low: int, high: int) -> str:
    """Canonical decimals of the integers from low to high (0 <= low <= high)."""
    assert 0 <= low <= high
    parts = []
    for length in range(len(str(low)), len(str(high)) + 1):
        first = max(low, 10 ** (length - 1) if length > 1 else 0)
        last = min(high, 10**length - 1)
        if first <= last:
            parts.append(_paren(_same_length(str(first), str(last))))
    return " | ".join(parts)


def _open_limit(bound: int | None) -> int:
    digits = max(OPEN_DIGITS, len(str(abs(bound))) if bound is not None else 0)
    return 10**digits - 1


def integer_range(low: int | None, high: int | None) -> str:
    """GBNF for the JSON integers from low to high inclusive (None: unbounded on that side)."""
    if low is None:
        low = -_open_limit(high)
    if high is None:
        high = _open_limit(low)
    assert low <= high
    parts = []
    if high >= 0:
        parts.append(_paren(natural_range(max(low, 0), high)))
    if low < 0:
        smallest = 1 if high >= 0 else -high
        parts.append(f'"-" {_paren(natural_range(smallest, -low))}')
    return " | ".join(parts)


# --- numbers -----------------------------------------------------------------


def _fraction_digits(value: Decimal) -> str:
    """The decimals of a non-negative value, without trailing zeros ("" for an integer)."""
    text = format(value, "f")
    return text.partition(".")[2].rstrip("0")


def places_for(*exclusive: Decimal | None) -> int:
    """Decimals to write numbers with, next to these exclusive bounds.

    A float keeps 15 significant digits, so with d digits before the point a step of
    10**-(15 - d) past the bound still reads as a different float.
    """
    places = FRACTION_DIGITS
    for bound in exclusive:
        if bound is not None:
            whole = len(str(int(abs(bound))))
            places = min(places, max(0, _FLOAT_DIGITS - whole))
    return places


def _fractions(low: str, high: str | None, room: int) -> tuple[str | None, bool]:
    """Digit strings s of at most `room` digits with 0.low <= 0.s <= 0.high (high None: no upper limit).

    Returns (GBNF for the non-empty ones or None if there are none, whether the empty string is one).
    `low` and `high` have no trailing zeros.
    """
    empty = low == ""
    if room == 0:
        return None, empty
    if low == "" and high is None:
        return f"[0-9]{{1,{room}}}", True
    if low == "" and high == "":
        return f'"0"{{1,{room}}}', True
    low_first, low_rest = (int(low[0]), low[1:]) if low else (0, "")
    if high is None:
        high_first, high_rest = 9, None
    else:
        high_first, high_rest = (int(high[0]), high[1:]) if high else (0, "")
    branches: list[tuple[str, tuple[str | None, bool]]] = []
    if low_first == high_first:
        branches.append((str(low_first), _fractions(low_rest, high_rest, room - 1)))
    else:
        branches.append((str(low_first), _fractions(low_rest, None, room - 1)))
        if low_first + 1 <= high_first - 1:
            middle = str(low_first + 1) if low_first + 1 == high_first - 1 else f"[{low_first + 1}-{high_first - 1}]"
            branches.append((middle, _fractions("", None, room - 1)))
        branches.append((str(high_first), _fractions("", high_rest, room - 1)))
    parts = []
    for digit, (tail, tail_empty) in branches:
        head = _lit(digit) if len(digit) == 1 else digit
        if tail is None:
            if tail_empty:
                parts.append(head)
        elif tail_empty:
            parts.append(f"{head} ({tail})?")
        else:
            parts.append(f"{head} {_paren(tail)}")
    return (" | ".join(parts) if parts else None), empty


def _with_fraction(integer: str, low: str, high: str | None, places: int) -> str:
    tail, empty = _fractions(low, high, places)
    if tail is None:
        return integer
    fraction = f'"." {_paren(tail)}'
    return f"{integer} ({fraction})?" if empty else f"{integer} {fraction}"


def _magnitudes(low: Decimal, high: Decimal | None, places: int) -> str:
    """Unsigned decimals from low to high inclusive (0 <= low; high None: up to OPEN_DIGITS digits)."""
    low_int = int(low.to_integral_value(rounding=ROUND_FLOOR))
    low_frac = _fraction_digits(low - low_int)
    if high is None:
        high_int, high_frac = _open_limit(low_int), None
    else:
        high_int = int(high.to_integral_value(rounding=ROUND_FLOOR))
        high_frac = _fraction_digits(high - high_int)
    if low_int == high_int:
        return _with_fraction(_lit(str(low_int)), low_frac, high_frac, places)
    parts = []
    first, last = low_int, high_int
    if low_frac:
        parts.append(_with_fraction(_lit(str(low_int)), low_frac, None, places))
        first += 1
    if high_frac is not None:
        parts.append(_with_fraction(_lit(str(high_int)), "", high_frac, places))
        last -= 1
    if first <= last:
        parts.append(_with_fraction(_paren(natural_range(first, last)), "", None, places))
    return " | ".join(_paren(p) for p in parts)


def inclusive_bounds(
    minimum: Decimal | None,
    maximum: Decimal | None,
    exclusive_minimum: Decimal | None,
    exclusive_maximum: Decimal | None,
    places: int,
) -> tuple[Decimal | None, Decimal | None]:
    """The tightest inclusive bounds on the grid of `places` decimals that answers are written on."""
    step = Decimal(1).scaleb(-places)
    low = minimum
    if exclusive_minimum is not None:
        step_in = exclusive_minimum + step
        low = step_in if low is None else max(low, step_in)
    high = maximum
    if exclusive_maximum is not None:
        step_in = exclusive_maximum - step
        high = step_in if high is None else min(high, step_in)
    if low is not None:
        low = low.quantize(step, rounding=ROUND_CEILING)
    if high is not None:
        high = high.quantize(step, rounding=ROUND_FLOOR)
    return low, high


def number_range(low: Decimal | None, high: Decimal | None, places: int) -> str:
    """GBNF for JSON numbers from low to high inclusive with at most `places` decimals.

    Takes bounds from inclusive_bounds (already on the grid). None: unbounded on that side.
    """
    assert low is None or high is None or low <= high
    parts = []
    if high is None or high >= 0:
        parts.append(_magnitudes(max(low, Decimal(0)) if low is not None else Decimal(0), high, places))
    if low is None or low < 0:
        # "-0" is 0, inside the bounds whenever high >= 0.
        smallest = Decimal(0) if high is None or high >= 0 else -high
        parts.append(f'"-" ({_magnitudes(smallest, -low if low is not None else None, places)})')
    return " | ".join(_paren(p) for p in parts)
