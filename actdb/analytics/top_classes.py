"""`actdb top-classes`: the classes a unit responds to, ranked by the unit's mean or median
over their members (streamed), or by their share of the unit's top-k images."""
from __future__ import annotations

import numpy as np
import pandas as pd

from ..errors import ActdbError
from . import selection
from .top_images import running_top_k
from .unitstats import unit_stats

BY = ("mean", "median", "topk-share")


def top_classes(db, model: str | None, layer: str | None, unit: int, reduce: str = "mean", by: str = "mean",
                top: int = 10, k: int = 100, weights: str | None = None) -> pd.DataFrame:
    """rank, class, score (the `by` statistic), members, mean, median (and n_top for topk-share)."""
    if by not in BY:
        raise ActdbError(f"unknown --by {by!r}: use one of {', '.join(BY)}")
    if top < 1 or k < 1:
        raise ActdbError("--top and -k must be at least 1")
    array = db.find_array(model, layer, reduce, weights)
    unit = selection.check_unit(array, unit)
    labels = selection.stored_labels(db, array)
    if not labels:
        raise ActdbError(f"no labelled rows in {selection.describe(array)}: classes need labelled images")
    if by == "topk-share":
        frame = _topk_share(db, array, labels, unit, k)
    elif by == "mean":
        stats = unit_stats(db, array)
        frame = pd.DataFrame({"class": stats.classes, "score": stats.class_mean[:, unit],
                              "members": stats.class_members})
    else:
        frame = _medians(db, array, labels, unit)
    frame = frame.sort_values(["score", "class"], ascending=[False, True], kind="stable").head(top)
    frame.insert(0, "rank", np.arange(1, len(frame) + 1))
    frame = frame.reset_index(drop=True)
    axis = {"mean": f"mean of unit {unit} over the class's images", "median": f"median of unit {unit} over the "
            "class's images", "topk-share": f"share of unit {unit}'s top {k} images"}[by]
    frame.attrs.update(title=f"{selection.describe(array)} unit {unit}: classes by {by}", by=axis)
    return frame


def _medians(db, array, labels, unit) -> pd.DataFrame:
    """The unit's column (4 bytes a row, not the rows) with class codes, one streaming pass."""
    values, codes = [], []
    for _, block_codes, vectors in selection.stream(db, array, labels):
        column = vectors[:, unit]
        keep = np.isfinite(column) & (block_codes >= 0)
        values.append(column[keep])
        codes.append(block_codes[keep])
    column = pd.DataFrame({"code": np.concatenate(codes), "value": np.concatenate(values).astype(np.float64)})
    grouped = column.groupby("code").value.agg(["median", "size"])
    return pd.DataFrame({"class": np.array(labels, dtype=object)[grouped.index.to_numpy()],
                         "score": grouped["median"].to_numpy(), "members": grouped["size"].to_numpy()})


def _topk_share(db, array, labels, unit, k) -> pd.DataFrame:
    ids, _ = running_top_k(selection.stream(db, array, labels), unit, k)
    found = selection.image_info(db, ids).label.fillna("(unlabelled)")
    counts = found.value_counts()
    return pd.DataFrame({"class": counts.index.to_numpy(dtype=object), "score": counts.to_numpy() / len(ids),
                         "n_top": counts.to_numpy()})
