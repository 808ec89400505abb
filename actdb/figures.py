"""Figures, headless: where a plot gets its axes, how its text is drawn and how it is written.

The convention (scikit-learn's displays): a plot of one panel takes `ax=None` and draws
into that Axes or a new figure's; a plot of several panels takes `figure=None` and lays
its panels out in that Figure (or SubFigure) or a new one. Both return the Figure, and
`save` writes it.

Every function that draws is `@drawing`, and `save` writes under the same `plain_text()`
settings: labels are data (class names, file names), so `$\\alpha$` is shown as typed, not
parsed as TeX (a class named `$\\foo$` would fail the plot), and a character no font here has
(a CJK or emoji class name) is drawn from matplotlib's last-resort font instead of a
warning on stderr. Other figures of the session keep matplotlib's settings.
"""
from __future__ import annotations

import functools
import warnings
from contextlib import contextmanager
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.figure import FigureBase  # noqa: E402
from matplotlib.text import Text  # noqa: E402

from .files import atomic_path, checked_output  # noqa: E402

SUFFIXES = (".png",)
DPI = 110
LAST_RESORT_FONT = "Last Resort High-Efficiency"  # one glyph per Unicode block, shipped with matplotlib


@contextmanager
def plain_text():
    """Text drawn as written (no mathtext), with a fallback font for characters the fonts lack."""
    from matplotlib import font_manager

    families = list(plt.rcParams["font.family"])
    if any(f.name == LAST_RESORT_FONT for f in font_manager.fontManager.ttflist):
        families.append(LAST_RESORT_FONT)
    with plt.rc_context({"text.parse_math": False, "font.family": families}), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Glyph .* missing from font")  # matplotlib without that font
        yield


def drawing(function):
    """A function that draws a figure: its text is `plain_text()`. The figure is laid out before
    it is returned, so that the tick labels matplotlib makes when drawing are made here too,
    and every text it added (or that sits in an Axes it was given) keeps to plain text when a
    notebook shows the figure later; other texts of a given figure are left as they were."""
    @functools.wraps(function)
    def draw(*args, **kwargs):
        given = [v for v in (*args, *kwargs.values()) if isinstance(v, (Axes, FigureBase))]
        before = {id(t) for v in given for t in (v.figure if isinstance(v, Axes) else v).findobj(Text)}
        with plain_text():
            drawn = function(*args, **kwargs)
            if isinstance(drawn, FigureBase):
                ours = [v for v in given if isinstance(v, Axes)]

                def keep_plain():
                    for text in [t for t in drawn.findobj(Text) if id(t) not in before] + \
                            [t for ax in ours for t in ax.findobj(Text)]:
                        text.set_parse_math(False)

                keep_plain()  # the texts so far (a given Axes' first tick label was made before)
                drawn.draw_without_rendering()
                keep_plain()  # and those the drawing made
            return drawn

    draw.draws_plain_text = True
    return draw


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
    with atomic_path(path) as temporary, plain_text():
        figure.savefig(temporary, format="png", dpi=dpi, bbox_inches="tight")
    plt.close(figure)
    return path
