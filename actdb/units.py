"""Units (channels) of a layer: one check for a single unit and one grammar for lists.

A list is `4`, `4,17,300`, `0-63` or a mix. It is parsed into ranges first and their ends
are checked against the layer before anything is expanded, so `0-1000000000` is refused
at once instead of filling memory.
"""
from __future__ import annotations

import numbers
import re

from .choices import invalid, option
from .errors import ActdbError

UnitRanges = tuple[tuple[int, int], ...]  # (first, last) inclusive, in the order given

_RANGE = re.compile(r"(\d+)(?:-(\d+))?")


def parse_units(spec, name: str = "units") -> UnitRanges:
    """A unit, a list or ranges (text, int or a sequence of ints) to ranges, unexpanded."""
    if isinstance(spec, tuple) and spec and all(isinstance(r, tuple) and len(r) == 2 for r in spec):
        return spec  # parsed already
    if isinstance(spec, numbers.Integral) and not isinstance(spec, bool):
        spec = str(int(spec))
    elif not isinstance(spec, str):
        try:
            values = [_integer(u, name) for u in spec]
        except TypeError:
            raise invalid(name, spec, "give a unit (4), a list (4,17,300) or a range (0-63)") from None
        spec = ",".join(map(str, values))
    if not spec.strip():
        raise invalid(name, spec, "empty: give a unit (4), a list (4,17,300) or a range (0-63)")
    ranges = []
    for part in (p.strip() for p in spec.split(",")):
        match = _RANGE.fullmatch(part)
        if not match:
            raise invalid(name, spec, f"{part!r} is not a unit number or a range like 0-63")
        first, last = int(match[1]), int(match[2] or match[1])
        if last < first:
            raise invalid(name, spec, f"the range {part} runs backwards")
        ranges.append((first, last))
    return tuple(ranges)


def expand_units(ranges: UnitRanges, count: int, what: str, name: str = "units") -> list[int]:
    """The units of `ranges`, in order and without repeats, once every end lies in 0..count-1."""
    for first, last in ranges:
        if last >= count:
            shown = ",".join(f"{a}-{b}" if a != b else str(a) for a, b in ranges)
            raise invalid(name, shown, f"unit {last} is out of range: {what} has channels 0..{count - 1}")
    return list(dict.fromkeys(u for first, last in ranges for u in range(first, last + 1)))


def check_unit(unit, count: int, what: str, name: str = "unit") -> int:
    """One unit: an integer (not 3.7, not True) in 0..count-1."""
    unit = _integer(unit, name)
    if not 0 <= unit < count:
        api, cli = option(name)
        problem = f"is out of range: {what} has channels 0..{count - 1}"
        raise ActdbError(f"{api}{unit} {problem}", f"{cli}{unit} {problem}")
    return unit


def _integer(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        if isinstance(value, str) and value.strip().isdigit():
            return int(value)
        raise invalid(name, value, "give a whole number")
    return int(value)
