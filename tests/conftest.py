"""Shared fixtures: tiny models and small labelled image sets, built offline in the tests."""
from __future__ import annotations

import os
from contextlib import contextmanager

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from actdb.cli import cli

WNIDS = {"n02321529": "sea_cucumber", "n02105056": "groenendael", "n01440764": "tench"}
TINY_SIZE = 32


def write_image(path: Path, rng: np.random.Generator, size=(TINY_SIZE, TINY_SIZE)) -> Path:
    """A PNG with some structure (a gradient plus noise), so different images differ."""
    h, w = size
    ramp = np.linspace(0, 255, w)[None, :, None] * rng.random(3)[None, None, :]
    pixels = np.clip(ramp + rng.normal(0, 40, (h, w, 3)), 0, 255).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return path


def make_imagenet_tree(root: Path, per_class: int, seed: int = 0, size=(TINY_SIZE, TINY_SIZE)) -> Path:
    rng = np.random.default_rng(seed)
    for wnid in WNIDS:
        for i in range(per_class):
            write_image(root / wnid / f"{wnid}_{i:04d}.png", rng, size)
    return root


@contextmanager
def random_seed(seed: int):
    """`keras.utils.set_random_seed(seed)` for one block: Python's, NumPy's, TensorFlow's and
    Keras' global random state are put back afterwards, so a fixture that builds a seeded model
    leaves the randomness of later tests as it found it."""
    import random

    import keras
    import tensorflow as tf
    from keras.src.backend.common import global_state  # Keras keeps its global seed here, with no public getter

    keras_names = ("global_random_seed", "global_seed_generator")
    saved = (random.getstate(), np.random.get_state(), tf.compat.v1.get_seed(None)[0],
             [global_state.get_global_attribute(name) for name in keras_names])
    keras.utils.set_random_seed(seed)
    try:
        yield
    finally:
        python, numpy, tensorflow, keras_state = saved
        random.setstate(python)
        np.random.set_state(numpy)
        tf.random.set_seed(tensorflow)
        for name, value in zip(keras_names, keras_state):
            global_state.set_global_attribute(name, value)


@pytest.fixture(scope="session", autouse=True)
def actdb_cache(tmp_path_factory):
    """The whole session converts pretrained weights into a cache of its own, never into the
    user's ~/.cache (which may not even be writable); each variant converts once."""
    with pytest.MonkeyPatch.context() as patch:
        cache = tmp_path_factory.mktemp("actdb-cache")
        patch.setenv("ACTDB_CACHE", str(cache))
        yield cache


@pytest.fixture(scope="session")
def tiny_model_path(tmp_path_factory) -> Path:
    """A small conv net with a classifier head, saved as .keras; random weights, seeded."""
    import keras

    with random_seed(1):
        inputs = keras.Input((TINY_SIZE, TINY_SIZE, 3))
        x = keras.layers.Conv2D(8, 3, activation="relu", name="conv1")(inputs)
        x = keras.layers.MaxPooling2D(name="pool1")(x)
        x = keras.layers.Conv2D(16, 3, activation="relu", name="conv2")(x)
        x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
        x = keras.layers.Dense(12, activation="relu", name="fc")(x)
        outputs = keras.layers.Dense(1000, activation="softmax", name="predictions")(x)
    path = tmp_path_factory.mktemp("models") / "tiny.keras"
    keras.Model(inputs, outputs, name="tiny").save(path)
    return path


@pytest.fixture
def imagenet_tree(tmp_path) -> Path:
    return make_imagenet_tree(tmp_path / "train", per_class=4)


def invoke(*args):
    """The CLI in-process, arguments as strings; returns the click Result."""
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture
def run_cli():
    return invoke


def one_line_error(result, *fragments) -> str:
    """A user mistake: exit code 1, one line (`Error: ...`) naming each fragment, no traceback."""
    assert result.exit_code == 1, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


TINY_PER_CLASS = 10  # the shared tiny store: 3 classes x 10 images


@pytest.fixture(scope="session")
def tiny_store_template(tmp_path_factory, tiny_model_path) -> Path:
    """Built once per session: the tiny model's conv2 (mean and max) and fc (mean) over
    3 x 10 labelled images. Tests use a copy (`tiny_store`), never this one."""
    root = tmp_path_factory.mktemp("tiny-store")
    source = make_imagenet_tree(root / "train", per_class=TINY_PER_CLASS, seed=11)
    store = root / "store"
    for layers, reduce in (("conv2,fc", "mean"), ("conv2", "max")):
        result = invoke("--store", store, "ingest", source, "--model", tiny_model_path, "--preprocess", "tf",
                        "--layers", layers, "--reduce", reduce, "--quiet")
        assert result.exit_code == 0, result.output
    return store


@pytest.fixture(scope="module")
def tiny_store(tiny_store_template, tmp_path_factory) -> Path:
    """A module's own copy of the shared tiny store: it may add indexes and caches."""
    import shutil

    copy = tmp_path_factory.mktemp("store-copy") / "store"
    shutil.copytree(tiny_store_template, copy)
    return copy


@pytest.fixture(scope="module")
def one_faiss_thread():
    """On a shared 2-core machine, spinning OpenMP threads make small FAISS calls 10x slower."""
    import faiss

    threads = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(threads)


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory):
    """`actdb demo --views 2` run once per session: (store, click Result). Its tests read it."""
    store = tmp_path_factory.mktemp("demo") / "demo"
    return store, invoke("--store", store, "demo", "--views", 2)


def pytest_collection_modifyitems(items):
    """Under pytest-xdist with --dist loadgroup (`make test` runs two workers), each module runs
    in one worker, so its module fixtures are built once; the modules that read the demo share
    one worker, so the session's one demo serves them all."""
    demo_modules = {item.module.__name__ for item in items if "demo_run" in item.fixturenames}
    for item in items:
        name = item.module.__name__
        item.add_marker(pytest.mark.xdist_group("demo" if name in demo_modules else name))
