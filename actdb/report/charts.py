"""The report's pictures: the class x unit map of a layer (a PNG made with matplotlib) and a
unit's activation histogram (inline SVG shapes, so that 1280 unit pages cost no plotting)."""
from __future__ import annotations

import io

import numpy as np

from .. import figures
from ..analytics.unit_summary import UnitSummary

HIST_WIDTH, HIST_HEIGHT, BINS = 480, 160, 40
OVERLAY_COLOURS = ("#d62728", "#2ca02c", "#9467bd")
MAX_CLASSES = 60


@figures.drawing
def class_unit_png(stats, units: list[int], title: str) -> bytes:
    """z of each class's mean against all stored rows, classes x units (Summit's view), as PNG.
    More than MAX_CLASSES classes: those whose largest |z| is largest."""
    with np.errstate(invalid="ignore", divide="ignore"):
        z = np.where(stats.std[units] > 0, (stats.class_mean[:, units] - stats.mean[units]) / stats.std[units], 0.0)
    rows = np.arange(len(stats.classes))
    if len(rows) > MAX_CLASSES:
        rows = np.sort(np.argsort(-np.abs(z).max(axis=1), kind="stable")[:MAX_CLASSES])
    figure = figures.figure(figsize=(min(16, 4 + len(units) / 40), 1.5 + 0.22 * len(rows)))
    ax = figure.add_subplot()
    image = ax.imshow(z[rows], aspect="auto", cmap="RdBu_r", vmin=-3, vmax=3, interpolation="nearest",
                      extent=(-0.5, len(units) - 0.5, len(rows) - 0.5, -0.5))
    ax.set_yticks(range(len(rows)), [str(c) for c in stats.classes[rows]], fontsize=7)
    ticks = np.arange(0, len(units), max(1, -(-len(units) // 12)))
    ax.set_xticks(ticks, [str(units[t]) for t in ticks], fontsize=7)
    ax.set_xlabel("unit")
    ax.set_ylabel("class")
    figure.colorbar(image, ax=ax, label="z of the class mean vs all stored images", fraction=0.03)
    ax.set_title(f"{title}: which classes drive which units")
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=90, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(figure)
    return buffer.getvalue()


def histogram_svg(summary: UnitSummary, unit: int, sample_labels: np.ndarray, overlay: list[str]) -> dict:
    """Bars of the unit's histogram (share of images per bin) and, for each class in `overlay`,
    the same bins over that class's images as a line, in SVG coordinates."""
    counts, edges = summary.histogram(unit, BINS)
    column = summary.sample[:, unit]
    total = max(counts.sum(), 1)
    lines = []
    for label, colour in zip(overlay, OVERLAY_COLOURS):
        mine = column[sample_labels == label]
        if len(mine):
            class_counts, _ = np.histogram(mine, bins=edges)
            lines.append((label, colour, class_counts / len(mine)))
    peak = max([counts.max() / total, *(line.max() for _, _, line in lines)] or [1.0]) or 1.0
    width = HIST_WIDTH / BINS

    def y(share):
        return HIST_HEIGHT - HIST_HEIGHT * share / peak

    bars = [{"x": round(i * width, 2), "y": round(y(c / total), 2), "w": round(width - 1, 2),
             "h": round(HIST_HEIGHT - y(c / total), 2), "lo": float(edges[i]), "hi": float(edges[i + 1]), "n": int(c)}
            for i, c in enumerate(counts)]
    polylines = [{"label": label, "colour": colour,
                  "points": " ".join(f"{(i + 0.5) * width:.1f},{y(s):.1f}" for i, s in enumerate(shares))}
                 for label, colour, shares in lines]
    return {"width": HIST_WIDTH, "height": HIST_HEIGHT, "bars": bars, "lines": polylines,
            "lo": float(edges[0]), "hi": float(edges[-1]), "peak": float(peak)}
