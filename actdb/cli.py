"""The `actdb` command line: a thin layer over the library; each command calls one function."""
from __future__ import annotations

import json
import sys

import click

from .errors import ActdbError
from .tfquiet import import_tensorflow

CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"]}


class ActdbGroup(click.Group):
    """Turns ActdbError (and a closed pipe) into a one-line message and a non-zero exit."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except ActdbError as exc:
            raise click.ClickException(str(exc)) from None
        except BrokenPipeError:
            sys.exit(1)


def _csv_list(value: str | None) -> list[str] | None:
    return [v.strip() for v in value.split(",") if v.strip()] if value else None


def _print_json(payload) -> None:
    click.echo(json.dumps(payload, indent=2, default=str))


def _print_table(frame) -> None:
    click.echo(frame.to_string(index=False) if len(frame) else "(no rows)")


@click.group(cls=ActdbGroup, context_settings=CONTEXT_SETTINGS)
@click.version_option(package_name="actdb")
@click.option("--store", envvar="ACTDB_STORE", type=click.Path(file_okay=False), help="Store directory (or $ACTDB_STORE).")
@click.pass_context
def cli(ctx, store):
    """actdb: a batch activation database for CNN interpretability.

    \b
    actdb --store imagenet.actdb ingest ~/ILSVRC/train --model vgg19 --layers block5_conv4
    actdb --store imagenet.actdb info
    actdb --store imagenet.actdb sql "SELECT label, count(*) FROM images GROUP BY label"
    """
    ctx.obj = {"store": store}


def _needs_tensorflow(command):
    """Decorator: import TensorFlow quietly before a command that runs a model."""
    import functools

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        import_tensorflow()
        return command(*args, **kwargs)

    return wrapper


def _store(ctx) -> str:
    from .database import store_path

    return str(store_path(ctx.obj["store"]))


def _db(ctx):
    from .database import open as open_db

    return open_db(_store(ctx))


@cli.command()
@click.argument("source", type=click.Path())
@click.option("--model", default="vgg19", show_default=True, help="Model name (see `actdb models`) or PATH.keras.")
@click.option("--weights", default="imagenet", show_default=True, help="imagenet | random[:SEED] | PATH to a weights file.")
@click.option("--preprocess", type=click.Choice(["caffe", "tf", "torch", "lite", "none"]), help="Pixel scaling, for PATH.keras models.")
@click.option("--layers", default="block5_conv4", show_default=True, help="Comma-separated layer names, or all-conv.")
@click.option("--reduce", type=click.Choice(["mean", "max"]), default="mean", show_default=True, help="Spatial reduction.")
@click.option("--classes", help="Only these classes: wnids or names, comma-separated.")
@click.option("--per-class", type=click.IntRange(min=1), help="At most N images per class (deterministic sample).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the --per-class sample.")
@click.option("--limit", type=click.IntRange(min=1), help="At most N images in all.")
@click.option("--batch-size", type=click.IntRange(min=1), help="Images per forward pass (default: 32 on CPU, 256 per GPU).")
@click.option("--resize", type=click.Choice(["center-crop", "squash"]), default="center-crop", show_default=True)
@click.option("--precision", type=click.Choice(["float32", "bfloat16", "float16"]), default="float32", show_default=True,
              help="Compute precision of the forward pass.")
@click.option("--dtype", type=click.Choice(["float32", "float16"]), default="float32", show_default=True,
              help="Storage type of the activations.")
@click.option("--predictions", is_flag=True, help="Also store the top-5 classes and probabilities.")
@click.option("--commit-seconds", type=click.FloatRange(min=0), default=5.0, hidden=True,
              help="Seconds between commits (what a kill can lose).")
@click.option("--engine", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="Run here, or on Ray Data (a local Ray, or the cluster at --address / RAY_ADDRESS).")
@click.option("--address", help="ray: address of an existing Ray cluster (default: RAY_ADDRESS, else start one here).")
@click.option("--workers", type=click.IntRange(min=1), help="ray: model actors (default: one per GPU, else per CPU).")
@click.option("--gpus-per-worker", type=click.FloatRange(min=0), help="ray: GPUs per actor (default 1 where there are GPUs).")
@click.option("--cpus-per-worker", type=click.FloatRange(min=0, min_open=True), help="ray: CPUs per actor (default 1).")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar and no summary.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@click.pass_context
@_needs_tensorflow
def ingest(ctx, source, quiet, as_json, **options):
    """Stream images from SOURCE through a model and store layer activations.

    SOURCE: an ImageNet train/val folder, a folder of class folders, a CSV or Parquet
    list (columns path[, label]), a flat folder or a single image.
    Resumable: run the same command again after a crash; it adds only what is missing.

    \b
    actdb ingest ~/ILSVRC/train --classes sea_cucumber,groenendael --per-class 100
    """
    from .ingest.run import IngestOptions, ingest as run_ingest

    options["classes"] = _csv_list(options["classes"])
    summary = run_ingest(_store(ctx), source, IngestOptions(**options),
                         progress=not quiet and not as_json and sys.stderr.isatty())
    if as_json:
        _print_json({**summary.__dict__, "images_per_s": summary.images_per_s})
    elif not quiet:
        click.echo(
            f"ingested {summary.ingested}, skipped {summary.skipped} (already present), failed {summary.failed} "
            f"of {summary.listed} listed; {summary.images_per_s:.1f} images/s; arrays: {', '.join(summary.arrays)}"
        )


@cli.command()
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def info(ctx, as_json):
    """What the store holds: images, classes, models, arrays, errors, size on disk."""
    import pandas as pd

    summary = _db(ctx).info()
    if as_json:
        _print_json(summary)
        return
    click.echo(f"store {summary['store']}: {summary['images']} images, {summary['classes']} classes, "
               f"{summary['errors']} errors, {summary['bytes_on_disk'] / 1e6:.1f} MB on disk")
    for title in ("sources", "models", "arrays", "top_classes", "runs"):
        click.echo(f"\n{title.replace('_', ' ')}:")
        _print_table(pd.DataFrame(summary[title]))


@cli.command()
@click.argument("query")
@click.option("--json", "as_json", is_flag=True, help="Rows as a JSON list.")
@click.option("--csv", "as_csv", is_flag=True, help="Rows as CSV.")
@click.pass_context
def sql(ctx, query, as_json, as_csv):
    """Read-only SQL on the catalog (tables: images, models, arrays, runs, done,
    predictions, errors, imagenet_classes; view: array_list).

    \b
    actdb sql "SELECT label, count(*) AS n FROM images GROUP BY label ORDER BY n DESC"
    """
    frame = _db(ctx).sql(query)
    if as_json:
        click.echo(frame.to_json(orient="records", date_format="iso"))
    elif as_csv:
        click.echo(frame.to_csv(index=False), nl=False)
    else:
        _print_table(frame)


@cli.command()
@click.argument("model")
@click.option("--json", "as_json", is_flag=True)
@_needs_tensorflow
def layers(model, as_json):
    """List MODEL's layers with their output shapes (no weights are loaded)."""
    from .models import layer_table, load

    rows = layer_table(load(model, weights="random").keras_model)
    if as_json:
        _print_json([{"layer": n, "type": t, "output_shape": list(s)} for n, t, s in rows])
        return
    width = max(len(n) for n, _, _ in rows)
    for name, kind, shape in rows:
        click.echo(f"{name:<{width}}  {kind:<22} {shape}")


@cli.command()
@click.argument("queries", nargs=-1, required=True)
@click.option("--models", "model_names", default="efficientnet_lite0", show_default=True,
              help="Comma-separated model names.")
@click.option("--weights", default="imagenet", show_default=True, help="imagenet | random[:SEED] | PATH.")
@click.option("--top", type=click.IntRange(1, 1000), default=5, show_default=True)
@click.option("--resize", type=click.Choice(["center-crop", "squash"]), default="center-crop", show_default=True)
@click.option("--json", "as_json", is_flag=True)
@_needs_tensorflow
def predict(queries, model_names, weights, top, resize, as_json):
    """Top ImageNet classes of each QUERY image, per model.

    \b
    actdb predict photo.jpg --models efficientnet_lite0,vgg19 --top 3
    """
    import pandas as pd

    from .predict import predict as run_predict

    rows, unavailable = run_predict(list(queries), _csv_list(model_names), top=top, resize=resize, weights=weights)
    for model, reason in unavailable.items():
        click.echo(f"{model}: unavailable: {reason}", err=True)
    frame = pd.DataFrame([r.__dict__ for r in rows])
    if as_json:
        click.echo(frame.to_json(orient="records"))
        return
    frame["probability"] = frame.probability.map("{:.4f}".format)
    for (query, model), group in frame.groupby(["query", "model"], sort=False):
        click.echo(f"{query}  [{model}]")
        click.echo(group[["rank", "class_index", "wnid", "name", "probability"]].to_string(index=False))
        click.echo()


def _array_options(command):
    """--model/--layer/--reduce/--metric: which stored array and distance a query is about."""
    for option in reversed([
        click.option("--model", help="Stored model (may be left out when the store holds one array)."),
        click.option("--layer", help="Stored layer."),
        click.option("--reduce", type=click.Choice(["mean", "max"]), default="mean", show_default=True),
        click.option("--metric", type=click.Choice(["l2", "cosine", "correlation"]), default="l2", show_default=True,
                     help="l2: Euclidean (the seeds' measure); correlation: 1 - Pearson r."),
    ]):
        command = option(command)
    return command


def _print_frame(frame, as_json: bool, float_format: str = "{:.4f}") -> None:
    for warning in frame.attrs.get("warnings", []):
        click.echo(f"warning: {warning}", err=True)
    if as_json:
        click.echo(frame.to_json(orient="records"))
        return
    for query, group in frame.groupby("query", sort=False):
        click.echo(f"{query}")
        shown = group.drop(columns="query")
        for column in shown.select_dtypes("float").columns:
            shown[column] = shown[column].map(float_format.format)
        click.echo(shown.to_string(index=False))
        click.echo()


@cli.command()
@_array_options
@click.option("--kind", type=click.Choice(["auto", "flat", "ivf", "hnsw", "ivfpq"]), default="auto", show_default=True,
              help="auto: exact (flat) while it fits memory and a 50 ms scan, else IVF tuned to --recall.")
@click.option("--recall", "recall_target", type=click.FloatRange(0, 1), default=0.95, show_default=True,
              help="recall@10 an approximate index must reach (measured against exact search).")
@click.option("--rebuild", is_flag=True, help="Build anew instead of adding new rows (retrains IVF lists).")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def index(ctx, model, layer, reduce, metric, kind, recall_target, rebuild, as_json):
    """Build (or bring up to date) the FAISS index and class centroids of a stored array.

    \b
    actdb index --model vgg19 --layer block5_conv4
    actdb index --model vgg19 --layer block5_conv4 --metric correlation --kind ivf
    """
    report = _db(ctx).build_index(model, layer, reduce, metric, kind, recall_target, rebuild=rebuild)
    if as_json:
        _print_json(report)
        return
    recall = "exact" if report["kind"] == "flat" else f"recall@10 {report['recall_at_10']:.3f} measured on " \
        f"{report['n_eval_queries']} held-out queries with {report['search_params']}"
    click.echo(f"index {report['action']}: {report['kind']} ({report['factory']}), {metric}, {report['n_rows']} rows, "
               f"{recall}; built in {report['build_seconds']:.2f} s")
    if report.get("note"):
        click.echo(f"note: {report['note']}", err=True)
    if report["kind"] != "flat" and not report.get("target_reached", True):
        click.echo(f"warning: recall target {recall_target} not reached", err=True)


@cli.command()
@click.argument("queries", nargs=-1, required=True)
@_array_options
@click.option("-k", "k", type=click.IntRange(min=1), default=10, show_default=True)
@click.option("--where", help="SQL condition on images columns, e.g. \"label IN ('sea_cucumber','groenendael')\".")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def neighbors(ctx, queries, model, layer, reduce, metric, k, where, as_json):
    """The k nearest stored images of each QUERY (image file, id:N, optimized:NAME or .npy vector).

    \b
    actdb neighbors photo.jpg --model vgg19 --layer block5_conv4 -k 5
    actdb neighbors id:42 --where "label = 'sea_cucumber'"
    """
    frame = _db(ctx).neighbors(list(queries), model, layer, k, where, reduce, metric)
    _print_frame(frame, as_json)


@cli.command(name="classes")
@click.argument("queries", nargs=-1, required=True)
@_array_options
@click.option("--by", type=click.Choice(["centroid", "knn", "mean", "median", "min"]), default="centroid",
              show_default=True, help="centroid: distance to the class mean; knn: share of the k nearest images; "
              "mean/median/min: of the distances to every member.")
@click.option("-k", "k", type=click.IntRange(min=1), default=50, show_default=True, help="Neighbours for --by knn.")
@click.option("--top", type=click.IntRange(min=1), default=10, show_default=True)
@click.option("--class", "class_name", help="Also show this class's rank and statistics.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def rank_classes(ctx, queries, model, layer, reduce, metric, by, k, top, class_name, as_json):
    """Rank the stored classes for each QUERY: "which class is this image closest to?"

    \b
    actdb classes optimized.png --model vgg19 --layer block5_conv4 --class sea_cucumber
    actdb classes id:7 --by median --top 5
    """
    frame = _db(ctx).classes(list(queries), model, layer, by, k, top, class_name, reduce, metric)
    _print_frame(frame, as_json)


@cli.command(name="models")
def list_models():
    """Models known by name, with input size and preprocessing."""
    from .models import known_models

    for spec in known_models().values():
        click.echo(f"{spec.name:<20} input {spec.input_size:>3}  preprocess {spec.preprocess}")


# ---- store integrity ---------------------------------------------------------------------
# (actdb check)


# ---- optimize: activation maximization ----------------------------------------------------
# (actdb optimize)


# ---- analytics I: distances, maps, dataset examples, profiles ------------------------------
# (actdb distances / map / top-images / top-classes / profile)


# ---- analytics II: circuits, feature maps, differentiation, comparison ---------------------
# (actdb weights / featuremaps / differentiation / compare)


# ---- the demo ------------------------------------------------------------------------------

@cli.command()
@click.option("--model", type=click.Choice(["efficientnet_lite0", "vgg19"]),
              help="Default: vgg19 when its ImageNet weights are cached, else efficientnet_lite0.")
@click.option("--views", type=click.IntRange(1, 100), default=8, show_default=True,
              help="Augmented views per photo.")
@click.pass_context
@_needs_tensorflow
def demo(ctx, model, views):
    """Real photos end to end: ingest augmented views, classify, index, query nearest images and classes."""
    from .demo import DEMO_LAYERS, build_image_set, default_model, held_out_views

    model = model or default_model()
    stored_layers, query_layer = DEMO_LAYERS[model]
    ctx.obj["store"] = _store(ctx)
    folder, originals = build_image_set(ctx.obj["store"], views)
    click.echo(f"== {len(originals)} real photos x {views} views in {folder}; ingesting with {model}")
    ctx.invoke(ingest, source=folder, model=model, layers=stored_layers, predictions=True)
    click.echo("\n== actdb predict (view 0 of each photo)")
    ctx.invoke(predict, queries=[str(p) for p in originals], model_names=model)
    click.echo(f"== actdb index --model {model} --layer {query_layer}")
    ctx.invoke(index, model=model, layer=query_layer)
    queries = [str(p) for p in held_out_views(ctx.obj["store"])]
    click.echo("\n== actdb neighbors (a new view, never stored) -k 5")
    ctx.invoke(neighbors, queries=queries[:1], model=model, layer=query_layer, k=5)
    click.echo("== actdb classes --by centroid (new views of each photo: is the photo's class nearest?)")
    ctx.invoke(rank_classes, queries=queries, model=model, layer=query_layer, top=2)
    click.echo("== actdb info")
    ctx.invoke(info)


def main() -> None:
    cli(prog_name="actdb")
