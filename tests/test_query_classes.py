"""Nearest classes, checked against NumPy over scipy distances."""
import numpy as np
import pandas as pd
import pytest
from scipy.spatial.distance import cdist

from actdb.errors import ActdbError
from actdb.query.classes import class_centroids, rank_classes
from actdb.knn.index import build_index

SCIPY_METRIC = {"l2": "euclidean", "cosine": "cosine", "correlation": "correlation"}
DIM = 32
MISSING = [3, 777]


pytestmark = pytest.mark.usefixtures("one_faiss_thread")


@pytest.fixture(scope="module")
def dataset():
    """1200 rows in 12 overlapping classes with string labels, two rows missing (NaN)."""
    rng = np.random.default_rng(0)
    centres = rng.normal(scale=0.5, size=(12, DIM)) + 2.0
    classes = rng.integers(0, 12, 1200)
    rows = (centres[classes] + rng.normal(size=(1200, DIM))).astype(np.float32)
    rows[MISSING] = np.nan
    labels = np.array([f"n{c:08d}" for c in classes])
    queries = (centres[[0, 5, 11]] + rng.normal(size=(3, DIM))).astype(np.float32)
    return rows, labels, queries


def labelled_blocks(rows, labels, size=250):
    for first in range(0, len(rows), size):
        last = min(len(rows), first + size)
        yield np.arange(first, last), rows[first:last], labels[first:last]


def valid(rows):
    return np.isfinite(rows).all(axis=1)


def transformed(rows, metric):
    """The metric's row transform, written out independently of actdb."""
    rows = rows.astype(np.float64)
    if metric == "correlation":
        rows = rows - rows.mean(axis=1, keepdims=True)
    if metric != "l2":
        rows = rows / np.linalg.norm(rows, axis=1, keepdims=True)
    return rows


def expected_centroids(rows, labels, metric):
    keep = valid(rows)
    frame = pd.DataFrame(transformed(rows[keep], metric))
    grouped = frame.groupby(labels[keep])
    return grouped.mean(), grouped.size()


@pytest.mark.parametrize("metric", ["l2", "cosine", "correlation"])
def test_class_centroids_are_means_of_transformed_rows(dataset, metric):
    rows, labels, _ = dataset
    centroids = class_centroids(labelled_blocks(rows, labels), metric)
    means, sizes = expected_centroids(rows, labels, metric)
    np.testing.assert_array_equal(centroids.labels, means.index)
    np.testing.assert_array_equal(centroids.counts, sizes)
    np.testing.assert_allclose(centroids.centroids, means.to_numpy(), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("metric", ["l2", "cosine", "correlation"])
def test_rank_by_centroid_equals_scipy(dataset, metric):
    rows, labels, queries = dataset
    centroids = class_centroids(labelled_blocks(rows, labels), metric)
    ranking = rank_classes(queries, "centroid", metric, centroids=centroids)
    means, sizes = expected_centroids(rows, labels, metric)
    distances = cdist(queries.astype(np.float64), means.to_numpy(), SCIPY_METRIC[metric])
    for query in range(len(queries)):
        ranked = ranking[ranking["query"] == query]
        order = np.argsort(distances[query], kind="stable")
        np.testing.assert_array_equal(ranked["class"], means.index[order])
        np.testing.assert_array_equal(ranked["rank"], np.arange(1, len(order) + 1))
        np.testing.assert_allclose(ranked["distance"], distances[query][order], rtol=1e-4)
        np.testing.assert_array_equal(ranked["n_members"], sizes.to_numpy()[order])


def expected_member_statistics(rows, labels, queries, metric, query_ids=None):
    """Per query, a DataFrame of mean/median/min distance to each class's members, via cdist."""
    keep = np.flatnonzero(valid(rows))
    tables = []
    for position, query in enumerate(queries):
        members = keep if query_ids is None else keep[keep != query_ids[position]]
        distances = cdist(query[None].astype(np.float64), rows[members].astype(np.float64), SCIPY_METRIC[metric])[0]
        grouped = pd.Series(distances).groupby(labels[members])
        tables.append(pd.DataFrame({"mean": grouped.mean(), "median": grouped.median(),
                                    "min": grouped.min(), "n_members": grouped.size()}))
    return tables


@pytest.mark.parametrize("by", ["mean", "median", "min"])
@pytest.mark.parametrize("metric", ["l2", "correlation"])
def test_rank_by_member_statistics_equals_scipy(dataset, by, metric):
    rows, labels, queries = dataset
    ranking = rank_classes(queries, by, metric, blocks=labelled_blocks(rows, labels))
    for query, expected in enumerate(expected_member_statistics(rows, labels, queries, metric)):
        expected = expected.sort_values([by]).rename_axis("class").reset_index()
        ranked = ranking[ranking["query"] == query].reset_index(drop=True)
        np.testing.assert_array_equal(ranked["class"], expected["class"])
        np.testing.assert_allclose(ranked["distance"], expected[by], rtol=1e-4)
        np.testing.assert_allclose(ranked[["mean", "median", "min"]], expected[["mean", "median", "min"]], rtol=1e-4)
        np.testing.assert_array_equal(ranked["n_members"], expected["n_members"])


def test_member_statistics_leave_the_querys_own_row_out(dataset):
    rows, labels, _ = dataset
    query_ids = np.array([10, 500])
    ranking = rank_classes(rows[query_ids], "min", blocks=labelled_blocks(rows, labels), query_ids=query_ids)
    expected = expected_member_statistics(rows, labels, rows[query_ids], "l2", query_ids)
    for query, own_id in enumerate(query_ids):
        own_class = ranking[(ranking["query"] == query) & (ranking["class"] == labels[own_id])].iloc[0]
        assert own_class["min"] == pytest.approx(expected[query].loc[labels[own_id], "min"], rel=1e-4)
        assert own_class["min"] > 0 and own_class["n_members"] == expected[query].loc[labels[own_id], "n_members"]


def test_rank_by_knn_shares_equal_a_brute_force_count(dataset):
    rows, labels, _ = dataset
    index, _ = build_index(((ids, vectors) for ids, vectors, _ in labelled_blocks(rows, labels)), DIM, "l2", "flat")
    query_ids = np.arange(10, 1200, 40)
    k = 7
    ranking = rank_classes(rows[query_ids], "knn", index=index, labels_of=lambda ids: labels[ids], k=k,
                           query_ids=query_ids)
    keep = np.flatnonzero(valid(rows))
    distances = cdist(rows[query_ids].astype(np.float64), rows[keep].astype(np.float64))
    tied_shares_out_of_label_order = 0
    for query, own_id in enumerate(query_ids):
        nearest = keep[np.argsort(distances[query], kind="stable")]
        nearest = nearest[nearest != own_id][:k]
        neighbour_labels = list(labels[nearest])
        expected = sorted(set(neighbour_labels),
                          key=lambda label: (-neighbour_labels.count(label), neighbour_labels.index(label)))
        ranked = ranking[ranking["query"] == query]
        assert list(ranked["class"]) == expected
        assert list(ranked["share"]) == [neighbour_labels.count(label) / k for label in expected]
        assert list(ranked["nearest_rank"]) == [neighbour_labels.index(label) + 1 for label in expected]
        shares = list(ranked["share"])
        tied_shares_out_of_label_order += any(
            shares[i] == shares[i + 1] and expected[i] > expected[i + 1] for i in range(len(expected) - 1)
        )
    assert tied_shares_out_of_label_order  # the data exercises the documented tie-break


def test_missing_inputs_and_mismatched_metrics_are_user_errors(dataset):
    rows, labels, queries = dataset
    with pytest.raises(ActdbError, match="needs centroids"):
        rank_classes(queries, "centroid")
    with pytest.raises(ActdbError, match="unknown class ranking"):
        rank_classes(queries, "mode")
    centroids = class_centroids(labelled_blocks(rows, labels), "cosine")
    with pytest.raises(ActdbError, match="computed for cosine"):
        rank_classes(queries, "centroid", "l2", centroids=centroids)
