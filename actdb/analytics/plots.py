"""Figures for the analytics, drawn from the data the analyses return (never recomputing):
labelled axes, a legend, and a title naming model, layer, reduction and metric.

Every function returns the Figure; one-panel plots take `ax=None`, several-panel plots
`figure=None` (see `actdb.figures`), and `figures.save` writes them. Each is
`@figures.drawing`: class and file names are drawn as plain text.
"""
from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import pandas as pd

from .. import figures
from .distances import DistanceReport

plt = figures.plt

HIGHLIGHT_GID = "highlight"  # the queries' scatter, so they can be found again on the figure
MAX_LEGEND_CLASSES = 20
MAX_QUERY_PANELS = 3
PAIR_COLOURS = {"random pairs": "tab:gray", "same class": "tab:red", "different class": "tab:blue"}


def _bins(samples) -> np.ndarray:
    values = np.concatenate([np.asarray(v) for v in samples if len(v)])
    return np.histogram_bin_edges(values, bins=50)


@figures.drawing
def distances_figure(report: DistanceReport, figure=None):
    """Overlaid density histograms: the pair groups, and each query's distances to its targets."""
    queries = list(dict.fromkeys(q for q, _ in report.query_samples))[:MAX_QUERY_PANELS]
    figure = figures.figure(figure, figsize=(6.5 * (1 + len(queries)), 4.2))
    axes = figure.subplots(1, 1 + len(queries), squeeze=False)
    pairs_axis = axes[0, 0]
    bins = _bins(report.pair_samples.values())
    for group, values in report.pair_samples.items():
        if len(values):
            pairs_axis.hist(values, bins=bins, density=True, histtype="step", linewidth=1.8,
                            color=PAIR_COLOURS.get(group), label=f"{group} (n={len(values)})")
    pairs_axis.set(title="image pairs", xlabel="distance", ylabel="density")
    pairs_axis.legend(fontsize=8)
    for axis, query in zip(axes[0, 1:], queries):
        targets = {t: v for (q, t), v in report.query_samples.items() if q == query and t in report.drawn_targets}
        bins = _bins([*targets.values(), report.pair_samples.get("different class", [])])
        for target, values in targets.items():
            if len(values):
                axis.hist(values, bins=bins, density=True, histtype="stepfilled", alpha=0.35, linewidth=1.5,
                          edgecolor="black", label=f"to {target} (n={len(values)})")
        context = report.pair_samples.get("different class", np.empty(0))
        if len(context):
            axis.hist(context, bins=bins, density=True, histtype="step", color="black", linewidth=1.2,
                      label="different-class pairs")
        axis.set(title=f"from {Path(query).name}", xlabel="distance", ylabel="density")
        axis.legend(fontsize=8)
    figure.suptitle(report.title)
    figure.tight_layout()
    return figure


@figures.drawing
def map_figure(frame: pd.DataFrame, ax=None):
    """The map's points by class; queries drawn last, on top, as labelled stars."""
    figure, axis = figures.axes(ax, figsize=(8, 6.5))
    points = frame[frame.kind != "query"]
    labels = list(dict.fromkeys(points.label))
    colours = plt.get_cmap("tab20" if len(labels) > 10 else "tab10")
    for position, label in enumerate(labels):
        members = points[points.label == label]
        axis.scatter(members.x, members.y, s=14 if members.kind.iloc[0] == "image" else 30, alpha=0.75,
                     color=colours(position % colours.N), label=label if len(labels) <= MAX_LEGEND_CLASSES else None)
        if members.kind.iloc[0] == "centroid" and len(labels) <= 60:
            axis.annotate(label, (members.x.iloc[0], members.y.iloc[0]), fontsize=7, alpha=0.8)
    queries = frame[frame.kind == "query"]
    if len(queries):
        axis.scatter(queries.x, queries.y, marker="*", s=320, color="black", edgecolor="yellow", linewidth=1.2,
                     zorder=10, gid=HIGHLIGHT_GID, label="queries")
        for row in queries.itertuples():
            axis.annotate(Path(str(row.label)).name, (row.x, row.y), xytext=(8, 8), textcoords="offset points",
                          fontsize=9, weight="bold", zorder=11)
    axis.set(xlabel="dimension 1", ylabel="dimension 2", title=frame.attrs.get("title", "map"))
    if len(labels) <= MAX_LEGEND_CLASSES or len(queries):
        axis.legend(fontsize=8, loc="best", markerscale=1.0)
    if ax is None:
        figure.tight_layout()
    return figure


def highlighted_offsets(ax) -> np.ndarray:
    """The drawn positions of the highlighted queries (read back from the Axes' artist)."""
    for collection in ax.collections:
        if collection.get_gid() == HIGHLIGHT_GID:
            return np.asarray(collection.get_offsets())
    return np.empty((0, 2))


@figures.drawing
def montage_figure(frame: pd.DataFrame, columns: int = 8, figure=None):
    """The top images in rank order, each titled with its class and the unit's value."""
    from PIL import Image

    rows = -(-len(frame) // columns)
    columns = min(columns, len(frame))
    figure = figures.figure(figure, figsize=(1.9 * columns, 2.2 * rows + 0.5))
    axes = figure.subplots(rows, columns, squeeze=False)
    for axis in axes.ravel():
        axis.axis("off")
    for axis, row in zip(axes.ravel(), frame.itertuples()):
        try:
            with Image.open(row.path) as image:
                image.thumbnail((160, 160))
                axis.imshow(np.asarray(image.convert("RGB")))
        except (OSError, ValueError, AttributeError):
            axis.text(0.5, 0.5, "image file\nnot found", ha="center", va="center", fontsize=8)
        axis.set_title(f"#{row.rank} {row.label}\n{row.value:.3g}", fontsize=8)
    figure.suptitle(frame.attrs.get("title", "top images") + " (class, value)")
    figure.tight_layout()
    return figure


@figures.drawing
def profile_figure(frame: pd.DataFrame, figure=None):
    """Per query: raw values over the units with the dataset mean ± std (and a class's mean), and z-scores."""
    figure = figures.figure(figure, figsize=(11, 6.5))
    raw, scores = figure.subplots(2, 1, sharex=True)
    first = frame[frame["query"] == frame["query"].iloc[0]]
    units = first.unit.to_numpy()
    raw.fill_between(units, first.dataset_mean - first.dataset_std, first.dataset_mean + first.dataset_std,
                     color="0.85", label=f"dataset mean ± std ({frame.attrs.get('rows', '?')} images)")
    raw.plot(units, first.dataset_mean, color="0.5", linewidth=0.8, label="dataset mean")
    if "class_mean" in frame:
        raw.plot(units, first.class_mean, color="tab:green", linewidth=0.9, label=f"{frame.attrs['class']} mean")
    for query, rows in frame.groupby("query", sort=False):
        line, = raw.plot(rows.unit, rows.value, linewidth=0.9, label=Path(query).name)
        scores.plot(rows.unit, rows.z, linewidth=0.9, color=line.get_color(), label=Path(query).name)
        top = rows.nsmallest(3, "rank")
        scores.scatter(top.unit, top.z, color=line.get_color(), zorder=5)
        for unit, z in zip(top.unit, top.z):
            scores.annotate(str(unit), (unit, z), xytext=(3, 3), textcoords="offset points", fontsize=8)
    raw.set(ylabel="activation", title=frame.attrs.get("title", "profile"))
    scores.axhline(0, color="0.5", linewidth=0.6)
    scores.set(xlabel="unit (channel)", ylabel="z-score vs dataset")
    raw.legend(fontsize=8, loc="upper right")
    scores.legend(fontsize=8, loc="best")
    figure.tight_layout()
    return figure


@figures.drawing
def top_classes_figure(frame: pd.DataFrame, ax=None):
    figure, axis = figures.axes(ax, figsize=(7, 0.35 * len(frame) + 1.5))
    axis.barh(frame["class"][::-1], frame.score[::-1], color="tab:blue", label=frame.attrs.get("by", "score"))
    axis.set(xlabel=frame.attrs.get("by", "score"), ylabel="class", title=frame.attrs.get("title", "top classes"))
    axis.legend(fontsize=8)
    if ax is None:
        figure.tight_layout()
    return figure


@figures.drawing
def weights_figure(weights, top: int = 6, figure=None):
    """Every input channel's norm (strongest first), then the top maps as 003 draws them:
    min-max normalized over the unit's whole kernel, one colour map, so panels compare."""
    shown = weights.top(top)
    fig = figures.figure(figure, figsize=(max(8, 1.6 * len(shown)), 5.4), layout="constrained")
    grid = fig.add_gridspec(2, len(shown), height_ratios=[1, 1.25])
    bars = fig.add_subplot(grid[0, :])
    norms = weights.ranking.norm.to_numpy()
    bars.bar(np.arange(1, len(norms) + 1), norms, width=1.0, color="0.6", label="all input channels, ranked")
    bars.bar(np.arange(1, len(shown) + 1), norms[: len(shown)], width=1.0, color="tab:blue", label=f"top {len(shown)}")
    bars.set_xlabel(f"rank among the input channels of {weights.source}")
    bars.set_ylabel("Frobenius norm")
    bars.legend(loc="upper right")
    low, high = weights.maps.min(), weights.maps.max()
    for position, row in enumerate(shown.itertuples()):
        ax = fig.add_subplot(grid[1, position])
        image = ax.imshow((weights.maps[:, :, row.channel] - low) / ((high - low) or 1.0), cmap="Blues",
                          vmin=0, vmax=1, interpolation="nearest")
        ax.set_title(f"channel {row.channel}\nnorm {row.norm:.3g}", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.colorbar(image, ax=fig.axes[1:], shrink=0.8, label="weight, min-max over the unit")
    what = "expanded weights" if weights.kind == "expanded" else "incoming kernel"
    trained = "" if weights.weights == "imagenet" else f" [weights {weights.weights[:24]}]"  # a sha256 is long
    fig.suptitle(f"{weights.model}{trained} {weights.layer} unit {weights.unit}: {what} from {weights.source}")
    return fig


MAX_GRID_MAPS = 256  # beyond this a grid is too tall to read: choose with --channels


@figures.drawing
def featuremap_grid(maps, per_row: int = 16, figure=None):
    """003's `show_layer`: every chosen map standardized, x64 + 128, clipped; viridis."""
    from .featuremaps import display_values

    count = min(len(maps.channels), MAX_GRID_MAPS)
    shown = display_values(maps.maps[:, :, :count])
    columns = min(per_row, count)
    rows = -(-count // columns)
    fig = figures.figure(figure, figsize=(1.1 * columns + 0.6, 1.2 * rows + 0.9), layout="constrained")
    axes = fig.subplots(rows, columns, squeeze=False)
    for k, ax in enumerate(axes.flat):
        ax.set_axis_off()
        if k < count:
            ax.imshow(shown[:, :, k], cmap="viridis", vmin=0, vmax=255, interpolation="nearest")
            ax.set_title(str(maps.channels[k]), fontsize=7, pad=1)
    height, width = maps.maps.shape[:2]
    first = "" if count == len(maps.channels) else f" (the first {count} of {len(maps.channels)}: use --channels)"
    fig.suptitle(f"{maps.model} {maps.layer} ({height}x{width}) on {Path(maps.query).name}: feature maps{first}, "
                 "each standardized (x64 + 128)", fontsize=10)
    return fig


@figures.drawing
def unit_overlay(maps, figure=None):
    """One channel's map, upsampled to the image, over the image; raw activation values."""
    fig = figures.figure(figure, figsize=(9, 4.4), layout="constrained")
    axes = fig.subplots(1, 2)
    size = maps.image.shape[0]
    axes[0].imshow(maps.image.astype(np.uint8))
    axes[0].set_title("image as the model sees it")
    axes[1].imshow(maps.image.astype(np.uint8))
    layer_map = maps.maps[:, :, 0]
    image = axes[1].imshow(layer_map, cmap="magma", alpha=0.6, extent=(0, size, size, 0), interpolation="bilinear")
    axes[1].set_title(f"channel {maps.channels[0]} over the image")
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.colorbar(image, ax=axes[1], label="activation")
    fig.suptitle(f"{maps.model} {maps.layer} channel {maps.channels[0]} on {Path(maps.query).name}")
    return fig


@figures.drawing
def differentiation_figure(result, ax=None):
    """One line per set over the layers, as 004's figures."""
    frame = result.frame
    column = "normalized" if result.normalize_by else "differentiation"
    layers = list(dict.fromkeys(frame.layer))
    if ax is None:
        ax = plt.figure(figsize=(max(8, 0.28 * len(layers) + 3), 5), layout="constrained").add_subplot()
    fig = ax.figure
    for name, group in frame.groupby("set", sort=False):
        shown = name if ":" in name else f"{Path(name).name}/"  # a folder by its own name, not its path
        ax.plot(group.depth, group[column], marker="o", markersize=3, label=f"{shown} ({group.images.iloc[0]} images)")
    ax.set_xticks(range(len(layers)), layers, rotation=70, ha="right", fontsize=7 if len(layers) > 30 else 9)
    ax.set_xlabel("layer")
    if result.normalize_by:
        ax.set_ylabel(f"differentiation / that of {result.normalize_by}")
        ax.axhline(1.0, color="0.5", lw=0.8, ls="--")
    else:
        ax.set_ylabel("median over pairs of 1 − Pearson r")
    ax.legend()
    ax.grid(alpha=0.3)
    units = frame.units.max()
    ax.set_title(f"{result.model}: differentiation per layer\n{units} sampled units per layer "
                 f"(all where a layer has fewer), z-scored per image; seed {result.seed}")
    return fig


METHOD_TITLES = {"cka": "linear CKA", "cka-debiased": "debiased linear CKA",
                 "rsa": "RSA (Spearman r of correlation-distance RDMs)"}


@figures.drawing
def comparison_heatmap(comparison, ax=None):
    """Every pair of arrays, the similarity written in each cell; a shared model named once."""
    count = len(comparison.names)
    models = {name.split("/", 1)[0] for name in comparison.names}
    labels = [name.split("/", 1)[1] for name in comparison.names] if len(models) == 1 else comparison.names
    if ax is None:
        ax = plt.figure(figsize=(0.9 * count + 4, 0.8 * count + 2.4), layout="constrained").add_subplot()
    fig = ax.figure
    values = comparison.matrix.to_numpy()
    image = ax.imshow(values, cmap="viridis", vmin=min(0.0, np.nanmin(values)), vmax=1.0)
    ax.set_xticks(range(count), labels, rotation=45, ha="right")
    ax.set_yticks(range(count), labels)
    for i in range(count):
        for j in range(count):
            ax.text(j, i, f"{values[i, j]:.2f}", ha="center", va="center",
                    color="black" if values[i, j] > 0.6 else "white", fontsize=9)
    fig.colorbar(image, ax=ax, label=comparison.method)
    detail = f", {comparison.classes} class centroids" if comparison.classes else ""
    between = f"{models.pop()} layers" if len(models) == 1 else "models"
    fig.suptitle(f"{METHOD_TITLES[comparison.method]} between {between}\n"
                 f"(stored arrays, {comparison.images} images{detail})")
    return fig


MAX_TRAJECTORY_PANELS = 6
TRAJECTORY_COLUMNS = 3


@figures.drawing
def trajectory_figure(result, top: int = 3, figure=None):
    """Per query, against depth: the followed class's share of the k nearest images (bold), the
    `top` other classes' shares, and (right axis) the followed class's rank by kNN share and by
    centroid distance; the Deep k-NN prediction, credibility and confidence in each title; the
    result's warnings (what keeps these numbers from meaning much) below."""
    queries = result.queries[:MAX_TRAJECTORY_PANELS]
    columns = min(len(queries), TRAJECTORY_COLUMNS)
    rows = -(-len(queries) // columns)
    notes = [textwrap.fill(f"warning: {w}", 60 * columns) for w in result.warnings]
    note_lines = sum(n.count("\n") + 1 for n in notes)
    fig = figures.figure(figure, figsize=(6.4 * columns, 5.8 * rows + 0.2 * note_lines), layout="constrained")
    grid = fig.add_gridspec(2 * rows + bool(notes), columns,  # each panel, its legend below; the warnings last
                            height_ratios=[1, 0.2] * rows + ([0.04 * note_lines] if notes else []))
    panels = [(fig.add_subplot(grid[2 * (n // columns), n % columns]),
               fig.add_subplot(grid[2 * (n // columns) + 1, n % columns])) for n in range(len(queries))]
    depth = np.arange(1, len(result.layers) + 1)
    ticks = [layer if len(layer) <= 22 else layer[:20] + "…" for layer in result.layers]
    palette = plt.get_cmap("tab10" if len(result.classes) <= 10 else "tab20")
    colour = {c: palette(i % palette.N) for i, c in enumerate(result.classes)}  # one colour per class in every panel
    for (ax, legend_ax), query in zip(panels, queries):
        target = query.steps[0].target["class"]
        shares = {c: np.array([step.shares.get(c, 0.0) for step in query.steps]) for c in result.classes}
        others = sorted((c for c in result.classes if c != target and shares[c].any()),
                        key=lambda c: (-shares[c].max(), c))[:top]  # the classes that come nearest
        ax.plot(depth, shares[target], color=colour[target], linewidth=3.2, marker="o", markersize=7,
                markeredgecolor="black", zorder=5, label=f"{target}: share (followed)")
        for c in others:
            ax.plot(depth, shares[c], color=colour[c], linewidth=1.3, marker=".", alpha=0.9, label=f"{c}: share")
        ax.set_ylim(-0.03, 1.03)
        ax.set_ylabel(f"share of the k={result.k} nearest images")
        ax.set_xticks(depth, ticks, rotation=40 if len(depth) > 3 else 0, ha="right" if len(depth) > 3 else "center",
                      fontsize=8 if len(depth) > 8 else 9)
        ax.set_xlabel("layer, in the network's order")
        ax.grid(alpha=0.3)
        ranks = ax.twinx()
        ranks.plot(depth, [step.target["knn_rank"] for step in query.steps], color="0.25", linestyle="--",
                   marker="s", markersize=4, label=f"{target}: rank by kNN share")
        ranks.plot(depth, [np.nan if step.target["centroid_rank"] is None else step.target["centroid_rank"]
                           for step in query.steps], color="0.45", linestyle=":", marker="^", markersize=5,
                   label=f"{target}: rank by centroid distance")
        ranks.set_ylim(len(result.classes) + 0.5, 0.5)  # rank 1 at the top
        ranks.yaxis.set_major_locator(plt.MaxNLocator(integer=True))
        ranks.set_ylabel("rank of the followed class (1 = first)")
        lines, labels = ax.get_legend_handles_labels()
        rank_lines, rank_labels = ranks.get_legend_handles_labels()
        legend_ax.set_axis_off()
        legend_ax.legend(lines + rank_lines, labels + rank_labels, fontsize=8, loc="upper center", ncol=2,
                         frameon=False)
        own = f" (stored: {query.label})" if query.label else ""
        ax.set_title(f"{_query_label(query.query)}{own}\nDeep k-NN: {query.prediction}, credibility "
                     f"{query.credibility:.2f}, confidence {query.confidence:.2f}", fontsize=10)
    if notes:
        warning_ax = fig.add_subplot(grid[-1, :])
        warning_ax.set_axis_off()
        warning_ax.text(0, 1, "\n".join(notes), va="top", ha="left", fontsize=8.5, color="darkred",
                        transform=warning_ax.transAxes)
    fig.suptitle(f"trajectory: {result.title}", fontsize=11)
    return fig


def _query_label(text: str) -> str:
    return text if text.startswith(("id:", "optimized:")) else Path(text).name
