"""Nearest classes of query vectors, five ways (`BY`).

- ``centroid``: distance from the query to each class mean.
- ``knn``: share of each class among the query's k nearest images (from an index).
- ``mean`` / ``median`` / ``min``: that statistic of the exact distances from the query
  to every member of the class, streamed over all rows.

For cosine and correlation a class mean is the mean of the members' *transformed* rows
(unit-norm, and centred for correlation), so that every image weighs the same whatever
its activation magnitude; the distance to it is the metric's distance to that mean
(which the transform re-normalises). For l2 it is the plain mean of the rows.

A query that is itself a stored row would be its own nearest neighbour and its class's
minimum (distance 0); pass its id in `query_ids` to leave it out of every ranking: of
`knn`, of the member statistics, and of its class's mean (which then needs `labels_of`).
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import faiss
import numpy as np
import pandas as pd

from ..choices import CLASS_RANKINGS, check_choice
from ..distance import check_metric, pairwise_distances, prepare
from ..errors import ActdbError
from ..moments import GroupMoments
from ..knn.index import search
from ..knn.metrics import prepare_queries

LabelledBlocks = Iterable[tuple[np.ndarray, np.ndarray, np.ndarray]]  # (ids, vectors, labels)

BY = CLASS_RANKINGS
DEFAULT_KNN_K = 50
MEMBER_STATISTICS = {"mean": np.mean, "median": np.median, "min": np.min}


@dataclass(frozen=True)
class ClassCentroids:
    labels: np.ndarray  # sorted
    centroids: np.ndarray  # (classes, dim) float64: means of the members' transformed rows
    counts: np.ndarray  # members per class (rows with NaN/inf are not members)
    metric: str


def class_centroids(blocks: LabelledBlocks, metric: str = "l2") -> ClassCentroids:
    """Class means of the metric's prepared rows, in one pass over `(ids, vectors, labels)` blocks."""
    centroids = CentroidPass(metric)
    for ids, vectors, labels in blocks:
        centroids.add(ids, vectors, labels)
    return centroids.result()


class CentroidPass:
    """`class_centroids` fed block by block, so a pass that reads the rows anyway (an index
    build) computes them too instead of reading every row again."""

    def __init__(self, metric: str = "l2"):
        check_metric(metric)
        self.metric = metric
        self.code_of: dict = {}
        self.moments: GroupMoments | None = None

    def add(self, ids, vectors, labels) -> None:
        for _, finite_vectors, finite_labels in _finite_blocks([(ids, vectors, labels)]):
            rows = prepare(finite_vectors, self.metric)
            self.moments = self.moments or GroupMoments(rows.shape[1], second_moment=False)
            present, inverse = np.unique(finite_labels, return_inverse=True)
            codes = np.array([self.code_of.setdefault(label, len(self.code_of)) for label in present.tolist()],
                             np.int64)
            self.moments.add(codes[inverse], rows)

    def result(self) -> ClassCentroids:
        if not self.code_of:  # an unlabelled store has no classes; its index still serves nearest images
            return ClassCentroids(np.array([], dtype=object), np.zeros((0, 0)), np.zeros(0, np.int64), self.metric)
        labels = sorted(self.code_of)
        order = [self.code_of[label] for label in labels]
        return ClassCentroids(np.array(labels), self.moments.mean[order], self.moments.n[order].astype(np.int64),
                              self.metric)


def rank_classes(
    queries: np.ndarray,
    by: str,
    metric: str = "l2",
    *,
    centroids: ClassCentroids | None = None,
    blocks: LabelledBlocks | None = None,
    index: faiss.Index | None = None,
    labels_of: Callable[[np.ndarray], np.ndarray] | None = None,
    k: int = DEFAULT_KNN_K,
    query_ids: np.ndarray | None = None,
) -> pd.DataFrame:
    """Classes ranked for each query, as one long DataFrame sorted by (query, rank).

    Needs, by `by`: centroid -> `centroids` (from `class_centroids`, same metric);
    knn -> `index`, `labels_of(ids) -> labels` and `k`; mean/median/min -> `blocks` of
    `(ids, vectors, labels)` covering every row (one pass; holds 8 bytes per query and
    row, so pass queries in batches of tens).

    Columns: query (position in `queries`), rank (1 = nearest), class, then
    - centroid: distance, n_members;
    - mean/median/min: distance (the chosen statistic), mean, median, min, n_members
      (members compared, the query's own row left out); ties by class label;
    - knn: share (of the k neighbours), n_neighbours, nearest_rank (rank of the class's
      closest neighbour); equal shares are ordered by nearest_rank. Only classes present
      among the neighbours are listed.
    """
    check_metric(metric)
    check_choice("by", by, BY, "class ranking")
    prepared = prepare_queries(queries, metric)
    if by == "centroid":
        own = _own_labels(query_ids, labels_of)
        return _rank_by_centroid(prepared, _required(centroids, "centroids", by), metric, own)
    if by == "knn":
        neighbours = _neighbours(queries, _required(index, "index", by), metric, k, query_ids)
        return _rank_by_neighbours(neighbours, _required(labels_of, "labels_of", by))
    return _rank_by_members(prepared, _required(blocks, "blocks", by), by, metric, query_ids)


def _required(value, name: str, by: str):
    if value is None:
        raise ActdbError(f"ranking classes by {by} needs {name}")
    return value


def _finite_blocks(blocks: LabelledBlocks):
    """The blocks without rows that have NaN/inf (failed images)."""
    for ids, vectors, labels in blocks:
        vectors = np.asarray(vectors)
        finite = np.isfinite(vectors).all(axis=1)
        yield np.asarray(ids)[finite], vectors[finite], np.asarray(labels)[finite]


def _members_by_label(labels: np.ndarray):
    """(label, row positions) for each label in a block, labels ascending."""
    order = np.argsort(labels, kind="stable")
    unique, starts = np.unique(labels[order], return_index=True)
    for label, members in zip(unique.tolist(), np.split(order, starts[1:])):
        yield label, members


def _ranked(frame: pd.DataFrame, score: str, ascending: bool, tie_break: str) -> pd.DataFrame:
    """Sort within each query by score then tie_break; number the ranks from 1."""
    frame = frame.sort_values(["query", score, tie_break], ascending=[True, ascending, True], kind="stable")
    frame.insert(1, "rank", frame.groupby("query").cumcount() + 1)
    return frame.reset_index(drop=True)


def _own_labels(query_ids, labels_of) -> list:
    """The class of each query that is a stored row (None for the others)."""
    if query_ids is None:
        return []
    query_ids = np.asarray(query_ids)
    stored = query_ids >= 0
    if stored.any() and labels_of is None:
        raise ActdbError("leaving stored queries out of their class means needs labels_of")
    own = [None] * len(query_ids)
    if stored.any():
        for position, label in zip(np.flatnonzero(stored), labels_of(query_ids[stored])):
            own[position] = label
    return own


def _rank_by_centroid(prepared: np.ndarray, centroids: ClassCentroids, metric: str, own_labels: list) -> pd.DataFrame:
    if centroids.metric != metric:
        raise ActdbError(f"class centroids were computed for {centroids.metric}, not {metric}; recompute them")
    if prepared.shape[1] != centroids.centroids.shape[1]:
        raise ActdbError(
            f"queries have {prepared.shape[1]} dimensions but the centroids {centroids.centroids.shape[1]}"
        )
    distances = pairwise_distances(prepared, prepare(centroids.centroids, metric), metric)
    n_queries, n_classes = distances.shape
    members = np.tile(centroids.counts, (n_queries, 1)).astype(np.int64)
    for query, label in enumerate(own_labels):
        if label is None or label not in centroids.labels:
            continue
        c = int(np.searchsorted(centroids.labels, label))
        n = int(centroids.counts[c])
        members[query, c] = n - 1
        if n == 1:  # its class has no other member
            distances[query, c] = np.nan
            continue
        others = (n * centroids.centroids[c] - prepared[query].astype(np.float64)) / (n - 1)
        distances[query, c] = pairwise_distances(prepared[query : query + 1], prepare(others[None], metric),
                                                 metric)[0, 0]
    frame = pd.DataFrame({
        "query": np.repeat(np.arange(n_queries), n_classes),
        "class": np.tile(centroids.labels, n_queries),
        "distance": distances.ravel(),
        "n_members": members.ravel(),
    })
    return _ranked(frame.dropna(subset=["distance"]), "distance", ascending=True, tie_break="class")


def _neighbours(queries, index, metric, k, query_ids):
    """Each query's k nearest ids, its own row (from query_ids) left out."""
    if query_ids is None:
        return list(search(index, queries, k, metric)[0])
    found, _ = search(index, queries, k + 1, metric)
    return [row[row != own][:k] for row, own in zip(found, np.asarray(query_ids))]


def _rank_by_neighbours(neighbours, labels_of) -> pd.DataFrame:
    frames = []
    for query, ids in enumerate(neighbours):
        labels = np.asarray(labels_of(ids))
        classes, nearest_rank, counts = np.unique(labels, return_index=True, return_counts=True)
        frames.append(pd.DataFrame({
            "query": query,
            "class": classes,
            "share": counts / len(ids),
            "n_neighbours": counts,
            "nearest_rank": nearest_rank + 1,
        }))
    return _ranked(pd.concat(frames, ignore_index=True), "share", ascending=False, tie_break="nearest_rank")


def _rank_by_members(prepared, blocks, by, metric, query_ids) -> pd.DataFrame:
    per_class: dict = {}
    for ids, vectors, labels in _finite_blocks(blocks):
        distances = pairwise_distances(prepared, prepare(vectors, metric), metric)
        if query_ids is not None:
            distances[np.asarray(query_ids)[:, None] == ids[None, :]] = np.nan
        for label, members in _members_by_label(labels):
            per_class.setdefault(label, []).append(distances[:, members])
    rows = []
    for label, parts in per_class.items():
        distances = np.concatenate(parts, axis=1)
        for query, row in enumerate(distances):
            row = row[~np.isnan(row)]
            if row.size:
                stats = {name: float(statistic(row)) for name, statistic in MEMBER_STATISTICS.items()}
                rows.append({"query": query, "class": label, "distance": stats[by], **stats, "n_members": row.size})
    if not rows:
        raise ActdbError("no stored rows with a label to compare with; ingest images before ranking classes")
    return _ranked(pd.DataFrame(rows), "distance", ascending=True, tie_break="class")
