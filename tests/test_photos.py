"""The shipped photos and the augmented-view dataset built from them."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from actdb import imagenet
from actdb.errors import ActdbError
from actdb.photos import available_photos, write_augmented_views

EXPECTED_CLASSES = {  # photo -> ImageNet name, as documented in actdb/photos.py
    "chelsea": "tabby",
    "coffee": "espresso",
    "rocket": "missile",
    "china": "palace",
    "flower": "daisy",
    "grace_hopper": "military_uniform",
}
SKIMAGE_PHOTOS = {"chelsea", "coffee", "rocket"}


def test_available_photos_with_their_imagenet_classes():
    assert {p.name: imagenet.by_wnid(p.wnid).name for p in available_photos()} == EXPECTED_CLASSES


def test_without_scikit_image_the_other_photos_remain(monkeypatch):
    monkeypatch.setitem(sys.modules, "skimage", None)  # what an uninstalled package looks like to imports
    assert {p.name for p in available_photos()} == set(EXPECTED_CLASSES) - SKIMAGE_PHOTOS


@pytest.mark.parametrize("photo", available_photos(), ids=lambda p: p.name)
def test_each_photo_loads_as_rgb_uint8(photo):
    pixels = photo.load()
    assert pixels.dtype == np.uint8 and pixels.ndim == 3 and pixels.shape[2] == 3
    assert min(pixels.shape[:2]) >= 256 and pixels.std() > 10  # a real photo, not a blank


@pytest.fixture(scope="module")
def views(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("views")
    write_augmented_views(out, views_per_photo=3, seed=0, size=64)
    return out


def test_views_form_an_imagenet_train_tree(views):
    expected = {
        f"{p.wnid}/{p.name}_{k:03d}.JPEG" for p in available_photos() for k in range(3)
    }
    assert {str(f.relative_to(views)) for f in views.rglob("*") if f.is_file()} == expected


def test_views_are_jpegs_with_the_shorter_side_resized(views):
    for path in views.rglob("*.JPEG"):
        with Image.open(path) as image:
            assert image.format == "JPEG" and image.mode == "RGB" and min(image.size) == 64


def test_view_zero_is_the_whole_photo_resized(views):
    photo = next(p for p in available_photos() if p.name == "grace_hopper")  # 512 x 600 portrait
    original = Image.fromarray(photo.load()).resize((64, 75), Image.Resampling.BICUBIC)
    view = Image.open(views / photo.wnid / "grace_hopper_000.JPEG")
    assert view.size == (64, 75)
    assert np.abs(np.asarray(view, float) - np.asarray(original, float)).mean() < 6  # JPEG noise only
    augmented = Image.open(views / photo.wnid / "grace_hopper_001.JPEG").resize((64, 75))
    assert np.abs(np.asarray(augmented, float) - np.asarray(original, float)).mean() > 10


def file_bytes(folder: Path) -> dict[str, bytes]:
    return {str(f.relative_to(folder)): f.read_bytes() for f in sorted(folder.rglob("*.JPEG"))}


def test_same_seed_same_bytes_other_seed_other_views(tmp_path, views):
    write_augmented_views(tmp_path / "again", views_per_photo=3, seed=0, size=64)
    write_augmented_views(tmp_path / "other", views_per_photo=3, seed=1, size=64)
    same, again, other = file_bytes(views), file_bytes(tmp_path / "again"), file_bytes(tmp_path / "other")
    assert again == same
    for name, data in other.items():
        assert (data == same[name]) == name.endswith("_000.JPEG")  # only the unaugmented view repeats


def test_no_views_is_a_user_error(tmp_path):
    with pytest.raises(ActdbError, match="views_per_photo"):
        write_augmented_views(tmp_path, views_per_photo=0)
