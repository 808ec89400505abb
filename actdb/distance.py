"""Distances between vectors prepared for a metric, in float64: the math that nearest-neighbour
queries and the analytics share (a shared basic, so neither feature imports the other).

l2 is Euclidean distance on raw rows; for cosine and correlation, rows are first made unit
length (correlation: centred first) by the caller, and the distance is 1 - dot product.
"""
from __future__ import annotations

import numpy as np

from .errors import ActdbError

METRICS = ("l2", "cosine", "correlation")


def check_metric(metric: str) -> None:
    if metric not in METRICS:
        raise ActdbError(f"unknown metric {metric!r}; use one of {', '.join(METRICS)}")


def pairwise_distances(queries: np.ndarray, rows: np.ndarray, metric: str) -> np.ndarray:
    """Reported distances between every prepared query and row, (queries, rows) float64.

    One matrix product in float64: fast for many pairs and accurate to ~1e-12 relative,
    but identical rows may differ in the last bits; use `paired_distances` to rank ties.
    """
    q = np.asarray(queries, dtype=np.float64)
    x = np.asarray(rows, dtype=np.float64)
    products = q @ x.T
    if metric != "l2":
        return 1.0 - products
    squared = np.einsum("ij,ij->i", q, q)[:, None] + np.einsum("ij,ij->i", x, x)[None, :] - 2.0 * products
    return np.sqrt(np.maximum(squared, 0.0))


def paired_distances(a: np.ndarray, b: np.ndarray, metric: str) -> np.ndarray:
    """Reported distance between row i of `a` and row i of `b` (prepared), float64.

    Computed per pair from the differences, so identical rows get bit-identical
    distances and ties can be broken by id.
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    if metric != "l2":
        return 1.0 - np.einsum("ij,ij->i", a, b)
    difference = a - b
    return np.sqrt(np.einsum("ij,ij->i", difference, difference))
