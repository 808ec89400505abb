"""What happens inside a network, from its weights or a forward pass: weights, featuremaps,
differentiation."""
from __future__ import annotations

from pathlib import Path

import click

from .. import database
from ..errors import ActdbError
from . import cli, progress_bar
from .models import names_stored_images
from .options import json_option, model_options, plot_option, resize_option, seed_option
from .output import emit, table, written


@cli.command()
@model_options()
@click.option("--layer", required=True, help="A conv layer (with --from: any spatial layer).")
@click.option("--unit", type=int, required=True, help="Output channel of --layer.")
@click.option("--top", type=click.IntRange(min=1), default=6, show_default=True, help="Channels listed and drawn.")
@click.option("--expanded", is_flag=True, help="Expanded weights from the earlier layer --from (Distill's circuits).")
@click.option("--from", "from_layer", help="With --expanded: the earlier layer whose channels are ranked.")
@plot_option()
@json_option
def weights(model, weights, preprocess, layer, unit, top, expanded, from_layer, plot, as_json):
    """Rank the input channels feeding UNIT of a conv layer by the Frobenius norm of their kernel slice.

    With --expanded --from LAYER: the expanded weights, i.e. the gradient of the unit's centre
    position with respect to LAYER's channels, ReLU/ReLU6 as identity and max-pool as
    average-pool (for adjacent convolutions this is the kernel itself).

    \b
    actdb weights --model vgg19 --layer block3_conv2 --unit 8 --top 6 --plot unit8.png
    actdb weights --model vgg19 --layer block3_conv2 --unit 8 --expanded --from block2_conv2
    """
    if expanded != bool(from_layer):
        raise ActdbError("--expanded and --from go together: --expanded --from EARLIER_LAYER")
    result = database.weights(model=model, layer=layer, unit=unit, from_layer=from_layer, top=top, weights=weights,
                              preprocess=preprocess, plot=plot)
    if plot:
        written("plot", Path(plot).resolve())
    shown = result.top(top)

    def text():
        what = "expanded weights" if result.kind == "expanded" else "kernel"
        click.echo(f"{result.model} {layer} unit {unit}: {what} norms per input channel of {result.source} "
                   f"({result.maps.shape[0]}x{result.maps.shape[1]} window, top {len(shown)} of "
                   f"{len(result.ranking)})")
        table(shown.assign(norm=shown.norm.map("{:.6f}".format)))

    emit(result, as_json, text, {
        "model": result.model, "layer": result.layer, "unit": unit, "source": result.source, "kind": result.kind,
        "warnings": result.warnings, "window": list(result.maps.shape[:2]),
        "top": [{**row, "map": result.maps[:, :, row["channel"]]} for row in shown.to_dict("records")]})


@cli.command()
@click.argument("query")
@model_options()
@click.option("--layer", required=True, help="A spatial layer.")
@click.option("--channels", help="Channels to show, e.g. 0-63 or 3,7,10-12 (default: all).")
@click.option("--unit", type=int, help="One channel, drawn over the image instead of the grid.")
@resize_option
@plot_option()
@json_option
@click.pass_obj
def featuremaps(session, query, model, weights, preprocess, layer, channels, unit, resize, plot, as_json):
    """A layer's feature maps for one image (QUERY: an image file, id:N or optimized:NAME): per-channel
    statistics, and with --plot the grid of maps (each standardized, x64 + 128, as notebook 003's
    show_layer) or, with --unit, that map over the image.

    \b
    actdb featuremaps photo.jpg --model efficientnet_lite0 --layer block2a_project_conv --channels 0-23 --plot maps.png
    """
    result = database.featuremaps(query, model=model, layer=layer, channels=channels, unit=unit, weights=weights,
                                  preprocess=preprocess, resize=resize, plot=plot,
                                  db=session.db_if(names_stored_images([query])))
    if plot:
        written("plot", Path(plot).resolve())
    channel_table = result.table()

    def text():
        click.echo(f"{result.model} {layer} on {result.query}: {len(result.channels)} maps of "
                   f"{result.maps.shape[0]}x{result.maps.shape[1]}")
        table(channel_table.round(4))

    emit(result, as_json, text, {"model": result.model, "layer": layer, "query": result.query,
                                 "map_shape": list(result.maps.shape[:2]), "channels": channel_table})


@cli.command()
@click.argument("sets", nargs=-1, required=True)
@model_options()
@click.option("--layers", default="all", show_default=True, help="all (every layer, the input included), all-conv, or a,b,c.")
@click.option("--units", type=click.IntRange(min=2), default=200, show_default=True,
              help="Units sampled per layer (positions in the H x W x C map), the same for every image and set.")
@click.option("--normalize-by", help="Divide by this SET's differentiation (e.g. noise:43).")
@click.option("--max-images", type=click.IntRange(min=2), default=200, show_default=True,
              help="At most N images per set (a seeded sample).")
@seed_option("The random seed of the units, noise and samples (0..4294967295).")
@click.option("--batch-size", type=click.IntRange(min=1), default=16, show_default=True)
@resize_option
@plot_option()
@json_option
@click.pass_obj
def differentiation(session, sets, model, weights, preprocess, layers, units, normalize_by, max_images, seed,
                    batch_size, resize, plot, as_json):
    """How differently each layer responds to the images of a SET (notebook 004).

    SET: a folder of images, where:SQL (stored images, e.g. "where:label = 'tabby'"), or
    noise:N (N seeded white-noise images). Per layer, --units positions are sampled once and
    read for every image; each response vector is z-scored; differentiation is the median over
    image pairs of d^2/(2n), which for z-scored vectors equals 1 - Pearson r (correlation
    distance). --json records the sampled unit indices, so the figure can be recomputed.

    \b
    actdb differentiation noise:43 photos/ --model vgg16 --weights random:0 --units 10000 --plot d.png
    """
    result = database.differentiation(
        list(sets), model=model, weights=weights, preprocess=preprocess, layers=layers, units=units,
        normalize_by=normalize_by, max_images=max_images, seed=seed, batch_size=batch_size, resize=resize, plot=plot,
        progress=progress_bar(not as_json), db=session.db_if(names_stored_images([*sets, normalize_by or ""])))
    if plot:
        written("plot", Path(plot).resolve())

    def text():
        column = "normalized" if normalize_by else "differentiation"
        pivot = result.frame.pivot(index=["depth", "layer", "units"], columns="set", values=column)
        pivot = pivot[list(dict.fromkeys(result.frame.set))].reset_index().drop(columns="depth")
        counts = result.frame.groupby("set", sort=False)[["images", "listed"]].first()
        images = ", ".join(f"{name}: {row.images}" + (f" of {row.listed}" if row.listed > row.images else "")
                           for name, row in counts.iterrows())
        what = f"divided by that of {normalize_by}" if normalize_by else "median over pairs of 1 - Pearson r"
        click.echo(f"{result.model} differentiation ({what}); images {images}; seed {seed} (unit indices: --json)")
        table(pivot.round(4))

    emit(result, as_json, text)
