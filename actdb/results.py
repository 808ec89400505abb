"""How results carry advice. Every result has a `warnings` list (an index behind its
rows, a model that could not answer, what a number means for this kind of layer); the CLI
prints it the same way for every command, as `warning: ...` lines on stderr.

Tables are pandas DataFrames and keep their warnings and captions in `frame.attrs`
(pandas' own place for metadata); other results are dataclasses deriving from `Result`.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd


@dataclass
class Result:
    warnings: list[str] = field(default_factory=list, kw_only=True)


def table(frame: pd.DataFrame, *, warnings=(), **captions) -> pd.DataFrame:
    """`frame` as a result: `warnings` appended to any it has, `captions` (title, ...) set."""
    frame.attrs.update(captions)
    frame.attrs["warnings"] = [*frame.attrs.get("warnings", []), *warnings]
    return frame


def warnings_of(result) -> list[str]:
    if isinstance(result, pd.DataFrame):
        return list(result.attrs.get("warnings", []))
    if isinstance(result, dict):
        return list(result.get("warnings", []))
    return list(getattr(result, "warnings", []))
