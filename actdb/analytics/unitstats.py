"""Per-unit statistics of a stored array: mean and standard deviation of every channel over
all rows and within each class, from one streaming pass, kept in the catalog's
`unit_stats` table and recomputed when rows were added since (like class centroids).

The pass merges per-block means and sums of squared deviations (Chan et al.'s parallel
update) in float64, so memory holds a block and a (classes x channels) table, never the
rows, and the variance does not suffer the cancellation of sum-of-squares formulas.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from ..errors import ActdbError
from ..store.catalog import UNIT_STATS_TABLE
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


class _Moments:
    """Running count, mean and sum of squared deviations for `groups` rows of `channels`."""

    def __init__(self, groups: int, channels: int):
        self.n = np.zeros(groups)
        self.mean = np.zeros((groups, channels))
        self.m2 = np.zeros((groups, channels))

    def add(self, group: np.ndarray, n: np.ndarray, mean: np.ndarray, m2: np.ndarray) -> None:
        total = self.n[group] + n
        delta = mean - self.mean[group]
        self.mean[group] += delta * (n / total)[:, None]
        self.m2[group] += m2 + delta**2 * (self.n[group] * n / total)[:, None]
        self.n[group] = total

    def std(self) -> np.ndarray:
        return np.sqrt(self.m2 / np.maximum(self.n, 1)[:, None])

    def pooled(self) -> tuple[float, np.ndarray, np.ndarray]:
        """n, mean and M2 of all groups together."""
        n = self.n.sum()
        mean = (self.n[:, None] * self.mean).sum(axis=0) / max(n, 1)
        return n, mean, self.m2.sum(axis=0) + (self.n[:, None] * (self.mean - mean) ** 2).sum(axis=0)


def _segment_sums(rows: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """Sums of consecutive row segments beginning at `starts` (a slice sum each: reduceat and
    cumsum along axis 0 are ~20x slower on C-ordered rows)."""
    ends = np.append(starts[1:], len(rows))
    return np.stack([rows[start:end].sum(axis=0) for start, end in zip(starts, ends)])


def compute(blocks, labels: list[str], channels: int) -> UnitStats:
    """One pass over (ids, class codes, vectors) blocks (see `selection.stream`).

    Unlabelled rows (code -1) form one more group, so every row counts in the overall figures."""
    groups = _Moments(len(labels) + 1, channels)
    for _, codes, vectors in blocks:
        finite = selection.finite_rows(vectors)
        rows, codes = vectors[finite].astype(np.float64), np.where(codes[finite] >= 0, codes[finite], len(labels))
        if not len(rows):
            continue
        if (np.diff(codes) < 0).any():  # class-contiguous blocks (the usual ingest order) need no sort
            order = np.argsort(codes, kind="stable")
            rows, codes = rows[order], codes[order]
        group, starts, counts = np.unique(codes, return_index=True, return_counts=True)
        means = _segment_sums(rows, starts) / counts[:, None]
        rows -= np.repeat(means, counts, axis=0)
        groups.add(group, counts.astype(float), means, _segment_sums(rows * rows, starts))
    n, mean, m2 = groups.pooled()
    if n == 0:
        raise ActdbError("no stored rows with values to compute unit statistics from; ingest images first")
    present = groups.n[:-1] > 0
    return UnitStats(int(n), mean, np.sqrt(m2 / n), np.array(labels, dtype=object)[present],
                     groups.n[:-1][present].astype(np.int64), groups.mean[:-1][present], groups.std()[:-1][present])


def unit_stats(db, array: pd.Series, refresh: bool = False) -> UnitStats:
    """The array's statistics from the catalog; computed (and stored) when missing or stale."""
    stored = None if refresh else _read(db, array)
    if stored is not None:
        return stored
    labels = selection.stored_labels(db, array)
    rows_done = int(array.rows_done)
    stats = compute(selection.stream(db, array, labels), labels, int(array.channels))
    _write(db, array, stats, rows_done)
    return stats


def _read(db, array: pd.Series) -> UnitStats | None:
    channels = int(array.channels)
    with db.catalog.read() as con:
        exists = con.execute("SELECT count(*) FROM information_schema.tables WHERE table_name = 'unit_stats'"
                             ).fetchone()[0]
        if not exists:
            return None
        rows = con.execute(
            f"SELECT class, members, mean::FLOAT[{channels}] AS mean, std::FLOAT[{channels}] AS std, rows_done "
            "FROM unit_stats WHERE array_id = ? ORDER BY class", [int(array.array_id)]).fetchnumpy()
    if len(rows["class"]) == 0 or int(rows["rows_done"][0]) != int(array.rows_done):
        return None
    classes = np.asarray(rows["class"], dtype=object)
    mean, std = (np.stack(rows[c]).astype(np.float64) for c in ("mean", "std"))
    every = classes == ALL_ROWS
    return UnitStats(int(rows["members"][every][0]), mean[every][0], std[every][0], classes[~every],
                     np.asarray(rows["members"])[~every].astype(np.int64), mean[~every], std[~every])


def _write(db, array: pd.Series, stats: UnitStats, rows_done: int) -> None:
    frame = pd.DataFrame({
        "class": [ALL_ROWS, *stats.classes],
        "members": [stats.members, *stats.class_members],
        "mean": [row.astype(np.float32).tolist() for row in np.vstack([stats.mean, stats.class_mean])],
        "std": [row.astype(np.float32).tolist() for row in np.vstack([stats.std, stats.class_std])],
    })
    with db.catalog.write() as con:
        con.execute(UNIT_STATS_TABLE)
        con.execute("DELETE FROM unit_stats WHERE array_id = ?", [int(array.array_id)])
        con.register("new_unit_stats", frame)
        con.execute("INSERT INTO unit_stats (array_id, class, members, mean, std, rows_done) "
                    "SELECT ?, class, members, mean, std, ? FROM new_unit_stats", [int(array.array_id), rows_done])
