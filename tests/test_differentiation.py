"""actdb differentiation against Notebook 004's definition written here in NumPy/SciPy from the
recorded unit indices, and its invariances."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from scipy.spatial.distance import pdist

from conftest import TINY_SIZE, invoke, one_line_error, write_image
from test_analytics_circuits import assert_sensible_png



@pytest.fixture(scope="module")
def photo_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("diff") / "images"
    rng = np.random.default_rng(11)
    for i in range(7):
        write_image(folder / f"img_{i}.png", rng)
    return folder


@pytest.fixture(scope="module")
def report(tiny_model_path, photo_folder):
    args = ["differentiation", "noise:5", str(photo_folder), "--model", str(tiny_model_path), "--preprocess", "tf",
            "--layers", "all", "--units", "60", "--seed", "3", "--batch-size", "4", "--json"]
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def differentiation_004(responses: np.ndarray) -> float:
    """004: z-score each response vector, Euclidean distance of every pair, per dimension (d^2 / 2n), median."""
    z = (responses - responses.mean(axis=1, keepdims=True)) / responses.std(axis=1, keepdims=True)
    return float(np.median(pdist(z, "euclidean") ** 2 / (2 * responses.shape[1])))


def test_differentiation_equals_004_from_the_recorded_units(report, tiny_model_path, photo_folder):
    import keras

    model = keras.models.load_model(tiny_model_path, compile=False)
    files = sorted(photo_folder.glob("*.png"))
    images = {
        "noise:5": np.stack([np.random.default_rng([3, 1, i]).integers(0, 256, (TINY_SIZE, TINY_SIZE, 3))
                             for i in range(5)]).astype(np.float32),
        str(photo_folder): np.stack([np.asarray(Image.open(f).convert("RGB"), np.float32) for f in files]),
    }
    names = [layer.name for layer in model.layers]  # all: the input, conv1, pool1, conv2, gap, fc, predictions
    assert list(report["units"]) == names and len(names) == 7
    cut = keras.Model(model.input, [model.get_layer(name).output for name in names])
    rows = {(r["set"], r["layer"]): r for r in report["rows"]}
    for set_name, pixels in images.items():
        maps = cut(pixels / 127.5 - 1.0)
        for name, layer_maps in zip(names, maps):
            recorded = report["units"][name]
            flat = layer_maps.numpy().reshape(len(pixels), -1)
            assert list(layer_maps.shape[1:]) == recorded["shape"]
            indices = np.array(recorded["flat_indices"])
            assert len(indices) == min(60, flat.shape[1]) and len(np.unique(indices)) == len(indices)
            expected = differentiation_004(flat[:, indices])
            row = rows[(set_name, name)]
            assert row["images"] == len(pixels) and row["pairs"] == len(pixels) * (len(pixels) - 1) // 2
            np.testing.assert_allclose(row["differentiation"], expected, rtol=1e-4, atol=1e-6)


def test_units_are_sampled_once_per_layer_from_the_seed(report):
    from actdb.analytics.differentiation import sample_units

    fc = report["units"]["fc"]
    assert fc["shape"] == [12] and fc["flat_indices"] == list(range(12))  # smaller than --units: every unit
    conv2 = report["units"]["conv2"]
    assert conv2["flat_indices"] == sample_units(tuple(conv2["shape"]), 60, 3, "conv2").tolist()
    assert conv2["flat_indices"] != sample_units(tuple(conv2["shape"]), 60, 4, "conv2").tolist()


def test_differentiation_is_invariant_to_image_order_and_affine_rescaling():
    from actdb.analytics.differentiation import pairwise_differentiation

    rng = np.random.default_rng(0)
    responses = np.maximum(rng.normal(0, 1, (9, 40)), 0) + rng.normal(0, 0.1, (9, 1))
    value, pairs, constant = pairwise_differentiation(responses)
    assert pairs == 36 and constant == 0
    np.testing.assert_allclose(pairwise_differentiation(responses[rng.permutation(9)])[0], value, rtol=1e-12)
    scale, shift = rng.uniform(0.1, 10, (9, 1)), rng.normal(0, 5, (9, 1))
    np.testing.assert_allclose(pairwise_differentiation(responses * scale + shift)[0], value, rtol=1e-9)
    # and the value is 1 - r: identical rows give 0, a row and its negation give 2
    assert pairwise_differentiation(np.vstack([responses[0], responses[0]]))[0] == pytest.approx(0, abs=1e-12)
    assert pairwise_differentiation(np.vstack([responses[0], -responses[0]]))[0] == pytest.approx(2)


def test_a_constant_response_is_left_out_not_divided_by_zero():
    from actdb.analytics.differentiation import pairwise_differentiation

    responses = np.random.default_rng(1).normal(0, 1, (4, 10))
    responses[2] = 0.0  # a dead layer for one image
    value, pairs, constant = pairwise_differentiation(responses)
    assert constant == 1 and pairs == 3
    assert value == pytest.approx(pairwise_differentiation(np.delete(responses, 2, axis=0))[0])


def test_noise_normalized_by_itself_is_one(run_cli, tiny_model_path, photo_folder, tmp_path):
    plot = tmp_path / "d.png"
    result = run_cli("differentiation", photo_folder, "noise:4", "--model", tiny_model_path, "--preprocess", "tf",
                     "--layers", "conv1,conv2", "--units", 30, "--normalize-by", "noise:4", "--json", "--plot", plot)
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)["rows"]
    noise = [r for r in rows if r["set"] == "noise:4"]
    photos = [r for r in rows if r["set"] == str(photo_folder)]
    assert len(noise) == len(photos) == 2
    np.testing.assert_allclose([r["normalized"] for r in noise], 1.0)
    for photo, reference in zip(photos, noise):
        assert photo["normalized"] == pytest.approx(photo["differentiation"] / reference["differentiation"])
    assert_sensible_png(plot)


def test_where_sets_select_stored_images(run_cli, tiny_model_path, tmp_path):
    from conftest import make_imagenet_tree

    source = make_imagenet_tree(tmp_path / "train", per_class=3, seed=8)
    store = tmp_path / "store"
    assert run_cli("--store", store, "ingest", source, "--model", tiny_model_path, "--preprocess", "tf",
                   "--layers", "conv2", "--quiet").exit_code == 0
    result = run_cli("--store", store, "differentiation", "where:label = 'tench'", source / "n01440764",
                     "--model", tiny_model_path, "--preprocess", "tf", "--layers", "conv2", "--units", 40, "--json")
    assert result.exit_code == 0, result.output
    first, second = json.loads(result.stdout)["rows"]
    assert first["images"] == second["images"] == 3
    assert first["differentiation"] == pytest.approx(second["differentiation"], rel=1e-5)  # the same three files


@pytest.mark.parametrize("sets, message", [
    (("EMPTY",), "has 0 image(s): differentiation needs at least 2"),
    (("noise:1",), "write noise:N with N >= 2"),
    (("where:label = 'x'",), "no store given: name one (actdb --store PATH"),
    (("nowhere/",), "is not a folder of images, where:SQL or noise:N"),
])
def test_bad_sets_are_one_line(run_cli, tiny_model_path, tmp_path, monkeypatch, sets, message):
    monkeypatch.delenv("ACTDB_STORE", raising=False)
    (tmp_path / "EMPTY").mkdir()
    monkeypatch.chdir(tmp_path)
    result = run_cli("differentiation", *sets, "--model", tiny_model_path, "--preprocess", "tf")
    one_line_error(result, message)


def test_max_images_takes_a_seeded_sample_and_says_so(photo_folder):
    from actdb.analytics.differentiation import resolve_set

    first = resolve_set(str(photo_folder), max_images=3, seed=1)
    assert len(first) == 3 and first.listed == 7
    assert first.paths == sorted(first.paths) and set(first.paths) <= {str(p) for p in photo_folder.glob("*.png")}
    assert resolve_set(str(photo_folder), max_images=3, seed=1).paths == first.paths
    assert any(resolve_set(str(photo_folder), max_images=3, seed=s).paths != first.paths for s in range(2, 6))
    noise = resolve_set("noise:50", max_images=10)
    assert len(noise) == 10 and noise.listed == 50
