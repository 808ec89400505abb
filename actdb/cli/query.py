"""Nearest stored images and classes of any image: index, neighbors, classes."""
from __future__ import annotations

import click

from ..database import choices
from . import cli
from .options import json_option, metric_option, stored_array_options, wait_option
from .output import emit, per_query

QUERY_HELP = "QUERY: an image file, id:N (a stored image), optimized:NAME or a .npy vector."


@cli.command()
@stored_array_options()
@metric_option
@click.option("--kind", type=click.Choice(("auto", *choices.INDEX_KINDS)), default="auto", show_default=True,
              help="auto: exact (flat) while it fits memory and a 50 ms scan, else IVF tuned to --recall.")
@click.option("--recall", type=click.FloatRange(0, 1), default=0.99, show_default=True,
              help="recall@10 an approximate index must reach (measured against exact search).")
@click.option("--rebuild", is_flag=True, help="Build anew instead of adding new rows (retrains IVF lists).")
@wait_option
@json_option
@click.pass_obj
def index(session, array, metric, kind, recall, rebuild, wait, as_json):
    """Build (or bring up to date) the FAISS index and class centroids of a stored array.

    \b
    actdb index --model vgg19 --layer block5_conv4
    actdb index --model vgg19 --layer block5_conv4 --metric correlation --kind ivf
    """
    report = session.db().index(**array, metric=metric, kind=kind, recall=recall, rebuild=rebuild, wait=wait)

    def text():
        measured = "exact" if report["kind"] == "flat" else f"recall@10 {report['recall_at_10']:.3f} measured on " \
            f"{report['n_eval_queries']} held-out queries with {report['search_params']}"
        click.echo(f"index {report['action']}: {report['kind']} ({report['factory']}), {metric}, "
                   f"{report['n_rows']} rows, {measured}; built in {report['build_seconds']:.2f} s")

    emit(report, as_json, text)


@cli.command()
@click.argument("queries", nargs=-1, required=True)
@stored_array_options()
@metric_option
@click.option("-k", "k", type=click.IntRange(min=1), default=10, show_default=True)
@click.option("--where", help="SQL condition on images columns, e.g. \"label IN ('sea_cucumber','groenendael')\".")
@json_option
@click.pass_obj
def neighbors(session, queries, array, metric, k, where, as_json):
    """The k nearest stored images of each QUERY (image file, id:N, optimized:NAME or .npy vector).

    \b
    actdb neighbors photo.jpg --model vgg19 --layer block5_conv4 -k 5
    actdb neighbors id:42 --where "label = 'sea_cucumber'"
    """
    frame = session.db().neighbors(list(queries), **array, metric=metric, k=k, where=where)
    emit(frame, as_json, lambda: per_query(frame))


@cli.command(name="classes")
@click.argument("queries", nargs=-1, required=True)
@stored_array_options()
@metric_option
@click.option("--by", type=click.Choice(choices.CLASS_RANKINGS), default="centroid", show_default=True,
              help="centroid: distance to the class mean; knn: share of the k nearest images; "
              "mean/median/min: of the distances to every member.")
@click.option("-k", "k", type=click.IntRange(min=1), default=50, show_default=True, help="Neighbours for --by knn.")
@click.option("--top", type=click.IntRange(min=1), default=10, show_default=True)
@click.option("--class", "class_name", help="Also show this class's rank and statistics.")
@json_option
@click.pass_obj
def rank_classes(session, queries, array, metric, by, k, top, class_name, as_json):
    """Rank the stored classes for each QUERY: "which class is this image closest to?"

    \b
    actdb classes optimized.png --model vgg19 --layer block5_conv4 --class sea_cucumber
    actdb classes id:7 --by median --top 5
    """
    frame = session.db().classes(list(queries), **array, metric=metric, by=by, k=k, top=top, class_name=class_name)
    emit(frame, as_json, lambda: per_query(frame))
