"""The `actdb` command line: a thin layer over the library; each command calls one function."""
from __future__ import annotations

import json
import sys

import click

from .errors import ActdbError, Terminated
from .tfquiet import import_tensorflow

CONTEXT_SETTINGS = {"help_option_names": ["-h", "--help"]}


class ActdbGroup(click.Group):
    """Turns ActdbError (and a closed pipe) into a one-line message and a non-zero exit."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except ActdbError as exc:
            raise click.ClickException(exc.cli_message) from None
        except Terminated:
            sys.exit(128 + 15)  # the run was recorded as interrupted; exit as a process killed by SIGTERM
        except BrokenPipeError:
            sys.exit(1)


def _csv_list(value: str | None) -> list[str] | None:
    return [v.strip() for v in value.split(",") if v.strip()] if value else None


def _print_json(payload) -> None:
    click.echo(json.dumps(payload, indent=2, default=str))


def _print_records(frame) -> None:
    """A DataFrame as a JSON list, paths unescaped (pandas writes `\\/`), NaN as null."""
    click.echo(json.dumps(json.loads(frame.to_json(orient="records", date_format="iso")), separators=(",", ":")))


def _print_table(frame) -> None:
    click.echo(frame.to_string(index=False) if len(frame) else "(no rows)")


@click.group(cls=ActdbGroup, context_settings=CONTEXT_SETTINGS)
@click.version_option(package_name="actdb")
@click.option("--store", envvar="ACTDB_STORE", type=click.Path(file_okay=False), help="Store directory (or $ACTDB_STORE).")
@click.pass_context
def cli(ctx, store):
    """actdb: a batch activation database for CNN interpretability.

    \b
    actdb --store imagenet.actdb ingest ~/ILSVRC/train --classes sea_cucumber,groenendael --per-class 100
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
@click.option("--model", default="efficientnet_lite0", show_default=True,
              help="Model name (see `actdb models`) or PATH.keras.")
@click.option("--weights", default="imagenet", show_default=True, help="imagenet | random[:SEED] | PATH to a weights file.")
@click.option("--preprocess", type=click.Choice(["caffe", "tf", "torch", "lite", "none"]), help="Pixel scaling, for PATH.keras models.")
@click.option("--layers", default="avg_pool", show_default=True,
              help="Comma-separated layer names (see `actdb layers MODEL`), or all-conv.")
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
    actdb --store imagenet.actdb ingest ~/ILSVRC/train --classes sea_cucumber,groenendael --per-class 100
    actdb --store imagenet.actdb ingest ~/ILSVRC/train --model efficientnet_lite0 --layers top_activation,avg_pool
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
    click.echo(f"store {summary['store']}: {summary['images']} images stored, {summary['classes']} classes, "
               f"{summary['failed_images']} images failed ({summary['errors']} errors), "
               f"{summary['bytes_on_disk'] / 1e6:.1f} MB on disk")
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
    predictions, errors, indexes, class_centroids, imagenet_classes, optimized_images,
    optimized_vectors; view: array_list). One statement; it reaches only the catalog
    (no files, URLs or extensions).

    \b
    actdb sql "SELECT label, count(*) AS n FROM images GROUP BY label ORDER BY n DESC"
    """
    if as_json and as_csv:
        raise ActdbError("give --json or --csv, not both")
    frame = _db(ctx).sql(query)
    if as_json:
        _print_records(frame)
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
@click.pass_context
@_needs_tensorflow
def predict(ctx, queries, model_names, weights, top, resize, as_json):
    """Top ImageNet classes of each QUERY, per model: an image file, or id:N or optimized:NAME
    of the store (then the store is needed: --store or $ACTDB_STORE).

    \b
    actdb predict photo.jpg --models efficientnet_lite0,vgg19 --top 3
    actdb --store demo.actdb predict id:3
    """
    import pandas as pd

    from .predict import predict as run_predict

    needs_store = ctx.obj["store"] and any(q.startswith(("id:", "optimized:")) for q in queries)
    rows, unavailable = run_predict(list(queries), _csv_list(model_names), top=top, resize=resize, weights=weights,
                                    db=_db(ctx) if needs_store else None)
    for model, reason in unavailable.items():
        click.echo(f"{model}: unavailable: {reason}", err=True)
    frame = pd.DataFrame([r.__dict__ for r in rows])
    if as_json:
        _print_records(frame)
        return
    frame["probability"] = frame.probability.map("{:.4f}".format)
    for (query, model), group in frame.groupby(["query", "model"], sort=False):
        click.echo(f"{query}  [{model}]")
        click.echo(group[["rank", "class_index", "wnid", "name", "probability"]].to_string(index=False))
        click.echo()


def _array_options(command):
    """--model/--layer/--reduce/--weights/--metric: which stored array and distance a query is about."""
    for option in reversed([
        click.option("--model", help="Stored model (may be left out when the store holds one array)."),
        click.option("--layer", help="Stored layer."),
        click.option("--reduce", type=click.Choice(["mean", "max"]), default="mean", show_default=True),
        click.option("--weights", help="Stored weights, when a layer is stored under several: imagenet | "
                     "random:SEED | file:sha256=... (as `actdb info` lists them)."),
        click.option("--metric", type=click.Choice(["l2", "cosine", "correlation"]), default="l2", show_default=True,
                     help="l2: Euclidean (the seeds' measure); correlation: 1 - Pearson r."),
    ]):
        command = option(command)
    return command


def _print_frame(frame, as_json: bool, float_format: str = "{:.4f}") -> None:
    for warning in frame.attrs.get("warnings", []):
        click.echo(f"warning: {warning}", err=True)
    if as_json:
        _print_records(frame)
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
@click.option("--recall", type=click.FloatRange(0, 1), default=0.95, show_default=True,
              help="recall@10 an approximate index must reach (measured against exact search).")
@click.option("--rebuild", is_flag=True, help="Build anew instead of adding new rows (retrains IVF lists).")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def index(ctx, model, layer, reduce, weights, metric, kind, recall, rebuild, as_json):
    """Build (or bring up to date) the FAISS index and class centroids of a stored array.

    \b
    actdb index --model vgg19 --layer block5_conv4
    actdb index --model vgg19 --layer block5_conv4 --metric correlation --kind ivf
    """
    report = _db(ctx).build_index(model, layer, reduce, metric, kind, recall, weights, rebuild)
    if as_json:
        _print_json(report)
        return
    measured = "exact" if report["kind"] == "flat" else f"recall@10 {report['recall_at_10']:.3f} measured on " \
        f"{report['n_eval_queries']} held-out queries with {report['search_params']}"
    click.echo(f"index {report['action']}: {report['kind']} ({report['factory']}), {metric}, {report['n_rows']} rows, "
               f"{measured}; built in {report['build_seconds']:.2f} s")
    if report.get("note"):
        click.echo(f"note: {report['note']}", err=True)
    if report["kind"] != "flat" and not report.get("target_reached", True):
        click.echo(f"warning: recall target {recall} not reached", err=True)


@cli.command()
@click.argument("queries", nargs=-1, required=True)
@_array_options
@click.option("-k", "k", type=click.IntRange(min=1), default=10, show_default=True)
@click.option("--where", help="SQL condition on images columns, e.g. \"label IN ('sea_cucumber','groenendael')\".")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def neighbors(ctx, queries, model, layer, reduce, weights, metric, k, where, as_json):
    """The k nearest stored images of each QUERY (image file, id:N, optimized:NAME or .npy vector).

    \b
    actdb neighbors photo.jpg --model vgg19 --layer block5_conv4 -k 5
    actdb neighbors id:42 --where "label = 'sea_cucumber'"
    """
    frame = _db(ctx).neighbors(list(queries), model, layer, k, where, reduce, metric, weights)
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
def rank_classes(ctx, queries, model, layer, reduce, weights, metric, by, k, top, class_name, as_json):
    """Rank the stored classes for each QUERY: "which class is this image closest to?"

    \b
    actdb classes optimized.png --model vgg19 --layer block5_conv4 --class sea_cucumber
    actdb classes id:7 --by median --top 5
    """
    frame = _db(ctx).classes(list(queries), model, layer, by, k, top, class_name, reduce, metric, weights)
    _print_frame(frame, as_json)


@cli.command(name="models")
@click.option("--json", "as_json", is_flag=True)
def list_models(as_json):
    """Models known by name, with input size and preprocessing."""
    from .models import known_models

    if as_json:
        _print_json([{"name": s.name, "input_size": s.input_size, "preprocess": s.preprocess}
                     for s in known_models().values()])
        return
    for spec in known_models().values():
        click.echo(f"{spec.name:<20} input {spec.input_size:>3}  preprocess {spec.preprocess}")


# ---- store integrity ---------------------------------------------------------------------

@cli.command()
@click.option("--repair", is_flag=True, help="Unmark the rows of damaged chunks (the same ingest then recomputes "
              "them) and drop broken or stale index files.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def check(ctx, repair, as_json):
    """Verify the store: every done row's chunk exists and decodes, no NaN in done rows, arrays
    and catalog agree on shapes, index files match their records. Exit 1 if something is wrong.

    \b
    actdb check
    actdb check --repair && actdb ingest SOURCE ...   # recompute what was lost
    """
    import pandas as pd

    report = _db(ctx).check(repair=repair)
    if as_json:
        _print_json(report)
    else:
        counts = ", ".join(f"{n} {what}" for what, n in report["checked"].items())
        n = len(report["problems"])
        click.echo(f"checked {counts}: " + ("no problems" if report["ok"] else f"{n} problem{'s' * (n > 1)}"))
        if report["problems"]:
            _print_table(pd.DataFrame(report["problems"]))
        for action in report["repaired"]:
            click.echo(f"repaired: {action}")
    unrepaired = [p for p in report["problems"] if not (repair and p["repairable"])]
    if unrepaired:
        ctx.exit(1)


# ---- optimize: activation maximization ----------------------------------------------------

@cli.command()
@click.option("--model", default="efficientnet_lite0", show_default=True, help="Model name or PATH.keras.")
@click.option("--weights", default="imagenet", show_default=True, help="imagenet | random[:SEED] | PATH.")
@click.option("--preprocess", type=click.Choice(["caffe", "tf", "torch", "lite", "none"]),
              help="Pixel scaling, for PATH.keras models.")
@click.option("--layer", help="Layer whose unit is optimized (not with --objective logit).")
@click.option("--units", help="Units: 4, a list 4,17,300 or ranges 0-63; one image each (x --diversity).")
@click.option("--objective", type=click.Choice(["channel", "neuron", "logit"]), default="channel", show_default=True,
              help="channel: the unit's spatial mean; neuron: its centre position; logit: a class's pre-softmax score.")
@click.option("--class", "class_name", help="For --objective logit: class name(s), wnid(s) or index(es).")
@click.option("--negative", is_flag=True, help="Minimize instead: the image that suppresses the unit.")
@click.option("--method", type=click.Choice(["fft", "seed", "pattern"]), default="fft", show_default=True,
              help="fft: lucid-style; seed: the seeds' loop (000/002); pattern: 003's generate_pattern.")
@click.option("--steps", type=int, help="Default: fft 256, seed 100, pattern 40.")
@click.option("--lr", type=float, help="Learning rate / step size. Default: fft 0.05 (Adam), seed 0.1, pattern 1.0.")
@click.option("--size", type=int, help="Image side in pixels (default: the model's input size).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--diversity", type=int, default=1, show_default=True, help="Images per unit, with lucid's diversity term.")
@click.option("--snapshots", help="Also save the image at these steps, e.g. 32,128.")
@click.option("--batch", type=int, default=16, show_default=True, help="Images per forward/backward pass.")
@click.option("--name", help="Name (queried as optimized:NAME); default e.g. efficientnet_lite0.top_activation.u4.fft.s0.")
@click.option("--overwrite", is_flag=True, help="Replace an image of the same name made with other parameters.")
@click.option("--out", type=click.Path(file_okay=False), help="Write PNGs and JSON here instead of into the store.")
@click.option("--sheet", type=click.Path(dir_okay=False), help="Write a contact sheet of the run to FILE.png.")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
@_needs_tensorflow
def optimize(ctx, out, sheet, quiet, as_json, **options):
    """Optimized images: gradient ascent on the input until a unit fires as strongly as possible,
    many units per batch. Kept in the store and queryable as optimized:NAME.

    \b
    actdb optimize --model efficientnet_lite0 --layer top_activation --units 0-15 --steps 128
    actdb optimize --objective logit --class sea_cucumber --sheet sheet.png
    actdb optimize --model vgg19 --layer block5_conv4 --units 4 --method seed --seed 0
    """
    from .optimize.run import OptimizeOptions, optimize as run_optimize

    store = None if out else _store(ctx)
    frame = run_optimize(store, OptimizeOptions(**options), out=out, sheet=sheet,
                         progress=not quiet and not as_json and sys.stderr.isatty())
    if as_json:
        click.echo(frame.to_json(orient="records", date_format="iso"))
        return
    shown = frame[["name", "unit", "start_activation", "final_activation", "top1_class"]].rename(
        columns={"start_activation": "start", "final_activation": "final", "top1_class": "top-1"})
    click.echo(shown.to_string(index=False, float_format="{:.4g}".format))
    if sheet:
        click.echo(f"contact sheet: {sheet}")


# ---- analytics I: distances, maps, dataset examples, profiles ------------------------------
# (actdb distances / map / top-images / top-classes / profile)

def _analytics_array_options(reductions=("mean", "max")):
    """--model/--layer/--reduce/--weights: the stored array an analysis reads."""
    def decorate(command):
        for option in reversed([
            click.option("--model", help="Stored model (may be left out when the store holds one array)."),
            click.option("--layer", help="Stored layer."),
            click.option("--reduce", type=click.Choice(list(reductions)), default="mean", show_default=True,
                         help="Spatial reduction of the stored rows."),
            click.option("--weights", help="Stored weights, when a layer is stored under several: imagenet | "
                         "random:SEED | file:sha256=... (as `actdb info` lists them)."),
        ]):
            command = option(command)
        return command
    return decorate


def _pairs_option(value: str) -> int | str:
    if value == "all":
        return value
    if not value.isdigit() or int(value) < 1:
        raise ActdbError(f"--pairs must be a positive number or 'all', got {value!r}")
    return int(value)


def _echo_floats(frame, float_format: str = "{:.4g}") -> None:
    shown = frame.copy()
    for column in shown.select_dtypes("float").columns:
        shown[column] = shown[column].map(float_format.format)
    _print_table(shown)


def _saved(kind: str, path) -> None:
    click.echo(f"{kind} written to {path}", err=True)


@cli.command()
@_analytics_array_options(("mean", "max", "flat"))
@click.option("--query", "queries", multiple=True, help="Also measure from QUERY (file, id:N, optimized:NAME, .npy); repeatable.")
@click.option("--classes", help="Classes to include, comma-separated (labels, wnids or names).")
@click.option("--random-classes", type=int, default=10, show_default=True, help="Plus this many classes drawn at random.")
@click.option("--per-class", type=int, default=100, show_default=True, help="At most N images per class (seeded sample).")
@click.option("--pairs", default="5000", show_default=True, help="Pairs sampled per group, or 'all' pairs of the selection.")
@click.option("--metric", type=click.Choice(["l2", "cosine", "correlation"]), default="l2", show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--max-images", type=int, default=2000, show_default=True, help="--reduce flat: most feature maps computed.")
@click.option("--plot", type=click.Path(dir_okay=False), help="Write overlaid density histograms to this PNG.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def distances(ctx, model, layer, reduce, weights, queries, classes, random_classes, per_class, pairs, metric, seed,
              max_images, plot, as_json):
    """Distances between stored images (same class, different class, random pairs) and, with
    --query, from each query to every member of each class.

    --reduce flat computes whole feature maps from the image files (the seeds' flat 14x14x512
    vectors) to compare with the stored means.

    \b
    actdb distances --model vgg19 --layer block5_conv4 --classes sea_cucumber,groenendael \\
        --query optimized:node4 --plot distances.png
    """
    report = _db(ctx).distances(model, layer, reduce, list(queries), _csv_list(classes), random_classes, per_class,
                                _pairs_option(pairs), metric, seed, max_images, weights, progress=sys.stderr.isatty())
    if plot:
        from .analytics import plots

        _saved("plot", plots.save(plots.distances_figure(report), plot))
    if as_json:
        _print_json({"title": report.title, "pairs": report.pairs.to_dict("records"),
                     "queries": report.queries.to_dict("records")})
        return
    click.echo(report.title)
    _echo_floats(report.pairs)
    for query, rows in (report.queries.groupby("query", sort=False) if len(report.queries) else []):
        click.echo(f"\nfrom {query} (percentile: of the class's same-class pair distances below the median)")
        _echo_floats(rows.drop(columns="query"))


@cli.command(name="map")
@_analytics_array_options()
@click.option("--method", type=click.Choice(["pca", "tsne", "umap"]), default="pca", show_default=True,
              help="tsne: openTSNE (fitted maps are kept in the store); umap needs actdb[umap].")
@click.option("--classes", help="Classes to map, comma-separated (default: all).")
@click.option("--per-class", type=int, default=100, show_default=True, help="At most N images per class (seeded).")
@click.option("--centroids", is_flag=True, help="Map class means (every stored row) instead of images.")
@click.option("--highlight", "highlight", multiple=True, help="QUERY to place on the map, drawn on top; repeatable.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--out", type=click.Path(dir_okay=False), help="Write every point's coordinates (.parquet or .csv).")
@click.option("--plot", type=click.Path(dir_okay=False), help="Write the map to this PNG.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def map_command(ctx, model, layer, reduce, weights, method, classes, per_class, centroids, highlight, seed, out, plot,
                as_json):
    """Stored images (or class centroids) in 2-D, with queries placed in the same map.

    \b
    actdb map --model vgg19 --layer block5_conv4 --method tsne --classes sea_cucumber,groenendael \\
        --highlight optimized:node4 --plot map.png
    """
    from .analytics.maps import checked_coordinates_path, save_coordinates

    if out:
        checked_coordinates_path(out)
    frame = _db(ctx).map(model, layer, reduce, method, _csv_list(classes), per_class, centroids, list(highlight),
                         seed, weights)
    if out:
        _saved("coordinates", save_coordinates(frame, out))
    if plot:
        from .analytics import plots

        _saved("plot", plots.save(plots.map_figure(frame), plot))
    if as_json:
        click.echo(frame.to_json(orient="records"))
        return
    points = frame[frame.kind != "query"]
    how = "from the store's cache" if frame.attrs["cached"] else "fitted"
    click.echo(f"{frame.attrs['title']}: {len(points)} points of {points.label.nunique()} classes, "
               f"{how} in {frame.attrs['fit_seconds']:.2f} s")
    summary = points.groupby("label", sort=False).agg(n=("x", "size"), x=("x", "mean"), y=("y", "mean"))
    _echo_floats(summary.reset_index().rename(columns={"label": "class", "x": "mean x", "y": "mean y"}))
    queries = frame[frame.kind == "query"]
    if len(queries):
        click.echo(f"\nhighlighted (placed in {frame.attrs['place_seconds'] * 1e3:.0f} ms):")
        _echo_floats(queries[["label", "id", "x", "y"]].rename(columns={"label": "query"}))


@cli.command(name="top-images")
@_analytics_array_options()
@click.option("--unit", type=int, required=True, help="Channel index in the layer.")
@click.option("-k", "k", type=int, default=16, show_default=True)
@click.option("--bottom", is_flag=True, help="The images that suppress the unit most.")
@click.option("--where", help="SQL condition on images columns, e.g. \"split = 'train'\".")
@click.option("--montage", type=click.Path(dir_okay=False), help="Write the images, labelled, to this PNG.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def top_images(ctx, model, layer, reduce, weights, unit, k, bottom, where, montage, as_json):
    """Dataset examples: the k stored images that excite UNIT most (streamed over the array).

    Microscope and Summit rank by the spatial max: use --reduce max where the store has it.

    \b
    actdb top-images --model vgg19 --layer block5_conv4 --reduce max --unit 4 --montage unit4.png
    """
    frame = _db(ctx).top_images(unit, model, layer, reduce, k, bottom, where, weights)
    if frame.attrs.get("note"):
        click.echo(f"note: {frame.attrs['note']}", err=True)
    if montage:
        from .analytics import plots

        _saved("montage", plots.save(plots.montage_figure(frame), montage))
    if as_json:
        click.echo(frame.to_json(orient="records"))
        return
    click.echo(frame.attrs["title"])
    _echo_floats(frame)


@cli.command(name="top-classes")
@_analytics_array_options()
@click.option("--unit", type=int, required=True, help="Channel index in the layer.")
@click.option("--by", type=click.Choice(["mean", "median", "topk-share"]), default="mean", show_default=True,
              help="The unit's mean or median over each class's members, or each class's share of its top k images.")
@click.option("--top", type=int, default=10, show_default=True)
@click.option("-k", "k", type=int, default=100, show_default=True, help="Top images for --by topk-share.")
@click.option("--plot", type=click.Path(dir_okay=False), help="Write a bar chart to this PNG.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def top_classes(ctx, model, layer, reduce, weights, unit, by, top, k, plot, as_json):
    """The classes UNIT responds to most.

    \b
    actdb top-classes --model vgg19 --layer block5_conv4 --unit 4 --by topk-share -k 100
    """
    frame = _db(ctx).top_classes(unit, model, layer, reduce, by, top, k, weights)
    if plot:
        from .analytics import plots

        _saved("plot", plots.save(plots.top_classes_figure(frame), plot))
    if as_json:
        click.echo(frame.to_json(orient="records"))
        return
    click.echo(frame.attrs["title"])
    _echo_floats(frame)


@cli.command()
@click.argument("queries", nargs=-1, required=True)
@_analytics_array_options()
@click.option("--top", type=int, default=10, show_default=True, help="Units shown per query (highest z-score).")
@click.option("--vs-class", help="Also show this class's mean profile.")
@click.option("--plot", type=click.Path(dir_okay=False), help="Write the profiles to this PNG.")
@click.option("--json", "as_json", is_flag=True, help="Every unit of every query as JSON.")
@click.pass_context
def profile(ctx, queries, model, layer, reduce, weights, top, vs_class, plot, as_json):
    """Each QUERY's activation over every unit of the layer, raw and as z-scores against the
    stored images' per-unit mean and std; its most excited units.

    \b
    actdb profile optimized:node4 --model vgg19 --layer block5_conv4 --vs-class sea_cucumber --plot profile.png
    """
    frame = _db(ctx).profile(list(queries), model, layer, reduce, vs_class, weights)
    if plot:
        from .analytics import plots

        _saved("plot", plots.save(plots.profile_figure(frame), plot))
    if as_json:
        click.echo(frame.to_json(orient="records"))
        return
    click.echo(f"{frame.attrs['title']}; z against {frame.attrs['rows']} stored images")
    for query, rows in frame.groupby("query", sort=False):
        click.echo(f"\n{query}: the {top} most excited units (by z-score)")
        _echo_floats(rows[rows["rank"] <= top].sort_values("rank").drop(columns="query"))


# ---- analytics II: circuits, feature maps, differentiation, comparison ---------------------
# (actdb weights / featuremaps / differentiation / compare)

def _db_if(ctx, needed: bool):
    """The store, opened only for the arguments that name stored images (id:N, where:SQL):
    the model-only commands run without one, and an unrelated $ACTDB_STORE cannot fail them."""
    return _db(ctx) if needed else None


def _model_options(command):
    """--model/--weights/--preprocess for commands that run a model themselves."""
    for option in reversed([
        click.option("--model", required=True, help="Model name (see `actdb models`) or PATH.keras."),
        click.option("--weights", default="imagenet", show_default=True, help="imagenet | random[:SEED] | PATH."),
        click.option("--preprocess", type=click.Choice(["caffe", "tf", "torch", "lite", "none"]),
                     help="Pixel scaling, for PATH.keras models."),
    ]):
        command = option(command)
    return command


def _plot_option(command):
    return click.option("--plot", "plot_path", type=click.Path(dir_okay=False), help="Also draw it to FILE.png.")(command)


@cli.command()
@_model_options
@click.option("--layer", required=True, help="A conv layer (with --from: any spatial layer).")
@click.option("--unit", type=int, required=True, help="Output channel of --layer.")
@click.option("--top", type=click.IntRange(min=1), default=6, show_default=True, help="Channels listed and drawn.")
@click.option("--expanded", is_flag=True, help="Expanded weights from the earlier layer --from (Distill's circuits).")
@click.option("--from", "from_layer", help="With --expanded: the earlier layer whose channels are ranked.")
@_plot_option
@click.option("--json", "as_json", is_flag=True)
@_needs_tensorflow
def weights(model, weights, preprocess, layer, unit, top, expanded, from_layer, plot_path, as_json):
    """Rank the input channels feeding UNIT of a conv layer by the Frobenius norm of their kernel slice.

    With --expanded --from LAYER: the expanded weights, i.e. the gradient of the unit's centre
    position with respect to LAYER's channels, ReLU/ReLU6 as identity and max-pool as
    average-pool (for adjacent convolutions this is the kernel itself).

    \b
    actdb weights --model vgg19 --layer block3_conv2 --unit 8 --top 6 --plot unit8.png
    actdb weights --model vgg19 --layer block3_conv2 --unit 8 --expanded --from block2_conv2
    """
    from .analytics.weights import weights_of

    if expanded != bool(from_layer):
        raise ActdbError("--expanded and --from go together: --expanded --from EARLIER_LAYER")
    result = weights_of(model, layer, unit, from_layer, weights, preprocess)
    shown = result.top(top)
    if plot_path:
        from .analytics.plots import weights_figure

        weights_figure(result, top, plot_path)
    if as_json:
        _print_json({"model": result.model, "layer": result.layer, "unit": unit, "source": result.source,
                     "kind": result.kind, "note": result.note, "warnings": result.warnings,
                     "window": list(result.maps.shape[:2]),
                     "top": [{**row, "map": result.maps[:, :, row["channel"]].tolist()}
                             for row in shown.to_dict("records")]})
        return
    for warning in result.warnings:
        click.echo(f"warning: {warning}", err=True)
    what = "expanded weights" if result.kind == "expanded" else "kernel"
    click.echo(f"{result.model} {layer} unit {unit}: {what} norms per input channel of {result.source} "
               f"({result.maps.shape[0]}x{result.maps.shape[1]} window, top {len(shown)} of {len(result.ranking)})")
    if result.note:
        click.echo(f"note: {result.note}")
    _print_table(shown.assign(norm=shown.norm.map("{:.6f}".format)))


@cli.command()
@click.argument("query")
@_model_options
@click.option("--layer", required=True, help="A spatial layer.")
@click.option("--channels", help="Channels to show, e.g. 0-63 or 3,7,10-12 (default: all).")
@click.option("--unit", type=int, help="One channel, drawn over the image instead of the grid.")
@click.option("--resize", type=click.Choice(["center-crop", "squash"]), default="center-crop", show_default=True)
@_plot_option
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
@_needs_tensorflow
def featuremaps(ctx, query, model, weights, preprocess, layer, channels, unit, resize, plot_path, as_json):
    """A layer's feature maps for one image (QUERY: an image file, id:N or optimized:NAME): per-channel statistics,
    and with --plot the grid of maps (each standardized, x64 + 128, as seed 003's show_layer)
    or, with --unit, that map over the image.

    \b
    actdb featuremaps photo.jpg --model efficientnet_lite0 --layer block2a_project_conv --channels 0-23 --plot maps.png
    """
    from .analytics.featuremaps import featuremaps_of

    result = featuremaps_of(query, model, layer, channels, unit, weights, preprocess, resize,
                            _db_if(ctx, query.startswith(("id:", "optimized:"))))
    if plot_path:
        from .analytics import plots

        (plots.unit_overlay if unit is not None else plots.featuremap_grid)(result, plot_path)
    table = result.table()
    if as_json:
        _print_json({"model": result.model, "layer": layer, "query": result.query,
                     "map_shape": list(result.maps.shape[:2]), "channels": table.to_dict("records")})
        return
    click.echo(f"{result.model} {layer} on {result.query}: {len(result.channels)} maps of "
               f"{result.maps.shape[0]}x{result.maps.shape[1]}")
    _print_table(table.round(4))


@cli.command()
@click.argument("sets", nargs=-1, required=True)
@_model_options
@click.option("--layers", default="all", show_default=True, help="all (every layer, the input included), all-conv, or a,b,c.")
@click.option("--units", type=click.IntRange(min=2), default=200, show_default=True,
              help="Units sampled per layer (positions in the H x W x C map), the same for every image and set.")
@click.option("--normalize-by", help="Divide by this SET's differentiation (e.g. noise:43).")
@click.option("--max-images", type=click.IntRange(min=2), default=200, show_default=True,
              help="At most N images per set (a seeded sample).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seeds the units, noise and samples.")
@click.option("--batch-size", type=click.IntRange(min=1), default=16, show_default=True)
@click.option("--resize", type=click.Choice(["center-crop", "squash"]), default="center-crop", show_default=True)
@_plot_option
@click.option("--json", "as_json", is_flag=True, help="Rows plus every layer's sampled unit indices.")
@click.pass_context
@_needs_tensorflow
def differentiation(ctx, sets, model, weights, preprocess, layers, units, normalize_by, max_images, seed,
                    batch_size, resize, plot_path, as_json):
    """How differently each layer responds to the images of a SET (seed 004).

    SET: a folder of images, where:SQL (stored images, e.g. "where:label = 'tabby'"), or
    noise:N (N seeded white-noise images). Per layer, --units positions are sampled once and
    read for every image; each response vector is z-scored; differentiation is the median over
    image pairs of d^2/(2n), which for z-scored vectors equals 1 - Pearson r (correlation
    distance). --json records the sampled unit indices, so the figure can be recomputed.

    \b
    actdb differentiation noise:43 photos/ --model vgg16 --weights random:0 --units 10000 --plot d.png
    """
    from .analytics.differentiation import differentiation_of

    result = differentiation_of(list(sets), model, weights, layers, units, normalize_by, max_images, seed,
                                batch_size, resize, preprocess,
                                _db_if(ctx, any(s.startswith("where:") for s in (*sets, normalize_by or ""))),
                                progress=not as_json and sys.stderr.isatty())
    if plot_path:
        from .analytics.plots import differentiation_figure

        differentiation_figure(result, plot_path)
    if as_json:
        _print_json(result.to_json())
        return
    column = "normalized" if normalize_by else "differentiation"
    table = result.frame.pivot(index=["depth", "layer", "units"], columns="set", values=column)
    table = table[list(dict.fromkeys(result.frame.set))].reset_index().drop(columns="depth")
    counts = result.frame.groupby("set", sort=False)[["images", "listed"]].first()
    images = ", ".join(f"{name}: {row.images}" + (f" of {row.listed}" if row.listed > row.images else "")
                       for name, row in counts.iterrows())
    what = f"divided by that of {normalize_by}" if normalize_by else "median over pairs of 1 - Pearson r"
    click.echo(f"{result.model} differentiation ({what}); images {images}; seed {seed} (unit indices: --json)")
    _print_table(table.round(4))


@cli.command()
@click.option("--model", help="One stored model, with --layers.")
@click.option("--layers", help="Stored layers of --model, comma-separated.")
@click.option("--models", "model_names", help="Stored models, comma-separated, with --layer.")
@click.option("--layer", help="One stored layer of every --models.")
@click.option("--method", type=click.Choice(["cka", "cka-debiased", "rsa"]), default="cka", show_default=True,
              help="linear CKA, its debiased form, or RSA (Spearman of correlation-distance RDMs of class centroids).")
@click.option("--reduce", type=click.Choice(["mean", "max"]), default="mean", show_default=True)
@click.option("--weights", help="Stored weights of every compared array, when a layer is stored under several.")
@click.option("--where", help="SQL condition on images columns.")
@click.option("--max-images", type=click.IntRange(min=2), default=5000, show_default=True,
              help="At most N common images (a seeded sample).")
@click.option("--seed", type=int, default=0, show_default=True)
@_plot_option
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def compare(ctx, model, layers, model_names, layer, method, reduce, weights, where, max_images, seed, plot_path, as_json):
    """Representational similarity of stored arrays over the images they all hold.

    \b
    actdb compare --model vgg19 --layers block3_conv4,block4_conv4,block5_conv4 --plot cka.png
    actdb compare --models vgg19,efficientnet_lite0 --layer avg_pool --method rsa
    """
    if layers and model_names or not (layers or model_names):
        raise ActdbError("name the arrays one way: --model M --layers a,b,c or --models m1,m2 --layer L")
    if layers:
        arrays = [(model, name) for name in _csv_list(layers)]
    else:
        arrays = [(name, layer) for name in _csv_list(model_names)]
    result = _db(ctx).compare(arrays, method, where, max_images, seed, reduce, weights)
    if plot_path:
        from .analytics.plots import comparison_heatmap

        comparison_heatmap(result, plot_path)
    if as_json:
        _print_json({"method": method, "images": result.images, "classes": result.classes,
                     "names": result.names, "matrix": result.matrix.to_numpy().tolist(),
                     "pairs": result.pairs().to_dict("records")})
        return
    detail = f", {result.classes} class centroids" if result.classes else ""
    matrix = result.matrix.round(4)
    if layers:  # one model: name the layers only
        matrix.index = matrix.columns = [name.split("/", 1)[1] for name in result.names]
        detail += f"; model {result.names[0].split('/', 1)[0]}"
    click.echo(f"{method} over {result.images} common images{detail}")
    click.echo(matrix.to_string())


# ---- the demo ------------------------------------------------------------------------------

@cli.command()
@click.option("--model", type=click.Choice(["efficientnet_lite0", "vgg19"]),
              help="Default: vgg19 when its ImageNet weights are cached, else efficientnet_lite0.")
@click.option("--views", type=click.IntRange(1, 100), default=8, show_default=True,
              help="Augmented views per photo.")
@click.pass_context
@_needs_tensorflow
def demo(ctx, model, views):
    """Real photos end to end: ingest augmented views, classify, index, query nearest images and classes;
    optimized images of EfficientNet-Lite0, classified and placed among the stored classes; and the
    analytics' plots (STORE/plots/)."""
    from .demo import DEMO_LAYERS, build_image_set, default_model, held_out_views, optimized_story

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
    click.echo("\n== actdb optimize: the seeds' story in miniature (units of a late layer, one class logit);\n"
               "   what EfficientNet-Lite0/1/2 call each image, and its nearest class in this store")
    table, sheet = optimized_story(_db(ctx), model, query_layer, progress=sys.stderr.isatty())
    click.echo(table.to_string(index=False))
    click.echo(f"contact sheet: {sheet}\n")
    _demo_analytics(ctx, model, query_layer, queries)
    _demo_analytics_ii(ctx, folder, originals, views)
    click.echo("\n== actdb info")
    ctx.invoke(info)


def _demo_analytics_ii(ctx, folder, originals, views) -> None:
    """weights, featuremaps and differentiation on efficientnet_lite0, pictures in STORE/plots."""
    from pathlib import Path

    from .demo import BLOCK_OUTPUTS, CIRCUIT, FEATUREMAP_LAYER

    plots = Path(ctx.obj["store"]) / "plots"
    lite = "efficientnet_lite0"
    click.echo(f"\n== actdb weights --model {lite} --layer {CIRCUIT['layer']} --unit {CIRCUIT['unit']} "
               f"--expanded --from {CIRCUIT['from_layer']}")
    ctx.invoke(weights, model=lite, expanded=True, plot_path=str(plots / "weights.png"), **CIRCUIT)
    cat = next((p for p in originals if p.stem.startswith("chelsea")), originals[0])
    click.echo(f"\n== actdb featuremaps {cat.name} --model {lite} --layer {FEATUREMAP_LAYER}")
    ctx.invoke(featuremaps, query=str(cat), model=lite, layer=FEATUREMAP_LAYER, plot_path=str(plots / "featuremaps.png"))
    noise = f"noise:{len(originals) * views}"
    click.echo(f"\n== actdb differentiation {noise} {folder.name} --model {lite} --layers <every block's output>")
    ctx.invoke(differentiation, sets=(noise, str(folder)), model=lite, layers=BLOCK_OUTPUTS,
               plot_path=str(plots / "differentiation.png"))
    click.echo(f"\nplots: {', '.join(sorted(p.name for p in plots.glob('*.png')))} in {plots}")


def _demo_analytics(ctx, model: str, layer: str, queries: list[str]) -> None:
    """Analytics I on the demo's data, as in the seeds: one held-out photo view as the query."""
    from pathlib import Path

    from .demo import saved_query_vectors

    plots = Path(ctx.obj["store"]) / "plots"
    queries = saved_query_vectors(_db(ctx), model, layer, queries, plots / "queries")
    query = next(q for q in queries if "coffee" in Path(q).name)
    array = {"model": model, "layer": layer}
    click.echo(f"== actdb distances --classes espresso --random-classes 5 --query {Path(query).name} --pairs all")
    ctx.invoke(distances, **array, reduce="mean", queries=[query], classes="espresso", random_classes=5, per_class=100,
               pairs="all", metric="l2", seed=0, max_images=2000, plot=plots / "distances.png", as_json=False)
    click.echo("\n== actdb map --method tsne --highlight (a new view of each photo, as vectors in plots/queries/)")
    ctx.invoke(map_command, **array, reduce="mean", method="tsne", classes=None, per_class=100, centroids=False,
               highlight=queries, seed=0, out=None, plot=plots / "map-tsne.png", as_json=False)
    click.echo(f"\n== actdb profile {Path(query).name} --vs-class espresso --top 5")
    ctx.invoke(profile, queries=[query], **array, reduce="mean", top=5, vs_class="espresso",
               plot=plots / "profile.png", as_json=False)
    excited = _db(ctx).profile([query], model, layer).query("rank <= 20")
    unit = int(excited.unit[excited.value.idxmax()])
    click.echo(f"\n== actdb top-images --unit {unit} (of the new coffee view's top 20 units by z, its strongest) -k 8")
    ctx.invoke(top_images, **array, reduce="mean", unit=unit, k=8, bottom=False, where=None,
               montage=plots / "top-images.png", as_json=False)
    click.echo(f"\n== actdb top-classes --unit {unit} --by mean")
    ctx.invoke(top_classes, **array, reduce="mean", unit=unit, by="mean", top=6, k=100,
               plot=plots / "top-classes.png", as_json=False)


def main() -> None:
    cli(prog_name="actdb")
