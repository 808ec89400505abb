"""Derived data knows its source: caches keyed by what repeats (an array id, a row count)
are recomputed, never served, when the rows they were computed from changed; no cache is
code (no pickle); a damaged cache is dropped and recomputed with a note."""
from __future__ import annotations

import ast
import hashlib
import json
import os
import re
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


def _index_file(store):
    db = actdb.open(store)
    record = db.sql("SELECT file FROM indexes WHERE array_id = ?", [db.array("tiny", "conv2").id]).file[0]
    return store / "indexes" / record


def _other_index(store, tmp_path):
    """A valid FAISS index of the same rows built by another store: another file of its kind."""
    import shutil

    other = tmp_path / "other"
    shutil.copytree(store, other)
    db = actdb.open(other)
    with db.catalog.write() as con:  # other values in the same rows: its neighbours differ
        con.execute("DELETE FROM indexes")
    values = zarr.open_array(other / "activations.zarr" / db.array("tiny", "conv2").zarr_path, mode="r")
    assert values.shape[0] > 0
    assert invoke("--store", other, "index", *ARRAY, "--metric", "cosine").exit_code == 0
    return next((other / "indexes").glob("*cosine*")).read_bytes()


@pytest.mark.parametrize("damage", ["flip-header", "flip-middle", "flip-last", "truncated", "emptied",
                                    "another-index", "deleted"])
def test_a_damaged_index_file_is_never_searched(store, tmp_path, damage):
    """Bytes flipped in the stored vectors decode without error in FAISS and would rank by them;
    the crc32c recorded with the index catches every change before FAISS reads the file."""
    assert invoke("--store", store, "index", *ARRAY).exit_code == 0
    path = _index_file(store)
    data = bytearray(path.read_bytes())
    if damage.startswith("flip"):
        at = {"flip-header": 20, "flip-middle": len(data) // 2, "flip-last": len(data) - 9}[damage]
        data[at:at + 3] = bytes(b ^ 0x5A for b in data[at:at + 3])
        path.write_bytes(bytes(data))
    elif damage == "truncated":
        path.write_bytes(bytes(data[: len(data) // 3]))
    elif damage == "emptied":
        path.write_bytes(b"")
    elif damage == "another-index":
        path.write_bytes(_other_index(store, tmp_path))
    else:
        path.unlink()
    result = invoke("--store", store, "neighbors", "id:4", *ARRAY, "-k", 3)
    assert result.exit_code == 1 and len(result.output.strip().splitlines()) == 1, result.output
    assert "index file" in result.output and "Traceback" not in result.output
    report = actdb.open(store).check()
    assert not report["ok"] and any(p["array"] == path.name for p in report["problems"])
    assert actdb.open(store).check(repair=True)["repaired"]
    assert invoke("--store", store, "index", *ARRAY).exit_code == 0
    rows = json.loads(invoke("--store", store, "neighbors", "id:4", *ARRAY, "-k", 3, "--json").stdout)
    db = actdb.open(store)
    ids, vectors = db.activations("tiny", "conv2", return_ids=True)
    distance = ((vectors.astype(np.float64) - vectors[list(ids).index(4)].astype(np.float64)) ** 2).sum(axis=1)
    assert [r["id"] for r in rows] == ids[np.lexsort((ids, distance))][:3].tolist()  # NumPy brute force


def test_the_index_of_a_trajectory_is_verified_too(store):
    """The trajectory searches an array's index when it covers the set: a changed file is not used."""
    assert invoke("--store", store, "index", *ARRAY).exit_code == 0
    path = _index_file(store)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    from actdb.store import derived

    db = actdb.open(store)
    record = derived.index_record(db, db.array("tiny", "conv2"), "l2")
    assert "crc32c" in derived.index_damage(db, record)


def test_unit_statistics_are_kept_in_float64(store):
    """float32 storage rounded a mean of ~1e3 to ~1e-4: the figures must be the pass's own."""
    db = actdb.open(store)
    db.unit_stats(model="tiny", layer="conv2")
    kept = actdb.open(store).unit_stats(model="tiny", layer="conv2")  # read back from the catalog
    ids, vectors = db.activations("tiny", "conv2", return_ids=True)
    finite = np.isfinite(vectors).all(axis=1)
    expected = vectors[finite].astype(np.float64)
    np.testing.assert_allclose(kept.mean, expected.mean(axis=0), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(kept.std, expected.std(axis=0), rtol=1e-9, atol=1e-12)
    assert db.sql("SELECT typeof(mean) AS t FROM unit_stats LIMIT 1").t[0] == "DOUBLE[]"


def test_a_derived_table_replaced_by_another_is_named_by_check_rebuilt_by_repair(store):
    """The finding: unit_stats replaced by another table gave raw DuckDB binder errors while
    `check` said "no problems"."""
    db = actdb.open(store)
    db.unit_stats(model="tiny", layer="conv2")
    with db.catalog.write() as con:
        con.execute("DROP TABLE unit_stats")
        con.execute("CREATE TABLE unit_stats (array_id VARCHAR, class INTEGER, mean VARCHAR)")
        con.execute("INSERT INTO unit_stats VALUES ('1', 2, 'not a vector')")
    result = invoke("--store", store, "check")
    assert result.exit_code == 1 and "unit_stats" in result.output and "--repair" in result.output
    assert "Traceback" not in result.output
    ranked = invoke("--store", store, "top-classes", *ARRAY, "--unit", 0, "--by", "mean", "--json")
    assert ranked.exit_code == 0, ranked.output  # recomputed for the answer, whatever the table holds
    expected = means_by_class(actdb.open(store))
    rows = json.loads(ranked.stdout)
    assert {row["class"] for row in rows} == set(expected)
    for row in rows:
        assert row["score"] == pytest.approx(expected[row["class"]][0], rel=1e-6)
    assert invoke("--store", store, "check", "--repair").exit_code == 0
    assert invoke("--store", store, "check").exit_code == 0


def test_a_primary_table_with_other_columns_is_refused_by_check_not_repaired(store):
    db = actdb.open(store)
    with db.catalog.write() as con:
        con.execute("ALTER TABLE done RENAME COLUMN image_id TO row_id")
    for args in (("check",), ("check", "--repair")):
        result = invoke("--store", store, *args)
        assert result.exit_code == 1, result.output
        assert "done" in result.output and "restore the catalog from a backup" in result.output
        assert "Traceback" not in result.output


def test_a_store_made_before_index_digests_and_float64_statistics_still_answers(store):
    """Older derived tables: indexes without file digests, unit_stats in FLOAT[]: the index is
    used as it is, the statistics are recomputed, and the next write brings both tables up."""
    assert invoke("--store", store, "index", *ARRAY).exit_code == 0
    db = actdb.open(store)
    db.unit_stats(model="tiny", layer="conv2")
    with db.catalog.write() as con:
        con.execute("ALTER TABLE indexes DROP COLUMN file_crc32c")
        con.execute("ALTER TABLE indexes DROP COLUMN file_bytes")
        con.execute("CREATE TABLE old_stats AS SELECT array_id, class, members, mean::FLOAT[] AS mean, "
                    "std::FLOAT[] AS std, rows_done, data_version, computed_at FROM unit_stats")
        con.execute("DROP TABLE unit_stats")
        con.execute("ALTER TABLE old_stats RENAME TO unit_stats")
    assert invoke("--store", store, "check").exit_code == 0
    assert invoke("--store", store, "neighbors", "id:4", *ARRAY, "-k", 3).exit_code == 0
    kept = actdb.open(store).unit_stats(model="tiny", layer="conv2")
    ids, vectors = actdb.open(store).activations("tiny", "conv2", return_ids=True)
    np.testing.assert_allclose(kept.mean, vectors[np.isfinite(vectors).all(axis=1)].astype(np.float64).mean(axis=0),
                               rtol=1e-12)
    assert invoke("--store", store, "index", *ARRAY, "--rebuild").exit_code == 0
    types = actdb.open(store).sql("SELECT column_name, data_type FROM information_schema.columns "
                                  "WHERE table_name IN ('indexes', 'unit_stats')")
    kinds = dict(zip(types.column_name, types.data_type))
    assert kinds["file_crc32c"] == "VARCHAR" and kinds["mean"] == "DOUBLE[]"


def _add_rows(store, tiny_model_path, seed=5, per_class=1, layers="conv2"):
    """Ingest per_class new images of each class into the tiny store: rows added, none removed."""
    extra = make_imagenet_tree(store.parent / f"extra{seed}", per_class=per_class, seed=seed)
    result = invoke("--store", store, "ingest", extra, "--model", tiny_model_path, "--preprocess", "tf",
                    "--layers", layers, "--quiet")
    assert result.exit_code == 0, result.output


def test_classes_answer_every_call_after_an_ingest_that_adds_rows(store, tiny_model_path):
    """The finding: `classes` read the ids of an index opened as a temporary, freed before they
    were copied, and was refused as if rows had been removed (29 of 30 calls)."""
    assert invoke("--store", store, "index", *ARRAY).exit_code == 0
    ids, vectors = actdb.open(store).activations("tiny", "conv2", return_ids=True)  # what the index holds
    labels = actdb.open(store).images().set_index("id").label.loc[ids].to_numpy()
    _add_rows(store, tiny_model_path)
    db = actdb.open(store)
    query = list(ids).index(4)
    expected = {}  # NumPy: l2 to each class centroid of the indexed rows, the query's own row left out
    for label in np.unique(labels):
        members = (labels == label) & (np.arange(len(ids)) != query)
        centroid = vectors[members].astype(np.float64).mean(axis=0)
        expected[label] = np.linalg.norm(vectors[query].astype(np.float64) - centroid)
    for _ in range(30):
        ranked = db.classes("id:4", model="tiny", layer="conv2")
        warnings = ranked.attrs["warnings"]
        assert len(warnings) == 1 and "3 rows ingested since" in warnings[0], warnings  # behind, not refused
        assert ranked["class"].tolist() == sorted(expected, key=expected.get)
        np.testing.assert_allclose(ranked["distance"], sorted(expected.values()), rtol=1e-5)


def test_only_the_knn_layer_reads_an_index_s_ids():
    """Ids are copied out of an index by one helper that holds the index while it reads them."""
    readers = [str(path.relative_to(PACKAGE)) for path in PACKAGE.rglob("*.py") if ".id_map" in path.read_text()]
    assert readers == ["knn/index.py"]


def test_report_image_pages_keep_their_panels_after_an_ingest_that_adds_rows(store, tiny_model_path):
    """The finding: every image page of a report made after rows were added lost its nearest
    images and classes to the refused `classes` call (exit 0, no word)."""
    assert invoke("--store", store, "index", *ARRAY).exit_code == 0
    _add_rows(store, tiny_model_path)
    result = invoke("--store", store, "report", "--layers", "conv2", "--top", "3", "--json")
    assert result.exit_code == 0, result.output
    pages = sorted((store / "report" / "image").glob("*.html"))
    assert pages
    labels = set(actdb.open(store).labels())
    for page in pages:
        panel = page.read_text().split("tiny conv2 (mean)</a></h2>", 1)[1]
        assert "Nearest stored images" in panel, page.name
        ranked = panel.split("Nearest classes", 1)[1].split("</table>", 1)[0]
        assert set(re.findall(r'class/(\w+)\.html', ranked)) == labels, page.name


def test_a_reingest_of_changed_files_at_the_same_ids_is_a_new_data_version(tmp_path, tiny_model_path):
    """The finding: the data version digested the done ids only, so after `check --repair` and a
    re-ingest of changed files at the same paths (the same ids), unit statistics and t-SNE maps
    of the old pictures were served."""
    tree = make_imagenet_tree(tmp_path / "train", per_class=4, seed=3)
    store = tmp_path / "store"
    ingest = ["--store", store, "ingest", tree, "--model", tiny_model_path, "--preprocess", "tf", "--layers",
              "conv2", "--quiet"]
    assert invoke(*ingest).exit_code == 0
    db = actdb.open(store)
    before, old_rows = db.array("tiny", "conv2"), db.activations("tiny", "conv2")
    db.top_classes(model="tiny", layer="conv2", unit=0, by="mean")  # unit statistics kept
    assert not db.map(model="tiny", layer="conv2", method="tsne").attrs["cached"]
    assert db.map(model="tiny", layer="conv2", method="tsne").attrs["cached"]  # kept and served
    chunk = next(p for p in (store / "activations.zarr" / before.zarr_path / "c").rglob("*") if p.is_file())
    chunk.unlink()  # damage: repair unmarks its rows for the next ingest to recompute
    assert actdb.open(store).check(repair=True)["repaired"]
    make_imagenet_tree(tmp_path / "train", per_class=4, seed=4)  # meanwhile the files changed, same paths
    assert invoke(*ingest).exit_code == 0
    db = actdb.open(store)
    after = db.array("tiny", "conv2")
    ids, rows = db.activations("tiny", "conv2", return_ids=True)
    assert after.rows_done == before.rows_done and not np.allclose(rows, old_rows)  # same ids, other values
    assert after.data_version != before.data_version
    ranked = db.top_classes(model="tiny", layer="conv2", unit=0, by="mean")
    expected = means_by_class(db)  # NumPy on the rows as stored now
    assert len(ranked) == 3
    for label, score in zip(ranked["class"], ranked["score"]):
        assert score == pytest.approx(expected[label][0], rel=1e-5)
    result = invoke("--store", store, "map", "--model", "tiny", "--layer", "conv2", "--method", "tsne")
    assert result.exit_code == 0 and "fitted" in result.output and "cache" not in result.output, result.output


def test_an_array_made_before_chunk_digests_still_has_a_version_of_its_ids(store):
    db = actdb.open(store)
    with_digests = db.array("tiny", "conv2").data_version
    with db.catalog.write() as con:
        con.execute("DROP TABLE chunk_digests")
    legacy = actdb.open(store).array("tiny", "conv2")
    assert legacy.data_version != with_digests and len(legacy.data_version) == 16
    ranked = actdb.open(store).top_classes(model="tiny", layer="conv2", unit=0, by="mean")
    assert len(ranked) == 3  # statistics kept at that version
    with db.catalog.write() as con:
        con.execute("DELETE FROM done WHERE array_id = ? AND image_id = 0", [legacy.id])
    assert actdb.open(store).array("tiny", "conv2").data_version != legacy.data_version


@pytest.mark.parametrize("edit", [
    "UPDATE unit_stats SET mean = list_transform(mean, lambda x: x + 1) WHERE class = 'tench'; "
    "DELETE FROM unit_stats WHERE class = 'groenendael'",  # the finding's edit: a row's digest no longer holds
    "DELETE FROM unit_stats WHERE class = 'groenendael'",  # every row intact, a class gone
    "UPDATE images SET label = 'tench' WHERE id = (SELECT min(id) FROM images WHERE label <> 'tench')",  # members moved
    "UPDATE unit_stats SET data_version = 'other' WHERE class = 'tench'",  # one row of another version
], ids=["means-and-class-deleted", "class-deleted", "relabelled", "one-version"])
def test_edited_unit_statistics_are_named_by_check_and_recomputed_not_served(store, edit):
    """The finding: unit_stats edited in the catalog passed `check` (which looked at none of it) and
    was served by `top-classes --by mean` (the reader compared the first row's version only)."""
    db = actdb.open(store)
    db.unit_stats(model="tiny", layer="conv2")
    assert db.check()["ok"] and db.check()["checked"]["unit_stats"] == 1
    with db.catalog.write() as con:
        for statement in edit.split("; "):
            con.execute(statement)
    report = actdb.open(store).check()
    problems = [p for p in report["problems"] if p["problem"] == "changed unit statistics"]
    assert not report["ok"] and len(problems) == 1 and "tiny conv2 (mean)" in problems[0]["detail"], report
    assert len(report["problems"]) == 1
    ranked = json.loads(invoke("--store", store, "top-classes", *ARRAY, "--unit", 0, "--by", "mean", "--json").stdout)
    expected = means_by_class(actdb.open(store))  # NumPy on the stored rows
    assert {row["class"] for row in ranked} == set(expected)
    for row in ranked:
        assert row["score"] == pytest.approx(expected[row["class"]][0], rel=1e-6)
    assert actdb.open(store).check()["ok"]  # the answer recomputed and kept them
    with actdb.open(store).catalog.write() as con:
        con.execute("UPDATE unit_stats SET std = list_transform(std, lambda x: x * 2) WHERE class = '*'")
    assert actdb.open(store).check(repair=True)["repaired"]
    assert actdb.open(store).check()["ok"]
