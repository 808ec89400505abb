"""`actdb optimize`: activation maximization, kept in the store."""
from __future__ import annotations

import click

from .. import database
from ..database import choices
from . import cli, progress_bar
from .options import Units, json_option, model_options, plot_option, seed_option, wait_option
from .output import emit, table


@cli.command()
@model_options(required=False, default="efficientnet_lite0")
@click.option("--layer", help="Layer whose unit is optimized (not with --objective logit).")
@click.option("--units", type=Units(), help="Units: 4, a list 4,17,300 or ranges 0-63; one image each (x --diversity).")
@click.option("--objective", type=click.Choice(choices.OBJECTIVES), default="channel", show_default=True,
              help="channel: the unit's spatial mean; neuron: its centre position; logit: a class's pre-softmax score.")
@click.option("--class", "class_name", help="For --objective logit: class name(s), wnid(s) or index(es).")
@click.option("--negative", is_flag=True, help="Minimize instead: the image that suppresses the unit.")
@click.option("--method", type=click.Choice(choices.OPTIMIZE_METHODS), default="fft", show_default=True,
              help="fft: lucid's Fourier parameterization with transforms; pixel: gradient ascent straight on the "
              "pixels, each step divided by the gradient's std (the blog posts' loop, notebooks 000/002); "
              "pattern: the Keras book's generate_pattern (notebook 003).")
@click.option("--steps", type=int, help="Default: fft 256, pixel 100, pattern 40.")
@click.option("--lr", type=float, help="Learning rate / step size. Default: fft 0.05 (Adam), pixel 0.1, pattern 1.0.")
@click.option("--size", type=int, help="Image side in pixels (default: the model's input size).")
@seed_option()
@click.option("--diversity", type=int, default=1, show_default=True,
              help="Images per unit, with lucid's diversity term.")
@click.option("--snapshots", help="Also save the image at these steps, e.g. 32,128.")
@click.option("--batch", type=int, default=16, show_default=True,
              help="Images per forward/backward pass.")
@click.option("--name", help="Name (queried as optimized:NAME); default e.g. efficientnet_lite0.top_activation.u4.fft.s0.")
@click.option("--overwrite", is_flag=True, help="Replace an image of the same name made with other parameters.")
@click.option("--out", type=click.Path(file_okay=False), help="Write PNGs and JSON here instead of into the store.")
@plot_option("--sheet", "Write a contact sheet of the run to FILE.png.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
@wait_option
@json_option
@click.pass_obj
def optimize(session, out, sheet, quiet, as_json, **options):
    """Optimized images: gradient ascent on the input until a unit fires as strongly as possible,
    many units per batch. Kept in the store and queryable as optimized:NAME.

    \b
    actdb optimize --model efficientnet_lite0 --layer top_activation --units 0-15 --steps 128
    actdb optimize --objective logit --class sea_cucumber --sheet sheet.png
    actdb optimize --model vgg19 --layer block5_conv4 --units 4 --method pixel --seed 0
    """
    run = database.optimize if out else session.db(create=True).optimize
    frame = run(out=out, sheet=sheet, progress=progress_bar(not quiet and not as_json), **options)

    def text():
        shown = frame[["name", "unit", "start_activation", "final_activation", "top1_class"]].rename(
            columns={"start_activation": "start", "final_activation": "final", "top1_class": "top-1"})
        table(shown, "{:.4g}")
        if sheet:
            click.echo(f"contact sheet: {sheet}")

    emit(frame, as_json, text)
