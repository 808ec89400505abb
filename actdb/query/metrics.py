"""Distance metrics as per-row transforms, so that FAISS's two metrics serve all three.

FAISS computes squared L2 or inner products. Cosine and correlation distances are
inner products after a per-row transform:

- ``l2``: vectors unchanged; reported distance = Euclidean (scipy ``euclidean``).
- ``cosine``: rows scaled to unit norm; reported distance = 1 - <a, b> (scipy ``cosine``).
- ``correlation``: rows centred (minus their own mean) and scaled to unit norm;
  reported distance = 1 - <a, b> = 1 - Pearson r (scipy ``correlation``). This is the
  seeds' z-scoring up to a constant factor, so it ranks exactly like Euclidean
  distance between z-scored rows.

Degenerate rows (all zeros for cosine, constant for correlation) have no direction and
scipy returns NaN for them. Stored rows of that kind become the zero vector: their inner
product with everything is 0, so their distance is exactly 1 ("no similarity") and a
database with a few dead images still indexes. Queries of that kind are refused by
`prepare_queries`, because every answer to them would be a tie.
"""
from __future__ import annotations

import faiss
import numpy as np

from ..distance import check_metric
from ..errors import ActdbError

# A centred row whose norm is this small relative to the raw row is constant up to
# float rounding, so its correlation with anything is undefined.
DEGENERATE_RELATIVE_NORM = 1e-6


def faiss_metric_type(metric: str) -> int:
    """The FAISS metric to build the index with, for vectors from `prepare_vectors`."""
    check_metric(metric)
    return faiss.METRIC_L2 if metric == "l2" else faiss.METRIC_INNER_PRODUCT


def prepare_vectors(vectors: np.ndarray, metric: str) -> np.ndarray:
    """Transform rows for indexing or querying: float32, C-contiguous, see module doc."""
    check_metric(metric)
    if metric == "l2":
        return np.ascontiguousarray(vectors, dtype=np.float32)
    rows = np.asarray(vectors, dtype=np.float64)
    raw_norms = np.linalg.norm(rows, axis=1)
    if metric == "correlation":
        rows = rows - rows.mean(axis=1, keepdims=True)
    norms = np.linalg.norm(rows, axis=1)
    degenerate = norms <= DEGENERATE_RELATIVE_NORM * raw_norms
    scale = np.divide(1.0, norms, out=np.zeros_like(norms), where=~degenerate)
    return np.ascontiguousarray(rows * scale[:, None], dtype=np.float32)


def prepare_queries(queries: np.ndarray, metric: str) -> np.ndarray:
    """`prepare_vectors` for query vectors, refusing the ones no distance is defined for."""
    rows = np.atleast_2d(np.asarray(queries))
    if rows.ndim != 2:
        raise ActdbError(f"queries must be one vector or a (queries, dim) matrix, got shape {rows.shape}")
    missing = ~np.isfinite(rows).all(axis=1)
    if missing.any():
        raise ActdbError(
            f"query {int(np.argmax(missing))} has missing values (NaN/inf); a query vector must be finite"
        )
    prepared = prepare_vectors(rows, metric)
    if metric != "l2":
        degenerate = ~prepared.any(axis=1)
        if degenerate.any():
            raise ActdbError(
                f"query {int(np.argmax(degenerate))} has no {metric} direction (all zeros or constant); use metric l2"
            )
    return prepared


def reported_distances(raw: np.ndarray, metric: str) -> np.ndarray:
    """FAISS's raw scores (squared L2 or inner products) as the distances users see."""
    check_metric(metric)
    if metric == "l2":
        return np.sqrt(np.maximum(raw, 0.0))
    return 1.0 - np.asarray(raw, dtype=np.float64)
