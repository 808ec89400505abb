"""The models actdb knows and what they say about images: models, layers, predict."""
from __future__ import annotations

import click

from .. import database
from . import cli
from .options import CommaList, json_option, resize_option
from .output import emit, table

STORED_IMAGE_PREFIXES = ("id:", "optimized:", "where:")


def names_stored_images(arguments) -> bool:
    """Arguments that name stored images (id:N, optimized:NAME, where:SQL) need the store."""
    return any(str(a).startswith(STORED_IMAGE_PREFIXES) for a in arguments)


@cli.command(name="models")
@json_option
def list_models(as_json):
    """Models known by name, with input size and preprocessing."""
    frame = database.models()

    def text():
        for spec in frame.itertuples():
            click.echo(f"{spec.name:<20} input {spec.input_size:>3}  preprocess {spec.preprocess}")

    emit(frame, as_json, text)


@cli.command()
@click.argument("model")
@json_option
def layers(model, as_json):
    """List MODEL's layers with their output shapes (no weights are loaded)."""
    frame = database.layers(model)

    def text():
        width = frame.layer.str.len().max()
        for row in frame.itertuples():
            click.echo(f"{row.layer:<{width}}  {row.type:<22} {tuple(row.output_shape)}")

    emit(frame, as_json, text)


@cli.command()
@click.argument("queries", nargs=-1, required=True)
@click.option("--models", type=CommaList(), default="efficientnet_lite0", show_default=True,
              help="Comma-separated model names.")
@click.option("--weights", default="imagenet", show_default=True, help="imagenet | random[:SEED] | PATH.")
@click.option("--top", type=click.IntRange(1, 1000), default=5, show_default=True)
@resize_option
@json_option
@click.pass_obj
def predict(session, queries, models, weights, top, resize, as_json):
    """Top ImageNet classes of each QUERY, per model: an image file, or id:N or optimized:NAME
    of the store (then the store is needed: --store or $ACTDB_STORE).

    \b
    actdb predict photo.jpg --models efficientnet_lite0,vgg19 --top 3
    actdb --store demo.actdb predict id:3
    """
    frame = database.predict(list(queries), models=models, weights=weights, top=top, resize=resize,
                             db=session.db_if(names_stored_images(queries)))

    def text():
        shown = frame.assign(probability=frame.probability.map("{:.4f}".format))
        for (query, model), group in shown.groupby(["query", "model"], sort=False):
            click.echo(f"{query}  [{model}]")
            table(group[["rank", "class_index", "wnid", "name", "probability"]])
            click.echo()

    emit(frame, as_json, text)
