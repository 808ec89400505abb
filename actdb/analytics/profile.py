"""`actdb profile`: a query's activation over every channel of a layer (the notebooks'
`plt.plot` of 512 means), raw and as z-scores against the dataset's per-unit mean and
standard deviation, optionally beside one class's mean profile."""
from __future__ import annotations

import numpy as np
import pandas as pd

from ..resolve import resolve
from ..results import table
from ..store.stored_array import StoredArray
from .unitstats import unit_stats


def profile(db, array: StoredArray, queries: list, *, vs_class: str | None = None) -> pd.DataFrame:
    """One row per query and unit: value, z (NaN where the unit never varies), the dataset's
    mean and std, the class's mean with `vs_class`, and rank (1 = the highest z)."""
    label = db.class_label(vs_class, array) if vs_class else None
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
    return table(pd.concat(frames, ignore_index=True), title=f"{array.describe()}: activation profile over "
                 f"{array.channels} units", rows=stats.members, **{"class": label})
