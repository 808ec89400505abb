"""`actdb profile`: a query's activation over every channel of a layer (the seeds'
`plt.plot` of 512 means), raw and as z-scores against the dataset's per-unit mean and
standard deviation, optionally beside one class's mean profile."""
from __future__ import annotations

import numpy as np
import pandas as pd

from ..resolve import resolve
from . import selection
from .unitstats import unit_stats


def profile(db, queries: list[str], model: str | None, layer: str | None, reduce: str = "mean",
            vs_class: str | None = None, weights: str | None = None) -> pd.DataFrame:
    """One row per query and unit: value, z (NaN where the unit never varies), the dataset's
    mean and std, the class's mean with `vs_class`, and rank (1 = the highest z)."""
    array = db.find_array(model, layer, reduce, weights)
    label = selection.class_label(db, array, vs_class) if vs_class else None
    resolved = resolve(db, array, queries)
    stats = unit_stats(db, array)
    spread = np.where(stats.std > 0, stats.std, np.nan)
    frames = []
    for text, vector in zip(resolved.texts, resolved.vectors.astype(np.float64)):
        frame = pd.DataFrame({"query": text, "unit": np.arange(len(vector)), "value": vector,
                              "z": (vector - stats.mean) / spread, "dataset_mean": stats.mean,
                              "dataset_std": stats.std})
        if label is not None:
            frame["class_mean"] = stats.of_class(label)
        order = np.lexsort((frame.unit, -frame.z.fillna(-np.inf)))
        frame["rank"] = np.empty(len(frame), np.int64)
        frame.loc[order, "rank"] = np.arange(1, len(frame) + 1)
        frames.append(frame)
    result = pd.concat(frames, ignore_index=True)
    result.attrs["title"] = f"{selection.describe(array)}: activation profile over {int(array.channels)} units"
    result.attrs["class"] = label
    result.attrs["rows"] = stats.members
    return result
