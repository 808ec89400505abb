"""Model registry: preprocessing per family, weights handling, `actdb layers`."""
from __future__ import annotations

import numpy as np
import pytest

from actdb.models import load_model, weights_digest
from actdb.models import preprocess


@pytest.mark.parametrize(
    "mode, keras_module",
    [("caffe", "vgg19"), ("caffe", "resnet50"), ("tf", "mobilenet_v2"), ("tf", "inception_v3"), ("torch", "densenet")],
)
def test_preprocessing_matches_keras_applications(mode, keras_module):
    import keras
    import tensorflow as tf

    pixels = np.random.default_rng(0).uniform(0, 255, (2, 8, 8, 3)).astype(np.float32)
    expected = getattr(keras.applications, keras_module).preprocess_input(pixels.copy())
    np.testing.assert_allclose(np.asarray(preprocess.get(mode)(tf.constant(pixels))), expected, rtol=1e-5, atol=1e-4)


def test_vgg_and_mobilenet_preprocessing_differ():
    pixels = np.full((1, 2, 2, 3), 200.0, np.float32)
    assert not np.allclose(preprocess.caffe(pixels), preprocess.tf_mode(pixels))


@pytest.mark.slow
def test_layers_lists_names_and_shapes(run_cli):
    result = run_cli("layers", "vgg19")
    assert result.exit_code == 0
    line = next(line for line in result.output.splitlines() if line.startswith("block5_conv4"))
    assert "Conv2D" in line and "(None, 14, 14, 512)" in line
    assert "predictions" in result.output


@pytest.mark.slow
def test_random_weights_are_seeded_and_recorded():
    first = load_model("mobilenet_v2", "random", "float32")
    again = load_model("mobilenet_v2", "random:0", "float32")
    other = load_model("mobilenet_v2", "random:1", "float32")
    assert first.weights_id == "random:seed=0" and other.weights_id == "random:seed=1"
    assert weights_digest(first.keras_model) == weights_digest(again.keras_model)
    assert weights_digest(first.keras_model) != weights_digest(other.keras_model)


def test_missing_imagenet_weights_name_the_file(tmp_path, monkeypatch, imagenet_tree, run_cli):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras-home"))
    result = run_cli("--store", tmp_path / "store", "ingest", imagenet_tree, "--model", "vgg16", "--quiet")
    assert result.exit_code != 0 and len(result.output.strip().splitlines()) == 1
    assert "vgg16_weights_tf_dim_ordering_tf_kernels.h5" in result.output and "--weights PATH" in result.output
    assert not (tmp_path / "store").exists()


@pytest.mark.slow
def test_weights_file_is_loaded_and_identified_by_hash(tmp_path, imagenet_tree, run_cli):
    import hashlib

    import actdb

    model = load_model("mobilenet_v2", "random:5", "float32").keras_model
    path = tmp_path / "mine.weights.h5"
    model.save_weights(path)
    store = tmp_path / "store"
    result = run_cli("--store", store, "ingest", imagenet_tree, "--model", "mobilenet_v2", "--weights", path,
                     "--layers", "out_relu", "--quiet", "--limit", 2)
    assert result.exit_code == 0, result.output
    weights = actdb.open(store).sql("SELECT weights, weights_digest FROM models").iloc[0]
    assert weights.weights == f"file:sha256={hashlib.sha256(path.read_bytes()).hexdigest()}"
    assert weights.weights_digest == weights_digest(model)
