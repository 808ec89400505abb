"""Nearest classes on the real offline ImageNet model: held-out augmented views of real
photos should be closest to their own photo's class centroid."""
from __future__ import annotations

import pytest

import actdb
from actdb.photos import write_augmented_views

pytestmark = pytest.mark.slow
LAYER = "avg_pool"


@pytest.fixture(scope="module")
def real_store(tmp_path_factory):
    from actdb.ingest.run import IngestOptions, ingest

    root = tmp_path_factory.mktemp("real")
    write_augmented_views(root / "stored", views_per_photo=6, seed=0)
    ingest(root / "store", root / "stored",
           IngestOptions(model="efficientnet_lite0", layers=f"block6a_project_bn,{LAYER}"), progress=False)
    db = actdb.open(root / "store")
    db.index(model="efficientnet_lite0", layer=LAYER)
    held_out = [p for p in write_augmented_views(root / "held-out", views_per_photo=5, seed=1)
                if not p.stem.endswith("_000")]  # view 0 is the unaugmented photo, already stored
    return db, held_out


def test_held_out_views_rank_their_photo_class_first_by_centroid(real_store):
    db, held_out = real_store
    wnid_of_label = db.images().drop_duplicates("label").set_index("label").wnid
    ranked = db.classes([str(p) for p in held_out], model="efficientnet_lite0", layer=LAYER, by="centroid", top=1)
    right = sum(wnid_of_label[row["class"]] == row["query"].split("/")[-2] for _, row in ranked.iterrows())
    share = right / len(held_out)
    print(f"held-out views whose own class is nearest by centroid: {right}/{len(held_out)} = {share:.2f}")
    assert len(held_out) == 24 and share >= 0.8


def test_knn_agrees_on_most_views(real_store):
    db, held_out = real_store
    wnid_of_label = db.images().drop_duplicates("label").set_index("label").wnid
    ranked = db.classes([str(p) for p in held_out], model="efficientnet_lite0", layer=LAYER, by="knn", k=5, top=1)
    right = sum(wnid_of_label[row["class"]] == row["query"].split("/")[-2] for _, row in ranked.iterrows())
    print(f"held-out views whose own class leads the 5 nearest images: {right}/{len(held_out)}")
    assert right / len(held_out) >= 0.8
