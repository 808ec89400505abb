"""Per-unit statistics of a stored array: mean and standard deviation of every channel over
all rows and within each class, from one streaming pass, kept in the catalog's
`unit_stats` table (store/derived.py) at the array's data version, recomputed when it changed.

The pass is `moments.GroupMoments`: memory holds a block and a (classes x channels)
table, never the rows.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import ActdbError
from ..moments import GroupMoments
from ..store import derived
from ..store.derived import ALL_ROWS
from ..store.stored_array import StoredArray
from . import selection


@dataclass(frozen=True)
class UnitStats:
    members: int  # finite rows counted
    mean: np.ndarray  # (channels,) float64
    std: np.ndarray  # (channels,) population std
    classes: np.ndarray  # labels (object), sorted
    class_members: np.ndarray  # (classes,)
    class_mean: np.ndarray  # (classes, channels)
    class_std: np.ndarray  # (classes, channels)

    def of_class(self, label: str) -> np.ndarray:
        return self.class_mean[int(np.flatnonzero(self.classes == label)[0])]


def compute(blocks, labels: list[str], channels: int) -> UnitStats:
    """One pass over (ids, class codes, vectors) blocks (see `selection.stream`).

    Unlabelled rows (code -1) form one more group, so every row counts in the overall figures."""
    groups = GroupMoments(channels, len(labels) + 1)
    for _, codes, vectors in blocks:
        finite = selection.finite_rows(vectors)
        if not finite.all():
            codes, vectors = codes[finite], vectors[finite]
        groups.add(np.where(codes >= 0, codes, len(labels)), vectors)
    n, mean, m2 = groups.pooled()
    if n == 0:
        raise ActdbError("no stored rows with values to compute unit statistics from; ingest images first")
    present = groups.n[:-1] > 0
    return UnitStats(int(n), mean, np.sqrt(m2 / n), np.array(labels, dtype=object)[present],
                     groups.n[:-1][present].astype(np.int64), groups.mean[:-1][present], groups.std()[:-1][present])


def unit_stats(db, array: StoredArray, refresh: bool = False) -> UnitStats:
    """The array's statistics from the catalog; computed (and stored) when missing or stale."""
    stored = None if refresh else _read(db, array)
    if stored is not None:
        return stored
    labels = db.labels(array)
    stats = compute(selection.stream(db, array, labels), labels, array.channels)
    _write(db, array, stats)
    return stats


def _read(db, array: StoredArray) -> UnitStats | None:
    rows = derived.read_unit_stats(db, array)
    if rows is None:
        return None
    every = rows["class"] == ALL_ROWS
    mean, std, members = rows["mean"], rows["std"], rows["members"]
    return UnitStats(int(members[every][0]), mean[every][0], std[every][0], rows["class"][~every],
                     members[~every], mean[~every], std[~every])


def _write(db, array: StoredArray, stats: UnitStats) -> None:
    derived.write_unit_stats(db, array, [ALL_ROWS, *stats.classes], [stats.members, *stats.class_members],
                             np.vstack([stats.mean, stats.class_mean]), np.vstack([stats.std, stats.class_std]))
