"""Analyses over stored rows: distances, map, top-images, top-classes, profile, compare, trajectory."""
from __future__ import annotations

from pathlib import Path

import click

from ..database import choices
from . import cli, progress_bar
from .options import CommaList, PairCount, json_option, metric_option, plot_option, seed_option, stored_array_options
from .output import emit, table, written

CLASSES_HELP = "Classes, comma-separated (labels, wnids or ImageNet names)."


def _written(kind: str, path) -> None:
    if path:
        written(kind, Path(path).resolve())


@cli.command()
@stored_array_options((*choices.REDUCTIONS, choices.FLAT))
@click.option("--query", "queries", multiple=True, help="Also measure from QUERY (file, id:N, optimized:NAME, .npy); "
              "repeatable.")
@click.option("--classes", type=CommaList(), help=CLASSES_HELP)
@click.option("--random-classes", type=int, default=10, show_default=True, help="Plus this many classes drawn at random.")
@click.option("--per-class", type=int, default=100, show_default=True, help="At most N images per class (seeded sample).")
@click.option("--pairs", type=PairCount(), default="5000", show_default=True,
              help="Pairs sampled per group, or 'all' pairs of the selection.")
@metric_option
@seed_option()
@click.option("--max-images", type=int, default=2000, show_default=True, help="--reduce flat: most feature maps computed.")
@plot_option(help_text="Write overlaid density histograms to FILE.png.")
@json_option
@click.pass_obj
def distances(session, array, queries, classes, random_classes, per_class, pairs, metric, seed, max_images, plot,
              as_json):
    """Distances between stored images (same class, different class, random pairs) and, with
    --query, from each query to every member of each class.

    --reduce flat computes whole feature maps from the image files (the blog posts' flat
    14x14x512 vectors) to compare with the stored means.

    \b
    actdb distances --model vgg19 --layer block5_conv4 --classes sea_cucumber,groenendael \\
        --query optimized:node4 --plot distances.png
    """
    report = session.db().distances(**array, queries=list(queries), classes=classes, random_classes=random_classes,
                                    per_class=per_class, pairs=pairs, metric=metric, seed=seed,
                                    max_images=max_images, plot=plot, progress=progress_bar())
    _written("plot", plot)

    def text():
        click.echo(report.title)
        table(report.pairs, "{:.4g}")
        for query, rows in (report.queries.groupby("query", sort=False) if len(report.queries) else []):
            click.echo(f"\nfrom {query} (percentile: of the class's same-class pair distances below the median)")
            table(rows.drop(columns="query"), "{:.4g}")

    emit(report, as_json, text, {"title": report.title, "pairs": report.pairs, "queries": report.queries})


@cli.command(name="map")
@stored_array_options()
@click.option("--method", type=click.Choice(choices.MAP_METHODS), default="pca", show_default=True,
              help="tsne: openTSNE (fitted maps are kept in the store); umap needs actdb[umap].")
@click.option("--classes", type=CommaList(), help="Classes to map, comma-separated (default: all).")
@click.option("--per-class", type=int, default=100, show_default=True, help="At most N images per class (seeded).")
@click.option("--centroids", is_flag=True, help="Map class means (every stored row) instead of images.")
@click.option("--highlight", multiple=True, help="QUERY to place on the map, drawn on top; repeatable.")
@seed_option()
@click.option("--out", type=click.Path(dir_okay=False), help="Write every point's coordinates (.parquet or .csv).")
@plot_option(help_text="Write the map to FILE.png.")
@json_option
@click.pass_obj
def map_command(session, array, method, classes, per_class, centroids, highlight, seed, out, plot, as_json):
    """Stored images (or class centroids) in 2-D, with queries placed in the same map.

    \b
    actdb map --model vgg19 --layer block5_conv4 --method tsne --classes sea_cucumber,groenendael \\
        --highlight optimized:node4 --plot map.png
    """
    frame = session.db().map(**array, method=method, classes=classes, per_class=per_class, centroids=centroids,
                             highlight=list(highlight), seed=seed, out=out, plot=plot)
    _written("coordinates", out)
    _written("plot", plot)

    def text():
        points = frame[frame.kind != "query"]
        how = "from the store's cache" if frame.attrs["cached"] else "fitted"
        click.echo(f"{frame.attrs['title']}: {len(points)} points of {points.label.nunique()} classes, "
                   f"{how} in {frame.attrs['fit_seconds']:.2f} s")
        summary = points.groupby("label", sort=False).agg(n=("x", "size"), x=("x", "mean"), y=("y", "mean"))
        table(summary.reset_index().rename(columns={"label": "class", "x": "mean x", "y": "mean y"}), "{:.4g}")
        queries = frame[frame.kind == "query"]
        if len(queries):
            click.echo(f"\nhighlighted (placed in {frame.attrs['place_seconds'] * 1e3:.0f} ms):")
            table(queries[["label", "id", "x", "y"]].rename(columns={"label": "query"}), "{:.4g}")

    emit(frame, as_json, text)


@cli.command(name="top-images")
@stored_array_options()
@click.option("--unit", type=int, required=True, help="Channel index in the layer.")
@click.option("-k", "k", type=int, default=16, show_default=True)
@click.option("--bottom", is_flag=True, help="The images that suppress the unit most.")
@click.option("--where", help="SQL condition on images columns, e.g. \"split = 'train'\".")
@plot_option("--montage", "Write the images, labelled, to FILE.png.")
@json_option
@click.pass_obj
def top_images(session, array, unit, k, bottom, where, montage, as_json):
    """Dataset examples: the k stored images that excite UNIT most (streamed over the array).

    Microscope and Summit rank by the spatial max: use --reduce max where the store has it.

    \b
    actdb top-images --model vgg19 --layer block5_conv4 --reduce max --unit 4 --montage unit4.png
    """
    frame = session.db().top_images(unit=unit, **array, k=k, bottom=bottom, where=where, montage=montage)
    _written("montage", montage)
    emit(frame, as_json, lambda: (click.echo(frame.attrs["title"]), table(frame, "{:.4g}")))


@cli.command(name="top-classes")
@stored_array_options()
@click.option("--unit", type=int, required=True, help="Channel index in the layer.")
@click.option("--by", type=click.Choice(choices.TOP_CLASSES_BY), default="mean", show_default=True,
              help="The unit's mean or median over each class's members, or each class's share of its top k images.")
@click.option("--top", type=int, default=10, show_default=True)
@click.option("-k", "k", type=int, default=100, show_default=True, help="Top images for --by topk-share.")
@plot_option(help_text="Write a bar chart to FILE.png.")
@json_option
@click.pass_obj
def top_classes(session, array, unit, by, top, k, plot, as_json):
    """The classes UNIT responds to most.

    \b
    actdb top-classes --model vgg19 --layer block5_conv4 --unit 4 --by topk-share -k 100
    """
    frame = session.db().top_classes(unit=unit, **array, by=by, top=top, k=k, plot=plot)
    _written("plot", plot)
    emit(frame, as_json, lambda: (click.echo(frame.attrs["title"]), table(frame, "{:.4g}")))


@cli.command()
@click.argument("queries", nargs=-1, required=True)
@stored_array_options()
@click.option("--top", type=click.IntRange(min=1), default=10, show_default=True,
              help="Units shown per query (highest z-score).")
@click.option("--vs-class", help="Also show this class's mean profile.")
@plot_option(help_text="Write the profiles to FILE.png.")
@json_option
@click.pass_obj
def profile(session, queries, array, top, vs_class, plot, as_json):
    """Each QUERY's activation over every unit of the layer, raw and as z-scores against the
    stored images' per-unit mean and std; its most excited units. --json: every unit.

    \b
    actdb profile optimized:node4 --model vgg19 --layer block5_conv4 --vs-class sea_cucumber --plot profile.png
    """
    frame = session.db().profile(list(queries), **array, vs_class=vs_class, plot=plot)
    _written("plot", plot)

    def text():
        click.echo(f"{frame.attrs['title']}; z against {frame.attrs['rows']} stored images")
        for query, rows in frame.groupby("query", sort=False):
            click.echo(f"\n{query}: the {top} most excited units (by z-score)")
            table(rows[rows["rank"] <= top].sort_values("rank").drop(columns="query"), "{:.4g}")

    emit(frame, as_json, text)


@cli.command()
@click.option("--model", help="One stored model, with --layers.")
@click.option("--layers", type=CommaList(), help="Stored layers of --model, comma-separated.")
@click.option("--models", type=CommaList(), help="Stored models, comma-separated, with --layer.")
@click.option("--layer", help="One stored layer of every --models.")
@click.option("--method", type=click.Choice(choices.COMPARE_METHODS), default="cka", show_default=True,
              help="linear CKA, its debiased form, or RSA (Spearman of correlation-distance RDMs of class centroids).")
@click.option("--reduce", type=click.Choice(choices.REDUCTIONS), default="mean", show_default=True)
@click.option("--weights", help="Stored weights of every compared array, when a layer is stored under several.")
@click.option("--where", help="SQL condition on images columns.")
@click.option("--max-images", type=click.IntRange(min=2), default=5000, show_default=True,
              help="At most N common images (a seeded sample).")
@seed_option()
@plot_option()
@json_option
@click.pass_obj
def compare(session, model, layers, models, layer, method, reduce, weights, where, max_images, seed, plot, as_json):
    """Representational similarity of stored arrays over the images they all hold.

    \b
    actdb compare --model vgg19 --layers block3_conv4,block4_conv4,block5_conv4 --plot cka.png
    actdb compare --models vgg19,efficientnet_lite0 --layer avg_pool --method rsa
    """
    result = session.db().compare(model=model, layers=layers, models=models, layer=layer, method=method,
                                  reduce=reduce, weights=weights, where=where, max_images=max_images, seed=seed,
                                  plot=plot)
    _written("plot", plot)

    def text():
        detail = f", {result.classes} class centroids" if result.classes else ""
        matrix = result.matrix.round(4)
        if layers:  # one model: name the layers only
            matrix.index = matrix.columns = [name.split("/", 1)[1] for name in result.names]
            detail += f"; model {result.names[0].split('/', 1)[0]}"
        click.echo(f"{method} over {result.images} common images{detail}")
        click.echo(matrix.to_string())

    emit(result, as_json, text, {"method": method, "images": result.images, "classes": result.classes,
                                 "names": result.names, "matrix": result.matrix.to_numpy(),
                                 "pairs": result.pairs()})


@cli.command()
@click.argument("queries", nargs=-1, required=True)
@click.option("--model", required=True, help="Stored model.")
@click.option("--layers", default="all", show_default=True,
              help="Stored layers of --model, comma-separated, or all; taken in the network's order.")
@click.option("--weights", help="Stored weights, when the model is stored under several.")
@click.option("--reduce", type=click.Choice(choices.REDUCTIONS), default="mean", show_default=True,
              help="Spatial reduction of the stored rows.")
@metric_option
@click.option("-k", "k", type=int, default=75, show_default=True, help="Nearest images per layer (the paper's 75).")
@click.option("--class", "class_name", help="Follow this class: its kNN share and ranks, and the query's percentile "
              "among its members' distances to its centroid, per layer (default: the prediction).")
@click.option("--calibration", type=float, default=0.1, show_default=True,
              help="Share of the labelled images held out (seeded, at most 1000 images) to calibrate the p-values; "
              "never neighbours.")
@click.option("--calibration-where", help="SQL condition on images columns choosing the calibration images "
              "instead of --calibration.")
@click.option("--exact", is_flag=True, help="Search every layer exactly, even where an index exists.")
@seed_option("Seed of the calibration share (0..4294967295).")
@plot_option(help_text="Draw each query's trajectory to FILE.png.")
@json_option
@click.pass_obj
def trajectory(session, queries, model, layers, weights, reduce, metric, k, class_name, calibration, calibration_where,
               exact, seed, plot, as_json):
    """Where each QUERY becomes its class, layer by layer, and how sure that is (Deep k-NN,
    Papernot & McDaniel 2018).

    QUERY: an image file, id:N or optimized:NAME (a .npy vector holds one layer only). Per
    layer: the k nearest stored images and their classes, the nearest class by centroid, and
    --class's ranks and percentile. Across the layers: each class's nonconformity (neighbours,
    over all layers, of another class) and p-value against the calibration images; the
    prediction (largest p), credibility (that p) and confidence (1 - the second largest).
    Layers are searched with their index (`actdb index`, same --metric) where it holds every
    neighbour image, else exactly; the output says which.

    \b
    actdb trajectory optimized:sea_cucumber photo.jpg --model vgg19 --class sea_cucumber --plot trajectory.png
    actdb trajectory id:42 --model efficientnet_lite0 --layers block4a_project_bn,top_activation -k 25 --json
    """
    result = session.db().trajectory(list(queries), model=model, layers=layers, weights=weights, reduce=reduce,
                                     metric=metric, k=k, class_name=class_name, calibration=calibration,
                                     calibration_where=calibration_where, exact=exact, seed=seed, plot=plot)
    _written("plot", plot)

    def text():
        click.echo(result.title)
        searched: dict[str, list[str]] = {}
        for layer, how in result.search.items():
            searched.setdefault(how, []).append(layer)
        click.echo(f"calibration: {result.calibration}; searched: "
                   + "; ".join(f"{how}: {', '.join(layers)}" for how, layers in searched.items()))
        for query in result.queries:
            stored = "" if query.image_id is None else f" (stored image id:{query.image_id}: " \
                f"{query.label or 'unlabelled'}, left out of its own neighbours)"
            click.echo(f"\n{query.query}{stored}: Deep k-NN predicts {query.prediction}, credibility "
                       f"{query.credibility:.3f}, confidence {query.confidence:.3f}")
            frame = result.per_layer(query).drop(columns="query")
            frame["percentile"] = frame["percentile"].map(lambda p: "" if p != p else f"{p:.0f}")
            table(frame, "{:.2f}")
            shown = list(query.p_values.items())[:4]
            click.echo(f"p-values ({query.calibration_scores} calibration scores): "
                       + ", ".join(f"{c} {p:.3f} (nonconformity {query.nonconformity[c]})" for c, p in shown)
                       + (" ..." if len(query.p_values) > len(shown) else ""))

    emit(result, as_json, text)
