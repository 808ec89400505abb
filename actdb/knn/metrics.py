"""The three metrics on FAISS's two: squared L2 for l2, inner products for cosine and
correlation on rows prepared by `distance.prepare` (unit length, centred for correlation)."""
from __future__ import annotations

import faiss
import numpy as np

from ..distance import check_metric, check_query_directions, prepare
from ..errors import ActdbError


def faiss_metric_type(metric: str) -> int:
    """The FAISS metric to build the index with, for rows from `distance.prepare`."""
    check_metric(metric)
    return faiss.METRIC_L2 if metric == "l2" else faiss.METRIC_INNER_PRODUCT


def prepare_queries(queries: np.ndarray, metric: str) -> np.ndarray:
    """Query vectors prepared like stored rows, refusing the ones no distance is defined for."""
    rows = np.atleast_2d(np.asarray(queries))
    if rows.ndim != 2:
        raise ActdbError(f"queries must be one vector or a (queries, dim) matrix, got shape {rows.shape}")
    missing = ~np.isfinite(rows).all(axis=1)
    if missing.any():
        raise ActdbError(
            f"query {int(np.argmax(missing))} has missing values (NaN/inf); a query vector must be finite"
        )
    prepared = prepare(rows, metric)
    check_query_directions(prepared, metric)
    return prepared


def reported_distances(raw: np.ndarray, metric: str) -> np.ndarray:
    """FAISS's raw scores (squared L2 or inner products) as the distances users see."""
    check_metric(metric)
    if metric == "l2":
        return np.sqrt(np.maximum(raw, 0.0))
    return 1.0 - np.asarray(raw, dtype=np.float64)
