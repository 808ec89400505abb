"""Issue 17, checksums on every chunk: a chunk whose content is not what was committed, however
it came to differ, is found by `check` with its rows named, is never served as data when its
crc32c fails, and `check --repair` plus the same ingest restores it bit for bit.

Every expectation is computed here from the raw files (google_crc32c, numcodecs' Blosc,
hashlib), never by the code under test."""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import duckdb
import google_crc32c
import numcodecs
import numpy as np
import pytest
import zarr
from zarr.codecs import BloscCodec

import actdb
from actdb.store import arrays as store_arrays
from conftest import invoke, make_imagenet_tree, one_line_error

CHUNK_ROWS = 8  # small chunks, so that 30 images fill four per array and one is partial
ARRAYS = {"A": ("conv2", "mean"), "B": ("fc", "mean"), "C": ("conv2", "max")}


def ingest_args(store, source, model, layers="conv2,fc", reduce="mean"):
    """Batches of 4 committed one by one: each 8-row chunk is written in two commits."""
    return ["--store", store, "ingest", source, "--model", model, "--preprocess", "tf", "--layers", layers,
            "--reduce", reduce, "--batch-size", 4, "--commit-seconds", 0, "--quiet"]


def ingest_all(store, source, model):
    for layers, reduce in (("conv2,fc", "mean"), ("conv2", "max")):
        result = invoke(*ingest_args(store, source, model, layers, reduce))
        assert result.exit_code == 0, result.output


@pytest.fixture(scope="module")
def small_chunks():
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(store_arrays, "chunk_rows_for", lambda channels, itemsize: CHUNK_ROWS)
        yield


@pytest.fixture(scope="module")
def built(tmp_path_factory, tiny_model_path, small_chunks):
    root = tmp_path_factory.mktemp("integrity")
    source = make_imagenet_tree(root / "train", per_class=10, seed=21)
    store = root / "store"
    ingest_all(store, source, tiny_model_path)
    other_source = make_imagenet_tree(root / "other", per_class=2, seed=22)  # another store, same layout
    other = root / "other-store"
    assert invoke(*ingest_args(other, other_source, tiny_model_path)).exit_code == 0
    return {"store": store, "source": source, "model": tiny_model_path, "other": other}


def copy_of(built, tmp_path) -> Path:
    store = tmp_path / "store"
    shutil.copytree(built["store"], store)
    return store


# ---- an independent reading of the store ---------------------------------------------------------

def catalog(store: Path):
    return duckdb.connect(str(store / "catalog.duckdb"), read_only=True)


def array_rows(store: Path) -> dict:
    """name -> (array id, zarr path, dtype, channels), straight from the catalog."""
    with catalog(store) as con:
        found = con.execute("SELECT a.id, a.zarr_path, a.dtype, a.channels, a.layer, a.reduce FROM arrays a").fetchall()
    return {name: row[:4] for name, (layer, reduce) in ARRAYS.items() for row in found if row[4:] == (layer, reduce)}


def chunk_path(store: Path, name: str, chunk: int) -> Path:
    _, path, _, _ = array_rows(store)[name]
    return store / "activations.zarr" / path / "c" / str(chunk) / "0"


def zarr_metadata(store: Path, path: str) -> dict:
    return json.loads((store / "activations.zarr" / path / "zarr.json").read_text())


def decode_chunk(raw: bytes, dtype: str, rows: int, channels: int) -> np.ndarray:
    """crc32c trailer checked, then Blosc, as the Zarr v3 spec lays a chunk out."""
    assert google_crc32c.value(raw[:-4]).to_bytes(4, "little") == raw[-4:], "crc32c trailer does not match"
    return np.frombuffer(numcodecs.Blosc().decode(raw[:-4]), dtype=np.dtype(dtype).newbyteorder("<")).reshape(
        rows, channels)


def expected_digests(store: Path) -> dict:
    """(array id, chunk) -> SHA-256 of the done rows' ids (int64 LE) then values, from the raw chunk files."""
    expected = {}
    with catalog(store) as con:
        done = con.execute("SELECT array_id, image_id FROM done ORDER BY array_id, image_id").fetchall()
    for array_id, path, dtype, channels in array_rows(store).values():
        metadata = zarr_metadata(store, path)
        assert [c["name"] for c in metadata["codecs"]] == ["bytes", "blosc", "crc32c"]
        rows = metadata["chunk_grid"]["configuration"]["chunk_shape"][0]
        ids = np.array([i for a, i in done if a == array_id], dtype=np.int64)
        for chunk in np.unique(ids // rows).tolist():
            raw = (store / "activations.zarr" / path / "c" / str(chunk) / "0").read_bytes()
            values = decode_chunk(raw, dtype, rows, channels)
            mine = ids[ids // rows == chunk]
            digest = hashlib.sha256(mine.astype("<i8").tobytes() + values[mine - chunk * rows].tobytes())
            expected[(array_id, chunk)] = digest.hexdigest()
    return expected


def recorded_digests(store: Path) -> dict:
    with catalog(store) as con:
        return {(a, c): d for a, c, d in con.execute("SELECT array_id, chunk, digest FROM chunk_digests").fetchall()}


def stored_values(store: Path) -> dict:
    """Every array's done rows as raw bits (float32 viewed as uint32): equality is bit-identity."""
    db = actdb.open(store)
    return {name: db.activations("tiny", layer, reduce=reduce).view(np.uint32)
            for name, (layer, reduce) in ARRAYS.items()}


# ---- what a commit records --------------------------------------------------------------------

def test_new_arrays_carry_crc32c_and_every_committed_chunk_its_digest(built):
    store = built["store"]
    expected = expected_digests(store)
    assert len(expected) == 12  # 3 arrays x 4 chunks, each written in two commits
    assert recorded_digests(store) == expected
    with catalog(store) as con:
        rows = dict(con.execute("SELECT chunk, rows FROM chunk_digests WHERE array_id = 1").fetchall())
    assert rows == {0: 8, 1: 8, 2: 8, 3: 6}
    assert actdb.open(store).check()["ok"]


def test_check_counts_the_chunks_it_verified_against_their_digests(built):
    report = actdb.open(built["store"]).check()
    assert report["checked"]["chunks"] == report["checked"]["digests"] == 12 and report["notes"] == []


# ---- damage, found and repaired ---------------------------------------------------------------

def flip(path: Path, offsets) -> None:
    data = bytearray(path.read_bytes())
    for offset in offsets:
        data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def test_every_kind_of_damage_is_found_named_refused_and_repaired_bit_identical(built, tmp_path):
    store = copy_of(built, tmp_path)
    before = stored_values(store)
    size = chunk_path(store, "A", 0).stat().st_size
    flip(chunk_path(store, "A", 0), [0, size // 2, size - 5])  # bytes flipped at several offsets
    truncated = chunk_path(store, "A", 1)
    truncated.write_bytes(truncated.read_bytes()[: size // 2])
    shutil.copyfile(chunk_path(store, "C", 2), chunk_path(store, "A", 2))  # a valid chunk of another array
    chunk_path(store, "A", 3).unlink()  # deleted
    chunk_path(store, "B", 0).write_bytes(b"")  # emptied
    shutil.copyfile(chunk_path(store, "B", 2), chunk_path(store, "B", 1))  # a valid chunk of the same array
    shutil.copyfile(chunk_path(built["other"], "B", 0), chunk_path(store, "B", 3))  # a valid chunk of another store

    with pytest.raises(actdb.ActdbError, match=r"conv2/mean: chunk c/0/0 \(image ids 0-7\) cannot be decoded: "
                                               r"its crc32c checksum fails.*actdb check --repair"):
        actdb.open(store).activations("tiny", "conv2")
    one_line_error(invoke("--store", store, "top-images", "--model", "tiny", "--layer", "fc", "--unit", 0),
                   "fc/mean", "image ids 0-7", "crc32c", "check --repair")

    report = actdb.open(store).check()
    assert not report["ok"]
    found = {(p["array"].split("/")[-2], p["detail"].split(" ")[1], p["problem"], p["rows"]) for p in report["problems"]}
    assert found == {("conv2", "c/0/0", "corrupt chunk", 8), ("conv2", "c/1/0", "corrupt chunk", 8),
                     ("conv2", "c/2/0", "changed chunk", 8), ("conv2", "c/3/0", "missing chunk", 6),
                     ("fc", "c/0/0", "corrupt chunk", 8), ("fc", "c/1/0", "changed chunk", 8),
                     ("fc", "c/3/0", "changed chunk", 6)}
    assert all(p["array"].endswith("/mean") for p in report["problems"])  # C, the max array, is intact
    details = [p["detail"] for p in report["problems"]]
    assert any(d.startswith("chunk c/3/0 (ids 24-31)") and d.endswith("done rows 24-29") for d in details)
    assert sum("crc32c" in d for d in details) == 3 and sum("digest differs" in d for d in details) == 3
    assert invoke("--store", store, "check").exit_code == 1

    repaired = actdb.open(store).check(repair=True)
    assert sum("rows unmarked" in line for line in repaired["repaired"]) == 7
    after = actdb.open(store).check()
    assert after["ok"] and after["checked"]["rows"] == 90 - 30 - 22  # A lost its 30 rows, B 22 of 30
    result = invoke(*ingest_args(store, built["source"], built["model"]))
    assert result.exit_code == 0, result.output
    restored = stored_values(store)
    for name in ARRAYS:
        np.testing.assert_array_equal(restored[name], before[name])
    assert actdb.open(store).check()["ok"]
    assert recorded_digests(store) == expected_digests(store) == recorded_digests(built["store"])


@pytest.mark.parametrize("where", ["first", "middle", "last data", "checksum", "three"])
def test_flipped_bytes_anywhere_fail_the_checksum_on_read_and_in_check(built, tmp_path, where):
    store = copy_of(built, tmp_path)
    path = chunk_path(store, "B", 1)
    size = path.stat().st_size
    offsets = {"first": [0], "middle": [size // 2], "last data": [size - 5], "checksum": [size - 1],
               "three": [size // 2 - 1, size // 2, size // 2 + 1]}[where]
    flip(path, offsets)
    with actdb.open(store) as db:
        array = db.array("tiny", "fc")
        with pytest.raises(actdb.ActdbError, match=r"fc/mean: chunk c/1/0 \(image ids 8-15\).*crc32c"):
            db.rows(array, [9])
        np.testing.assert_array_equal(db.rows(array, [0, 16]), actdb.open(built["store"]).rows(array, [0, 16]))
        report = db.check()
    assert [(p["problem"], p["rows"]) for p in report["problems"]] == [("corrupt chunk", 8)]
    assert "done rows 8-15" in report["problems"][0]["detail"]


def test_an_ingest_never_merges_new_rows_into_a_chunk_that_changed(tmp_path, tiny_model_path, small_chunks):
    """A chunk holding committed rows and rows still to compute is read back by the ingest: if
    it is not what was committed, the ingest refuses instead of vouching for it anew."""
    source = make_imagenet_tree(tmp_path / "train", per_class=5, seed=23)
    store = tmp_path / "store"
    first = invoke(*ingest_args(store, source, tiny_model_path, "fc"), "--classes", "n01440764")
    assert first.exit_code == 0, first.output  # ids 0-4 done: chunk 0 (ids 0-7) is part done
    other = tmp_path / "other"
    assert invoke(*ingest_args(other, make_imagenet_tree(tmp_path / "o", 3, seed=24), tiny_model_path,
                               "fc")).exit_code == 0
    target = chunk_path(store, "B", 0)
    shutil.copyfile(chunk_path(other, "B", 0), target)
    one_line_error(invoke(*ingest_args(store, source, tiny_model_path, "fc")),
                   "chunk c/0/0", "holds other values than were committed", "check --repair")
    assert [p["problem"] for p in actdb.open(store).check()["problems"]] == ["changed chunk"]


def test_a_chunk_without_its_digest_cannot_be_vouched_for(built, tmp_path):
    store = copy_of(built, tmp_path)
    with duckdb.connect(str(store / "catalog.duckdb")) as con:
        con.execute("DELETE FROM chunk_digests WHERE array_id = 1 AND chunk = 2")
    report = actdb.open(store).check()
    assert [(p["problem"], p["rows"]) for p in report["problems"]] == [("unverified chunk", 8)]


def test_nan_rows_that_were_committed_are_unmarked_and_the_rest_of_their_chunk_stays_vouched_for(built, tmp_path):
    """A row committed as NaN (a model can output NaN) is not data: repair unmarks it alone and
    records the digest of the chunk's other rows, which stay done."""
    store = copy_of(built, tmp_path)
    before = stored_values(store)
    array_id, path, _, _ = array_rows(store)["B"]
    zarr_array = zarr.open_array(str(store / "activations.zarr" / path), mode="r+")
    zarr_array[17] = np.nan  # as if the ingest had computed and committed NaN for image 17
    rows = np.arange(16, 24)
    values = zarr_array[16:24]
    with duckdb.connect(str(store / "catalog.duckdb")) as con:
        con.execute("UPDATE chunk_digests SET digest = ? WHERE array_id = ? AND chunk = 2",
                    [hashlib.sha256(rows.astype("<i8").tobytes() + values.astype("<f4").tobytes()).hexdigest(),
                     array_id])
    report = actdb.open(store).check()
    assert [(p["problem"], p["rows"], p["detail"].endswith("ids 17")) for p in report["problems"]] == [
        ("NaN rows", 1, True)]
    actdb.open(store).check(repair=True)
    with catalog(store) as con:
        assert con.execute("SELECT rows FROM chunk_digests WHERE array_id = ? AND chunk = 2",
                           [array_id]).fetchone() == (7,)
    assert recorded_digests(store) == expected_digests(store)
    assert actdb.open(store).check()["ok"]
    assert invoke(*ingest_args(store, built["source"], built["model"])).exit_code == 0
    np.testing.assert_array_equal(stored_values(store)["B"], before["B"])


# ---- stores made before checksums ---------------------------------------------------------------

def make_legacy(store: Path) -> None:
    """What a store made before this issue looks like: no crc32c codec, no chunk_digests."""
    group = zarr.open_group(str(store / "activations.zarr"), mode="a", zarr_format=3)
    for _, path, _, _ in array_rows(store).values():
        old = group[path]
        values, attributes = old[:], dict(old.attrs)
        del group[path]
        new = group.create_array(path, shape=old.shape, chunks=old.chunks, dtype=old.dtype, fill_value=np.nan,
                                 compressors=BloscCodec(cname="zstd", clevel=3, shuffle="bitshuffle"),
                                 dimension_names=("image_id", "channel"), attributes=attributes)
        new[:] = values
    with duckdb.connect(str(store / "catalog.duckdb")) as con:
        con.execute("DROP TABLE chunk_digests")


def test_a_store_made_before_checksums_opens_is_named_and_repair_adds_them(built, tmp_path):
    store = copy_of(built, tmp_path)
    before = stored_values(store)
    make_legacy(store)
    assert all("crc32c" not in json.dumps(zarr_metadata(store, p)) for _, p, _, _ in array_rows(store).values())
    np.testing.assert_array_equal(stored_values(store)["A"], before["A"])
    assert invoke("--store", store, "top-images", "--model", "tiny", "--layer", "conv2", "--unit", 0).exit_code == 0
    report = actdb.open(store).check()
    assert report["ok"] and len(report["notes"]) == 3
    assert all("has no checksums" in n and "check --repair" in n for n in report["notes"])
    shown = invoke("--store", store, "check")
    assert shown.exit_code == 0 and shown.output.count("note: ") == 3

    repaired = actdb.open(store).check(repair=True)
    assert sum("crc32c checksums" in line for line in repaired["repaired"]) == 3
    after = actdb.open(store).check()
    assert after["ok"] and after["notes"] == [] and after["checked"]["digests"] == 12
    assert recorded_digests(store) == expected_digests(store)  # every array now ends its chunks in crc32c
    restored = stored_values(store)
    for name in ARRAYS:
        np.testing.assert_array_equal(restored[name], before[name])
    assert sorted(store_arrays.stored_paths(store)) == sorted(p for _, p, _, _ in array_rows(store).values())
    result = invoke(*ingest_args(store, built["source"], built["model"]), "--json")
    assert result.exit_code == 0 and json.loads(result.stdout)["skipped"] == 30  # the same ingest finds it whole


def test_an_array_left_by_a_killed_rewrite_is_a_note_and_repair_deletes_it(built, tmp_path):
    store = copy_of(built, tmp_path)
    group = zarr.open_group(str(store / "activations.zarr"), mode="a", zarr_format=3)
    group.create_array("tiny/leftover/conv2/mean-crc32c", shape=(4, 16), dtype="float32")
    report = actdb.open(store).check()
    assert report["ok"] and [n.split(" ")[0] for n in report["notes"]] == [
        "activations.zarr/tiny/leftover/conv2/mean-crc32c"]
    actdb.open(store).check(repair=True)
    assert "tiny/leftover/conv2/mean-crc32c" not in store_arrays.stored_paths(store)
    assert actdb.open(store).check()["notes"] == []
