"""Figures, headless: where a plot gets its axes and how it is written.

The convention (scikit-learn's displays): a plot of one panel takes `ax=None` and draws
into that Axes or a new figure's; a plot of several panels takes `figure=None` and lays
its panels out in that Figure (or SubFigure) or a new one. Both return the Figure, and
`save` writes it.
"""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402

from .files import atomic_path, checked_output  # noqa: E402

SUFFIXES = (".png",)
DPI = 110


def axes(ax=None, figsize=(8, 6)):
    """(figure, ax): the given Axes and its figure, or a new figure's single Axes."""
    if ax is not None:
        return ax.figure, ax
    figure, ax = plt.subplots(figsize=figsize)
    return figure, ax


def figure(figure=None, figsize=(8, 6), **options):
    """The given Figure (or SubFigure), or a new one."""
    return figure if figure is not None else plt.figure(figsize=figsize, **options)


def save(figure, path: str | Path, name: str = "plot", dpi: int = DPI) -> Path:
    """Write a figure as PNG (whole or not at all) and close it; returns the real path."""
    path = checked_output(path, SUFFIXES, name)
    with atomic_path(path) as temporary:
        figure.savefig(temporary, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(figure)
    return path
