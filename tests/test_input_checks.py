"""Input checked before work, and the wrong answers of the trust review fixed: each test here
reproduces a finding (it failed before its fix) and checks the answer independently."""
from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.spatial.distance import cdist, pdist

import actdb
from conftest import invoke, one_line_error

ARRAY = ["--model", "tiny", "--layer", "conv2"]


@pytest.fixture(scope="module")
def store(tiny_store):
    assert invoke("--store", tiny_store, "index", *ARRAY).exit_code == 0
    return tiny_store


def stored(store):
    db = actdb.open(store)
    ids, vectors = db.activations("tiny", "conv2", return_ids=True)
    labels = db.sql("SELECT id, label FROM images ORDER BY id").set_index("id").label.loc[ids].to_numpy()
    return db, ids, vectors.astype(np.float64), labels


@pytest.mark.parametrize("seed", ["-1", "4294967296"])
@pytest.mark.parametrize("command", [["distances", *ARRAY], ["map", *ARRAY], ["compare", "--model", "tiny",
                                                                          "--layers", "conv2,fc"]])
def test_seeds_out_of_range_are_one_line(store, command, seed):
    one_line_error(invoke("--store", store, *command, "--seed", seed), "--seed", seed)


def test_api_checks_as_the_cli_does_and_names_the_keyword(store):
    db = actdb.open(store)
    for call, words in [(lambda: db.distances(model="tiny", layer="conv2", seed=-1), "seed=-1"),
                        (lambda: db.compare(model="tiny", layers="conv2,fc", max_images=-5), "max_images=-5"),
                        (lambda: db.top_images(model="tiny", layer="conv2", unit=3.7), "unit=3.7"),
                        (lambda: db.top_classes(model="tiny", layer="conv2", unit=0, top=-2), "top=-2"),
                        (lambda: db.index(model="tiny", layer="conv2", recall=2.0), "recall=2.0"),
                        (lambda: db.distances(model="tiny", layer="conv2", pairs=0), "pairs=0")]:
        with pytest.raises(actdb.ActdbError) as error:
            call()
        assert words in str(error.value) and "--" not in str(error.value).split(":")[0], str(error.value)


def test_a_string_is_one_class_and_numpy_queries_work_everywhere(store):
    db, ids, vectors, labels = stored(store)
    report = db.distances(model="tiny", layer="conv2", classes="tench", random_classes=0, pairs="all",
                          queries=vectors[3].astype(np.float32))
    assert report.selection.named == ["tench"]
    same = report.pairs.set_index("group").loc["same class"]
    np.testing.assert_allclose(same["mean"], pdist(vectors[labels == "tench"]).mean(), rtol=1e-5)
    placed = db.map(model="tiny", layer="conv2", highlight=vectors[:2].astype(np.float32))
    assert (placed.kind == "query").sum() == 2


def test_more_pairs_than_exist_takes_every_distinct_pair_once(store):
    db, ids, vectors, labels = stored(store)
    result = json.loads(invoke("--store", store, "distances", *ARRAY, "--pairs", 100000000, "--json").stdout)
    groups = {g["group"]: g for g in result["pairs"]}
    n = len(ids)
    assert groups["random pairs"]["n"] == n * (n - 1) // 2
    same = sum(int((labels == c).sum()) * (int((labels == c).sum()) - 1) // 2 for c in np.unique(labels))
    assert groups["same class"]["n"] == same
    np.testing.assert_allclose(groups["random pairs"]["mean"], pdist(vectors).mean(), rtol=1e-5)


def test_a_repeated_query_is_answered_once_with_ranks_one_to_k(store):
    result = json.loads(invoke("--store", store, "distances", *ARRAY, "--query", "id:3", "--query", "id:3",
                               "--json").stdout)
    ranks = sorted(r["rank"] for r in result["queries"] if r["rank"] is not None)
    assert ranks == [1, 2, 3]
    rows = json.loads(invoke("--store", store, "neighbors", "id:3", "id:3", *ARRAY, "-k", 4, "--json").stdout)
    assert [r["rank"] for r in rows] == [1, 2, 3, 4]
    profile = json.loads(invoke("--store", store, "profile", "id:3", "id:3", *ARRAY, "--json").stdout)
    assert len(profile) == 16 and sorted(r["unit"] for r in profile) == list(range(16))


def test_a_member_querys_percentile_leaves_its_own_pairs_out_of_the_reference(store):
    db, ids, vectors, labels = stored(store)
    result = json.loads(invoke("--store", store, "distances", *ARRAY, "--classes", "tench", "--random-classes", 0,
                               "--query", "id:3", "--json").stdout)
    row = next(r for r in result["queries"] if r["target"] == "tench")
    members = np.flatnonzero(labels == "tench")
    others = [m for m in members if ids[m] != 3]
    median = np.median(cdist(vectors[ids == 3], vectors[others])[0])
    reference = pdist(vectors[others])  # the class's pairs without the query's own
    assert row["median"] == pytest.approx(median, rel=1e-5)
    assert row["percentile"] == pytest.approx(100.0 * np.mean(reference < median), abs=1e-9)


def test_cka_over_too_few_images_says_so(store):
    result = invoke("--store", store, "compare", "--model", "tiny", "--layers", "conv2,fc", "--max-images", 2)
    assert result.exit_code == 0 and "warning: CKA over 2 images says little" in result.stderr


@pytest.mark.parametrize("values, message", [(np.ones(16, complex), "complex numbers"),
                                             (np.full(16, 1e39), "beyond float32's range")])
def test_npy_queries_are_named_for_what_they_hold(store, tmp_path, values, message):
    path = tmp_path / "q.npy"
    np.save(path, values)
    one_line_error(invoke("--store", store, "neighbors", path, *ARRAY), message)


def test_an_infinite_step_size_is_refused_before_work(tmp_path, tiny_model_path):
    out = tmp_path / "never"
    one_line_error(invoke("optimize", "--model", tiny_model_path, "--preprocess", "tf", "--layer", "conv2",
                          "--units", 0, "--lr", "inf", "--out", out), "--lr inf", "finite positive")
    assert not out.exists()


@pytest.mark.slow
def test_default_names_keep_other_weights_apart(tmp_path):
    store = tmp_path / "store"
    base = ["--store", store, "optimize", "--model", "efficientnet_lite0", "--layer", "top_activation",
            "--units", 0, "--steps", 2, "--size", 64, "--quiet"]
    assert invoke(*base, "--weights", "random:1").exit_code == 0
    result = invoke(*base)  # ImageNet weights: another image, not a clash with the random one
    assert result.exit_code == 0, result.output
    names = sorted(actdb.open(store).optimized().name)
    assert len(names) == 2 and any("random-1" in n for n in names), names


@pytest.mark.parametrize("command", [["report"], ["report", "--model", "tiny"],
                                     ["trajectory", "id:0", "--model", "tiny"], ["compare", "--model", "tiny"]])
def test_every_command_refuses_an_unknown_layer_among_known_ones(store, command):
    """`--layers conv2,nosuch` named conv2 and silently dropped nosuch in `report`."""
    one_line_error(invoke("--store", store, *command, "--layers", "conv2,nosuch"), "no stored array", "nosuch")
    assert not (store / "report").exists()
