"""list_images against small hand-built trees whose answer is known."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from actdb.errors import ActdbError
from actdb.ingest import sources
from actdb.ingest.sources import ImageRecord, list_images

TENCH = ("n01440764", "tench", 0)
GROENENDAEL = ("n02105056", "groenendael", 224)
SEA_CUCUMBER = ("n02321529", "sea_cucumber", 329)


def write_images(folder: Path, *names: str) -> None:
    """Tiny valid images; the format follows the extension."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        Image.new("RGB", (4, 4), (200, 30, 30)).save(folder / name)


def write_text(path: Path, text: str = "not an image") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def summary(records: list[ImageRecord]) -> list[tuple]:
    """(file name, label, wnid, class index, split) per record, in order."""
    return [(Path(r.path).name, r.label, r.wnid, r.class_index, r.split) for r in records]


def names(records: list[ImageRecord]) -> list[str]:
    return [Path(r.path).name for r in records]


@pytest.fixture
def train_tree(tmp_path: Path) -> Path:
    root = tmp_path / "train"
    write_images(root / SEA_CUCUMBER[0], "s2.JPEG", "s1.JPEG", "s3.jpeg")
    write_images(root / TENCH[0], "t1.JPEG", "t2.JPEG")
    write_images(root / GROENENDAEL[0], "g1.JPEG")
    write_text(root / TENCH[0] / "notes.txt")
    write_text(root / TENCH[0] / "._t3.JPEG")  # macOS resource fork
    write_text(root / "LICENSE")
    return root


@pytest.fixture
def numbered_tree(tmp_path: Path) -> Path:
    """Two classes of ten files each, for sampling."""
    root = tmp_path / "numbered"
    write_images(root / TENCH[0], *(f"t{k:02d}.png" for k in range(10)))
    write_images(root / SEA_CUCUMBER[0], *(f"s{k:02d}.png" for k in range(10)))
    return root


# --- layouts ---------------------------------------------------------------------


def test_imagenet_train_layout_labels_by_wnid_folder_sorted_by_class_then_name(train_tree):
    wnid, label, index = TENCH[0], TENCH[1], TENCH[2]
    assert summary(list_images(train_tree)) == [
        ("t1.JPEG", label, wnid, index, "train"),
        ("t2.JPEG", label, wnid, index, "train"),
        ("g1.JPEG", "groenendael", "n02105056", 224, "train"),
        ("s1.JPEG", "sea_cucumber", "n02321529", 329, "train"),
        ("s2.JPEG", "sea_cucumber", "n02321529", 329, "train"),
        ("s3.jpeg", "sea_cucumber", "n02321529", 329, "train"),
    ]


def test_paths_are_absolute_and_point_at_the_files(train_tree, monkeypatch):
    monkeypatch.chdir(train_tree.parent)
    records = list_images("train")
    assert records[0].path == str(train_tree.resolve() / TENCH[0] / "t1.JPEG")
    assert all(Path(r.path).is_absolute() and Path(r.path).is_file() for r in records)


def test_wnid_subfolders_named_val_are_the_val_split(tmp_path):
    write_images(tmp_path / "val" / TENCH[0], "v1.JPEG")
    assert summary(list_images(tmp_path / "val")) == [("v1.JPEG", "tench", "n01440764", 0, "val")]


VAL_SOLUTION = (
    "ImageId,PredictionString\n"
    "ILSVRC2012_val_00000001,n02321529 10 20 30 40 n02321529 1 2 3 4\n"
    "ILSVRC2012_val_00000002,n01440764 5 6 7 8\n"
    "ILSVRC2012_val_00000003,n02105056 5 6 7 8\n"  # listed but its image is absent
)
VAL_FILES = ("ILSVRC2012_val_00000002.JPEG", "ILSVRC2012_val_00000001.JPEG", "extra.JPEG")
VAL_EXPECTED = [
    ("extra.JPEG", None, None, None, "val"),  # not in the solution file: unlabelled
    ("ILSVRC2012_val_00000002.JPEG", "tench", "n01440764", 0, "val"),
    ("ILSVRC2012_val_00000001.JPEG", "sea_cucumber", "n02321529", 329, "val"),
]


def test_val_flat_folder_with_solution_csv_inside(tmp_path):
    root = tmp_path / "val"
    write_images(root, *VAL_FILES)
    write_text(root / "LOC_val_solution.csv", VAL_SOLUTION)
    assert summary(list_images(root)) == VAL_EXPECTED


def test_val_flat_folder_with_solution_csv_in_parent(tmp_path):
    root = tmp_path / "images"  # not named val: the solution file decides
    write_images(root, *VAL_FILES)
    write_text(tmp_path / "LOC_val_solution.csv", VAL_SOLUTION)
    assert summary(list_images(root)) == VAL_EXPECTED


def test_solution_csv_that_labels_none_of_the_images_is_ignored(tmp_path):
    write_images(tmp_path / "test", "ILSVRC2012_test_00000001.JPEG")
    write_text(tmp_path / "LOC_val_solution.csv", VAL_SOLUTION)
    assert summary(list_images(tmp_path / "test")) == [("ILSVRC2012_test_00000001.JPEG", None, None, None, "test")]


def test_val_folder_of_a_kaggle_download_finds_the_csv_at_its_top(tmp_path):
    root = tmp_path / "ILSVRC" / "Data" / "CLS-LOC" / "val"
    write_images(root, *VAL_FILES)
    write_text(tmp_path / "LOC_val_solution.csv", VAL_SOLUTION)
    assert summary(list_images(root)) == VAL_EXPECTED


def test_plain_class_folders_are_labelled_by_name_and_wnid_folders_resolve(tmp_path):
    root = tmp_path / "pets"
    write_images(root / "dogs", "b.PNG", "a.webp", "c.bmp")
    write_images(root / "cats", "x.gif", "y.JPG")
    write_images(root / SEA_CUCUMBER[0], "s.jpg")
    write_images(root / "n00007846", "p.jpg")  # an ImageNet-21k wnid (person), not in the 1k
    write_text(root / "dogs" / "labels.csv")
    write_images(root / "dogs" / "nested", "deep.jpg")  # only the first level is read
    assert summary(list_images(root)) == [
        ("x.gif", "cats", None, None, "folder"),
        ("y.JPG", "cats", None, None, "folder"),
        ("a.webp", "dogs", None, None, "folder"),
        ("b.PNG", "dogs", None, None, "folder"),
        ("c.bmp", "dogs", None, None, "folder"),
        ("p.jpg", "n00007846", "n00007846", None, "folder"),
        ("s.jpg", "sea_cucumber", "n02321529", 329, "folder"),
    ]


def test_flat_folder_without_solution_is_unlabelled(tmp_path):
    root = tmp_path / "photos"
    write_images(root, "b.png", "a.jpg")
    write_text(root / "readme.md")
    (root / "empty_folder").mkdir()
    assert summary(list_images(root)) == [
        ("a.jpg", None, None, None, "folder"),
        ("b.png", None, None, None, "folder"),
    ]


def test_single_image_file(tmp_path):
    write_images(tmp_path, "one.png")
    records = list_images(tmp_path / "one.png")
    assert records == [ImageRecord(str(tmp_path.resolve() / "one.png"), None, None, None, "file")]


def write_list_images(tmp_path: Path) -> tuple[Path, Path]:
    """A list folder with images, and an image elsewhere given by absolute path."""
    write_images(tmp_path / "lists" / "imgs", "b.png", "a.png", "c.png", "d.png", "e.png")
    write_images(tmp_path / "elsewhere", "far.jpg")
    return tmp_path / "lists", tmp_path / "elsewhere" / "far.jpg"


def list_rows(far: Path) -> pd.DataFrame:
    return pd.DataFrame({
        "path": ["imgs/b.png", "imgs/a.png", "imgs/c.png", "./imgs/d.png", str(far), "imgs/e.png", "gone.txt"],
        "label": ["n02321529", "sea cucumber", "mystery", "", "Tench", None, "mystery"],
    })


def expected_list(folder: Path, far: Path) -> list[tuple]:
    """Unlabelled first, then by wnid or label: 'mystery' < 'n01440764' (tench) < 'n02321529'."""
    base = folder.resolve()
    return [
        (str(base / "imgs" / "d.png"), None, None, None),
        (str(base / "imgs" / "e.png"), None, None, None),
        (str(base / "imgs" / "c.png"), "mystery", None, None),
        (str(base / "gone.txt"), "mystery", None, None),  # listed paths are taken as is
        (str(far.resolve()), "tench", "n01440764", 0),
        (str(base / "imgs" / "a.png"), "sea_cucumber", "n02321529", 329),
        (str(base / "imgs" / "b.png"), "sea_cucumber", "n02321529", 329),
    ]


def as_tuples(records: list[ImageRecord]) -> list[tuple]:
    assert {r.split for r in records} == {"list"}
    return [(r.path, r.label, r.wnid, r.class_index) for r in records]


def test_csv_list_resolves_paths_and_labels(tmp_path):
    folder, far = write_list_images(tmp_path)
    list_rows(far).to_csv(folder / "images.csv", index=False)
    assert as_tuples(list_images(folder / "images.csv")) == expected_list(folder, far)


def test_parquet_list_resolves_paths_and_labels(tmp_path):
    folder, far = write_list_images(tmp_path)
    list_rows(far).to_parquet(folder / "images.parquet")
    assert as_tuples(list_images(folder / "images.parquet")) == expected_list(folder, far)


def test_list_without_label_column_is_unlabelled(tmp_path):
    write_images(tmp_path, "a.png")
    write_text(tmp_path / "list.csv", "path\na.png\n")
    assert summary(list_images(tmp_path / "list.csv")) == [("a.png", None, None, None, "list")]


# --- subsets ---------------------------------------------------------------------


@pytest.mark.parametrize("chosen", [
    ["n02321529", "n01440764"],
    ["sea_cucumber", "tench"],
    ["sea cucumber", "Tench"],
    "sea_cucumber,tench",
])
def test_classes_by_wnid_or_name(train_tree, chosen):
    assert names(list_images(train_tree, classes=chosen)) == ["t1.JPEG", "t2.JPEG", "s1.JPEG", "s2.JPEG", "s3.jpeg"]


def test_classes_only_lists_the_chosen_folders(train_tree, monkeypatch):
    listed = []
    real = sources._image_files
    monkeypatch.setattr(sources, "_image_files", lambda folder: listed.append(Path(folder).name) or real(folder))
    list_images(train_tree, classes=["groenendael"])
    assert listed == ["n02105056"]


def test_classes_match_plain_folder_names(tmp_path):
    write_images(tmp_path / "pets" / "cats", "c.png")
    write_images(tmp_path / "pets" / "dogs", "d.png")
    assert names(list_images(tmp_path / "pets", classes=["dogs"])) == ["d.png"]


def test_classes_match_list_labels_and_val_solution(tmp_path):
    folder, far = write_list_images(tmp_path)
    list_rows(far).to_csv(folder / "images.csv", index=False)
    assert names(list_images(folder / "images.csv", classes=["mystery", "n01440764"])) == [
        "c.png", "gone.txt", "far.jpg"]
    root = tmp_path / "val"
    write_images(root, *VAL_FILES)
    write_text(root / "LOC_val_solution.csv", VAL_SOLUTION)
    assert names(list_images(root, classes=["sea_cucumber"])) == ["ILSVRC2012_val_00000001.JPEG"]


def test_per_class_samples_that_many_per_class_sorted(numbered_tree):
    records = list_images(numbered_tree, per_class=3, seed=0)
    tench = [name for name in names(records) if name.startswith("t")]
    sea_cucumber = [name for name in names(records) if name.startswith("s")]
    assert len(tench) == len(sea_cucumber) == 3
    assert names(records) == tench + sea_cucumber  # tench (n01440764) sorts first
    assert tench == sorted(tench) and sea_cucumber == sorted(sea_cucumber)


def test_per_class_same_seed_same_files_and_another_seed_others(numbered_tree):
    first = names(list_images(numbered_tree, per_class=3, seed=7))
    assert names(list_images(numbered_tree, per_class=3, seed=7)) == first
    assert names(list_images(numbered_tree, per_class=3, seed=8)) != first


def test_per_class_sample_ignores_listing_order_and_other_classes(tmp_path, numbered_tree):
    files = sorted(numbered_tree.rglob("*.png"))
    pd.DataFrame({"path": [str(f) for f in files], "label": [f.parent.name for f in files]}).to_csv(
        tmp_path / "forward.csv", index=False)
    pd.DataFrame({"path": [str(f) for f in files[::-1]], "label": [f.parent.name for f in files[::-1]]}).to_csv(
        tmp_path / "backward.csv", index=False)
    forward = names(list_images(tmp_path / "forward.csv", per_class=4, seed=3))
    assert names(list_images(tmp_path / "backward.csv", per_class=4, seed=3)) == forward
    assert names(list_images(numbered_tree, per_class=4, seed=3)) == forward
    tench_only = names(list_images(numbered_tree, classes=["tench"], per_class=4, seed=3))
    assert tench_only == [name for name in forward if name.startswith("t")]


def test_per_class_larger_than_a_class_keeps_all(train_tree):
    assert len(list_images(train_tree, per_class=100)) == 6


def test_limit_takes_the_first_in_order_after_other_filters(train_tree, numbered_tree):
    assert names(list_images(train_tree, limit=3)) == ["t1.JPEG", "t2.JPEG", "g1.JPEG"]
    sampled = names(list_images(numbered_tree, per_class=3, seed=5))
    assert names(list_images(numbered_tree, per_class=3, seed=5, limit=4)) == sampled[:4]


# --- errors ----------------------------------------------------------------------


def test_missing_path(tmp_path):
    with pytest.raises(ActdbError, match="does not exist"):
        list_images(tmp_path / "nope")


@pytest.mark.parametrize("make", [
    lambda root: root.mkdir(),
    lambda root: write_text(root / "readme.txt"),
    lambda root: write_text(root / "cats" / "readme.txt"),
])
def test_empty_source(tmp_path, make):
    root = tmp_path / "source"
    make(root)
    with pytest.raises(ActdbError, match="no images found"):
        list_images(root)


def test_unknown_class_lists_valid_ones(train_tree):
    with pytest.raises(ActdbError, match="'sea_slug' is not in .*groenendael, sea_cucumber, tench"):
        list_images(train_tree, classes=["sea_cucumber", "sea_slug"])


def test_imagenet_class_absent_from_the_source_is_unknown(train_tree):
    with pytest.raises(ActdbError, match="'goldfish' is not in"):
        list_images(train_tree, classes=["goldfish"])


def test_classes_on_an_unlabelled_source(tmp_path):
    write_images(tmp_path / "flat", "a.png")
    with pytest.raises(ActdbError, match="no class labels"):
        list_images(tmp_path / "flat", classes=["tench"])


def test_single_file_that_is_not_an_image(tmp_path):
    write_text(tmp_path / "labels.json", "{}")
    with pytest.raises(ActdbError, match="neither an image"):
        list_images(tmp_path / "labels.json")


def test_list_without_path_column(tmp_path):
    write_text(tmp_path / "list.csv", "file,label\na.png,tench\n")
    with pytest.raises(ActdbError, match="no 'path' column"):
        list_images(tmp_path / "list.csv")


def test_list_row_without_path(tmp_path):
    write_text(tmp_path / "list.csv", "path,label\na.png,tench\n,tench\n")
    with pytest.raises(ActdbError, match="row 2 has no path"):
        list_images(tmp_path / "list.csv")


def test_unreadable_parquet_list(tmp_path):
    write_text(tmp_path / "list.parquet", "not parquet")
    with pytest.raises(ActdbError, match="cannot read the list"):
        list_images(tmp_path / "list.parquet")


def test_images_mixed_with_class_folders(tmp_path):
    write_images(tmp_path / "mixed", "loose.png")
    write_images(tmp_path / "mixed" / "cats", "c.png")
    with pytest.raises(ActdbError, match="both images and class folders"):
        list_images(tmp_path / "mixed")


@pytest.mark.parametrize("arguments", [{"per_class": 0}, {"limit": -1}, {"seed": -1}])
def test_bad_counts(train_tree, arguments):
    with pytest.raises(ActdbError, match="must be a"):
        list_images(train_tree, **arguments)


def test_hidden_folders_holding_images_are_named_and_folders_of_one_class_are_said_merged(tmp_path):
    root = tmp_path / "photos"
    write_images(root / "tabby", "a.png")
    write_images(root / "Tabby", "b.png")  # ImageNet's tabby, however cased
    write_images(root / "daisy", "d.png")
    write_images(root / "...", "c.png")  # hidden by its leading '.': not read, but counted
    write_text(root / ".git" / "config")  # hidden and no images: nothing to say
    listing = list_images(root)
    assert listing.hidden == ["..."]
    assert sorted(names(r for r in listing if r.label == "tabby")) == ["a.png", "b.png"]
    assert names(listing) == ["a.png", "b.png", "d.png"]  # by wnid: tabby n02123045, daisy n11939491
    assert listing.warnings == ["Tabby and tabby name one class, tabby: their images are stored together under "
                                "that label"]
    assert list_images(root, classes=["daisy"]).warnings == []
