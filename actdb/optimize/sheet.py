"""A contact sheet: every image of a run on one figure, labelled with unit and final activation."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from .. import figures


@figures.drawing
def contact_sheet(results: pd.DataFrame, image_root: Path, title: str | None = None, figure=None):
    """`results`: rows of `optimize` (png, unit, objective, final_activation, top1_class)."""
    from PIL import Image

    n = len(results)
    columns = min(n, 6)
    rows = -(-n // columns)
    figure = figures.figure(figure, figsize=(2.3 * columns, 2.6 * rows + 0.5))
    axes = figure.subplots(rows, columns, squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, row in zip(axes.flat, results.itertuples()):
        with Image.open(Path(image_root) / row.png) as image:
            ax.imshow(np.asarray(image.convert("RGB")))
        what = "class" if row.objective == "logit" else "unit"
        label = f"{what} {row.unit}{' (neg)' if row.sign < 0 else ''}\nfinal {row.final_activation:.3g}"
        if isinstance(row.top1_class, str):
            label += f"\ntop-1 {row.top1_class}"
        ax.set_title(label, fontsize=8)
    first = results.iloc[0]
    figure.suptitle(title or f"Optimized images: {first.model} {first.layer}, {first.objective} objective, "
                    f"{first.method} method (final = target on the saved PNG)", fontsize=9)
    figure.tight_layout(rect=(0, 0, 1, 1 - 0.45 / figure.get_figheight()))  # room for the title
    return figure
