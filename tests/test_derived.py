"""Derived data knows its source: caches keyed by what repeats (an array id, a row count)
are recomputed, never served, when the rows they were computed from changed; no cache is
code (no pickle); a damaged cache is dropped and recomputed with a note."""
from __future__ import annotations

import ast
import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
import zarr

import actdb
from conftest import TINY_PER_CLASS, invoke, make_imagenet_tree

ARRAY = ["--model", "tiny", "--layer", "conv2"]
PACKAGE = Path(actdb.__file__).parent


def unmark(store, image_ids):
    """What `check --repair` does to damaged rows: they stop being stored, and each chunk's digest
    is re-recorded over the rows it still holds (SHA-256 of the ids as int64 then the rows, as
    the store documents), so that the next ingest may merge new rows into it."""
    db = actdb.open(store)
    digests = []
    for array in db.arrays():
        values = zarr.open_array(store / "activations.zarr" / array.zarr_path, mode="r")
        span = values.chunks[0]
        done = set(db.done_ids(array).tolist()) - set(image_ids)
        for chunk in {i // span for i in image_ids}:
            kept = np.array(sorted(i for i in done if i // span == chunk), dtype="<i8")
            rows = values[chunk * span:(chunk + 1) * span][kept - chunk * span]
            digest = hashlib.sha256(kept.tobytes())
            digest.update(np.ascontiguousarray(rows, dtype=rows.dtype.newbyteorder("<")).tobytes())
            digests.append((array.id, chunk, len(kept), digest.hexdigest()))
    with db.catalog.write() as con:
        con.execute("DELETE FROM done WHERE image_id IN (SELECT unnest(?::BIGINT[]))", [list(image_ids)])
        for array_id, chunk, rows, digest in digests:
            con.execute("UPDATE chunk_digests SET rows = ?, digest = ? WHERE array_id = ? AND chunk = ?",
                        [rows, digest, array_id, chunk])


def means_by_class(db):
    """NumPy: per class mean of the stored conv2 rows, from the rows as stored now."""
    ids, vectors = db.activations("tiny", "conv2", return_ids=True)
    labels = db.sql("SELECT id, label FROM images ORDER BY id").set_index("id").label.loc[ids].to_numpy()
    return {label: vectors[labels == label].mean(axis=0) for label in np.unique(labels)}


def test_data_version_changes_with_the_done_ids_not_only_their_count(tiny_store):
    before = actdb.open(tiny_store).array("tiny", "conv2")
    unmark(tiny_store, [0, 1])
    after = actdb.open(tiny_store).array("tiny", "conv2")
    assert after.rows_done == before.rows_done - 2 and after.data_version != before.data_version


@pytest.fixture
def store(tiny_store_template, tmp_path):
    import shutil

    copy = tmp_path / "store"
    shutil.copytree(tiny_store_template, copy)
    return copy


def test_unit_statistics_are_recomputed_when_rows_change_at_the_same_count(store, tiny_model_path):
    """Unmark the 10 tench rows, store 10 new images: the count is the same, the classes are not."""
    db = actdb.open(store)
    first = db.top_classes(model="tiny", layer="conv2", unit=0, by="mean")
    assert "tench" in set(first["class"])
    tench = db.sql("SELECT id FROM images WHERE label = 'tench'").id.tolist()
    unmark(store, tench)
    other = make_imagenet_tree(store.parent / "more", per_class=5, seed=77)  # 2 x 5 kept: 10 new rows
    result = invoke("--store", store, "ingest", other, "--model", tiny_model_path, "--preprocess", "tf",
                    "--layers", "conv2,fc", "--classes", "sea_cucumber,groenendael", "--quiet")
    assert result.exit_code == 0, result.output
    db = actdb.open(store)
    array = db.array("tiny", "conv2")
    assert array.rows_done == 3 * TINY_PER_CLASS  # the count alone cannot tell
    ranked = db.top_classes(model="tiny", layer="conv2", unit=0, by="mean")
    assert "tench" not in set(ranked["class"])
    expected = means_by_class(db)
    for label, mean in zip(ranked["class"], ranked["score"]):
        assert mean == pytest.approx(expected[label][0], rel=1e-5)


def test_an_index_over_rows_no_longer_stored_is_refused_not_served(store):
    assert invoke("--store", store, "index", *ARRAY).exit_code == 0
    unmark(store, [3])
    result = invoke("--store", store, "neighbors", "id:4", *ARRAY, "-k", 3)
    assert result.exit_code == 1 and "no longer stored" in result.output and "--rebuild" in result.output
    assert invoke("--store", store, "index", *ARRAY).exit_code == 0  # rebuilds: the index held a dropped row
    rows = invoke("--store", store, "neighbors", "id:4", *ARRAY, "-k", 40, "--json")
    assert rows.exit_code == 0 and 3 not in [r["id"] for r in json.loads(rows.stdout)]


def tsne(store, highlight="id:5"):
    return actdb.open(store).map(model="tiny", layer="conv2", method="tsne", highlight=[highlight], seed=1)


@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty", "deleted-sidecar", "other-points", "nan"])
def test_a_damaged_map_cache_is_refitted_with_a_note(store, damage):
    first = tsne(store)
    (coordinates,) = (store / "maps").glob("tsne-*.npy")
    sidecar = coordinates.with_suffix(".json")
    data = coordinates.read_bytes()
    if damage == "garbage":
        coordinates.write_bytes(data[:200] + os.urandom(64) + data[264:])
    elif damage == "truncated":
        coordinates.write_bytes(data[: len(data) // 2])
    elif damage == "empty":
        coordinates.write_bytes(b"")
    elif damage == "deleted-sidecar":
        sidecar.unlink()
    elif damage == "other-points":
        sidecar.write_text(sidecar.read_text().replace('"seed": 1', '"seed": 9'))
    elif damage == "nan":
        values = np.load(coordinates)
        values[0, 0] = np.nan
        np.save(coordinates, values)
    again = tsne(store)
    assert not again.attrs["cached"]
    assert any("refitted" in w for w in again.attrs["warnings"]), again.attrs["warnings"]
    np.testing.assert_allclose(again[["x", "y"]].to_numpy(), first[["x", "y"]].to_numpy(), rtol=1e-5, atol=1e-5)
    assert tsne(store).attrs["cached"]  # the refit was kept


def test_a_planted_pickle_is_never_loaded(store, tmp_path):
    tsne(store)
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    import pickle
    for name in [p.stem for p in (store / "maps").glob("tsne-*.npy")]:
        (store / "maps" / f"{name}.pkl").write_bytes(pickle.dumps(Payload()))
        (store / "maps" / f"{name}.npy").write_bytes(pickle.dumps(Payload()))  # a pickle in the .npy itself
    result = invoke("--store", store, "map", *ARRAY, "--method", "tsne", "--highlight", "id:5", "--seed", 1)
    assert result.exit_code == 0, result.output
    assert not marker.exists()
    assert "refitted" in result.output


def test_nothing_in_the_package_unpickles_store_data():
    """Only two modules touch pickle: the Ray engine's in-memory transport of bytes the driver
    pickled itself, and the .pth reader's allow-list unpickler of model files (not store data)."""
    allowed = {PACKAGE / "ingest" / "engines" / "ray.py", PACKAGE / "models" / "pth.py"}
    for path in PACKAGE.rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Call):
                name = ast.unparse(node.func)
                if any(k.arg == "allow_pickle" and ast.unparse(k.value) != "False" for k in node.keywords):
                    pytest.fail(f"{path}: {ast.unparse(node)[:80]} allows pickles")
                if name in ("pickle.load", "pickle.loads", "pd.read_pickle", "joblib.load", "dill.load"):
                    assert path in allowed, f"{path} unpickles: {ast.unparse(node)[:80]}"
                if name == "np.load":
                    assert any(k.arg == "allow_pickle" for k in node.keywords), f"{path}: np.load without allow_pickle"


def test_a_dropped_arrays_id_is_never_reused_and_its_derived_data_goes_with_it(store, tiny_store_template,
                                                                              tiny_model_path):
    """The finding: after `check --repair` dropped a deleted array, the next new array got its
    id (max + 1) and served its unit statistics as its own."""
    import shutil

    db = actdb.open(store)
    dropped = db.array("tiny", "conv2", reduce="max")
    db.unit_stats(model="tiny", layer="conv2", reduce="max")  # derived rows keyed by its id
    assert dropped.id == max(a.id for a in db.arrays())  # the newest: max(id) + 1 would hand it out again
    shutil.rmtree(store / "activations.zarr" / dropped.zarr_path)
    assert actdb.open(store).check(repair=True)["problems"]
    left = actdb.open(store).sql(f"SELECT count(*) AS n FROM unit_stats WHERE array_id = {dropped.id}").n[0]
    assert left == 0
    result = invoke("--store", store, "ingest", tiny_store_template.parent / "train", "--model",
                    tiny_model_path, "--preprocess", "tf", "--layers", "conv1", "--quiet")
    assert result.exit_code == 0, result.output
    db = actdb.open(store)
    new = db.array("tiny", "conv1")
    assert new.id > dropped.id
    ranked = db.top_classes(model="tiny", layer="conv1", unit=0, by="mean")
    ids, vectors = db.activations("tiny", "conv1", return_ids=True)
    labels = db.sql("SELECT id, label FROM images ORDER BY id").set_index("id").label.loc[ids].to_numpy()
    for label, score in zip(ranked["class"], ranked["score"]):
        assert score == pytest.approx(vectors[labels == label, 0].mean(), rel=1e-5)
