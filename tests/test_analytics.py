"""The analyses (distances, map, top-images, top-classes, profile) on a tiny-model store, every
number against an independent computation in the test: SciPy, scikit-learn, openTSNE,
NumPy argsort / mean / std, and a direct Keras forward pass for flat maps."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from scipy.spatial.distance import cdist, pdist

import actdb
from conftest import TINY_PER_CLASS, make_imagenet_tree, one_line_error

ARRAY = ["--model", "tiny", "--layer", "conv2"]
PER_CLASS = TINY_PER_CLASS  # 3 classes: the shared tiny store
SCIPY = {"l2": "euclidean", "cosine": "cosine", "correlation": "correlation"}


@pytest.fixture(scope="module")
def store(tiny_store):
    return tiny_store


def stored(store, reduce="mean"):
    db = actdb.open(store)
    ids, vectors = db.activations("tiny", "conv2", reduce=reduce, return_ids=True)
    labels = db.images().set_index("id").label.loc[ids].to_numpy()
    return db, ids, vectors.astype(np.float64), labels


def statistics(values) -> dict:
    values = np.asarray(values)
    return {"n": len(values), "mean": values.mean(), "median": np.median(values), "std": values.std(),
            "min": values.min(), "p5": np.percentile(values, 5), "p95": np.percentile(values, 95),
            "max": values.max()}


def assert_statistics(row: dict, values) -> None:
    expected = statistics(values)
    assert row["n"] == expected.pop("n")
    for name, value in expected.items():
        assert row[name] == pytest.approx(value, rel=1e-6, abs=1e-9), name


def assert_png(path, min_side=300) -> None:
    with Image.open(path) as image:
        assert image.format == "PNG"
        width, height = image.size
    assert min(width, height) >= min_side and max(width, height) < 6000


# --- distances --------------------------------------------------------------------------


@pytest.mark.parametrize("metric", ["l2", "cosine", "correlation"])
def test_all_pairs_statistics_equal_scipy_pdist(store, run_cli, metric):
    _, _, vectors, labels = stored(store)
    result = run_cli("--store", store, "distances", *ARRAY, "--random-classes", 3, "--per-class", 100,
                     "--pairs", "all", "--metric", metric, "--json")
    groups = {row["group"]: row for row in json.loads(result.stdout)["pairs"]}
    distances = pdist(vectors, SCIPY[metric])
    first, second = np.triu_indices(len(vectors), k=1)
    same = labels[first] == labels[second]
    assert_statistics(groups["random pairs"], distances)
    assert_statistics(groups["same class"], distances[same])
    assert_statistics(groups["different class"], distances[~same])


def test_query_distances_percentiles_and_ranks_equal_scipy(store, run_cli, tmp_path):
    db, ids, vectors, labels = stored(store)
    vector = tmp_path / "q.npy"
    np.save(vector, vectors[ids == 4][0] * 1.5 + 0.1)
    result = run_cli("--store", store, "distances", *ARRAY, "--classes", "tench,sea_cucumber", "--random-classes", 1,
                     "--per-class", 100, "--query", "id:4", "--query", vector, "--json")
    rows = pd.DataFrame(json.loads(result.stdout)["queries"])
    for query, q_vector, own in (("id:4", vectors[ids == 4][0], 4), (str(vector), np.load(vector), None)):
        got = rows[rows["query"] == query].set_index("target")
        medians = {}
        for label in ("tench", "sea_cucumber", "groenendael"):
            members = (labels == label) & (ids != own)
            distances = cdist(q_vector[None], vectors[members])[0]
            assert_statistics(got.loc[label].to_dict(), distances)
            within = pdist(vectors[labels == label])
            assert got.loc[label, "percentile"] == pytest.approx(100 * np.mean(within < np.median(distances)))
            medians[label] = np.median(distances)
        mix = cdist(q_vector[None], vectors[(labels == "groenendael") & (ids != own)])[0]
        assert_statistics(got.loc["random mix"].to_dict(), mix)  # one random class: the only one left
        ranked = sorted(medians, key=medians.get)
        assert got.loc[ranked, "rank"].tolist() == [1, 2, 3]


def test_sampled_pairs_belong_to_their_group_and_follow_the_seed(store):
    db, _, vectors, labels = stored(store)
    same_set = {}
    full = cdist(vectors, vectors)
    same_mask = labels[:, None] == labels[None, :]
    np.fill_diagonal(same_mask, False)
    report = db.distances(model="tiny", layer="conv2", random_classes=3, per_class=100, pairs=400, seed=3)
    for group, allowed in (("same class", full[same_mask]), ("different class", full[~(labels[:, None] == labels)])):
        sampled = report.pair_samples[group]
        assert len(sampled) == 400
        nearest = np.abs(sampled[:, None] - allowed[None, :]).min(axis=1)
        assert nearest.max() < 1e-9 * max(1.0, allowed.max()), group  # every sample is a pair of that group
        same_set[group] = sampled
    again = db.distances(model="tiny", layer="conv2", random_classes=3, per_class=100, pairs=400, seed=3)
    other = db.distances(model="tiny", layer="conv2", random_classes=3, per_class=100, pairs=400, seed=4)
    np.testing.assert_array_equal(again.pair_samples["same class"], same_set["same class"])
    assert not np.array_equal(other.pair_samples["same class"], same_set["same class"])


def test_flat_distances_use_whole_feature_maps_from_a_direct_forward_pass(store, tiny_model_path):
    """--reduce flat is the notebooks' flat maps, computed here with Keras by hand; the means differ."""
    import keras

    db = actdb.open(store)
    report = db.distances(model="tiny", layer="conv2", reduce="flat", queries=["id:2"], classes=["tench"], random_classes=0,
                          per_class=4, pairs="all", seed=0)
    model = keras.models.load_model(tiny_model_path)
    cut = keras.Model(model.inputs, model.get_layer("conv2").output)
    sample = report.selection.ids
    assert len(sample) == 4 and set(report.selection.labels) == {"tench"}
    paths = db.images().set_index("id").path.loc[sample]
    pixels = np.stack([np.asarray(Image.open(p).convert("RGB"), np.float32) for p in paths])
    maps = cut([pixels / 127.5 - 1.0]).numpy().reshape(4, -1).astype(np.float64)
    assert maps.shape[1] == 13 * 13 * 16  # 32 px: conv 30, pool 15, conv 13
    assert_statistics(report.pairs.set_index("group").loc["same class"].to_dict(), pdist(maps))
    query = cut([np.asarray(Image.open(db.images().set_index("id").path[2]).convert("RGB"), np.float32)[None]
                  / 127.5 - 1.0]).numpy().reshape(1, -1)
    row = report.queries.set_index("target").loc["tench"].to_dict()
    assert_statistics(row, cdist(query, maps[sample != 2])[0])
    means = db.distances(model="tiny", layer="conv2", queries=["id:2"], classes=["tench"], random_classes=0, per_class=4,
                         pairs="all", seed=0)
    assert abs(means.pairs["mean"][0] - report.pairs["mean"][0]) > 1.0  # different spaces, different numbers


def test_distances_plot_is_a_png(store, run_cli, tmp_path):
    out = tmp_path / "d.png"
    result = run_cli("--store", store, "distances", *ARRAY, "--classes", "tench", "--random-classes", 2,
                     "--query", "id:1", "--plot", out)
    assert "same class" in result.output and "random mix" in result.output
    assert_png(out)


# --- map --------------------------------------------------------------------------------


def test_pca_map_equals_sklearn_up_to_sign_and_draws_the_query_where_the_table_says(store, tmp_path):
    from sklearn.decomposition import PCA

    from actdb import figures
    from actdb.analytics import plots

    db, ids, vectors, labels = stored(store)
    frame = db.map(model="tiny", layer="conv2", method="pca", per_class=100, highlight=["id:5", "id:22"])
    images = frame[frame.kind == "image"].set_index("id").loc[ids]
    pca = PCA(n_components=2).fit(vectors)
    expected = pca.transform(vectors)
    signs = np.sign(np.sum(expected * images[["x", "y"]].to_numpy(), axis=0))
    np.testing.assert_allclose(images[["x", "y"]].to_numpy(), expected * signs, rtol=1e-5, atol=1e-6)
    queries = frame[frame.kind == "query"]
    np.testing.assert_allclose(queries[["x", "y"]].to_numpy(), pca.transform(vectors[[5, 22]]) * signs,
                               rtol=1e-5, atol=1e-6)
    figure = plots.map_figure(frame)
    np.testing.assert_allclose(plots.highlighted_offsets(figure.axes[0]), queries[["x", "y"]].to_numpy())
    assert_png(figures.save(figure, tmp_path / "map.png"))


def test_tsne_map_equals_opentsne_for_the_seed_and_reuses_the_fit(store, run_cli, tmp_path):
    from openTSNE import TSNE

    from actdb.analytics.maps import tsne_perplexity

    db, ids, vectors, labels = stored(store)
    out = tmp_path / "coords.csv"
    result = run_cli("--store", store, "map", *ARRAY, "--method", "tsne", "--highlight", "id:7", "--seed", 2,
                     "--out", out, "--plot", tmp_path / "tsne.png")
    assert "fitted in" in result.output
    frame = pd.read_csv(out)
    images = frame[frame.kind == "image"]
    assert sorted(images.id) == ids.tolist()
    embedding = TSNE(perplexity=tsne_perplexity(len(vectors)), random_state=2, n_jobs=1).fit(
        vectors[np.searchsorted(ids, images.id)])  # the points in the map's order
    np.testing.assert_allclose(images[["x", "y"]].to_numpy(), np.asarray(embedding), rtol=1e-4, atol=1e-4)
    assert_png(tmp_path / "tsne.png")
    again = db.map(model="tiny", layer="conv2", method="tsne", highlight=["id:9"], seed=2)
    assert again.attrs["cached"] and len(list((store / "maps").glob("tsne-*.npy"))) == 1
    np.testing.assert_allclose(again[again.kind == "image"][["x", "y"]].to_numpy(), images[["x", "y"]].to_numpy(),
                               rtol=1e-6)
    placed = again[again.kind == "query"][["x", "y"]].to_numpy()
    np.testing.assert_allclose(placed, embedding.transform(vectors[ids == 9], k=25, perplexity=5), rtol=1e-4,
                               atol=1e-4)


def test_centroid_map_maps_class_means(store):
    from sklearn.decomposition import PCA

    db, ids, vectors, labels = stored(store)
    frame = db.map(model="tiny", layer="conv2", method="pca", centroids=True)
    classes = sorted(set(labels))
    means = np.stack([vectors[labels == c].mean(axis=0) for c in classes])
    assert frame.label.tolist() == classes and set(frame.kind) == {"centroid"}
    expected = PCA(n_components=2).fit_transform(means)
    np.testing.assert_allclose(np.abs(frame[["x", "y"]].to_numpy()), np.abs(expected), rtol=1e-4, atol=1e-5)


# --- top-images / top-classes ------------------------------------------------------------


@pytest.mark.parametrize("reduce, bottom", [("mean", False), ("max", False), ("max", True)])
def test_top_images_equal_a_full_argsort(store, run_cli, tmp_path, reduce, bottom):
    db, ids, vectors, labels = stored(store, reduce)
    args = ["--store", store, "top-images", *ARRAY, "--reduce", reduce, "--unit", 3, "-k", 7, "--json"]
    result = run_cli(*args, *(["--bottom"] if bottom else []))
    rows = json.loads(result.stdout)
    assert ("--reduce max" in result.stderr) == (reduce == "mean")  # the spatial max is recommended where stored
    column = vectors[:, 3]
    order = np.lexsort((ids, column if bottom else -column))[:7]
    assert [r["id"] for r in rows] == ids[order].tolist()
    np.testing.assert_allclose([r["value"] for r in rows], column[order], rtol=1e-6)
    assert [r["label"] for r in rows] == labels[order].tolist()


def test_top_images_where_and_montage(store, run_cli, tmp_path):
    db, ids, vectors, labels = stored(store, "max")
    out = tmp_path / "montage.png"
    result = run_cli("--store", store, "top-images", *ARRAY, "--reduce", "max", "--unit", 1, "-k", 4, "--where",
                     "label = 'groenendael'", "--montage", out)
    members = labels == "groenendael"
    best = ids[members][np.lexsort((ids[members], -vectors[members, 1]))[:4]]
    shown = [int(line.split()[1]) for line in result.stdout.splitlines()[2:]]
    assert shown == best.tolist()
    assert_png(out, min_side=200)  # one row of four thumbnails


def test_streaming_top_k_over_many_blocks_with_ties():
    from actdb.analytics.top_images import running_top_k

    rng = np.random.default_rng(0)
    ids = np.arange(5000)
    values = np.round(rng.normal(size=(5000, 3)), 1)  # many ties
    blocks = [(ids[s:s + 300], None, values[s:s + 300]) for s in range(0, 5000, 300)]
    for bottom in (False, True):
        got_ids, got_values = running_top_k(iter(blocks), 2, 50, bottom)
        order = np.lexsort((ids, values[:, 2] if bottom else -values[:, 2]))[:50]
        np.testing.assert_array_equal(got_ids, ids[order])
        np.testing.assert_array_equal(got_values, values[order, 2])


@pytest.mark.parametrize("by", ["mean", "median", "topk-share"])
def test_top_classes_equal_numpy(store, run_cli, by):
    db, ids, vectors, labels = stored(store)
    rows = json.loads(run_cli("--store", store, "top-classes", *ARRAY, "--unit", 6, "--by", by, "-k", 12,
                              "--json").output)
    column = vectors[:, 6]
    if by == "topk-share":
        top = labels[np.lexsort((ids, -column))[:12]]
        scores = {c: np.mean(top == c) for c in set(top)}
    else:
        statistic = np.mean if by == "mean" else np.median
        scores = {c: statistic(column[labels == c]) for c in set(labels)}
    expected = sorted(scores, key=lambda c: (-scores[c], c))
    assert [r["class"] for r in rows] == expected
    np.testing.assert_allclose([r["score"] for r in rows], [scores[c] for c in expected], rtol=1e-5)


# --- profile and unit statistics ---------------------------------------------------------


def test_profile_z_scores_equal_numpy(store, run_cli, tmp_path):
    db, ids, vectors, labels = stored(store)
    out = tmp_path / "profile.png"
    rows = pd.DataFrame(json.loads(run_cli("--store", store, "profile", "id:12", *ARRAY, "--vs-class", "tench",
                                           "--json", "--plot", out).stdout))
    mean, std = vectors.mean(axis=0), vectors.std(axis=0)
    z = (vectors[ids == 12][0] - mean) / np.where(std > 0, std, np.nan)
    np.testing.assert_allclose(rows.value, vectors[ids == 12][0], rtol=1e-6)
    np.testing.assert_allclose(rows.z, z, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(rows.class_mean, vectors[labels == "tench"].mean(axis=0), rtol=1e-5)
    order = np.lexsort((np.arange(len(z)), -np.nan_to_num(z, nan=-np.inf)))
    assert rows.set_index("unit").loc[order, "rank"].tolist() == list(range(1, len(z) + 1))
    assert_png(out)
    table = run_cli("--store", store, "profile", "id:12", *ARRAY, "--top", 3).output
    assert [int(line.split()[0]) for line in table.splitlines()[-3:]] == order[:3].tolist()


def test_unit_statistics_stream_in_blocks_and_skip_failed_rows():
    from actdb.analytics.unitstats import compute

    rng = np.random.default_rng(1)
    vectors = rng.normal(5, 3, (1000, 4)).astype(np.float32)
    vectors[[10, 500]] = np.nan
    codes = rng.integers(-1, 3, 1000).astype(np.int32)
    blocks = [(np.arange(s, s + 64), codes[s:s + 64], vectors[s:s + 64]) for s in range(0, 1000, 64)]
    stats = compute(iter(blocks), ["a", "b", "c"], 4)
    finite = np.isfinite(vectors).all(axis=1)
    np.testing.assert_allclose(stats.mean, vectors[finite].mean(axis=0, dtype=np.float64), rtol=1e-10)
    np.testing.assert_allclose(stats.std, vectors[finite].astype(np.float64).std(axis=0), rtol=1e-10)
    for position, code in enumerate(range(3)):
        members = vectors[finite & (codes == code)].astype(np.float64)
        assert stats.class_members[position] == len(members)
        np.testing.assert_allclose(stats.class_mean[position], members.mean(axis=0), rtol=1e-10)
        np.testing.assert_allclose(stats.class_std[position], members.std(axis=0), rtol=1e-10)


def test_unit_statistics_are_kept_and_refreshed_when_rows_are_added(tmp_path, tiny_model_path, run_cli):
    import duckdb

    source = make_imagenet_tree(tmp_path / "train", per_class=3, seed=4)
    store = tmp_path / "store"
    ingest = ["--store", store, "ingest", source, "--model", tiny_model_path, "--preprocess", "tf",
              "--layers", "conv2", "--quiet"]
    run_cli(*ingest, "--classes", "tench,groenendael")
    with duckdb.connect(str(store / "catalog.duckdb")) as con:  # a store made before the table existed
        con.execute("DROP TABLE unit_stats")
    db = actdb.open(store)
    first = db.unit_stats(model="tiny", layer="conv2")
    assert db.sql("SELECT members FROM unit_stats WHERE class = '*'").members[0] == 6
    run_cli(*ingest)  # adds the third class
    db, ids, vectors, labels = stored(store)
    refreshed = db.unit_stats(model="tiny", layer="conv2")
    assert first.members == 6 and refreshed.members == 9 == len(vectors)
    np.testing.assert_allclose(refreshed.mean, vectors.mean(axis=0), rtol=1e-5)
    np.testing.assert_allclose(refreshed.std, vectors.std(axis=0), rtol=1e-5, atol=1e-7)
    assert db.sql("SELECT max(rows_done) AS n FROM unit_stats").n[0] == 9


# --- bad input ----------------------------------------------------------------------------


def test_bad_input_is_a_one_line_error(store, run_cli, tmp_path):
    s = ["--store", store]
    one_line_error(run_cli(*s, "top-images", *ARRAY, "--unit", 16), "unit 16", "0..15")
    one_line_error(run_cli(*s, "top-classes", *ARRAY, "--unit", -1), "unit -1")
    one_line_error(run_cli(*s, "profile", "id:1", *ARRAY, "--vs-class", "okapi"), "class 'okapi'", "tench")
    one_line_error(run_cli(*s, "distances", *ARRAY, "--classes", "okapi"), "class 'okapi'")
    one_line_error(run_cli(*s, "profile", tmp_path / "missing.jpg", *ARRAY), "is not a file")
    one_line_error(run_cli(*s, "map", *ARRAY, "--highlight", "id:999"), "id:999 is not in the store")
    one_line_error(run_cli(*s, "distances", "--model", "vgg19", "--layer", "conv2"), "no stored array vgg19/conv2")
    one_line_error(run_cli(*s, "top-images", "--model", "tiny", "--layer", "conv1", "--unit", 0),
                   "no stored array tiny/conv1")
    one_line_error(run_cli(*s, "distances", *ARRAY, "--per-class", 0), "--per-class must be at least 1")
    one_line_error(run_cli(*s, "map", *ARRAY, "--per-class", 0), "--per-class must be at least 1")
    one_line_error(run_cli(*s, "distances", *ARRAY, "--pairs", "some"), "--pairs")
    one_line_error(run_cli(*s, "map", *ARRAY, "--out", tmp_path / "x.txt"), ".parquet or .csv")
    one_line_error(run_cli(*s, "distances", *ARRAY, "--reduce", "flat", "--max-images", 5), "--max-images 5")
    assert not (tmp_path / "x.txt").exists()


def test_umap_without_the_extra_says_how_to_install_it(store, run_cli):
    import importlib.util

    if importlib.util.find_spec("umap") is not None:
        pytest.skip("umap-learn is installed here")
    one_line_error(run_cli("--store", store, "map", *ARRAY, "--method", "umap"), "pip install 'actdb[umap]'")


# Runs several commands in one fresh interpreter and reports whether TensorFlow was imported.
PROBE = """
import json, sys
from click.testing import CliRunner
from actdb.cli import cli
store, commands = sys.argv[1], json.loads(sys.argv[2])
codes = [CliRunner().invoke(cli, ["--store", store, *command]).exit_code for command in commands]
print(json.dumps({"exit_codes": codes, "tensorflow": "tensorflow" in sys.modules}))
"""


@pytest.mark.slow
def test_analytics_over_stored_rows_do_not_import_tensorflow(store, tmp_path):
    import subprocess
    import sys

    commands = [
        ["distances", *ARRAY, "--query", "id:1", "--plot", str(tmp_path / "d.png")],
        ["map", *ARRAY, "--method", "tsne", "--highlight", "id:2", "--plot", str(tmp_path / "m.png")],
        ["top-images", *ARRAY, "--unit", "0", "--montage", str(tmp_path / "t.png")],
        ["top-classes", *ARRAY, "--unit", "0", "--by", "median"],
        ["profile", "id:3", *ARRAY, "--plot", str(tmp_path / "p.png")],
    ]
    done = subprocess.run([sys.executable, "-c", PROBE, str(store), json.dumps(commands)], capture_output=True,
                          text=True, timeout=300)
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["exit_codes"] == [0] * len(commands)
    assert not report["tensorflow"]
    assert all((tmp_path / name).stat().st_size > 10_000 for name in ("d.png", "m.png", "t.png", "p.png"))
