"""Distances between activation rows, in one place: how rows are prepared for a metric and
how prepared rows are compared. Nearest-neighbour queries, the analytics and the index all
use it (a shared basic, so no feature imports another).

- ``l2``: rows as they are; distance = Euclidean (scipy ``euclidean``).
- ``cosine``: rows scaled to unit norm; distance = 1 - <a, b> (scipy ``cosine``).
- ``correlation``: rows centred (minus their own mean), then unit norm; distance =
  1 - <a, b> = 1 - Pearson r (scipy ``correlation``). This ranks exactly like Euclidean
  distance between z-scored rows (the blog posts' normalization).

**Degenerate rows** (all zeros for cosine, constant for correlation) have no direction;
scipy returns NaN for them. The rule here: a row whose norm after centring is at most
`DEGENERATE_RELATIVE_NORM` of its raw norm (float rounding of a constant row leaves
such a residue) becomes the zero vector, so its distance to every row is exactly 1,
"no similarity", and a store with a few dead images still indexes and compares. A
*query* with no direction is refused instead (`check_query_directions`): every answer
to it would be a tie.
"""
from __future__ import annotations

import numpy as np

from .choices import METRICS, check_choice
from .errors import ActdbError

DEGENERATE_RELATIVE_NORM = 1e-6


def check_metric(metric: str) -> str:
    return check_choice("metric", metric, METRICS, "metric")


def prepare(rows: np.ndarray, metric: str, dtype=np.float32) -> np.ndarray:
    """Rows transformed for `metric` (see the module doc), C-contiguous `dtype`."""
    check_metric(metric)
    if metric == "l2":
        return np.ascontiguousarray(rows, dtype=dtype)
    rows = np.asarray(rows, dtype=np.float64)
    raw_norms = np.linalg.norm(rows, axis=1)
    if metric == "correlation":
        rows = rows - rows.mean(axis=1, keepdims=True)
    norms = np.linalg.norm(rows, axis=1)
    degenerate = norms <= DEGENERATE_RELATIVE_NORM * raw_norms
    scale = np.divide(1.0, norms, out=np.zeros_like(norms), where=~degenerate)
    return np.ascontiguousarray(rows * scale[:, None], dtype=dtype)


def check_query_directions(prepared: np.ndarray, metric: str) -> None:
    """Refuse prepared queries that `prepare` made the zero vector (cosine, correlation)."""
    if metric == "l2":
        return
    degenerate = ~np.asarray(prepared).any(axis=1)
    if degenerate.any():
        raise ActdbError(f"query {int(np.argmax(degenerate))} has no {metric} direction (all zeros or constant); "
                         "use metric l2")


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


def screening_distances(queries: np.ndarray, rows: np.ndarray, metric: str) -> np.ndarray:
    """`pairwise_distances` in float32, for choosing candidates only (their reported distances
    are then `paired_distances`): one float32 matrix product, no float64 copy of the rows."""
    q = np.asarray(queries, dtype=np.float32)
    x = np.asarray(rows, dtype=np.float32)
    products = q @ x.T
    if metric != "l2":
        return 1.0 - products
    products *= -2.0
    products += np.einsum("ij,ij->i", q, q)[:, None]
    products += np.einsum("ij,ij->i", x, x)[None, :]
    return np.sqrt(np.maximum(products, 0.0, out=products), out=products)


PAIRED_BLOCK_ENTRIES = 1 << 21  # values per operand gathered at once (16 MiB as float64)


def paired_distances_gathered(n_pairs: int, dim: int, gather, metric: str) -> np.ndarray:
    """`paired_distances` of n pairs whose operands `gather(slice)` returns, a block of pairs at a
    time: 152,000 candidate pairs of 2048-d rows gathered at once are 5 GB of float64 copies."""
    step = max(1, PAIRED_BLOCK_ENTRIES // max(1, dim))
    parts = [paired_distances(*gather(slice(i, i + step)), metric) for i in range(0, n_pairs, step)]
    return np.concatenate(parts) if parts else np.zeros(0)


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
