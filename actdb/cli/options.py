"""Options shared by several commands, declared once (as sqlite-utils shares `output_options`),
and parameter types that check what they can while parsing. Choices come from the
library's own lists (`actdb.choices`), so the CLI cannot offer what the library refuses.
"""
from __future__ import annotations

import functools

import click

from ..database import choices, parse_units
from ..errors import ActdbError

SEED_MAX = choices.SEED_MAX


# Errors of these types are ActdbErrors, so they print as one line like the library's own.

def _flag(param) -> str:
    return param.opts[0] if param is not None and param.opts else "value"


class CommaList(click.ParamType):
    """`a,b,c` -> ["a", "b", "c"] (blank items dropped; nothing left is an error)."""

    name = "a,b,..."

    def convert(self, value, param, ctx):
        if isinstance(value, list):
            return value
        items = [item.strip() for item in str(value).split(",") if item.strip()]
        if not items:
            raise ActdbError(f"{_flag(param)} {value!r} names nothing: give comma-separated names")
        return items


class Units(click.ParamType):
    """A unit list (`4`, `4,17,300`, `0-63`): the grammar is checked here, the range ends
    against the layer by the library, before anything is expanded."""

    name = "units"

    def convert(self, value, param, ctx):
        if isinstance(value, tuple):
            return value
        return parse_units(value, param.name if param else "units")


class PairCount(click.ParamType):
    """A positive number of pairs, or `all`."""

    name = "N|all"

    def convert(self, value, param, ctx):
        if value == "all" or isinstance(value, int):
            return value
        if not str(value).isdigit() or int(value) < 1:
            raise ActdbError(f"{_flag(param)} {value}: give a positive number of pairs or 'all'")
        return int(value)


def _add(command, options):
    for option in reversed(options):
        command = option(command)
    return command


def json_option(command):
    return click.option("--json", "as_json", is_flag=True, help="Print the result as strict JSON.")(command)


def wait_option(command):
    """Every command that writes the store: refused at once while another process writes it, or waits."""
    return click.option("--wait", is_flag=True, help="If another actdb process is writing the store, wait for it "
                        "to finish (else this command stops at once, before any work).")(command)


def seed_option(help_text: str = "Seed of the random choices (0..4294967295).", default: int = 0):
    return click.option("--seed", type=click.IntRange(0, SEED_MAX), default=default, show_default=True,
                        help=help_text)


def plot_option(name: str = "--plot", help_text: str = "Also draw it to FILE.png."):
    """Every picture a command draws is one of these: a PNG path, checked before the work."""
    return click.option(name, type=click.Path(dir_okay=False), metavar="FILE.png", help=help_text)


def metric_option(command):
    return click.option("--metric", type=click.Choice(choices.METRICS), default="l2", show_default=True,
                        help="l2: Euclidean (the blog posts' measure); cosine; correlation: 1 - Pearson r.")(command)


def stored_array_options(reductions=choices.REDUCTIONS):
    """--model/--layer/--reduce/--weights: which stored array; the command receives them as `array`."""
    def decorate(command):
        @functools.wraps(command)
        def collect(*args, model, layer, reduce, weights, **kwargs):
            return command(*args, array={"model": model, "layer": layer, "reduce": reduce, "weights": weights},
                           **kwargs)

        return _add(collect, [
            click.option("--model", help="Stored model (may be left out when the store holds one array)."),
            click.option("--layer", help="Stored layer."),
            click.option("--reduce", type=click.Choice(reductions), default="mean", show_default=True,
                         help="Spatial reduction of the stored rows."),
            click.option("--weights", help="Stored weights, when a layer is stored under several: imagenet | "
                         "random:SEED | file:sha256=... (as `actdb info` lists them) | a weights file."),
        ])
    return decorate


def model_options(required: bool = True, default: str | None = None):
    """--model/--weights/--preprocess for commands that run a model themselves."""
    def decorate(command):
        return _add(command, [
            click.option("--model", required=required, default=default, show_default=default is not None,
                         help="Model name (see `actdb models`) or PATH.keras."),
            click.option("--weights", default="imagenet", show_default=True,
                         help="imagenet | random[:SEED] | PATH to a weights file."),
            click.option("--preprocess", type=click.Choice(choices.PREPROCESS_MODES),
                         help="Pixel scaling, for PATH.keras models."),
        ])
    return decorate


def resize_option(command):
    return click.option("--resize", type=click.Choice(choices.RESIZE_MODES), default="center-crop",
                        show_default=True, help="center-crop: the usual evaluation crop; squash: the whole "
                        "image, aspect ratio lost.")(command)
