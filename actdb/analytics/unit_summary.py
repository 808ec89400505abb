"""Every unit of an array summarized in one streaming pass: the top-k and bottom-k images of
each unit (exact, ties by id as `top-images` orders them), mean, min, max and activation
density (share of images > 0) over all rows, and a uniform sample of rows from which the
histograms, the examples at activation quantiles and the correlations between units come
(exact whenever the array has no more rows than the sample).

Memory holds a block of rows, k x units candidates and the sample, whatever the row count:
the report's layer and unit pages for 512 units cost one read of the array, not 512.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import ActdbError
from ..store.stored_array import StoredArray
from . import selection

SAMPLE_ROWS = 10_000
QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)
_LOW = np.uint64(0xFFFFFFFF)
_SIGN = np.uint64(0x80000000)
_32 = np.uint64(32)


@dataclass(frozen=True)
class UnitSummary:
    rows: int  # finite rows summarized
    top_ids: np.ndarray  # (units, k) highest first, ties by id
    top_values: np.ndarray
    bottom_ids: np.ndarray  # (units, k) lowest first, ties by id
    bottom_values: np.ndarray
    mean: np.ndarray  # (units,) float64
    minimum: np.ndarray
    maximum: np.ndarray
    density: np.ndarray  # share of rows > 0
    sample_ids: np.ndarray  # (s,) ascending: every row when rows <= SAMPLE_ROWS
    sample: np.ndarray  # (s, units) float32

    @property
    def exact(self) -> bool:
        """Whether the sample is every row (histograms and quantiles are then exact)."""
        return len(self.sample_ids) == self.rows

    def histogram(self, unit: int, bins: int = 40) -> tuple[np.ndarray, np.ndarray]:
        """(counts, edges) of the unit over the sample, between the unit's true min and max."""
        lo, hi = float(self.minimum[unit]), float(self.maximum[unit])
        return np.histogram(self.sample[:, unit], bins=bins, range=(lo, hi if hi > lo else lo + 1.0))

    def quantile_examples(self, unit: int, quantiles=QUANTILES) -> list[tuple[float, int, float]]:
        """(quantile, image id, value): the sampled image at each quantile of the unit (nearest rank)."""
        column = self.sample[:, unit]
        order = np.lexsort((self.sample_ids, column))
        ranks = np.rint(np.asarray(quantiles) * (len(order) - 1)).astype(int)
        return [(float(q), int(self.sample_ids[order[r]]), float(column[order[r]])) for q, r in zip(quantiles, ranks)]

    def similar_units(self, unit: int, n: int = 8) -> list[tuple[int, float]]:
        """(unit, Pearson correlation over the sample) of the n units whose columns follow this one most."""
        correlations = correlation_with(self.sample, unit)
        correlations[unit] = -np.inf
        order = np.lexsort((np.arange(len(correlations)), -np.nan_to_num(correlations, nan=-np.inf)))[:n]
        return [(int(u), float(correlations[u])) for u in order if np.isfinite(correlations[u])]


def correlation_with(sample: np.ndarray, unit: int) -> np.ndarray:
    """Pearson correlation of every column with column `unit`; NaN for constant columns."""
    centred = sample.astype(np.float64) - sample.mean(axis=0, dtype=np.float64)
    norms = np.sqrt((centred ** 2).sum(axis=0))
    with np.errstate(invalid="ignore", divide="ignore"):
        return (centred.T @ centred[:, unit]) / (norms * norms[unit])


def summarize(db, array: StoredArray, *, k: int = 16, sample_rows: int = SAMPLE_ROWS) -> UnitSummary:
    """The summary of every unit of `array` from one pass over its stored rows."""
    if k < 1:
        raise ActdbError(f"k={k}: keep at least 1 image per unit")
    rate = min(1.0, sample_rows / max(array.rows_done, 1))
    return summarize_blocks(selection.stream(db, array, []), array.channels, k=k, rate=rate)


def summarize_blocks(blocks, units: int, *, k: int, rate: float = 1.0) -> UnitSummary:
    """`summarize` over (ids, codes, float32 vectors) blocks in id order; `rate`: the share of
    rows sampled (by a hash of the id, so the same rows whatever the block sizes)."""
    top = bottom = np.empty((0, units), np.uint64)
    total, positive = np.zeros(units), np.zeros(units, np.int64)
    rows, sample_ids, sample = 0, [], []
    for ids, _, vectors in blocks:
        finite = selection.finite_rows(vectors)
        ids, vectors = ids[finite], np.ascontiguousarray(vectors[finite], dtype=np.float32)
        if not len(ids):
            continue
        if ids.max() >= 2 ** 32:
            raise ActdbError("image ids of 2^32 and above are not supported by the all-units pass")
        ordered = _ordered_bits(vectors)
        tie = (_LOW - ids.astype(np.uint64))[:, None]
        top = _keep_largest(np.vstack([top, (ordered << _32) | tie]), k)
        bottom = _keep_largest(np.vstack([bottom, ((~ordered & _LOW) << _32) | tie]), k)
        total += vectors.sum(axis=0, dtype=np.float64)
        positive += (vectors > 0).sum(axis=0)
        rows += len(ids)
        chosen = _sampled(ids, rate)
        sample_ids.append(ids[chosen])
        sample.append(vectors[chosen])
    if rows == 0:
        raise ActdbError("no stored rows with values to summarize; ingest images first")
    top_ids, top_values = _decode(top, invert=False)
    bottom_ids, bottom_values = _decode(bottom, invert=True)
    return UnitSummary(rows, top_ids, top_values, bottom_ids, bottom_values, total / rows, bottom_values[:, 0],
                       top_values[:, 0], positive / rows, np.concatenate(sample_ids), np.concatenate(sample))


def _ordered_bits(values: np.ndarray) -> np.ndarray:
    """float32 -> uint64 in [0, 2^32) with the same order (IEEE bits, negatives flipped)."""
    bits = values.view(np.uint32).astype(np.uint64)
    return np.where(bits & _SIGN, ~bits & _LOW, bits | _SIGN)


def _keep_largest(keys: np.ndarray, k: int) -> np.ndarray:
    """The k largest keys of every column, largest first. A key is (value bits << 32 | ~id):
    unique per row, so ties in value go to the smaller id, as a full sort would order them."""
    if len(keys) > k:
        keys = np.partition(keys, len(keys) - k, axis=0)[len(keys) - k:]
    return np.sort(keys, axis=0)[::-1]


def _decode(keys: np.ndarray, invert: bool) -> tuple[np.ndarray, np.ndarray]:
    ids = (_LOW - (keys & _LOW)).T
    bits = keys >> _32
    if invert:
        bits = ~bits & _LOW
    bits = np.where(bits & _SIGN, bits & ~_SIGN & _LOW, ~bits & _LOW)
    return ids.astype(np.int64), bits.astype(np.uint32).view(np.float32).T.astype(np.float64)


def _sampled(ids: np.ndarray, rate: float) -> np.ndarray:
    """Whether each id is in the sample: splitmix64 of the id below rate x 2^64."""
    if rate >= 1.0:
        return np.ones(len(ids), bool)
    with np.errstate(over="ignore"):
        z = ids.astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) < rate * 2.0 ** 53
