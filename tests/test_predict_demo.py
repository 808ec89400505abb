"""`actdb predict` and `actdb demo` on the real offline ImageNet model and real photos."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

import actdb
from actdb.photos import available_photos


@pytest.fixture(scope="module")
def photo_files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("photos")
    paths = {}
    for photo in available_photos():
        paths[photo.name] = folder / f"{photo.name}.png"
        Image.fromarray(photo.load()).save(paths[photo.name])
    return paths


@pytest.mark.slow
def test_predict_names_the_real_class_of_real_photos(photo_files, run_cli, monkeypatch, tmp_path):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "no-keras-weights"))
    files = [photo_files["coffee"], photo_files["chelsea"]]
    result = run_cli("predict", *files, "--models", "efficientnet_lite0,vgg19", "--top", "3", "--json")
    assert result.exit_code == 0, result.output
    # vgg19's weights cannot be had offline: it says so in one line, and efficientnet still answers
    lines = result.output.strip().splitlines()
    assert lines[0].startswith("warning: vgg19: unavailable: ImageNet weights for vgg19 are not cached")
    rows = json.loads(lines[-1])
    assert {r["model"] for r in rows} == {"efficientnet_lite0"} and len(rows) == 6
    top1 = {r["query"].rsplit("/", 1)[1]: r["name"] for r in rows if r["rank"] == 1}
    assert top1["coffee.png"] == "espresso"
    assert top1["chelsea.png"] in {"tabby", "tiger_cat", "Egyptian_cat"}  # the three house-cat classes
    probabilities = [r["probability"] for r in rows if r["query"].endswith("coffee.png")]
    assert probabilities == sorted(probabilities, reverse=True) and 0 < sum(probabilities) <= 1.0 + 1e-6


@pytest.mark.slow
def test_predict_agrees_with_a_direct_forward_pass(photo_files):
    """Same pixels through Keras by hand: the product's preprocessing and top-k are right."""
    import tensorflow as tf

    from actdb.images import pixels_of_file
    from actdb.models import load
    from actdb.predict import predict

    rows = predict([str(photo_files["rocket"])], models=["efficientnet_lite0"], top=5)
    model = load("efficientnet_lite0").keras_model
    pixels = pixels_of_file(str(photo_files["rocket"]), 224, "center-crop")
    probs = model(tf.constant((pixels[None] - 127.0) / 128.0), training=False).numpy()[0]
    np.testing.assert_array_equal(rows.class_index, np.argsort(-probs)[:5])
    np.testing.assert_allclose(rows.probability, np.sort(probs)[::-1][:5], rtol=1e-5)


def test_predict_bad_query_is_one_line(run_cli, tmp_path):
    result = run_cli("predict", tmp_path / "missing.jpg")
    assert result.exit_code != 0 and "cannot read image" in result.output
    assert len(result.output.strip().splitlines()) == 1


@pytest.mark.slow
@pytest.mark.timeout(600)  # the first test to ask for the demo runs all of it (demo_run), ~2 min alone
def test_demo_runs_end_to_end(demo_run, run_cli):
    store, result = demo_run
    assert result.exit_code == 0, result.output
    assert "ingested 12, skipped 0" in result.output
    assert "espresso" in result.output and "== actdb info" in result.output
    assert "index built: flat" in result.output
    classes = result.output.split("== actdb classes")[1].split("== actdb info")[0]
    assert "coffee_001.JPEG\n rank    class" in classes and "    1 espresso" in classes
    for picture in ("weights.png", "featuremaps.png", "differentiation.png"):  # analytics II on the real model
        with Image.open(store / "plots" / picture) as png:
            assert png.format == "PNG" and png.size[0] >= 600
    assert "block2b_add on " in result.output and "images noise:12: 12" in result.output
    story = result.output.split("== actdb optimize")[1]
    logit_row = next(line for line in story.splitlines() if "optimized:efficientnet_lite0.logits.u329" in line)
    assert logit_row.split()[4] == "sea_cucumber"  # EfficientNet-Lite0's top-1 for its own sea_cucumber logit image
    assert (store / "plots" / "optimized.png").is_file()
    plots = store / "plots"
    for name in ("distances", "map-tsne", "profile", "top-images", "top-classes", "trajectory"):
        assert (plots / f"{name}.png").stat().st_size > 10_000, name
    distances = result.output.split("== actdb distances")[1].split("== actdb map")[0]
    assert "        espresso  " in distances.split("from ")[1].splitlines()[2]  # the coffee view: espresso ranks first
    trajectory = result.output.split("== actdb trajectory")[1].split("== actdb weights")[0]
    assert "coffee_001.JPEG: Deep k-NN predicts espresso" in trajectory  # a real photo: its own class
    report = result.output.split("== actdb report")[1]
    assert "2560 units of 2 arrays" in report and f"open {store.resolve() / 'report' / 'index.html'}" in report
    # A second demo changes nothing: its own ingest and report command lines, run again on the
    # store (the other steps, between them, only read it or reuse what they made).
    again = {step.command[0]: run_cli("--store", store, *step.command)
             for step in actdb.open(store).demo(views=2) if step.command[:1] in (("ingest",), ("report",))}
    assert "ingested 0, skipped 12" in again["ingest"].output
    assert "report: 0 files written" in again["report"].output
