"""`actdb top-images`: dataset examples of a unit, the stored images that excite (or, with
`bottom`, suppress) it most, found in one streaming pass over the array's chunks: memory
holds a block and the k best so far, never the whole array (Microscope and Summit rank
by the spatial max, so an array stored with reduce max is the natural one)."""
from __future__ import annotations

import numpy as np
import pandas as pd

from ..errors import ActdbError
from ..results import table
from ..store.stored_array import StoredArray
from . import selection


def running_top_k(blocks, unit: int, k: int, bottom: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(ids, values) of the k highest (lowest with `bottom`) finite values of column `unit`
    over (ids, codes, vectors) blocks; equal values are ordered by id."""
    sign = -1.0 if bottom else 1.0
    best_ids, best_scores = np.empty(0, np.int64), np.empty(0, np.float64)
    for ids, _, vectors in blocks:
        column = vectors[:, unit].astype(np.float64)
        finite = np.isfinite(column)
        candidate_ids = np.concatenate([best_ids, ids[finite]])
        candidate_scores = np.concatenate([best_scores, sign * column[finite]])
        if len(candidate_ids) > k:  # narrow cheaply, then order exactly (ties by id) what is left
            threshold = np.partition(candidate_scores, len(candidate_scores) - k)[len(candidate_scores) - k]
            keep = candidate_scores >= threshold
            candidate_ids, candidate_scores = candidate_ids[keep], candidate_scores[keep]
        order = np.lexsort((candidate_ids, -candidate_scores))[:k]
        best_ids, best_scores = candidate_ids[order], candidate_scores[order]
    return best_ids, sign * best_scores


def top_images(db, array: StoredArray, unit: int, *, k: int = 16, bottom: bool = False,
               where: str | None = None) -> pd.DataFrame:
    """rank, id, value, label, path of the unit's top (or bottom) k stored images."""
    if k < 1:
        raise ActdbError(f"-k must be at least 1, got {k}")
    unit = array.check_unit(unit)
    ids, values = running_top_k(selection.stream(db, array, [], where), unit, k, bottom)
    if not len(ids):
        raise ActdbError(f"no stored rows of {array.describe()}" + (f" match --where {where!r}" if where else ""))
    frame = pd.DataFrame({"rank": np.arange(1, len(ids) + 1), "id": ids, "value": values})
    frame = frame.merge(selection.image_info(db, ids), on="id", how="left")
    warnings = []
    if array.reduce != "max" and any(a.model == array.model and a.layer == array.layer and a.reduce == "max"
                                     for a in db.arrays()):
        warnings.append("this layer is also stored with --reduce max, the spatial max Microscope and Summit rank by")
    return table(frame, warnings=warnings,
                 title=f"{array.describe()} unit {unit}: {'bottom' if bottom else 'top'} {len(ids)} stored images")
