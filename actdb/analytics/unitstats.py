"""Per-unit statistics of a stored array: mean and standard deviation of every channel over
all rows and within each class, from one streaming pass, kept in the catalog's
`unit_stats` table and recomputed when rows were added since (like class centroids).

The pass is `moments.GroupMoments`: memory holds a block and a (classes x channels)
table, never the rows.
"""
from __future__ import annotations

from dataclasses import dataclass

import duckdb
import numpy as np
import pandas as pd

from ..errors import ActdbError
from ..moments import GroupMoments
from ..store.catalog import UNIT_STATS_TABLE
from ..store.stored_array import StoredArray
from . import selection

ALL_ROWS = "*"


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
        groups.add(np.where(codes[finite] >= 0, codes[finite], len(labels)), vectors[finite])
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
    channels = array.channels
    with db.catalog.read() as con:
        exists = con.execute("SELECT count(*) FROM information_schema.tables WHERE table_name = 'unit_stats'"
                             ).fetchone()[0]
        if not exists:
            return None
        try:
            rows = con.execute(
                f"SELECT class, members, mean::FLOAT[{channels}] AS mean, std::FLOAT[{channels}] AS std, "
                "data_version FROM unit_stats WHERE array_id = ? ORDER BY class", [array.id]).fetchnumpy()
        except duckdb.Error:  # made before data versions, or not the table actdb wrote: recompute
            return None
    if len(rows["class"]) == 0 or rows["data_version"][0] != array.data_version:
        return None
    classes = np.asarray(rows["class"], dtype=object)
    mean, std = (np.stack(rows[c]).astype(np.float64) for c in ("mean", "std"))
    every = classes == ALL_ROWS
    return UnitStats(int(rows["members"][every][0]), mean[every][0], std[every][0], classes[~every],
                     np.asarray(rows["members"])[~every].astype(np.int64), mean[~every], std[~every])


def _write(db, array: StoredArray, stats: UnitStats) -> None:
    if not db.catalog.writable():  # a read-only store: computed for this answer, not kept
        return
    frame = pd.DataFrame({
        "class": [ALL_ROWS, *stats.classes],
        "members": [stats.members, *stats.class_members],
        "mean": [row.astype(np.float32).tolist() for row in np.vstack([stats.mean, stats.class_mean])],
        "std": [row.astype(np.float32).tolist() for row in np.vstack([stats.std, stats.class_std])],
    })
    with db.catalog.write() as con:
        if _outdated_table(con):
            con.execute("DROP TABLE unit_stats")  # derived only: rebuilt below from the stored rows
        con.execute(UNIT_STATS_TABLE)
        con.execute("DELETE FROM unit_stats WHERE array_id = ?", [array.id])
        con.register("new_unit_stats", frame)
        con.execute("INSERT INTO unit_stats (array_id, class, members, mean, std, rows_done, data_version) "
                    "SELECT ?, class, members, mean, std, ?, ? FROM new_unit_stats",
                    [array.id, array.rows_done, array.data_version])


def _outdated_table(con) -> bool:
    """A unit_stats table without the columns this version writes (older actdb, or replaced)."""
    columns = {row[0] for row in con.execute(
        "SELECT column_name FROM information_schema.columns WHERE table_name = 'unit_stats'").fetchall()}
    return bool(columns) and not {"array_id", "class", "members", "mean", "std", "data_version"} <= columns
