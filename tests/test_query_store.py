"""actdb index / neighbors / classes on a real store, checked against SciPy brute force."""
from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.spatial.distance import cdist

import actdb
from conftest import TINY_PER_CLASS, invoke, make_imagenet_tree, one_line_error, write_image

ARRAY = ["--model", "tiny", "--layer", "conv2"]


@pytest.fixture(scope="module")
def store(tiny_store):
    for metric in ("l2", "cosine", "correlation"):
        assert invoke("--store", tiny_store, "index", *ARRAY, "--metric", metric).exit_code == 0
    return tiny_store


def stored(store):
    db = actdb.open(store)
    ids, vectors = db.activations("tiny", "conv2", return_ids=True)
    return db, ids, vectors


@pytest.mark.parametrize("metric, scipy_metric", [("l2", "euclidean"), ("cosine", "cosine"),
                                                  ("correlation", "correlation")])
def test_neighbors_equal_brute_force(store, run_cli, metric, scipy_metric):
    db, ids, vectors = stored(store)
    result = run_cli("--store", store, "neighbors", "id:3", "id:17", *ARRAY, "--metric", metric, "-k", 6, "--json")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    for query in (3, 17):
        distances = cdist(vectors[ids == query], vectors, scipy_metric)[0]
        order = np.lexsort((ids, distances))[:6]
        got = [r for r in rows if r["query"] == f"id:{query}"]
        assert [r["id"] for r in got] == ids[order].tolist()
        np.testing.assert_allclose([r["distance"] for r in got], distances[order], rtol=1e-4, atol=1e-5)


def test_a_stored_file_finds_itself_at_distance_zero(store, run_cli):
    db, ids, vectors = stored(store)
    path = db.images().set_index("id").loc[9, "path"]
    result = run_cli("--store", store, "neighbors", path, *ARRAY, "-k", 2, "--json")
    first = json.loads(result.stdout)[0]
    assert first["id"] == 9 and first["distance"] < 1e-4 and first["path"] == path


def test_file_query_vector_equals_the_ingested_row(store):
    from actdb.resolve import resolve

    db, ids, vectors = stored(store)
    paths = db.images().set_index("id").loc[[2, 20], "path"].tolist()
    resolved = resolve(db, db.array("tiny", "conv2"), paths)
    np.testing.assert_allclose(resolved.vectors, vectors[[2, 20]], rtol=1e-6, atol=1e-6)
    assert resolved.image_ids == [2, 20]


def test_where_filters_and_always_returns_k_rows(store, run_cli):
    db, ids, vectors = stored(store)
    result = run_cli("--store", store, "neighbors", "id:0", *ARRAY, "-k", 5, "--where",
                     "label IN ('tench', 'groenendael')", "--json")
    rows = json.loads(result.stdout)
    labels = db.images().set_index("id").label
    allowed = ids[labels.loc[ids].isin(["tench", "groenendael"]).to_numpy()]
    distances = cdist(vectors[ids == 0], vectors[np.isin(ids, allowed)])[0]
    assert [r["id"] for r in rows] == allowed[np.lexsort((allowed, distances))][:5].tolist()
    assert {r["label"] for r in rows} <= {"tench", "groenendael"}


def test_where_cannot_modify_the_store(store, run_cli):
    result = run_cli("--store", store, "neighbors", "id:0", *ARRAY, "--where", "1=1; DELETE FROM images")
    assert result.exit_code != 0 and "read-only" in result.output
    assert len(actdb.open(store).images()) == 3 * TINY_PER_CLASS


def test_classes_by_centroid_and_members_equal_numpy(store, run_cli):
    db, ids, vectors = stored(store)
    labels = db.images().set_index("id").label.loc[ids].to_numpy()
    query = vectors[ids == 11]
    result = run_cli("--store", store, "classes", "id:11", *ARRAY, "--json")
    got = {r["class"]: r["distance"] for r in json.loads(result.stdout)}
    for label in set(labels):  # the query image is left out of its own class's mean too
        centroid = vectors[(labels == label) & (ids != 11)].mean(axis=0, dtype=np.float64)
        assert got[label] == pytest.approx(float(np.linalg.norm(query[0] - centroid)), rel=1e-5)
    result = run_cli("--store", store, "classes", "id:11", *ARRAY, "--by", "median", "--json")
    got = {r["class"]: r for r in json.loads(result.stdout)}
    others = ids != 11  # the query image itself is left out of its class's statistics
    distances = cdist(query, vectors)[0]
    for label in set(labels):
        members = distances[(labels == label) & others]
        assert got[label]["distance"] == pytest.approx(float(np.median(members)), rel=1e-5)
        assert got[label]["min"] == pytest.approx(float(members.min()), rel=1e-5)
        assert got[label]["n_members"] == len(members)


def test_class_option_keeps_that_class_whatever_its_rank(store, run_cli):
    result = run_cli("--store", store, "classes", "id:0", *ARRAY, "--top", 1, "--class", "n01440764", "--json")
    rows = json.loads(result.stdout)
    assert [r["rank"] for r in rows][0] == 1 and "tench" in {r["class"] for r in rows}


@pytest.mark.parametrize(
    "args, message",
    [
        (["id:999"], "id:999 is not in the store"),
        (["id:x"], "write id:N"),
        (["missing.jpg"], "is not a file, id:N, optimized:NAME or a .npy vector"),
        (["optimized:node4"], "no optimized image 'node4'"),
        (["id:0", "--layer", "conv9"], "no stored array tiny/conv9/mean"),
        (["id:0", "--model", "vgg19"], "no stored array vgg19/conv2/mean"),
    ],
)
def test_bad_queries_are_one_line(store, run_cli, args, message):
    base = ["--store", store, "neighbors"]
    if "--layer" in args or "--model" in args:
        result = run_cli(*base, *args, *(["--model", "tiny"] if "--model" not in args else ["--layer", "conv2"]))
    else:
        result = run_cli(*base, *args, *ARRAY)
    assert result.exit_code != 0 and message in result.output, result.output
    assert len(result.output.strip().splitlines()) == 1


def test_npy_vector_query(store, run_cli, tmp_path):
    db, ids, vectors = stored(store)
    np.save(tmp_path / "v.npy", vectors[ids == 4][0])
    rows = json.loads(run_cli("--store", store, "neighbors", tmp_path / "v.npy", *ARRAY, "-k", 1, "--json").stdout)
    assert rows[0]["id"] == 4 and rows[0]["distance"] == pytest.approx(0, abs=1e-6)
    np.save(tmp_path / "wrong.npy", np.zeros(3))
    result = run_cli("--store", store, "neighbors", tmp_path / "wrong.npy", *ARRAY)
    assert result.exit_code != 0 and "16 values" in result.output


def test_no_index_yet_is_a_one_line_hint(tmp_path, tiny_model_path, run_cli):
    source = make_imagenet_tree(tmp_path / "train", per_class=1)
    run_cli("--store", tmp_path / "s", "ingest", source, "--model", tiny_model_path, "--preprocess", "tf",
            "--layers", "conv2", "--quiet")
    result = run_cli("--store", tmp_path / "s", "neighbors", "id:0")
    assert result.exit_code != 0 and "actdb index --model tiny --layer conv2" in result.output


def test_stale_index_warns_and_index_adds_only_new_rows(tmp_path, tiny_model_path, run_cli):
    source = make_imagenet_tree(tmp_path / "train", per_class=3)
    ingest = ["--store", tmp_path / "s", "ingest", source, "--model", tiny_model_path, "--preprocess", "tf",
              "--layers", "conv2", "--quiet"]
    run_cli(*ingest)
    assert "9 rows" in run_cli("--store", tmp_path / "s", "index").output
    write_image(source / "n01440764" / "extra.png", np.random.default_rng(11))
    run_cli(*ingest)
    stale = run_cli("--store", tmp_path / "s", "neighbors", "id:9", "-k", 3)
    assert "the index and class centroids are behind: 1 rows" in stale.output
    updated = run_cli("--store", tmp_path / "s", "index", "--json")
    report = json.loads(updated.stdout)
    assert report["action"] == "updated" and report["added"] == 1 and report["n_rows"] == 10
    fresh = json.loads(run_cli("--store", tmp_path / "s", "neighbors", "id:9", "-k", 1, "--json").stdout)
    assert fresh[0]["id"] == 9
    centroids = actdb.open(tmp_path / "s").sql("SELECT sum(members) AS n FROM class_centroids")
    assert centroids.n[0] == 10
    rebuilt = json.loads(run_cli("--store", tmp_path / "s", "index", "--rebuild", "--json").stdout)
    assert rebuilt["action"] == "built" and rebuilt["n_rows"] == 10


def test_an_approximate_index_reports_recall_that_brute_force_confirms(tmp_path):
    """ivf through the store: the recall it records is what a brute-force check finds."""
    from bench_support import synthetic_store

    store = synthetic_store(tmp_path, n_classes=30, per_class=60, dim=32)
    db = actdb.open(store)
    report = db.index(model="synthetic", layer="layer", kind="ivf", recall=0.9)
    assert report["kind"] == "ivf" and report["n_rows"] == 1800 and report["recall_at_10"] >= 0.9
    assert db.sql("SELECT kind, recall_at_10 FROM indexes").iloc[0].tolist() == ["ivf", report["recall_at_10"]]
    ids, vectors = db.activations("synthetic", "layer", return_ids=True)
    queries = ids[::45]
    found = db.neighbors([f"id:{i}" for i in queries], model="synthetic", layer="layer", k=11)
    truth = np.argsort(cdist(vectors[queries], vectors), axis=1)[:, :11]
    hits = [len(set(found[found["query"] == f"id:{q}"].id) & set(ids[t])) / 11 for q, t in zip(queries, truth)]
    assert np.mean(hits) >= report["recall_at_10"] - 0.1


def test_a_query_maps_an_ivf_index_instead_of_reading_it(tmp_path):
    """At 1.28M x 512 reading the 2.6 GB file took most of a `neighbors` call (and its memory):
    the inverted lists are memory-mapped read-only, and answer as the file read whole does."""
    import faiss

    from actdb.knn import index as faiss_index
    from actdb.store import derived
    from bench_support import synthetic_store

    store = synthetic_store(tmp_path, n_classes=30, per_class=60, dim=32)
    db = actdb.open(store)
    db.index(model="synthetic", layer="layer", kind="ivf", recall=0.9)
    record = derived.index_record(db, db.array("synthetic", "layer"), "l2")
    mapped = derived.open_index(db, record)
    lists = faiss.downcast_InvertedLists(faiss.downcast_index(mapped.index).invlists)
    assert isinstance(lists, faiss.OnDiskInvertedLists) and lists.read_only
    read = faiss_index.load_index(store / "indexes" / record.file)
    faiss_index.apply_search_params(read, json.loads(record.params))
    queries = db.activations("synthetic", "layer")[::50]
    for a, b in zip(faiss_index.search(mapped, queries, 10, "l2"), faiss_index.search(read, queries, 10, "l2")):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("kind", ["flat", "ivf"])
def test_the_centroids_a_build_computes_in_its_own_pass_are_numpys_class_means(tmp_path, kind):
    """A new index feeds the class centroids from the pass that adds its rows (no second read);
    unlabelled images belong to no class."""
    from bench_support import synthetic_store

    store = synthetic_store(tmp_path, n_classes=30, per_class=40, dim=16)
    db = actdb.open(store)
    with db.catalog.write() as con:
        con.execute("UPDATE images SET label = NULL WHERE id % 7 = 3")
    db = actdb.open(store)
    db.index(model="synthetic", layer="layer", kind=kind, recall=0.9)
    ids, vectors = db.activations("synthetic", "layer", return_ids=True)
    labels = db.sql("SELECT id, label FROM images ORDER BY id").set_index("id").label.loc[ids].to_numpy(object)
    kept = db.sql("SELECT label, members, centroid FROM class_centroids ORDER BY label")
    labelled = np.array([label is not None and label == label for label in labels])
    assert kept.label.tolist() == sorted(set(labels[labelled]))
    for label, members, centroid in kept.itertuples(index=False):
        rows = vectors[labels == label].astype(np.float64)
        assert members == len(rows)
        np.testing.assert_allclose(np.asarray(centroid), rows.mean(axis=0), rtol=1e-6, atol=1e-6)


@pytest.fixture
def no_model(monkeypatch):
    """Loading a model fails the test: what is checked here must be said before that."""
    import actdb.models

    def loaded(*args, **kwargs):
        raise AssertionError("a model was loaded before the input was checked")

    monkeypatch.setattr(actdb.models, "load_model", loaded)


@pytest.mark.parametrize("command", [["classes"], ["classes", "--by", "knn"], ["neighbors"]])
def test_a_missing_index_is_said_before_a_query_file_runs_through_the_model(store, tmp_path, no_model, command):
    image = write_image(tmp_path / "query.png", np.random.default_rng(3))
    one_line_error(invoke("--store", store, command[0], image, "--model", "tiny", "--layer", "fc", *command[1:]),
                   "no l2 index for tiny/fc")


@pytest.mark.parametrize("command", [["neighbors", *ARRAY], ["classes", *ARRAY], ["profile", *ARRAY],
                                     ["predict", "--models", "efficientnet_lite0"],
                                     ["trajectory", "--model", "tiny"]])
def test_an_unreadable_query_image_is_said_before_any_model_loads(store, tmp_path, no_model, command):
    image = tmp_path / "query.png"
    image.write_text("not a picture")
    one_line_error(invoke("--store", store, command[0], image, *command[1:]), f"cannot read image {image}")
