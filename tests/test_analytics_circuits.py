"""actdb weights (kernel norms, expanded weights) and featuremaps, against NumPy and Keras by hand."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from conftest import TINY_SIZE, one_line_error, random_seed, write_image


@pytest.fixture(scope="module")
def circuit_model(tmp_path_factory):
    """conv0 -> conv1 (fused ReLU) -> conv2, and a branch conv0 -> max-pool -> conv_after_pool; a Dense head."""
    import keras

    with random_seed(3):
        inputs = keras.Input((TINY_SIZE, TINY_SIZE, 3))
        c0 = keras.layers.Conv2D(4, 3, activation="relu", name="conv0")(inputs)
        c1 = keras.layers.Conv2D(5, 3, activation="relu", name="conv1")(c0)
        c2 = keras.layers.Conv2D(6, 3, name="conv2")(c1)
        pooled = keras.layers.MaxPooling2D(2, name="pool")(c0)
        after_pool = keras.layers.Conv2D(3, 3, name="conv_after_pool")(pooled)
        head = keras.layers.Dense(7, name="dense")(keras.layers.GlobalAveragePooling2D(name="gap")(c2))
    model = keras.Model(inputs, [head, after_pool], name="circuit")
    path = tmp_path_factory.mktemp("circuit") / "circuit.keras"
    model.save(path)
    return path, {layer.name: [w.copy() for w in layer.get_weights()] for layer in model.layers if layer.weights}


def weights_json(run_cli, path, *args):
    result = run_cli("weights", "--model", path, "--preprocess", "none", "--json", *args)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_kernel_norms_equal_numpy_frobenius_norms(run_cli, circuit_model):
    path, weights = circuit_model
    kernel = weights["conv1"][0]
    expected = np.array([np.linalg.norm(kernel[:, :, c, 2], "fro") for c in range(kernel.shape[2])])
    report = weights_json(run_cli, path, "--layer", "conv1", "--unit", 2, "--top", 3)
    assert report["source"] == "conv0" and report["kind"] == "kernel"
    assert [row["channel"] for row in report["top"]] == np.argsort(-expected)[:3].tolist()
    np.testing.assert_allclose([row["norm"] for row in report["top"]], np.sort(expected)[::-1][:3], rtol=1e-6)
    np.testing.assert_allclose(report["top"][0]["map"], kernel[:, :, report["top"][0]["channel"], 2], rtol=1e-6)


def test_expanded_weights_of_adjacent_convs_are_the_kernel(circuit_model):
    from actdb.analytics.weights import incoming_weights

    path, weights = circuit_model
    result = incoming_weights(model=str(path), layer="conv2", unit=4, from_layer="conv1", preprocess="none")
    np.testing.assert_allclose(result.maps, weights["conv2"][0][:, :, :, 4], rtol=1e-5, atol=1e-7)


def test_expanded_weights_across_a_relu_are_the_composed_kernels(circuit_model):
    """conv0 -> conv1 (ReLU) -> conv2: the 5x5 full correlation of the two kernels, in NumPy."""
    from actdb.analytics.weights import incoming_weights

    path, weights = circuit_model
    k1, k2 = weights["conv1"][0], weights["conv2"][0][:, :, :, 1]
    composed = np.zeros((5, 5, k1.shape[2]))
    for i in range(3):
        for j in range(3):
            for p in range(3):
                for q in range(3):
                    composed[i + p, j + q] += k1[p, q] @ k2[i, j]
    result = incoming_weights(model=str(path), layer="conv2", unit=1, from_layer="conv0", preprocess="none")
    np.testing.assert_allclose(result.maps, composed, rtol=1e-4, atol=1e-6)
    assert result.ranking.channel.tolist() == np.argsort(-np.linalg.norm(composed, axis=(0, 1))).tolist()


def test_expanded_weights_through_max_pool_average_it(circuit_model):
    """Max-pool becomes 2x2 average-pool: each conv tap spreads a quarter over its 2x2 block."""
    from actdb.analytics.weights import incoming_weights

    path, weights = circuit_model
    kernel = weights["conv_after_pool"][0][:, :, :, 2]
    expected = np.repeat(np.repeat(kernel, 2, axis=0), 2, axis=1) / 4
    result = incoming_weights(model=str(path), layer="conv_after_pool", unit=2, from_layer="conv0", preprocess="none")
    np.testing.assert_allclose(result.maps, expected, rtol=1e-5, atol=1e-7)


def test_weights_plot_is_a_sensible_png(run_cli, circuit_model, tmp_path):
    path, _ = circuit_model
    plot = tmp_path / "w.png"
    weights_json(run_cli, path, "--layer", "conv2", "--unit", 0, "--expanded", "--from", "conv0", "--plot", plot)
    assert_sensible_png(plot)


@pytest.mark.parametrize("args, message", [
    (("--layer", "dense", "--unit", 0), "dense is a Dense, not a Conv2D"),
    (("--layer", "conv1", "--unit", 5), "--unit 5 is out of range: conv1 has channels 0..4"),
    (("--layer", "conv0", "--unit", 0, "--expanded", "--from", "conv2"), "--from conv2 is not before --layer conv0"),
    (("--layer", "conv2", "--unit", 0, "--expanded"), "--expanded and --from go together"),
    (("--layer", "conv_after_pool", "--unit", 0, "--expanded", "--from", "conv1"), "does not depend on conv1"),
])
def test_bad_weights_input_is_one_line(run_cli, circuit_model, args, message):
    path, _ = circuit_model
    result = run_cli("weights", "--model", path, "--preprocess", "none", *args)
    one_line_error(result, message)


def test_featuremaps_equal_a_direct_keras_forward_pass(run_cli, circuit_model, tmp_path):
    import keras

    path, _ = circuit_model
    image = write_image(tmp_path / "img.png", np.random.default_rng(4))
    result = run_cli("featuremaps", image, "--model", path, "--preprocess", "none", "--layer", "conv1",
                     "--channels", "1-3", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    model = keras.models.load_model(path, compile=False)
    pixels = np.asarray(Image.open(image).convert("RGB"), np.float32)[None]
    maps = keras.Model(model.input, model.get_layer("conv1").output)(pixels).numpy()[0][:, :, 1:4]
    assert report["map_shape"] == list(maps.shape[:2]) == [28, 28]
    rows = report["channels"]
    assert [r["channel"] for r in rows] == [1, 2, 3]
    np.testing.assert_allclose([r["mean"] for r in rows], maps.mean(axis=(0, 1)), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose([r["max"] for r in rows], maps.max(axis=(0, 1)), rtol=1e-5, atol=1e-6)
    peak = [np.unravel_index(np.argmax(maps[:, :, k]), maps.shape[:2]) for k in range(3)]
    assert [(r["max_row"], r["max_col"]) for r in rows] == [tuple(map(int, p)) for p in peak]


def test_featuremap_display_is_003s_show_layer_scaling():
    from actdb.analytics.featuremaps import display_values

    maps = np.random.default_rng(0).normal(3, 2, (6, 6, 2)).astype(np.float32)
    maps[:, :, 1] = 5.0  # a constant map: 003 divided by std 0 (NaN); here a flat grey
    expected = np.clip((maps[:, :, 0] - maps[:, :, 0].mean()) / maps[:, :, 0].std() * 64 + 128, 0, 255)
    shown = display_values(maps)
    np.testing.assert_array_equal(shown[:, :, 0], expected.astype(np.uint8))
    assert (shown[:, :, 1] == 128).all()


def test_featuremaps_plots_are_sensible_pngs(run_cli, circuit_model, tmp_path):
    path, _ = circuit_model
    image = write_image(tmp_path / "img.png", np.random.default_rng(5))
    for extra, name in ((("--channels", "0-4"), "grid.png"), (("--unit", 2), "unit.png")):
        result = run_cli("featuremaps", image, "--model", path, "--preprocess", "none", "--layer", "conv1",
                         *extra, "--plot", tmp_path / name)
        assert result.exit_code == 0, result.output
        assert_sensible_png(tmp_path / name)


@pytest.mark.parametrize("args, message", [
    (("--layer", "conv1", "--unit", 9), "--unit 9 is out of range: conv1 has channels 0..4"),
    (("--layer", "conv1", "--channels", "2-7"), "--channels 2-7: unit 7 is out of range: conv1 has channels 0..4"),
    (("--layer", "dense"), "dense has output shape (None, 7): feature maps need a spatial layer"),
])
def test_bad_featuremaps_input_is_one_line(run_cli, circuit_model, tmp_path, args, message):
    path, _ = circuit_model
    image = write_image(tmp_path / "img.png", np.random.default_rng(6))
    result = run_cli("featuremaps", image, "--model", path, "--preprocess", "none", *args)
    one_line_error(result, message)


def test_featuremaps_id_query_without_a_store_is_one_line(run_cli, circuit_model, monkeypatch):
    monkeypatch.delenv("ACTDB_STORE", raising=False)
    path, _ = circuit_model
    result = run_cli("featuremaps", "id:3", "--model", path, "--preprocess", "none", "--layer", "conv1")
    assert result.exit_code == 1 and "no store given" in result.output and "--store PATH" in result.output


def assert_sensible_png(path):
    with Image.open(path) as picture:
        assert picture.format == "PNG"
        width, height = picture.size
        pixels = np.asarray(picture.convert("L"), np.float32)
    assert 300 <= width <= 3000 and 200 <= height <= 2500, picture.size
    assert pixels.std() > 5  # something is drawn


def test_a_depthwise_unit_reads_one_input_channel():
    """EfficientNet-Lite's depthwise convs: output c*m + k reads only input channel c; said, not ranked."""
    import keras

    from actdb.analytics.weights import incoming
    from actdb.models import LoadedModel

    inputs = keras.Input((8, 8, 3))
    model = keras.Model(inputs, keras.layers.DepthwiseConv2D(3, depth_multiplier=2, name="dw")(inputs))
    kernel = model.get_layer("dw").kernel.numpy()  # (3, 3, 3 inputs, 2 per input)
    result = incoming(LoadedModel(model, "dw-model", "random", "none", 8), "dw", 5)
    assert result.ranking.channel.tolist() == [2]
    assert result.ranking.norm[0] == pytest.approx(np.linalg.norm(kernel[:, :, 2, 1]))
    assert any("reads only input channel 2" in warning for warning in result.warnings)
