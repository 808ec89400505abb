"""Per-group count, mean and spread of rows, merged block by block: the one implementation of
class means (index centroids, unit statistics, RSA's centroids) and of per-class std.

Blocks merge by Chan et al.'s parallel update in float64, so memory holds a block and a
(groups x channels) table, never the rows, and the variance does not suffer the
cancellation of sum-of-squares formulas.
"""
from __future__ import annotations

import numpy as np


class GroupMoments:
    """Running n, mean and sum of squared deviations (M2) for groups 0..G-1 of `channels`
    values; groups grow as higher codes arrive. `second_moment=False` keeps means only."""

    def __init__(self, channels: int, groups: int = 0, second_moment: bool = True):
        self.second_moment = second_moment
        self.n = np.zeros(groups)
        self.mean = np.zeros((groups, channels))
        self.m2 = np.zeros((groups, channels)) if second_moment else None

    def add(self, codes: np.ndarray, rows: np.ndarray) -> None:
        """Rows (float, any order) with their group codes (ints >= 0)."""
        codes = np.asarray(codes)
        if not len(codes):
            return
        self._grow(int(codes.max()) + 1)
        rows = np.asarray(rows)  # float32 stays float32: sums accumulate in float64 without a float64 copy
        if (np.diff(codes) < 0).any():  # class-contiguous blocks (the usual ingest order) need no sort
            order = np.argsort(codes, kind="stable")
            rows, codes = rows[order], codes[order]
        group, starts, counts = np.unique(codes, return_index=True, return_counts=True)
        means = _segment_sums(rows, starts) / counts[:, None]  # float64
        n = counts.astype(np.float64)
        total = self.n[group] + n
        delta = means - self.mean[group]
        if self.second_moment:
            m2 = _segment_squared_deviations(rows, starts, means)
            self.m2[group] += m2 + delta**2 * (self.n[group] * n / total)[:, None]
        self.mean[group] += delta * (n / total)[:, None]
        self.n[group] = total

    def _grow(self, groups: int) -> None:
        extra = groups - len(self.n)
        if extra > 0:
            self.n = np.pad(self.n, (0, extra))
            self.mean = np.pad(self.mean, ((0, extra), (0, 0)))
            if self.second_moment:
                self.m2 = np.pad(self.m2, ((0, extra), (0, 0)))

    def std(self) -> np.ndarray:
        """Population standard deviation (ddof 0) per group."""
        return np.sqrt(self.m2 / np.maximum(self.n, 1)[:, None])

    def pooled(self) -> tuple[float, np.ndarray, np.ndarray]:
        """n, mean and M2 of all groups together."""
        n = self.n.sum()
        mean = (self.n[:, None] * self.mean).sum(axis=0) / max(n, 1)
        return n, mean, self.m2.sum(axis=0) + (self.n[:, None] * (self.mean - mean) ** 2).sum(axis=0)


def class_means(values: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(sorted classes, their mean rows, member counts) of one set of labelled rows."""
    classes, codes = np.unique(np.asarray(labels), return_inverse=True)
    moments = GroupMoments(np.asarray(values).shape[1], len(classes), second_moment=False)
    moments.add(codes, values)
    return classes, moments.mean, moments.n.astype(np.int64)


def _segment_squared_deviations(rows: np.ndarray, starts: np.ndarray, means: np.ndarray) -> np.ndarray:
    """Per segment, the sum of squared deviations from its mean, in float64: one segment's
    deviations at a time (2.5x faster than the block's at once, which leave the cache)."""
    ends = np.append(starts[1:], len(rows))
    parts = []
    for mean, start, end in zip(means, starts, ends):
        deviations = rows[start:end] - mean
        parts.append(np.einsum("ij,ij->j", deviations, deviations))
    return np.stack(parts)


def _segment_sums(rows: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """Sums of consecutive row segments beginning at `starts` (a slice sum each: reduceat and
    cumsum along axis 0 are ~20x slower on C-ordered rows)."""
    ends = np.append(starts[1:], len(rows))
    return np.stack([rows[start:end].sum(axis=0, dtype=np.float64) for start, end in zip(starts, ends)])
