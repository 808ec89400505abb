"""Parameter constraints, declared once next to each command and checked once at its door,
as scikit-learn's `validate_params` does:

    @declare(k=Integer(1), seed=Seed(), exact=Boolean(), plot=OutputFile(".png"))
    def trajectory(self, queries, *, k=75, seed=0, exact=False, plot=None): ...

A call with a value its declaration refuses stops before any work with one `ActdbError`
per mistake, naming the keyword for notebook users (`k=0: ...`) and the flag for the
command line (`-k 0: ...`; see `choices.option`). Values come back normalized (a NumPy
integer as an `int`, an output path as the checked `Path`), so nothing below the door meets
`np.int64(3)` where it expects 3.

`None` is accepted where the parameter's default is None (the signature already says it
is optional), where a declaration lists it (`AnyOf(Integer(1), None)`), and for the options
a command takes as `**options` (their dataclass holds the defaults and checks them). The
declarations stay on the function as data (`function.__actdb_params__`: name -> constraint),
for the CLI and any later surface to read.

Kept free of heavy imports (no TensorFlow, no FAISS; DuckDB only to parse a condition), like
`choices`.
"""
from __future__ import annotations

import functools
import inspect
import math
import numbers
import os
from dataclasses import dataclass

import numpy as np

from .choices import SEED_MAX, invalid
from .files import checked_folder, checked_output

PARAMS_ATTRIBUTE = "__actdb_params__"


class Constraint:
    """What a parameter accepts. `check` returns the value, normalized, or raises `Refused`."""

    expects: str = "a value"

    def check(self, value):  # pragma: no cover - every constraint defines it
        raise NotImplementedError

    def refuse(self, problem: str | None = None):
        raise Refused(problem or f"give {self.expects}")


class Refused(Exception):
    """A value a constraint does not accept; `declare` turns it into a one-line ActdbError."""


@dataclass(frozen=True)
class Integer(Constraint):
    """A whole number (a NumPy integer too; not 3.0, not True) within bounds; `counting`: what it
    counts, for the message ("give at least 1 neighbour")."""

    minimum: int | None = None
    maximum: int | None = None
    counting: str | None = None

    @property
    def expects(self) -> str:
        low, high = self.minimum, self.maximum
        if self.counting:
            things = self.counting + ("s" if (high if high is not None else low) != 1 else "")
            bounds = f"{low}..{high}" if low is not None and high is not None else \
                f"at least {low}" if low is not None else f"at most {high}"
            return f"{bounds} {things}"
        if low is not None and high is not None:
            return f"a whole number {low}..{high}"
        if low is not None:
            return f"a whole number at least {low}"
        return "a whole number" + (f" at most {high}" if high is not None else "")

    def check(self, value):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            self.refuse("give a whole number" + (f" of {self.counting}s" if self.counting else ""))
        if (self.minimum is not None and value < self.minimum) or (self.maximum is not None and value > self.maximum):
            self.refuse()
        return int(value)


def Seed() -> Integer:  # noqa: N802 - reads as the other constraints
    """A seed NumPy accepts."""
    return Integer(0, SEED_MAX)


@dataclass(frozen=True)
class Real(Constraint):
    """A finite number (not True) within bounds; `closed` says which bounds are allowed
    themselves: "both", "left", "right" or "neither" (scikit-learn's `Interval`)."""

    minimum: float | None = None
    maximum: float | None = None
    closed: str = "both"

    @property
    def expects(self) -> str:
        low, high = self.minimum, self.maximum
        low_in, high_in = self.closed in ("both", "left"), self.closed in ("both", "right")
        if low is not None and high is not None:
            excluded = [f"{b:g}" for b, included in ((low, low_in), (high, high_in)) if not included]
            return f"a number between {low:g} and {high:g}" + (f" ({' and '.join(excluded)} excluded)"
                                                                 if excluded else "")
        if low == 0 and not low_in and high is None:
            return "a finite positive number"
        if low is not None:
            return f"a finite number {'at least' if low_in else 'above'} {low:g}"
        if high is not None:
            return f"a finite number {'at most' if high_in else 'below'} {high:g}"
        return "a finite number"

    def check(self, value):
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
            self.refuse()
        low_in, high_in = self.closed in ("both", "left"), self.closed in ("both", "right")
        if self.minimum is not None and (value < self.minimum or (value == self.minimum and not low_in)):
            self.refuse()
        if self.maximum is not None and (value > self.maximum or (value == self.maximum and not high_in)):
            self.refuse()
        return float(value)


@dataclass(frozen=True)
class Boolean(Constraint):
    """True or False (a NumPy bool too); not "no", which Python would take as true."""

    expects = "True or False"

    def check(self, value):
        if not isinstance(value, (bool, np.bool_)):
            self.refuse()
        return bool(value)


@dataclass(frozen=True)
class Text(Constraint):
    """A non-empty string; `path`: a path object is accepted too, as its text."""

    path: bool = False

    @property
    def expects(self) -> str:
        return "a path or a name" if self.path else "a text"

    def check(self, value):
        if self.path and isinstance(value, os.PathLike):
            value = os.fspath(value)
        if not isinstance(value, str):
            self.refuse()
        if not value.strip():
            self.refuse("give a non-empty text")
        return value


@dataclass(frozen=True)
class Choice(Constraint):
    """One of a fixed list of words."""

    options: tuple[str, ...]

    @property
    def expects(self) -> str:
        return f"one of {', '.join(self.options)}"

    def check(self, value):
        if not isinstance(value, str) or value not in self.options:
            self.refuse(f"use one of {', '.join(self.options)}")
        return value


@dataclass(frozen=True)
class Names(Constraint):
    """Names: a comma-separated string or a list of strings, naming at least one. `comma`: given
    back as one comma-separated string, for commands that read their names that way."""

    comma: bool = False
    expects = "comma-separated names or a list of names"

    def check(self, value):
        if isinstance(value, str):
            if not any(part.strip() for part in value.split(",")):
                self.refuse("names nothing: give comma-separated names")
            return value
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
            self.refuse()
        if not any(v.strip() for v in value):
            self.refuse("names nothing: give at least one name")
        return ",".join(value) if self.comma else value


@dataclass(frozen=True)
class Condition(Constraint):
    """One SQL condition on the images table's columns (a WHERE clause without WHERE)."""

    expects = "one SQL condition on images columns, e.g. \"label = 'tabby'\""

    def check(self, value):
        import duckdb

        if not isinstance(value, str) or not value.strip():
            self.refuse()
        try:
            statements = duckdb.extract_statements(f"SELECT id FROM images WHERE {value}")
        except duckdb.Error as exc:
            self.refuse(f"not an SQL condition ({str(exc).splitlines()[0]}); give {self.expects}")
        if len(statements) != 1 or statements[0].type.name != "SELECT":
            self.refuse(f"holds another SQL statement, and a condition is read-only: give {self.expects}")
        return value


@dataclass(frozen=True)
class OutputFile(Constraint):
    """A file the command ends by writing: a path with one of `suffixes`, in a folder that can be written."""

    suffixes: tuple[str, ...]

    def __init__(self, *suffixes: str):
        object.__setattr__(self, "suffixes", suffixes)

    @property
    def expects(self) -> str:
        return f"a file path ending {' or '.join(self.suffixes)}"

    def check(self, value):
        if not isinstance(value, (str, os.PathLike)):
            self.refuse()
        return value  # the folder and suffix: `checked_output`, by `declare`, which knows the name


@dataclass(frozen=True)
class OutputFolder(Constraint):
    """A folder the command writes into (made if it does not exist yet)."""

    expects = "a folder path"

    def check(self, value):
        if not isinstance(value, (str, os.PathLike)):
            self.refuse()
        return value


@dataclass(frozen=True)
class AnyOf(Constraint):
    """Any of several constraints (`None` among them: None is accepted)."""

    options: tuple

    def __init__(self, *options):
        object.__setattr__(self, "options", options)

    @property
    def expects(self) -> str:
        return " or ".join("None" if o is None else o.expects for o in self.options)

    def check(self, value):
        for option in self.options:
            if option is None:
                if value is None:
                    return None
                continue
            try:
                return option.check(value)
            except Refused:
                continue
        self.refuse()


def check(name: str, constraint: Constraint, value):
    """`value` as `constraint` accepts it, or a one-line ActdbError naming `name`."""
    try:
        value = constraint.check(value)
    except Refused as refused:
        raise invalid(name, value, str(refused)) from None
    if isinstance(constraint, OutputFile):
        return checked_output(value, constraint.suffixes, name)
    if isinstance(constraint, OutputFolder):
        return checked_folder(value, name)
    return value


def declare(**constraints: Constraint):
    """Check the named parameters of the decorated function at every call, before its body runs.

    A name may also be one of the keyword options a function takes as `**options`."""
    def decorate(function):
        signature = inspect.signature(function)
        parameters = signature.parameters
        options = next((p.name for p in parameters.values() if p.kind is inspect.Parameter.VAR_KEYWORD), None)
        unknown = [name for name in constraints if name not in parameters and options is None]
        if unknown:
            raise TypeError(f"{function.__qualname__} declares {unknown} but has no such parameter")
        optional = {name for name, p in parameters.items() if p.default is None}

        @functools.wraps(function)
        def checked(*args, **kwargs):
            bound = signature.bind(*args, **kwargs)
            given = bound.arguments
            extra = given.get(options, {}) if options else {}
            for name, constraint in constraints.items():
                place = given if name in parameters else extra
                if name not in place:
                    continue  # the default: the function's own
                if place[name] is None and (name in optional or place is extra):
                    continue  # optional; an option's None is its dataclass's default, checked there
                place[name] = check(name, constraint, place[name])
            return function(*bound.args, **bound.kwargs)

        setattr(checked, PARAMS_ATTRIBUTE, dict(constraints))
        return checked

    return decorate


def declared(function) -> dict[str, Constraint]:
    """The constraints declared for a function (or a method made from one): name -> constraint."""
    return dict(getattr(function, PARAMS_ATTRIBUTE, {}))
