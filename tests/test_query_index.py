"""FAISS index building, tuning and search, checked against scipy brute force."""
import faiss
import numpy as np
import pytest
from scipy.spatial.distance import cdist

from actdb.errors import ActdbError
from actdb.knn.index import (
    add_to_index,
    apply_search_params,
    build_index,
    choose_kind,
    load_index,
    save_index,
    search,
    search_params,
)

SCIPY_METRIC = {"l2": "euclidean", "cosine": "cosine", "correlation": "correlation"}
DIM = 64
N_ROWS = 3000
MISSING = [5, 123, 2500]
GIB = 2**30


pytestmark = pytest.mark.usefixtures("one_faiss_thread")


def clustered_rows(seed=0, n_rows=N_ROWS, n_clusters=40):
    """40 Gaussian clusters in 64-d, a few rows missing (NaN) like failed images."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=4.0, size=(n_clusters, DIM))
    labels = rng.integers(0, n_clusters, n_rows)
    rows = (centres[labels] + rng.normal(size=(n_rows, DIM))).astype(np.float32)
    rows[MISSING] = np.nan
    return rows, labels, centres


def blocks_of(rows, start=0, stop=None, size=700):
    stop = len(rows) if stop is None else stop
    for first in range(start, stop, size):
        yield np.arange(first, min(stop, first + size)), rows[first:min(stop, first + size)]


def valid_ids(rows):
    return np.flatnonzero(np.isfinite(rows).all(axis=1))


def build(rows, kind, metric="l2", **options):
    return build_index(
        blocks_of(rows), DIM, metric, kind, valid_ids=valid_ids(rows), read_rows=lambda ids: rows[ids], **options
    )


def brute_force(queries, rows, ids, k, metric):
    """scipy distances to `rows` (whose ids are `ids`), k nearest by (distance, id)."""
    distances = cdist(np.atleast_2d(queries).astype(np.float64), rows.astype(np.float64), SCIPY_METRIC[metric])
    order = np.lexsort((np.broadcast_to(ids, distances.shape), distances))[:, :k]
    return ids[order], np.take_along_axis(distances, order, axis=1)


def queries_near(centres, cluster_indices, seed=1):
    rng = np.random.default_rng(seed)
    return (centres[cluster_indices] + rng.normal(size=(len(cluster_indices), DIM))).astype(np.float32)


@pytest.mark.parametrize("metric", ["l2", "cosine", "correlation"])
def test_flat_search_equals_scipy_brute_force(metric):
    rows, _, centres = clustered_rows()
    index, report = build(rows, "flat", metric)
    queries = queries_near(centres, np.arange(30))  # >= 20 queries: FAISS takes its BLAS path
    ids, distances = search(index, queries, 10, metric)
    valid = valid_ids(rows)
    expected_ids, expected_distances = brute_force(queries, rows[valid], valid, 10, metric)
    assert (report.n_rows, report.n_skipped, report.recall_at_10) == (N_ROWS - len(MISSING), len(MISSING), 1.0)
    np.testing.assert_array_equal(ids, expected_ids)
    np.testing.assert_allclose(distances, expected_distances, rtol=1e-4)


@pytest.mark.parametrize("metric", ["l2", "cosine", "correlation"])
@pytest.mark.parametrize("n_queries", [1, 256])
def test_equal_distances_rank_smaller_ids_first(metric, n_queries):
    # 512-d and many queries: FAISS's float32 matrix products then round copies differently
    rng = np.random.default_rng(2)
    rows = (rng.normal(size=(2000, 512)) + 5.0).astype(np.float32)
    copies = np.array([1900, 17, 1500, 640, 33, 1001, 999, 41, 1750, 64])
    rows[copies] = rows[1000]
    index, _ = build_index(blocks_of(rows), 512, metric, "flat")
    queries = rows[1000] + rng.normal(scale=0.05, size=(n_queries, 512)).astype(np.float32)
    ids, distances = search(index, queries, 6, metric)
    np.testing.assert_array_equal(ids, np.tile(np.sort(np.append(copies, 1000))[:6], (n_queries, 1)))
    assert (distances == distances[:, :1]).all()


def test_zero_variance_rows_are_at_distance_one_and_such_queries_are_refused():
    rows, _, centres = clustered_rows()
    rows[10] = 3.0
    rows[11] = 0.0
    query = queries_near(centres, [0])
    for metric, degenerate_id in (("correlation", 10), ("cosine", 11)):
        index, _ = build(rows, "flat", metric)
        _, distances = search(index, query, 1, metric, allowed_ids=[degenerate_id])
        assert distances[0, 0] == pytest.approx(1.0)
        with pytest.raises(ActdbError, match="no .* direction"):
            search(index, rows[degenerate_id], 1, metric)


@pytest.mark.parametrize("kind", ["flat", "ivf", "hnsw"])
def test_filtered_search_returns_k_rows_even_when_allowed_rows_are_far(kind):
    rows, labels, centres = clustered_rows()
    index, _ = build(rows, kind, n_eval_queries=100)
    allowed = valid_ids(rows)[labels[valid_ids(rows)] == 7]
    far_cluster = int(np.argmax(np.linalg.norm(centres - centres[7], axis=1)))
    queries = queries_near(centres, [far_cluster] * 3)
    if kind == "ivf":  # the trap: the probed lists hold none of the allowed rows
        params = faiss.SearchParametersIVF(sel=faiss.IDSelectorBatch(allowed), **search_params(index))
        _, found = index.search(queries, 10, params=params)
        assert ((found >= 0).sum(axis=1) < 10).any()
    expected_ids, expected_distances = brute_force(queries, rows[allowed], allowed, 10, "l2")
    for exact_filter_max_rows in (0, 10_000):  # FAISS with selector, then an exact scan
        ids, distances = search(index, queries, 10, "l2", allowed, exact_filter_max_rows=exact_filter_max_rows)
        assert ids.shape == (3, 10) and np.isin(ids, allowed).all()
        if kind != "hnsw" or exact_filter_max_rows:  # hnsw's selector search is approximate
            np.testing.assert_array_equal(ids, expected_ids)
            np.testing.assert_allclose(distances, expected_distances, rtol=1e-4)


def test_small_allowed_sets_are_answered_exactly_by_approximate_indexes():
    rows, _, centres = clustered_rows()
    index, _ = build(rows, "ivf", n_eval_queries=100)
    apply_search_params(index, {"nprobe": 1})
    allowed = valid_ids(rows)[::2]
    queries = queries_near(centres, np.arange(20))
    expected_ids, expected_distances = brute_force(queries, rows[allowed], allowed, 10, "l2")
    ids, distances = search(index, queries, 10, "l2", allowed)
    np.testing.assert_array_equal(ids, expected_ids)
    np.testing.assert_allclose(distances, expected_distances, rtol=1e-4)
    selector_ids, _ = search(index, queries, 10, "l2", allowed, exact_filter_max_rows=0)
    assert (selector_ids != expected_ids).any()  # what FAISS alone would have answered


def test_filter_ignores_ids_not_indexed_and_returns_fewer_than_k_when_fewer_exist():
    rows, _, centres = clustered_rows()
    index, _ = build(rows, "flat")
    queries = queries_near(centres, [0, 1])
    ids, distances = search(index, queries, 10, "l2", allowed_ids=[-1, MISSING[0], 40, 41, 40, 10**9])
    expected_ids, expected_distances = brute_force(queries, rows[[40, 41]], np.array([40, 41]), 10, "l2")
    np.testing.assert_array_equal(ids, expected_ids)
    np.testing.assert_allclose(distances, expected_distances, rtol=1e-4)


def recall_against_scipy(index, rows, n_queries=300, seed=3):
    """recall@10 over the 10 nearest other rows of stored rows, ground truth from scipy."""
    valid = valid_ids(rows)
    query_ids = np.random.default_rng(seed).choice(valid, n_queries, replace=False)
    found, _ = search(index, rows[query_ids], 11, "l2")
    truth, _ = brute_force(rows[query_ids], rows[valid], valid, 11, "l2")
    hits = [len(set(f[f != own][:10]) & set(t[t != own][:10])) for own, f, t in zip(query_ids, found, truth)]
    return sum(hits) / (10 * n_queries)


@pytest.mark.parametrize("kind", ["ivf", "hnsw"])
def test_approximate_index_delivers_the_recall_it_reports(kind):
    rows, _, _ = clustered_rows()
    index, report = build(rows, kind, recall_target=0.9, n_eval_queries=200)
    measured = recall_against_scipy(index, rows)
    assert report.target_reached and report.recall_at_10 >= 0.9 and report.n_eval_queries == 200
    assert search_params(index) == report.search_params
    assert measured >= report.recall_at_10 - 0.05


def test_unreachable_recall_target_is_reported_not_hidden():
    rows, _, _ = clustered_rows()
    index, report = build(rows, "ivfpq", recall_target=0.99, n_eval_queries=200)
    measured = recall_against_scipy(index, rows)
    assert not report.target_reached and report.recall_at_10 < 0.99
    assert report.recall_at_10 == max(recall for _, recall in report.recall_curve)
    assert measured == pytest.approx(report.recall_at_10, abs=0.07)


def test_save_and_load_round_trip(tmp_path):
    rows, _, centres = clustered_rows()
    index, report = build(rows, "ivf", n_eval_queries=100)
    queries = queries_near(centres, np.arange(5))
    path = tmp_path / "index" / "vgg19.faiss"
    save_index(index, path)
    loaded = load_index(path)
    assert [p.name for p in path.parent.iterdir()] == ["vgg19.faiss"]
    assert search_params(loaded) == report.search_params
    for expected, actual in zip(search(index, queries, 10, "l2"), search(loaded, queries, 10, "l2")):
        np.testing.assert_array_equal(actual, expected)
    apply_search_params(loaded, {"nprobe": 2})
    assert search_params(loaded) == {"nprobe": 2}
    with pytest.raises(ActdbError, match="no index file"):
        load_index(tmp_path / "missing.faiss")


@pytest.mark.parametrize("kind", ["flat", "ivf", "hnsw"])
def test_add_to_index_answers_like_a_fresh_build(kind):
    rows, _, centres = clustered_rows()
    half = 1800
    index, _ = build_index(
        blocks_of(rows, stop=half), DIM, "l2", kind,
        valid_ids=valid_ids(rows[:half]), read_rows=lambda ids: rows[ids], n_eval_queries=100,
    )
    assert add_to_index(index, blocks_of(rows, start=half), "l2") == (N_ROWS - half - 1, 1)
    if kind == "ivf":
        apply_search_params(index, {"nprobe": faiss.extract_index_ivf(index).nlist})  # exhaustive
    if kind == "hnsw":
        apply_search_params(index, {"efSearch": 512})
    fresh, _ = build(rows, "flat")
    queries = queries_near(centres, np.arange(25))
    expected_ids, expected_distances = search(fresh, queries, 10, "l2")
    ids, distances = search(index, queries, 10, "l2")
    np.testing.assert_array_equal(ids, expected_ids)
    np.testing.assert_allclose(distances, expected_distances, rtol=1e-6)
    with pytest.raises(ActdbError, match="already in the index"):
        add_to_index(index, blocks_of(rows, start=half, stop=half + 10), "l2")


def test_auto_policy():
    imagenet_rows = 1_281_167
    assert choose_kind(100_000, 512, 8 * GIB) == "flat"
    assert choose_kind(imagenet_rows, 512, 8 * GIB) == "ivf"  # fits, but one flat query scans 2.6 GB
    assert choose_kind(imagenet_rows, 512, 8 * GIB, latency_budget_seconds=1.0) == "flat"
    assert choose_kind(imagenet_rows, 512, 1 * GIB) == "ivfpq"
    with pytest.raises(ActdbError, match="raise the memory budget"):
        choose_kind(imagenet_rows, 512, 10 * 2**20)


def test_user_mistakes_raise_actdb_errors():
    rows, _, centres = clustered_rows()
    index, _ = build(rows, "flat", "cosine")
    with pytest.raises(ActdbError, match="not built for metric 'l2'"):
        search(index, centres[:1], 5, "l2")
    with pytest.raises(ActdbError, match="dimensions"):
        search(index, centres[:1, :10], 5, "cosine")
    with pytest.raises(ActdbError, match="missing values"):
        search(index, rows[MISSING[0]], 5, "cosine")
    with pytest.raises(ActdbError, match="needs valid_ids and read_rows"):
        build_index(blocks_of(rows), DIM, "l2", "ivf")
    with pytest.raises(ActdbError, match="unknown index kind"):
        build_index(blocks_of(rows), DIM, "l2", "lsh")
