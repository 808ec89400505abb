"""`actdb optimize`: each method and objective does what it says, images are independent of
their batch mates, `pixel` and `pattern` are the notebooks' own loops (re-implemented here from
notebook 000/002 and 003), and optimized:NAME is a query like any image file."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import actdb

from conftest import TINY_SIZE, invoke, make_imagenet_tree, one_line_error

STEPS = 12


def _png(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def _keras_target(model_path, layer):
    """Direct Keras: the model cut at `layer`, fed caffe-preprocessed pixels (Keras' own preprocess_input)."""
    import keras

    model = keras.models.load_model(model_path, compile=False)
    cut = keras.Model(model.input, model.get_layer(layer).output)
    return lambda pixels: np.asarray(cut(keras.applications.vgg19.preprocess_input(pixels.astype(np.float32)[None])))[0]


def _optimize(run_cli, tmp_path, model, *args):
    """Run into a fresh --out folder; returns the folder and the JSON rows."""
    out = tmp_path / f"out{len(list(tmp_path.iterdir()))}"
    result = run_cli("optimize", "--model", model, "--preprocess", "caffe", "--out", out, "--json", *args)
    assert result.exit_code == 0, result.output
    return out, json.loads(result.output.strip().splitlines()[-1])


# -- each method and objective raises its target (measured here by a direct Keras forward pass)

FACTOR = 3.0  # the final image's target is at least 3x the start image's (1/3 for --negative)
# ... except `pattern`: 003's deprocess_image rescales every output to std 0.1 around grey, and the
# loop feeds raw pixels while a PNG is measured through the model's preprocessing: 1.5x
FACTORS = {"fft": FACTOR, "pixel": FACTOR, "pattern": 1.5}


@pytest.mark.parametrize("method, objective, extra", [
    ("fft", "channel", []), ("fft", "neuron", []), ("pattern", "channel", []),
    ("pixel", "channel", ["--preprocess", "tf"]),  # caffe clips the optimized tensor to [-1, 1] of 0..255: see README
])
def test_methods_and_objectives_raise_the_target(run_cli, tmp_path, tiny_model_path, method, objective, extra):
    out, rows = _optimize(run_cli, tmp_path, tiny_model_path, "--layer", "conv2", "--units", "1,5", "--method", method,
                          "--objective", objective, "--steps", STEPS * 2, *extra)
    for row in rows:
        assert row["final_activation"] >= FACTORS[method] * row["start_activation"] > 0, row
    if extra:
        return  # the direct check below feeds caffe preprocessing
    target = _keras_target(tiny_model_path, "conv2")
    for row in rows:
        maps = target(_png(out / f"{row['name']}.png"))[..., row["unit"]]
        direct = maps.mean() if objective == "channel" else maps[maps.shape[0] // 2, maps.shape[1] // 2]
        assert row["final_activation"] == pytest.approx(float(direct), rel=1e-4, abs=1e-4)


def test_negative_lowers_the_target(run_cli, tmp_path, tiny_model_path):
    _, rows = _optimize(run_cli, tmp_path, tiny_model_path, "--layer", "conv2", "--units", "1,5", "--negative",
                        "--steps", STEPS * 2)
    for row in rows:
        assert row["sign"] == -1 and row["final_activation"] <= row["start_activation"] / FACTOR, row


def test_logit_raises_the_class_probability(run_cli, tmp_path, tiny_model_path):
    import keras

    out, rows = _optimize(run_cli, tmp_path, tiny_model_path, "--objective", "logit", "--class", "5,tench",
                          "--steps", STEPS * 3, "--lr", 0.1)
    assert [r["unit"] for r in rows] == [5, 0]  # tench is class 0
    model = keras.models.load_model(tiny_model_path, compile=False)
    features = keras.Model(model.inputs, model.get_layer("fc").output)
    kernel, bias = model.get_layer("predictions").get_weights()
    for row in rows:
        assert row["final_activation"] - row["start_activation"] >= 1.0, row  # odds vs the rest grow e-fold or more
        pixels = keras.applications.vgg19.preprocess_input(_png(out / f"{row['name']}.png").astype(np.float32)[None])
        logits = np.asarray(features(pixels))[0] @ kernel + bias
        assert row["final_activation"] == pytest.approx(float(logits[row["unit"]]), rel=1e-4, abs=1e-4)


# -- independence and diversity

def test_a_units_image_does_not_depend_on_its_batch_mates(run_cli, tmp_path, tiny_model_path):
    batch_out, _ = _optimize(run_cli, tmp_path, tiny_model_path, "--layer", "conv2", "--units", "0-7", "--steps", STEPS)
    alone_out, _ = _optimize(run_cli, tmp_path, tiny_model_path, "--layer", "conv2", "--units", "5", "--steps", STEPS,
                             "--batch", 1)
    other_batch_out, _ = _optimize(run_cli, tmp_path, tiny_model_path, "--layer", "conv2", "--units", "9,5,3",
                                   "--steps", STEPS, "--batch", 2)
    name = "tiny.conv2.u5.fft.s0.png"
    np.testing.assert_array_equal(_png(batch_out / name), _png(alone_out / name))
    np.testing.assert_array_equal(_png(other_batch_out / name), _png(alone_out / name))
    assert not np.array_equal(_png(batch_out / name), _png(batch_out / "tiny.conv2.u4.fft.s0.png"))


def test_diversity_penalty_is_lucids_gram_similarity():
    """Against a NumPy brute force of lucid's `diversity`: sum over pairs i != j of normalized Gram dot products / K."""
    import tensorflow as tf

    from actdb.optimize.objectives import diversity

    rng = np.random.default_rng(0)
    acts = rng.normal(size=(6, 3, 3, 4)).astype(np.float32)  # 2 units x 3 images
    got = diversity(3)(tf.constant(acts), tf.zeros(6, tf.int32)).numpy()
    grams = [a.reshape(-1, 4).T @ a.reshape(-1, 4) for a in acts]
    grams = [g.ravel() / np.linalg.norm(g) for g in grams]
    for i in range(6):
        group = range(i // 3 * 3, i // 3 * 3 + 3)
        assert got[i] == pytest.approx(sum(grams[i] @ grams[j] for j in group if j != i) / 3, rel=1e-5)


# -- the notebooks' loops, re-implemented here from their text

def _seeds_000_loop(model_path, layer, target_index, seed, steps, step_size, size):
    """Notebooks 000/002's `gradient_ascent` and its start and output, as written there."""
    import keras
    import tensorflow as tf

    base_model = keras.models.load_model(model_path, compile=False)
    part_model = keras.Model(inputs=base_model.input, outputs=[base_model.get_layer(layer).output])

    @tf.function(input_signature=(tf.TensorSpec(shape=[size, size, 3], dtype=tf.float32),
                                  tf.TensorSpec(shape=[], dtype=tf.int32), tf.TensorSpec(shape=[], dtype=tf.float32)))
    def gradient_ascent(img, steps, step_size):
        loss = tf.constant(0.0)
        for n in tf.range(steps):
            with tf.GradientTape() as tape:
                tape.watch(img)
                activation = part_model(tf.expand_dims(img, axis=0))
                loss = tf.math.reduce_mean(activation[:, :, :, target_index])
            gradients = tape.gradient(loss, img)
            gradients /= tf.math.reduce_std(gradients)
            img = img + gradients * step_size
            img = tf.clip_by_value(img, -1, 1)
        return loss, img

    np.random.seed(seed)
    starting_img = np.random.randint(low=0, high=255, size=(size, size, 3), dtype=np.uint8)
    img = tf.convert_to_tensor(keras.applications.vgg19.preprocess_input(starting_img))
    loss, img = gradient_ascent(img, tf.constant(steps), tf.constant(step_size))
    return np.array(tf.cast(255 * (img + 1.0) / 2.0, tf.uint8))


def _seed_003_generate_pattern(model_path, layer_name, filter_index, seed, size):
    """Notebook 003's `generate_pattern` and `deprocess_image` (K.gradients written as a GradientTape)."""
    import keras
    import tensorflow as tf

    model = keras.models.load_model(model_path, compile=False)
    cut = keras.Model(model.input, model.get_layer(layer_name).output)

    def iterate(x):
        x = tf.constant(x, tf.float32)
        with tf.GradientTape() as tape:
            tape.watch(x)
            loss = tf.reduce_mean(cut(x)[:, :, :, filter_index])
        grads = tape.gradient(loss, x)
        grads /= tf.sqrt(tf.reduce_mean(tf.square(grads))) + 1e-5
        return loss.numpy(), grads.numpy()

    np.random.seed(seed)
    input_img_data = np.random.random((1, size, size, 3)) * 20 + 128.
    for _ in range(40):
        loss_value, grads_value = iterate(input_img_data)
        input_img_data += grads_value * 1.0
    x = input_img_data[0]
    x -= x.mean()
    x /= (x.std() + 1e-5)
    x *= 0.1
    x += 0.5
    x = np.clip(x, 0, 1)
    x *= 255
    return np.clip(x, 0, 255).astype("uint8")


def test_seed_method_is_the_seeds_loop(run_cli, tmp_path, tiny_model_path):
    out, rows = _optimize(run_cli, tmp_path, tiny_model_path, "--layer", "conv2", "--units", "1,5", "--method", "pixel",
                          "--seed", 7, "--steps", 20)
    for row in rows:
        expected = _seeds_000_loop(tiny_model_path, "conv2", row["unit"], 7, 20, 0.1, TINY_SIZE)
        got = _png(out / f"{row['name']}.png")
        assert np.abs(got.astype(int) - expected.astype(int)).max() <= 1
        assert np.mean(got != expected) < 0.01


def test_pattern_method_is_003s_generate_pattern(run_cli, tmp_path, tiny_model_path):
    out, rows = _optimize(run_cli, tmp_path, tiny_model_path, "--layer", "conv1", "--units", "2,6", "--method",
                          "pattern", "--seed", 3)
    for row in rows:
        expected = _seed_003_generate_pattern(tiny_model_path, "conv1", row["unit"], 3, TINY_SIZE)
        got = _png(out / f"{row['name']}.png")
        assert np.abs(got.astype(int) - expected.astype(int)).max() <= 1


def test_out_folder_has_pngs_snapshots_and_parameters(run_cli, tmp_path, tiny_model_path):
    out, rows = _optimize(run_cli, tmp_path, tiny_model_path, "--layer", "conv2", "--units", "1", "--steps", 6,
                          "--snapshots", "2,6", "--name", "probe")
    assert [r["name"] for r in rows] == ["probe"]
    params = json.loads((out / "probe.json").read_text())
    assert (params["steps"], params["lr"], params["method"], params["unit"], params["snapshots"]) == (6, 0.05, "fft", 1, [2, 6])
    np.testing.assert_array_equal(_png(out / "probe.step6.png"), _png(out / "probe.png"))
    assert not np.array_equal(_png(out / "probe.step2.png"), _png(out / "probe.png"))


# -- in the store

@pytest.fixture(scope="module")
def ingested(tmp_path_factory, tiny_model_path):
    """Ingested once per module: 3 x 3 labelled images, conv2 and fc with caffe preprocessing."""
    root = tmp_path_factory.mktemp("optimize-store")
    tree = make_imagenet_tree(root / "train", per_class=3)
    result = invoke("--store", root / "store", "ingest", tree, "--model", tiny_model_path, "--preprocess", "caffe",
                    "--layers", "conv2,fc", "-q")
    assert result.exit_code == 0, result.output
    return root / "store"


@pytest.fixture
def store(ingested, tmp_path):
    """A test's own copy of the ingested store: each optimizes, damages or drops what it likes."""
    path = tmp_path / "store"
    shutil.copytree(ingested, path)
    return path


def test_optimized_name_is_queried_like_its_png_ingested_as_a_file(store, run_cli, tmp_path, tiny_model_path):
    import actdb
    from actdb.resolve import resolve

    result = run_cli("--store", store, "optimize", "--model", tiny_model_path, "--preprocess", "caffe", "--layer",
                     "conv2", "--units", "1,5", "--steps", STEPS, "--sheet", tmp_path / "sheet.png")
    assert result.exit_code == 0, result.output
    db = actdb.open(store)
    listed = db.optimized()
    assert sorted(listed.name) == ["tiny.conv2.u1.fft.s0", "tiny.conv2.u5.fft.s0"]
    assert len(db.sql("SELECT * FROM images")) == 9  # optimized images are not dataset rows
    assert Image.open(tmp_path / "sheet.png").size[0] > 200
    # the PNG ingested as an ordinary file
    folder = tmp_path / "as-files"
    folder.mkdir()
    shutil.copy(stored_png(store, "tiny.conv2.u5.fft.s0"), folder / "u5.png")
    run_cli("--store", store, "ingest", folder, "--model", tiny_model_path, "--preprocess", "caffe",
            "--layers", "conv1,conv2,fc", "-q")  # conv1: an array added after the image was made
    file_id = int(db.sql("SELECT id FROM images WHERE path LIKE '%u5.png'").id[0])
    for layer in ("conv1", "conv2", "fc"):
        stored = db.activations("tiny", layer, ids=[file_id])[0]
        queried = resolve(db, db.array("tiny", layer), ["optimized:tiny.conv2.u5.fft.s0"]).vectors[0]
        np.testing.assert_allclose(queried, stored, rtol=1e-5, atol=1e-6)
    run_cli("--store", store, "index", "--model", "tiny", "--layer", "conv2")
    rows = json.loads(run_cli("--store", store, "neighbors", "optimized:tiny.conv2.u5.fft.s0", "--model", "tiny",
                              "--layer", "conv2", "-k", 1, "--json").output)
    assert rows[0]["id"] == file_id and rows[0]["distance"] < 1e-3
    ranked = json.loads(run_cli("--store", store, "classes", "optimized:tiny.conv2.u1.fft.s0", "--model", "tiny",
                                "--layer", "conv2", "--json").output)
    assert len(ranked) == 3


def stored_png(store, name: str):
    """The file the catalog's row names (content-addressed: NAME.SHA.png)."""
    return store / actdb.open(store).sql("SELECT png FROM optimized_images WHERE name = ?", [name]).png[0]


@pytest.mark.slow
def test_predict_takes_an_optimized_image(store, run_cli, tiny_model_path):
    run_cli("--store", store, "optimize", "--model", tiny_model_path, "--preprocess", "caffe", "--layer", "conv2",
            "--units", "1", "--steps", 4, "--name", "p")
    result = run_cli("--store", store, "predict", "optimized:p", "--models", "efficientnet_lite0", "--top", 1, "--json")
    assert result.exit_code == 0, result.output
    direct = run_cli("predict", stored_png(store, "p"), "--models", "efficientnet_lite0", "--top", 1, "--json")
    assert json.loads(result.stdout)[0]["class_index"] == json.loads(direct.stdout)[0]["class_index"]


def test_same_name_reuses_and_other_parameters_are_refused(store, run_cli, tiny_model_path):
    base = ["--store", store, "optimize", "--model", tiny_model_path, "--preprocess", "caffe", "--layer", "conv2",
            "--units", "1", "--name", "n"]
    assert run_cli(*base, "--steps", 4).exit_code == 0
    png = stored_png(store, "n")
    first = (png.stat().st_mtime_ns, png.read_bytes())
    assert run_cli(*base, "--steps", 4).exit_code == 0
    assert (png.stat().st_mtime_ns, png.read_bytes()) == first  # reused, not remade
    refused = run_cli(*base, "--steps", 5)
    assert refused.exit_code != 0 and "exists with other parameters: pass --overwrite" in refused.output
    assert png.read_bytes() == first[1]
    assert run_cli(*base, "--steps", 5, "--overwrite").exit_code == 0
    assert stored_png(store, "n").read_bytes() != first[1] and not png.exists()  # the replaced file is gone


def test_store_made_before_optimize_existed_still_opens(store, run_cli, tiny_model_path):
    import duckdb

    import actdb

    con = duckdb.connect(str(store / "catalog.duckdb"))
    con.execute("DROP TABLE optimized_vectors; DROP TABLE optimized_images")
    con.close()
    assert actdb.open(store).optimized().empty
    result = run_cli("--store", store, "optimize", "--model", tiny_model_path, "--preprocess", "caffe",
                     "--layer", "conv2", "--units", "1", "--steps", 2)
    assert result.exit_code == 0, result.output
    assert list(actdb.open(store).optimized().name) == ["tiny.conv2.u1.fft.s0"]


@pytest.fixture(scope="module")
def headless_model_path(tmp_path_factory):
    import keras

    inputs = keras.Input((TINY_SIZE, TINY_SIZE, 3))
    outputs = keras.layers.Conv2D(4, 3, name="conv1")(inputs)
    path = tmp_path_factory.mktemp("headless") / "headless.keras"
    keras.Model(inputs, outputs).save(path)
    return path


@pytest.mark.parametrize("args, message", [
    (["--layer", "conv2", "--units", "16"], "--units 16: unit 16 is out of range: tiny/conv2 has channels 0..15"),
    (["--layer", "conv9", "--units", "1"], "unknown layer 'conv9' in tiny; valid layers: conv1, pool1, conv2"),
    (["--objective", "logit", "--class", "sea_kumquat"], "unknown ImageNet class 'sea_kumquat'"),
    (["--layer", "conv2", "--units", "1", "--steps", "0"], "--steps 0: take at least 1 step"),
    (["--layer", "conv2", "--units", "1", "--method", "pixel", "--size", "64"], "which takes 32 x 32 only"),
    (["--layer", "conv2", "--units", "1-x"], "is not a unit number or a range"),
    (["--layer", "conv2", "--units", "1", "--diversity", "2", "--method", "pattern"], "--diversity needs --method fft"),
    (["--layer", "conv2", "--units", "1", "--snapshots", "9", "--steps", "4"], "steps must lie in 1..4"),
    (["--layer", "conv2", "--units", "1", "--sheet", "x.jpg"], "name it FILE.png"),
    (["--model", "HEADLESS", "--objective", "logit", "--class", "1"], "has no classifier"),
    (["--layer", "conv2", "--units", "1", "--name", "../up"], "use letters, digits and _ . + - only"),
])
def test_bad_input_is_one_line_and_writes_nothing(run_cli, tmp_path, tiny_model_path, headless_model_path, args,
                                                   message):
    model = headless_model_path if "HEADLESS" in args else tiny_model_path
    args = [a for a in args if a not in ("--model", "HEADLESS")]
    store = tmp_path / "never"
    result = run_cli("--store", store, "optimize", "--model", model, "--preprocess", "caffe", *args)
    one_line_error(result, message)
    assert not store.exists()


def test_no_store_and_no_out_is_refused(run_cli, tiny_model_path, monkeypatch):
    monkeypatch.delenv("ACTDB_STORE", raising=False)
    result = run_cli("optimize", "--model", tiny_model_path, "--layer", "conv2", "--units", "1")
    assert result.exit_code != 0 and "no store given" in result.output


def sha256_of(path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def committed(store, name):
    return actdb.open(store).sql("SELECT png, png_sha256 FROM optimized_images WHERE name = ?", [name]).iloc[0]


def optimize_args(store, model, name, *extra):
    return ["--store", store, "optimize", "--model", model, "--preprocess", "caffe", "--layer", "conv2",
            "--units", "1", "--steps", 4, "--name", name, *extra]


@pytest.mark.parametrize("damage", ["truncated", "flipped", "deleted"])
def test_a_damaged_png_is_found_by_check_and_remade_not_reused(store, run_cli, tiny_model_path, damage):
    assert run_cli(*optimize_args(store, tiny_model_path, "n")).exit_code == 0
    png = stored_png(store, "n")
    good = png.read_bytes()
    if damage == "truncated":
        png.write_bytes(good[: len(good) // 2])
    elif damage == "flipped":
        png.write_bytes(good[:100] + bytes([good[100] ^ 0xFF]) + good[101:])
    else:
        png.unlink()
    report = actdb.open(store).check()
    assert not report["ok"] and [p["problem"] for p in report["problems"]] == ["damaged optimized image"]
    assert "actdb optimize" in report["problems"][0]["detail"]
    assert run_cli(*optimize_args(store, tiny_model_path, "n")).exit_code == 0  # the same command remakes it
    row = committed(store, "n")
    assert sha256_of(store / row.png) == row.png_sha256 and (store / row.png).read_bytes() == good
    assert actdb.open(store).check()["ok"]


def test_a_snapshot_cannot_overwrite_another_image(store, run_cli, tiny_model_path):
    assert run_cli(*optimize_args(store, tiny_model_path, "a.step2")).exit_code == 0
    before = committed(store, "a.step2")
    assert run_cli(*optimize_args(store, tiny_model_path, "a", "--snapshots", "2")).exit_code == 0
    assert sha256_of(store / before.png) == before.png_sha256 and actdb.open(store).check()["ok"]


def test_a_failed_overwrite_leaves_the_committed_image_and_its_row_in_agreement(store, run_cli, tiny_model_path,
                                                                                 monkeypatch):
    """A kill between writing the new PNG and the catalog commit: the row still names its own,
    untouched file (the new one went to a new name)."""
    from actdb.optimize import run

    assert run_cli(*optimize_args(store, tiny_model_path, "n")).exit_code == 0
    before = committed(store, "n")
    real = run.atomic_write

    def write_then_die(path, data):
        real(path, data)
        raise KeyboardInterrupt  # after the new file is on disk, before the commit

    monkeypatch.setattr(run, "atomic_write", write_then_die)
    with pytest.raises(KeyboardInterrupt):
        actdb.open(store).optimize(model=str(tiny_model_path), preprocess="caffe", layer="conv2", units="1", steps=5,
                                   name="n", overwrite=True)
    row = committed(store, "n")
    assert row.png == before.png and sha256_of(store / row.png) == row.png_sha256


@pytest.mark.slow
def test_two_runs_with_one_name_cannot_both_succeed(store, run_cli, tiny_model_path, monkeypatch):
    """A writer holds the store from its first step: a second run with the same name, started
    while the first computes, is refused before any work and names the holder; the first
    commits; the second, run again afterwards, is refused for the name's other parameters."""
    from actdb.optimize import run

    real = run._make
    others = []

    def meanwhile(*args, **kwargs):
        made = real(*args, **kwargs)
        others.append(subprocess.run([sys.executable, "-m", "actdb", *map(str, optimize_args(
            store, tiny_model_path, "n", "--units", "2", "--quiet"))], capture_output=True, text=True))
        return made

    monkeypatch.setattr(run, "_make", meanwhile)
    result = run_cli(*optimize_args(store, tiny_model_path, "n"))
    assert result.exit_code == 0, result.output
    assert others[0].returncode == 1 and f"pid {os.getpid()} (actdb optimize" in others[0].stderr
    assert "did nothing" in others[0].stderr and "Traceback" not in others[0].stderr
    monkeypatch.setattr(run, "_make", real)
    again = run_cli(*optimize_args(store, tiny_model_path, "n", "--units", "2"))
    assert again.exit_code == 1 and "exists with other parameters" in again.output
    assert actdb.open(store).sql("SELECT unit FROM optimized_images WHERE name = 'n'").unit.tolist() == [1]


def test_a_damaged_png_is_never_classified_embedded_or_shown(store, run_cli, tiny_model_path, tmp_path):
    """The finding: `check` named a PNG whose sha256 no longer matched, but `predict` classified
    its pixels and the report made its thumbnail from them. Here the PNG is replaced by another
    valid picture: only the recorded sha256 can tell."""
    assert run_cli(*optimize_args(store, tiny_model_path, "n")).exit_code == 0
    png, good = stored_png(store, "n"), stored_png(store, "n").read_bytes()
    Image.fromarray(np.full((TINY_SIZE, TINY_SIZE, 3), 200, np.uint8)).save(png)
    assert [p["problem"] for p in actdb.open(store).check()["problems"]] == ["damaged optimized image"]
    predicted = run_cli("--store", store, "predict", "optimized:n", "--models", "efficientnet_lite0")
    one_line_error(predicted, "optimized:n", "sha256 differs", "actdb check", "actdb optimize")
    with pytest.raises(actdb.ActdbError, match="sha256 differs"):
        actdb.open(store).optimized(["n"], sheet=tmp_path / "sheet.png")
    with actdb.open(store).catalog.write() as con:  # a vector computed from the PNG, not the kept one
        con.execute("DELETE FROM optimized_vectors")
    classes = run_cli("--store", store, "classes", "optimized:n", "--model", "tiny", "--layer", "conv2", "--by", "mean")
    one_line_error(classes, "optimized:n", "sha256 differs")
    report = run_cli("--store", store, "report", "--layers", "conv2", "--top", 3, "--json")
    assert report.exit_code == 0, report.output
    notes = json.loads(report.stdout)["notes"]
    assert any("optimized:n" in note and "sha256 differs" in note for note in notes), notes
    assert not (store / "report" / "thumbs" / f"{committed(store, 'n').png_sha256[:24]}.jpg").exists()
    page = next((store / "report").rglob("optimized/n.html")).read_text()
    assert "thumbs/" not in page.split("</div></div>", 1)[0]  # the hero shows no picture
    png.write_bytes(good)  # restored: answered again, from the committed pixels
    assert run_cli("--store", store, "predict", "optimized:n", "--models", "efficientnet_lite0").exit_code == 0
