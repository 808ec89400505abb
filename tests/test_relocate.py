"""`actdb relocate OLD NEW`: a dataset that moved is followed by the store's recorded paths
(ids and rows unchanged), and a report of a store whose dataset moved says so in one line."""
from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest

import actdb
from conftest import TINY_PER_CLASS, invoke, one_line_error


@pytest.fixture
def moved(tiny_store_template, tmp_path):
    """A copy of the tiny store whose dataset now lies at NEW (a copy: the shared one stays)."""
    store = tmp_path / "store"
    shutil.copytree(tiny_store_template, store)
    old = tiny_store_template.parent / "train"
    new = tmp_path / "moved" / "train"
    shutil.copytree(old, new)
    return store, old, new


def test_paths_follow_the_dataset_and_nothing_else_changes(moved):
    store, old, new = moved
    before = actdb.open(store).images()
    rows_before = actdb.open(store).activations("tiny", "conv2", return_ids=True)
    result = invoke("--store", store, "relocate", old, new, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report == {"old": str(old), "new": str(new.resolve()), "images": 3 * TINY_PER_CLASS, "missing": 0,
                      "warnings": []}
    after = actdb.open(store).images()
    expected = [os.path.join(new.resolve(), os.path.relpath(p, old)) for p in before.path]
    assert after.path.tolist() == expected and all(os.path.isfile(p) for p in after.path)
    assert after.drop(columns=["path", "source"]).equals(before.drop(columns=["path", "source"]))
    ids, rows = actdb.open(store).activations("tiny", "conv2", return_ids=True)
    np.testing.assert_array_equal(ids, rows_before[0])
    np.testing.assert_array_equal(rows, rows_before[1])
    # a query by the moved file is the stored image again: it leaves itself out of its neighbours
    image_id, path = int(after.id[4]), after.path[4]
    by_file = actdb.open(store).classes(path, model="tiny", layer="conv2", by="mean")
    by_id = actdb.open(store).classes(f"id:{image_id}", model="tiny", layer="conv2", by="mean")
    assert by_file.n_members.tolist() == by_id.n_members.tolist()  # its own class counted without it
    np.testing.assert_allclose(by_file.distance, by_id.distance, rtol=1e-5)


def test_a_partly_moved_dataset_is_relocated_with_a_warning_naming_what_is_missing(moved):
    store, old, new = moved
    gone = next(new.rglob("*.png"))
    gone.unlink()
    result = invoke("--store", store, "relocate", old, new)
    assert result.exit_code == 0, result.output
    assert f"relocated {3 * TINY_PER_CLASS} images from {old} to {new.resolve()}" in result.stdout
    assert f"warning: 1 of the {3 * TINY_PER_CLASS} relocated images are not at the new place ({gone.resolve()})" \
        in result.stderr


def test_what_cannot_be_relocated_is_one_line_and_changes_nothing(moved, tmp_path):
    store, old, new = moved
    before = actdb.open(store).images()
    (tmp_path / "empty").mkdir()
    for args, fragment in [((old, tmp_path / "nowhere"), "no such folder"),
                           ((tmp_path / "never-stored", new), "no stored image lies under"),
                           ((old, tmp_path / "empty"), "none of the 30 images"),
                           ((old, old), "nothing to relocate")]:
        one_line_error(invoke("--store", store, "relocate", *args), fragment)
    assert actdb.open(store).images().equals(before)


def test_relocating_onto_images_ingested_from_the_new_place_is_refused(moved, tiny_model_path):
    store, old, new = moved
    folder = next(p for p in new.iterdir() if p.is_dir())
    ingested = invoke("--store", store, "ingest", folder, "--model", tiny_model_path, "--preprocess", "tf",
                      "--layers", "conv2", "--quiet")
    assert ingested.exit_code == 0, ingested.output
    one_line_error(invoke("--store", store, "relocate", old, new), f"{TINY_PER_CLASS} image(s) under",
                   "already stored")


def test_a_report_of_a_moved_dataset_says_it_in_one_line_and_relocate_brings_the_pictures_back(moved, tmp_path):
    store, old, new = moved
    assert invoke("--store", store, "relocate", old, new).exit_code == 0
    gone = tmp_path / "gone"
    os.rename(new, gone)  # the dataset moves again, and the store still looks under `new`
    args = ["--store", store, "report", "--model", "tiny", "--layers", "conv2", "--units", "0-1", "--top", 3,
            "--out", tmp_path / "site"]
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    notes = [line for line in result.stdout.splitlines() if line.startswith("note:")]
    assert len(notes) == 1, notes  # was one line per image
    count = int(notes[0].split()[1])
    assert 3 < count <= 3 * TINY_PER_CLASS and notes[0].startswith(f"note: {count} image file(s) could not be read")
    assert notes[0].count(f"{new.resolve()}{os.sep}") == 3 and ", ...)" in notes[0]  # the first three, then ...
    assert "if the dataset moved, `actdb relocate OLD NEW`" in notes[0]
    assert invoke("--store", store, "relocate", new, gone).exit_code == 0
    again = invoke(*args)
    assert again.exit_code == 0 and "could not be read" not in again.stdout, again.stdout
