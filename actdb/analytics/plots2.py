"""Pictures of analytics II results (weights, feature maps, differentiation, comparison).

Each function takes a result the analysis returned and writes one PNG; nothing is computed
here that a notebook could not get from the result itself.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    _pyplot().close(fig)
    return path


def weights_figure(weights, top: int, path: str | Path) -> Path:
    """Every input channel's norm (strongest first), then the top maps as 003 draws them:
    min-max normalized over the unit's whole kernel, one colour map, so panels compare."""
    plt = _pyplot()
    shown = weights.top(top)
    fig = plt.figure(figsize=(max(8, 1.6 * len(shown)), 5.4), layout="constrained")
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
    return _save(fig, path)


MAX_GRID_MAPS = 256  # beyond this a grid is too tall to read: choose with --channels


def featuremap_grid(maps, path: str | Path, per_row: int = 16) -> Path:
    """003's `show_layer`: every chosen map standardized, x64 + 128, clipped; viridis."""
    from .featuremaps import display_values

    plt = _pyplot()
    count = min(len(maps.channels), MAX_GRID_MAPS)
    shown = display_values(maps.maps[:, :, :count])
    columns = min(per_row, count)
    rows = -(-count // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(1.1 * columns + 0.6, 1.2 * rows + 0.9), squeeze=False,
                             layout="constrained")
    for k, ax in enumerate(axes.flat):
        ax.set_axis_off()
        if k < count:
            ax.imshow(shown[:, :, k], cmap="viridis", vmin=0, vmax=255, interpolation="nearest")
            ax.set_title(str(maps.channels[k]), fontsize=7, pad=1)
    height, width = maps.maps.shape[:2]
    first = "" if count == len(maps.channels) else f" (the first {count} of {len(maps.channels)}: use --channels)"
    fig.suptitle(f"{maps.model} {maps.layer} ({height}x{width}) on {Path(maps.query).name}: feature maps{first}, "
                 "each standardized (x64 + 128)", fontsize=10)
    return _save(fig, path)


def unit_overlay(maps, path: str | Path) -> Path:
    """One channel's map, upsampled to the image, over the image; raw activation values."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(9, 4.4), layout="constrained")
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
    return _save(fig, path)


def differentiation_figure(result, path: str | Path) -> Path:
    """One line per set over the layers, as 004's figures."""
    plt = _pyplot()
    frame = result.frame
    column = "normalized" if result.normalize_by else "differentiation"
    layers = list(dict.fromkeys(frame.layer))
    fig, ax = plt.subplots(figsize=(max(8, 0.28 * len(layers) + 3), 5), layout="constrained")
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
    return _save(fig, path)


METHOD_TITLES = {"cka": "linear CKA", "cka-debiased": "debiased linear CKA",
                 "rsa": "RSA (Spearman r of correlation-distance RDMs)"}


def comparison_heatmap(comparison, path: str | Path) -> Path:
    """Every pair of arrays, the similarity written in each cell; a shared model named once."""
    plt = _pyplot()
    count = len(comparison.names)
    models = {name.split("/", 1)[0] for name in comparison.names}
    labels = [name.split("/", 1)[1] for name in comparison.names] if len(models) == 1 else comparison.names
    fig, ax = plt.subplots(figsize=(0.9 * count + 4, 0.8 * count + 2.4), layout="constrained")
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
    return _save(fig, path)
