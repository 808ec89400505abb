"""`actdb top-classes`: the classes a unit responds to, ranked by the unit's mean or median
over their members (streamed), or by their share of the unit's top-k images."""
from __future__ import annotations

import numpy as np
import pandas as pd

from ..choices import TOP_CLASSES_BY, check_choice
from ..errors import ActdbError
from ..results import table
from ..store.stored_array import StoredArray
from . import selection
from .top_images import running_top_k
from .unitstats import unit_stats

BY = TOP_CLASSES_BY


def top_classes(db, array: StoredArray, unit: int, *, by: str = "mean", top: int = 10,
                k: int = 100) -> pd.DataFrame:
    """rank, class, score (the `by` statistic), members, mean, median (and n_top for topk-share)."""
    check_choice("by", by, BY)
    if top < 1 or k < 1:
        raise ActdbError("--top and -k must be at least 1")
    unit = array.check_unit(unit)
    labels = db.labels(array)
    if not labels:
        raise ActdbError(f"no labelled rows in {array.describe()}: classes need labelled images")
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
    return table(frame, title=f"{array.describe()} unit {unit}: classes by {by}", by=axis)


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
