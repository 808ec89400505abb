"""How every command prints: `emit` writes a result's warnings to stderr, then either one
strict JSON document (`--json`) or the command's own text for people.

Strict JSON means what `jq`, browsers and `json.loads(..., parse_constant=...)` accept:
no NaN or Infinity (null instead), NumPy values as plain numbers, paths as written
(`/`, not `\\/`). Tables are lists of records, other results objects.
"""
from __future__ import annotations

import dataclasses
import datetime
import json
import math
from collections.abc import Callable
from pathlib import Path

import click
import numpy as np
import pandas as pd

from ..database import warnings_of


def emit(result, as_json: bool, text: Callable[[], None] | None = None, document=None) -> None:
    """Print `result`: its warnings, then `document` (default: the result itself) as JSON, or `text()`."""
    for warning in warnings_of(result):
        click.echo(f"warning: {warning}", err=True)
    if as_json:
        click.echo(dumps(result if document is None else document))
    elif text is not None:
        text()


def dumps(value) -> str:
    """Strict JSON of a result: tables compact, one record per row; other documents indented."""
    plain = plain_json(value)
    indent = None if isinstance(value, pd.DataFrame) else 2
    return json.dumps(plain, indent=indent, allow_nan=False, separators=(",", ":") if indent is None else None)


def plain_json(value):
    """`value` as JSON-able Python: NaN and infinities become None."""
    if isinstance(value, pd.DataFrame):
        return [plain_json(record) for record in value.to_dict("records")]
    if isinstance(value, pd.Series):
        return plain_json(value.tolist())
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return plain_json(value.to_json() if hasattr(value, "to_json") else dataclasses.asdict(value))
    if isinstance(value, dict):
        return {str(k): plain_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [plain_json(v) for v in value]
    if isinstance(value, np.ndarray):
        return plain_json(value.tolist())
    if isinstance(value, (np.bool_, bool)):
        return bool(value)
    if isinstance(value, (np.integer, int)):
        return int(value)
    if isinstance(value, (np.floating, float)):
        return float(value) if math.isfinite(value) else None
    if value is None or value is pd.NA or value is pd.NaT:
        return None
    if isinstance(value, (pd.Timestamp, datetime.datetime, datetime.date)):
        return value.isoformat()
    if isinstance(value, str):
        return value
    if isinstance(value, Path):
        return str(value)
    try:
        if pd.isna(value):
            return None
    except (TypeError, ValueError):
        pass
    return str(value)


def table(frame: pd.DataFrame, float_format: str | None = None) -> None:
    """A DataFrame for people, floats formatted; "(no rows)" when empty."""
    if float_format:
        frame = frame.copy()
        for column in frame.select_dtypes("float").columns:
            frame[column] = frame[column].map(float_format.format)
    click.echo(frame.to_string(index=False) if len(frame) else "(no rows)")


def per_query(frame: pd.DataFrame, float_format: str = "{:.4f}") -> None:
    """One block per query: its name, then its rows."""
    for query, group in frame.groupby("query", sort=False):
        click.echo(f"{query}")
        table(group.drop(columns="query"), float_format)
        click.echo()


def written(kind: str, path) -> None:
    click.echo(f"{kind} written to {path}", err=True)
