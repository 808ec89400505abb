"""The vendored ImageNet-1k class index: the order every Keras/PyTorch classifier's logits use."""
from __future__ import annotations

import pytest

from actdb import imagenet
from actdb.errors import ActdbError


def test_thousand_unique_wnids_indexed_in_sorted_order():
    classes = imagenet.classes()
    wnids = [c.wnid for c in classes]
    assert len(classes) == 1000 and len(set(wnids)) == 1000
    assert wnids == sorted(wnids)
    assert [c.index for c in classes] == list(range(1000))
    assert all(imagenet.WNID_PATTERN.match(w) for w in wnids)


def test_a_new_catalog_holds_the_class_index(tmp_path):
    import duckdb

    from actdb.store.catalog import Catalog

    catalog = Catalog(tmp_path / "store")
    catalog.create()
    with duckdb.connect(str(catalog.path), read_only=True) as con:
        rows = con.execute("SELECT class_index, wnid, name FROM imagenet_classes ORDER BY class_index").fetchall()
    assert rows == [(c.index, c.wnid, c.name) for c in imagenet.classes()]


def test_known_classes():
    assert imagenet.by_wnid("n02321529") == imagenet.ImagenetClass(329, "n02321529", "sea_cucumber")
    assert imagenet.by_wnid("n02105056").name == "groenendael"
    assert imagenet.by_index(0).wnid == "n01440764"  # tench, the first class of every ImageNet head
    assert imagenet.by_wnid("n99999999") is None


@pytest.mark.parametrize("query", ["n02321529", "sea_cucumber", "sea cucumber", "  Sea_Cucumber "])
def test_resolve_accepts_wnids_and_names(query):
    assert imagenet.resolve(query).index == 329


@pytest.mark.parametrize(
    "query, message",
    [
        ("crane", "ambiguous.*n02012849.*n03126707"),  # the bird and the machine
        ("n99999999", "not one of the 1000"),
        ("unicorn", "unknown ImageNet class"),
    ],
)
def test_resolve_rejects_unknown_and_ambiguous(query, message):
    with pytest.raises(ActdbError, match=message):
        imagenet.resolve(query)
