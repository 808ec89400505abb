"""`actdb ingest`: image sets through a model into the store."""
from __future__ import annotations

import dataclasses

import click

from ..database import choices
from . import cli, progress_bar
from .options import CommaList, json_option, model_options, seed_option, wait_option
from .output import emit


@cli.command()
@click.argument("source", type=click.Path())
@model_options(required=False, default="efficientnet_lite0")
@click.option("--layers", default="avg_pool", show_default=True,
              help="Comma-separated layer names (see `actdb layers MODEL`), or all-conv.")
@click.option("--reduce", type=click.Choice(choices.REDUCTIONS), default="mean", show_default=True,
              help="Spatial reduction.")
@click.option("--classes", type=CommaList(), help="Only these classes: wnids or names, comma-separated.")
@click.option("--per-class", type=click.IntRange(min=1), help="At most N images per class (deterministic sample).")
@seed_option("Seed of the --per-class sample.")
@click.option("--limit", type=click.IntRange(min=1), help="At most N images in all.")
@click.option("--batch-size", type=click.IntRange(min=1), help="Images per forward pass (default: 32 on CPU, 256 per GPU).")
@click.option("--resize", type=click.Choice(choices.RESIZE_MODES), default="center-crop", show_default=True)
@click.option("--precision", type=click.Choice(choices.PRECISIONS), default="float32", show_default=True,
              help="Compute precision of the forward pass.")
@click.option("--dtype", type=click.Choice(choices.DTYPES), default="float32", show_default=True,
              help="Storage type of the activations.")
@click.option("--predictions", is_flag=True, help="Also store the top-5 classes and probabilities.")
@click.option("--commit-seconds", type=click.FloatRange(min=0), default=5.0, hidden=True,
              help="Seconds between commits (what a kill can lose).")
@click.option("--engine", type=click.Choice(choices.ENGINES), default="local", show_default=True,
              help="Run here, or on Ray Data (a local Ray, or the cluster at --address / RAY_ADDRESS).")
@click.option("--address", help="ray: address of an existing Ray cluster (default: RAY_ADDRESS, else start one here).")
@click.option("--workers", type=click.IntRange(min=1), help="ray: model actors (default: one per GPU, else per CPU).")
@click.option("--gpus-per-worker", type=click.FloatRange(min=0), help="ray: GPUs per actor (default 1 where there are GPUs).")
@click.option("--cpus-per-worker", type=click.FloatRange(min=0, min_open=True), help="ray: CPUs per actor (default 1).")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar and no summary.")
@wait_option
@json_option
@click.pass_obj
def ingest(session, source, quiet, as_json, **options):
    """Stream images from SOURCE through a model and store layer activations.

    SOURCE: an ImageNet train/val folder, a folder of class folders, a CSV or Parquet
    list (columns path[, label]), a flat folder or a single image.
    Resumable: run the same command again after a crash; it adds only what is missing.

    \b
    actdb --store imagenet.actdb ingest ~/ILSVRC/train --classes sea_cucumber,groenendael --per-class 100
    actdb --store imagenet.actdb ingest ~/ILSVRC/train --model efficientnet_lite0 --layers top_activation,avg_pool
    """
    summary = session.db(create=True).ingest(source, progress=progress_bar(not quiet and not as_json), **options)

    def text():
        hidden = summary.hidden_folders
        unread = f"; {len(hidden)} hidden folder{'s' * (len(hidden) > 1)} not read " \
            f"({', '.join(hidden[:3])}{', ...' if len(hidden) > 3 else ''}: names starting with '.')" if hidden else ""
        click.echo(f"ingested {summary.ingested}, skipped {summary.skipped} (already present), failed "
                   f"{summary.failed} of {summary.listed} listed{unread}; {summary.images_per_s:.1f} images/s; "
                   f"arrays: {', '.join(summary.arrays)}")

    emit(summary, as_json, None if quiet else text,
         {**dataclasses.asdict(summary), "images_per_s": summary.images_per_s})
