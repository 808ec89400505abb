"""Ingest end to end, checked against a direct Keras forward pass and NumPy."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import zarr
from PIL import Image

import actdb
from actdb.store.locks import writer_lock
from conftest import WNIDS, make_imagenet_tree, one_line_error, write_image

LAYERS = "conv1,conv2,fc"


def ingest_args(store, source, model, *extra):
    return ["--store", store, "ingest", source, "--model", model, "--preprocess", "tf", "--layers", LAYERS,
            "--batch-size", 5, "--quiet", *extra]


def direct_forward(model_path, paths, layer, reduce):
    """The notebooks' method: load, preprocess, cut the model at the layer, average over H and W."""
    import keras

    model = keras.models.load_model(model_path)
    cut = keras.Model(model.inputs, model.get_layer(layer).output)
    pixels = np.stack([np.asarray(Image.open(p).convert("RGB"), np.float32) for p in paths])
    out = cut.predict(pixels / 127.5 - 1.0, verbose=0)
    if out.ndim == 4:
        out = out.mean(axis=(1, 2)) if reduce == "mean" else out.max(axis=(1, 2))
    return out


@pytest.mark.parametrize("reduce", ["mean", "max"])
def test_stored_activations_equal_direct_forward_pass(tmp_path, imagenet_tree, tiny_model_path, run_cli, reduce):
    store = tmp_path / "store"
    result = run_cli(*ingest_args(store, imagenet_tree, tiny_model_path, "--reduce", reduce))
    assert result.exit_code == 0, result.output
    db = actdb.open(store)
    images = db.images()
    assert len(images) == 12
    assert sorted(images.wnid.unique()) == sorted(WNIDS)
    assert set(images.label) == set(WNIDS.values())
    for layer in LAYERS.split(","):
        ids, stored = db.activations("tiny", layer, reduce=reduce, return_ids=True)
        expected = direct_forward(tiny_model_path, images.set_index("id").loc[ids, "path"], layer, reduce)
        np.testing.assert_allclose(stored, expected, rtol=1e-5, atol=1e-5)


def test_ids_labels_and_class_subset_in_api(tmp_path, imagenet_tree, tiny_model_path, run_cli):
    store = tmp_path / "store"
    assert run_cli(*ingest_args(store, imagenet_tree, tiny_model_path)).exit_code == 0
    db = actdb.open(store)
    images = db.images()
    assert list(images.id) == list(range(12))
    assert (images.width == 32).all() and images.content_hash.str.len().eq(16).all()
    ids, cucumbers = db.activations("tiny", "conv2", classes=["sea_cucumber"], return_ids=True)
    assert set(images.set_index("id").loc[ids, "wnid"]) == {"n02321529"} and len(ids) == 4
    assert cucumbers.shape == (4, 16)
    np.testing.assert_array_equal(db.activations("tiny", "conv2", ids=ids[::-1]), cucumbers[::-1])


def test_reingest_adds_nothing_and_new_images_add_only_them(tmp_path, imagenet_tree, tiny_model_path, run_cli):
    store = tmp_path / "store"
    assert run_cli(*ingest_args(store, imagenet_tree, tiny_model_path)).exit_code == 0
    before = actdb.open(store).activations("tiny", "conv2")
    again = run_cli(*ingest_args(store, imagenet_tree, tiny_model_path, "--json"))
    assert '"ingested": 0' in again.output and '"skipped": 12' in again.output
    write_image(imagenet_tree / "n01440764" / "n01440764_new.png", np.random.default_rng(7))
    more = run_cli(*ingest_args(store, imagenet_tree, tiny_model_path, "--json"))
    assert '"ingested": 1' in more.output and '"skipped": 12' in more.output
    db = actdb.open(store)
    images = db.images()
    assert len(images) == 13 and images.path.is_unique
    assert images.set_index("id").loc[12, "path"].endswith("n01440764_new.png")
    np.testing.assert_array_equal(db.activations("tiny", "conv2", ids=range(12)), before)
    assert db.sql("SELECT count(*) AS n FROM done").n[0] == 13 * 3


def test_another_layer_computes_only_what_is_missing(tmp_path, imagenet_tree, tiny_model_path, run_cli):
    store = tmp_path / "store"
    first = ["--store", store, "ingest", imagenet_tree, "--model", tiny_model_path, "--preprocess", "tf",
             "--layers", "conv1", "--quiet", "--per-class", 2]
    assert run_cli(*first).exit_code == 0
    second = ["--store", store, "ingest", imagenet_tree, "--model", tiny_model_path, "--preprocess", "tf",
              "--layers", "conv1,conv2", "--quiet"]
    assert run_cli(*second).exit_code == 0
    db = actdb.open(store)
    runs = db.sql("SELECT planned, ingested FROM runs ORDER BY id")
    assert list(runs.planned) == [6, 12] and list(runs.ingested) == [6, 12]
    done = db.sql("SELECT a.layer, count(*) AS n, min(d.run_id) AS first_run FROM done d "
                  "JOIN arrays a ON a.id = d.array_id GROUP BY a.layer ORDER BY a.layer")
    assert list(done.n) == [12, 12]
    # conv1 rows of the first six images were written by run 1 and not recomputed into new done rows
    assert db.sql("SELECT count(*) AS n FROM done d JOIN arrays a ON a.id = d.array_id "
                  "WHERE a.layer = 'conv1' AND d.run_id = 1").n[0] == 6


def test_bad_files_are_recorded_and_ingest_goes_on(tmp_path, imagenet_tree, tiny_model_path, run_cli):
    folder = imagenet_tree / "n02321529"
    (folder / "empty.png").write_bytes(b"")
    (folder / "text.png").write_bytes(b"this is not an image")
    good = (folder / "n02321529_0000.png").read_bytes()
    (folder / "truncated.png").write_bytes(good[: len(good) // 2])
    store = tmp_path / "store"
    result = run_cli(*ingest_args(store, imagenet_tree, tiny_model_path, "--json"))
    assert '"failed": 3' in result.output and '"ingested": 12' in result.output
    errors = actdb.open(store).errors().set_index("path")
    reasons = {p.rsplit("/", 1)[1]: r for p, r in errors.reason.items()}
    assert reasons["empty.png"] == "empty file"
    assert reasons["text.png"] == "not an image (unknown format)"
    assert reasons["truncated.png"].startswith("corrupt or truncated")
    again = run_cli(*ingest_args(store, imagenet_tree, tiny_model_path, "--json"))
    assert '"ingested": 0' in again.output and len(actdb.open(store).errors()) == 3


def test_predictions_are_the_top5_of_the_classifier(tmp_path, imagenet_tree, tiny_model_path, run_cli):
    import keras

    store = tmp_path / "store"
    assert run_cli(*ingest_args(store, imagenet_tree, tiny_model_path, "--predictions")).exit_code == 0
    db = actdb.open(store)
    stored = db.sql("SELECT image_id, rank, class_index, probability FROM predictions ORDER BY image_id, rank")
    paths = db.images().path
    pixels = np.stack([np.asarray(Image.open(p).convert("RGB"), np.float32) for p in paths])
    probs = keras.models.load_model(tiny_model_path).predict(pixels / 127.5 - 1.0, verbose=0)
    top = np.sort(probs, axis=1)[:, ::-1][:, :5]
    np.testing.assert_allclose(stored.probability.to_numpy().reshape(-1, 5), top, rtol=1e-5)
    first = stored.class_index.to_numpy().reshape(-1, 5)[:, 0]
    np.testing.assert_array_equal(probs[np.arange(len(probs)), first], probs.max(axis=1))


def test_float16_storage_reports_overflow_instead_of_storing_inf(tmp_path, tiny_model_path, run_cli):
    import keras

    model = keras.models.load_model(tiny_model_path)
    kernel, bias = model.get_layer("conv1").get_weights()
    model.get_layer("conv1").set_weights([kernel * 1e8, bias])  # activations far beyond float16's 65504
    loud = tmp_path / "loud.keras"
    model.save(loud)
    source = make_imagenet_tree(tmp_path / "train", per_class=1)
    store = tmp_path / "store"
    result = run_cli("--store", store, "ingest", source, "--model", loud, "--preprocess", "tf", "--layers",
                     "conv1", "--dtype", "float16", "--quiet")
    assert result.exit_code == 0, result.output
    db = actdb.open(store)
    assert {a.layer: a.rows_done for a in db.arrays()}["conv1"] == 0
    assert db.errors().reason.str.startswith("float16 overflow in conv1").sum() == 3
    raw = zarr.open_array(str(store / "activations.zarr" / db.arrays()[0].zarr_path), mode="r")[:]
    assert not np.isinf(raw).any()


def test_float16_storage_is_close_to_float32(tmp_path, imagenet_tree, tiny_model_path, run_cli):
    store = tmp_path / "store"
    assert run_cli(*ingest_args(store, imagenet_tree, tiny_model_path, "--dtype", "float16")).exit_code == 0
    db = actdb.open(store)
    stored = db.activations("tiny", "conv2")
    expected = direct_forward(tiny_model_path, db.images().path, "conv2", "mean")
    np.testing.assert_allclose(stored, expected, rtol=2e-3, atol=1e-3)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--model", "vgg99"], "unknown model 'vgg99'"),
        (["--layers", "conv9"], "unknown layer 'conv9' in tiny; valid layers: conv1, pool1, conv2"),
        (["--classes", "n09999999"], "n09999999"),
        (["--classes", "unicorn"], "unicorn"),
    ],
)
def test_bad_input_is_one_line_and_leaves_no_store(tmp_path, imagenet_tree, tiny_model_path, run_cli, args, message):
    store = tmp_path / "store"
    base = ["--store", store, "ingest", imagenet_tree, "--model", tiny_model_path, "--preprocess", "tf", "--quiet"]
    result = run_cli(*base, *args)
    one_line_error(result, message)
    assert not store.exists()


def test_empty_source_is_an_error(tmp_path, tiny_model_path, run_cli):
    (tmp_path / "empty").mkdir()
    result = run_cli("--store", tmp_path / "store", "ingest", tmp_path / "empty", "--model", tiny_model_path)
    assert result.exit_code != 0 and len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "store").exists()


def test_a_second_writer_gets_a_clear_message(tmp_path, imagenet_tree, tiny_model_path, run_cli):
    store = tmp_path / "store"
    assert run_cli(*ingest_args(store, imagenet_tree, tiny_model_path, "--limit", 3)).exit_code == 0
    with writer_lock(store, "actdb ingest"):
        result = run_cli(*ingest_args(store, imagenet_tree, tiny_model_path))
    assert result.exit_code != 0
    assert "is being written by pid" in result.output and "readers still work" in result.output
    assert len(actdb.open(store).images()) == 3


def test_sql_is_read_only(tmp_path, imagenet_tree, tiny_model_path, run_cli):
    store = tmp_path / "store"
    assert run_cli(*ingest_args(store, imagenet_tree, tiny_model_path)).exit_code == 0
    for statement in ["DELETE FROM images", "DROP TABLE images", "SELECT 1; DELETE FROM images",
                      "COPY images TO 'x.csv'", "ATTACH 'other.duckdb'"]:
        result = run_cli("--store", store, "sql", statement)
        assert result.exit_code != 0 and "read-only" in result.output, statement
    counted = run_cli("--store", store, "sql", "SELECT count(*) AS n FROM images", "--json")
    assert counted.output.strip() == '[{"n":12}]'
    assert len(actdb.open(store).images()) == 12


def test_info_reports_what_is_stored(tmp_path, imagenet_tree, tiny_model_path, run_cli):
    import json

    store = tmp_path / "store"
    assert run_cli(*ingest_args(store, imagenet_tree, tiny_model_path)).exit_code == 0
    info = json.loads(run_cli("--store", store, "info", "--json").stdout)
    assert info["images"] == 12 and info["classes"] == 3 and info["errors"] == 0
    assert {a["layer"]: a["rows_done"] for a in info["arrays"]} == {"conv1": 12, "conv2": 12, "fc": 12}
    assert {a["layer"]: a["channels"] for a in info["arrays"]} == {"conv1": 8, "conv2": 16, "fc": 12}
    assert info["bytes_on_disk"] > 0
    text = run_cli("--store", store, "info").output
    assert "12 images stored, 3 classes" in text and "sea_cucumber" in text


def test_store_is_readable_without_actdb(tmp_path, imagenet_tree, tiny_model_path, run_cli):
    import duckdb
    import zarr

    store = tmp_path / "store"
    assert run_cli(*ingest_args(store, imagenet_tree, tiny_model_path)).exit_code == 0
    con = duckdb.connect(str(store / "catalog.duckdb"), read_only=True)
    zarr_path, = con.execute("SELECT zarr_path FROM array_list WHERE layer = 'conv2'").fetchone()
    con.close()
    plain = zarr.open_array(str(store / "activations.zarr" / zarr_path), mode="r")[:]
    np.testing.assert_array_equal(plain, actdb.open(store).activations("tiny", "conv2"))


# -- a known file that changed: one id, one picture ----------------------------------------------

def _ingest(store, source, model, layers, *extra):
    return ["--store", store, "ingest", source, "--model", model, "--preprocess", "tf", "--layers", layers, *extra]


def test_a_changed_file_is_stored_as_its_new_picture_and_its_old_rows_are_unmarked(tmp_path, imagenet_tree,
                                                                                   tiny_model_path, run_cli):
    """The finding: a file replaced after its ingest got a new layer's row of the new picture while
    the old layers kept the old one (`trajectory id:3` mixed a palace and a cat)."""
    store = tmp_path / "store"
    assert run_cli(*_ingest(store, imagenet_tree, tiny_model_path, "conv1,conv2", "--predictions", "-q")).exit_code == 0
    assert run_cli("--store", store, "index", "--model", "tiny", "--layer", "conv2").exit_code == 0
    db = actdb.open(store)
    path = db.sql("SELECT path FROM images WHERE id = 3").path[0]
    old_version = db.array("tiny", "conv2").data_version
    write_image(Path(path), np.random.default_rng(99))  # replaced in place: the same path, another picture
    result = run_cli(*_ingest(store, imagenet_tree, tiny_model_path, "fc,conv1"))
    assert result.exit_code == 0, result.output
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning: ")]
    assert len(warnings) == 1 and "1 known file changed" in warnings[0] and path in warnings[0], result.stderr
    assert "tiny/conv1 (mean), tiny/conv2 (mean)" in warnings[0]
    refill = warnings[0].split("refill them with `", 1)[1].split("`", 1)[0]
    db = actdb.open(store)
    assert not db.sql("SELECT count(*) AS n FROM done WHERE image_id = 3 AND array_id IN (SELECT id FROM arrays "
                      "WHERE layer IN ('conv1', 'conv2'))").n[0]  # the old picture's rows are gone
    assert db.sql("SELECT count(*) AS n FROM predictions WHERE image_id = 3").n[0] == 0
    assert db.sql("SELECT count(*) AS n FROM indexes").n[0] == 0 and not list((store / "indexes").glob("*.faiss"))
    assert db.array("tiny", "conv2").data_version != old_version
    assert db.check()["ok"]  # the chunk digests were re-recorded over the rows still stored
    expected = direct_forward(tiny_model_path, [path], "fc", "mean")  # the file as it is now
    np.testing.assert_allclose(db.activations("tiny", "fc", ids=[3]), expected, rtol=1e-5, atol=1e-5)
    args = refill.split()[1:]
    assert args[:2] == ["ingest", str(imagenet_tree)]
    result = run_cli("--store", store, *args, "--quiet")  # the command the warning gives
    assert result.exit_code == 0 and "warning" not in result.output, result.output
    db = actdb.open(store)
    images = db.images().set_index("id")
    for layer in ("conv1", "conv2", "fc"):  # every layer is of the file as it is now
        ids, stored = db.activations("tiny", layer, return_ids=True)
        assert len(ids) == 12
        np.testing.assert_allclose(stored, direct_forward(tiny_model_path, images.loc[ids, "path"], layer, "mean"),
                                   rtol=1e-5, atol=1e-5)
    assert db.check()["ok"]


def test_a_changed_file_in_a_run_that_also_adds_rows_to_its_chunk(tmp_path, imagenet_tree, tiny_model_path):
    """Several commits into one chunk after a changed file's row there was unmarked: each keeps the
    rows still committed and is checked against the digest recorded then."""
    store = tmp_path / "store"
    db = actdb.open(store, create=True)
    db.ingest(imagenet_tree, model=str(tiny_model_path), preprocess="tf", layers="conv2", per_class=2)
    path = db.sql("SELECT path FROM images WHERE id = 1").path[0]
    write_image(Path(path), np.random.default_rng(98))
    summary = db.ingest(imagenet_tree, model=str(tiny_model_path), preprocess="tf", layers="conv2,fc",
                        batch_size=2, commit_seconds=0)
    assert len(summary.warnings) == 1 and path in summary.warnings[0] and "tiny/conv2 (mean)" in summary.warnings[0]
    assert db.check()["ok"]
    assert sorted(db.done_ids(db.array("tiny", "conv2")).tolist()) == [i for i in range(12) if i != 1]
    db.ingest(imagenet_tree, model=str(tiny_model_path), preprocess="tf", layers="conv2")
    ids, stored = db.activations("tiny", "conv2", return_ids=True)
    expected = direct_forward(tiny_model_path, db.images().set_index("id").loc[ids, "path"], "conv2", "mean")
    np.testing.assert_allclose(stored, expected, rtol=1e-5, atol=1e-5)


def test_content_hashes_of_different_algorithms_cannot_be_compared(tmp_path, imagenet_tree, tiny_model_path):
    from actdb.ingest.writer import same_content

    assert same_content("00ff", "00ff") is True and same_content("00ff", "00fe") is False
    assert same_content("blake2b:ab", "blake2b:ab") is True and same_content("blake2b:ab", "blake2b:cd") is False
    assert same_content("00ff", "blake2b:ab") is None and same_content(None, "00ff") is None
    store = tmp_path / "store"
    db = actdb.open(store, create=True)
    db.ingest(imagenet_tree, model=str(tiny_model_path), preprocess="tf", layers="conv2", per_class=1)
    with db.catalog.write() as con:  # recorded by another algorithm: kept, no warning
        con.execute("UPDATE images SET content_hash = 'blake2b:0123' WHERE id = 0")
    summary = db.ingest(imagenet_tree, model=str(tiny_model_path), preprocess="tf", layers="conv2,fc", per_class=1)
    assert summary.warnings == []
    assert db.sql("SELECT content_hash FROM images WHERE id = 0").content_hash[0] == "blake2b:0123"
    assert len(db.done_ids(db.array("tiny", "conv2"))) == 3


def test_the_summary_counts_hidden_folders_and_warns_of_merged_ones(tmp_path, tiny_model_path, run_cli):
    rng = np.random.default_rng(4)
    source = tmp_path / "photos"
    for folder in ("tabby", "Tabby", "..."):
        write_image(source / folder / f"{folder.strip('.') or 'dots'}.png", rng)
    result = run_cli("--store", tmp_path / "store", "ingest", source, "--model", tiny_model_path, "--preprocess", "tf",
                     "--layers", "fc")
    assert result.exit_code == 0, result.output
    assert "ingested 2, skipped 0 (already present), failed 0 of 2 listed; 1 hidden folder not read (...: names " \
           "starting with '.')" in result.stdout
    assert "warning: Tabby and tabby name one class, tabby" in result.stderr
    assert actdb.open(tmp_path / "store").sql("SELECT DISTINCT label FROM images").label.tolist() == ["tabby"]
