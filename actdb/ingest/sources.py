"""Which images to run: a folder tree, an ImageNet split, a CSV/Parquet list or one file.

The layout is detected from what SOURCE is, so users point at their data as it lies:

- a file ending in .csv / .parquet / .pq: a list with a `path` column (relative paths
  are relative to the list's folder) and an optional `label` column;
- an image file (by extension: jpg jpeg png gif bmp webp, any case): that image;
- a folder holding image files: a flat folder (no labels), or the ImageNet validation
  split when `LOC_val_solution.csv` (Kaggle format) is found in SOURCE, its parent, or
  at the top of a Kaggle download when SOURCE is `.../ILSVRC/Data/CLS-LOC/val`;
- a folder of subfolders: one class per subfolder (ImageNet train layout when they are
  wnids). Only the first level is read; deeper folders are ignored.

Labels that are ImageNet wnids or unambiguous ImageNet names resolve to the ImageNet
class (label becomes its name, e.g. `sea_cucumber`), wherever they come from.

Listing a 1.28M-file tree must not stall the first batch: folders are read with
`os.scandir` (the dirent type, no per-file stat) by a thread pool, the source folder is
resolved once and entries are joined to it (a symlinked file keeps its link path), and
with `classes` only the chosen folders are read.
"""
from __future__ import annotations

import csv
import os
import zlib
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from itertools import islice
from pathlib import Path

import numpy as np
import pandas as pd

from .. import imagenet
from ..errors import ActdbError

IMAGE_EXTENSIONS = frozenset({"jpg", "jpeg", "png", "gif", "bmp", "webp"})
LIST_SUFFIXES = frozenset({".csv", ".parquet", ".pq"})
VAL_SOLUTION = "LOC_val_solution.csv"
KAGGLE_VAL_TAIL = ("ILSVRC", "Data", "CLS-LOC", "val")
SPLIT_FOLDER_NAMES = {"train": "train", "val": "val", "validation": "val", "test": "test"}
LISTING_THREADS = 16  # folder reads wait on the file system (often a network one), not the CPU


@dataclass(frozen=True, slots=True)  # slots: a million records in memory
class ImageRecord:
    path: str  # absolute path of the file
    label: str | None  # ImageNet name when resolved, else the folder name or list label
    wnid: str | None
    class_index: int | None  # ImageNet-1k index when the label resolves to an ImageNet class
    split: str  # 'train', 'val', 'test', or the source kind: 'folder', 'list', 'file'


class Listing(list):
    """The ImageRecords of a source, and what the listing left out or joined: hidden folders
    holding images (names starting with '.', such as `...`, are not read) and the `warnings`
    a user should see (folders merged into one class)."""

    def __init__(self, records=(), hidden: list[str] | None = None, warnings: list[str] | None = None):
        super().__init__(records)
        self.hidden = hidden or []
        self.warnings = warnings or []


@dataclass(frozen=True)
class ClassId:
    """What a raw label (folder name, list label, wnid) means."""

    label: str | None
    wnid: str | None
    class_index: int | None


UNLABELLED = ClassId(None, None, None)

# A source reader returns (split, groups): raw label (None: unlabelled) -> file paths.
# It receives `select`, which keeps the groups the user asked for, so that a folder
# reader can drop unwanted class folders before listing them.
Groups = dict[str | None, list[str]]
Select = Callable[[dict], dict]


def list_images(
    source: str | Path,
    classes: list[str] | None = None,
    per_class: int | None = None,
    seed: int = 0,
    limit: int | None = None,
) -> Listing:
    """The images of SOURCE, filtered, in a deterministic order: by class, then file name."""
    _check_counts(per_class=per_class, limit=limit, seed=seed)
    root = _existing(source)
    if isinstance(classes, str):
        classes = classes.split(",")
    select = _class_selector(classes, root) if classes else (lambda groups: groups)
    hidden: list[str] = []
    try:
        split, groups = _read_source(root, select, hidden)
    except PermissionError as e:
        raise ActdbError(f"cannot read {e.filename}: check its permissions") from e
    by_class, merged = _merge_by_class(groups)
    if per_class is not None:
        by_class = {c: _sample(files, per_class, seed, c) for c, files in by_class.items()}
    ordered = (
        ImageRecord(path, c.label, c.wnid, c.class_index, split)
        for c in sorted(by_class, key=_class_order)
        for path in sorted(by_class[c], key=_file_order)
    )
    records = list(islice(ordered, limit))
    if not records:
        raise ActdbError(f"no images found in {root}{' for the chosen classes' if classes else ''}: "
                         f"give a folder of .jpg/.png images, class folders, or a .csv/.parquet list")
    warnings = [f"{' and '.join(raws)} name one class, {c.label}: their images are stored together under that label"
                for c, raws in merged.items()]
    return Listing(records, hidden, warnings)


def _check_counts(per_class: int | None, limit: int | None, seed: int) -> None:
    for name, value in (("per_class", per_class), ("limit", limit)):
        if value is not None and (not isinstance(value, int) or value < 1):
            raise ActdbError(f"{name} must be a positive integer, got {value!r}")
    if not isinstance(seed, int) or seed < 0:
        raise ActdbError(f"seed must be a non-negative integer, got {seed!r}")


def _existing(source: str | Path) -> Path:
    root = Path(source).expanduser()
    if not root.exists():
        raise ActdbError(f"{source} does not exist: give an image, a folder of images or a .csv/.parquet list")
    return root.resolve()


def _read_source(root: Path, select: Select, hidden: list[str]) -> tuple[str, Groups]:
    if root.is_dir():
        return _read_folder(root, select, hidden)
    if root.suffix.lower() in LIST_SUFFIXES:
        return "list", select(_read_list(root))
    if not _is_image_name(root.name):
        raise ActdbError(f"{root} is neither an image ({', '.join(sorted(IMAGE_EXTENSIONS))}) "
                         f"nor a .csv/.parquet list: give one of those or a folder")
    return "file", select({None: [str(root)]})


# --- folders ---------------------------------------------------------------------


def _is_image_name(name: str) -> bool:
    """By extension; hidden files (macOS `._x.jpg` resource forks) are not images."""
    return not name.startswith(".") and name.rpartition(".")[2].lower() in IMAGE_EXTENSIONS


def _image_files(folder: str) -> list[str]:
    with os.scandir(folder) as entries:
        return [e.path for e in entries if _is_image_name(e.name) and e.is_file()]


def _has_image(folder: str) -> bool:
    with os.scandir(folder) as entries:
        return any(_is_image_name(e.name) and e.is_file() for e in entries)


def _scan_top(root: Path, hidden: list[str]) -> tuple[dict[str, str], list[str]]:
    """Class folders (name -> path) and loose image files of ROOT; hidden folders (names starting
    with '.') that hold images are not read, and their names go to `hidden`."""
    folders, loose = {}, []
    with os.scandir(root) as entries:
        for entry in entries:
            if entry.name.startswith("."):
                if _is_dir(entry) and _has_image(entry.path):
                    hidden.append(entry.name)
                continue
            if _is_dir(entry):
                folders[entry.name] = entry.path
            elif _is_image_name(entry.name) and entry.is_file():
                loose.append(entry.path)
    return folders, loose


def _is_dir(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir()
    except OSError as e:  # a symlink loop, a dead network mount
        raise ActdbError(f"cannot read {entry.path}: {e.strerror}; remove it or point at another folder") from None


def _read_folder(root: Path, select: Select, hidden: list[str]) -> tuple[str, Groups]:
    folders, loose = _scan_top(root, hidden)
    if loose:
        with_images = [name for name, path in sorted(folders.items()) if _has_image(path)]
        if with_images:
            raise ActdbError(f"{root} holds both images and class folders ({', '.join(with_images[:3])}): "
                             f"move the loose images into a folder or point at one class folder")
        return _read_flat(root, loose, select)
    chosen = select(folders)
    with ThreadPoolExecutor(LISTING_THREADS) as pool:
        listed = dict(zip(chosen, pool.map(_image_files, chosen.values())))
    wnid_layout = bool(folders) and all(imagenet.WNID_PATTERN.match(name) for name in folders)
    return _split_named(root) or ("train" if wnid_layout else "folder"), listed


def _split_named(root: Path) -> str | None:
    return SPLIT_FOLDER_NAMES.get(root.name.lower())


def _read_flat(root: Path, loose: list[str], select: Select) -> tuple[str, Groups]:
    """The val split when a solution file labels some of the images; else unlabelled.

    A solution file that labels none of them belongs to a sibling folder (e.g. test/).
    """
    solution = _find_val_solution(root)
    wnid_of = _read_val_solution(solution) if solution else {}
    groups: Groups = {}
    for path in loose:
        stem = os.path.splitext(os.path.basename(path))[0]
        groups.setdefault(wnid_of.get(stem), []).append(path)
    if list(groups) == [None]:
        return _split_named(root) or "folder", select(groups)
    return "val", select(groups)


def _find_val_solution(root: Path) -> Path | None:
    """Kaggle ships the CSV at the top of its download, four levels above the val folder."""
    places = [root, root.parent]
    if root.parts[-len(KAGGLE_VAL_TAIL):] == KAGGLE_VAL_TAIL:
        places.append(root.parents[len(KAGGLE_VAL_TAIL) - 1])
    return next((p / VAL_SOLUTION for p in places if (p / VAL_SOLUTION).is_file()), None)


def _read_val_solution(path: Path) -> dict[str, str]:
    """ImageId -> wnid; the PredictionString starts with the wnid of the first box."""
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        if not {"ImageId", "PredictionString"} <= set(reader.fieldnames or ()):
            raise ActdbError(f"{path} lacks the ImageId,PredictionString columns of Kaggle's "
                             f"{VAL_SOLUTION}: replace it with the original file")
        return {row["ImageId"]: row["PredictionString"].split()[0]
                for row in reader if row["PredictionString"].strip()}


# --- lists -----------------------------------------------------------------------


def _read_list(path: Path) -> Groups:
    table = _load_table(path)
    if "path" not in table.columns:
        raise ActdbError(f"{path} has no 'path' column (found: {', '.join(map(str, table.columns))}): "
                         f"name the column of image paths 'path'")
    labels = table["label"] if "label" in table.columns else [None] * len(table)
    base = str(path.parent)
    groups: Groups = {}
    for row, (image, label) in enumerate(zip(table["path"], labels)):
        if _blank(image):
            raise ActdbError(f"{path} row {row + 1} has no path: fill it in or remove the row")
        key = None if _blank(label) else str(label).strip()
        groups.setdefault(key, []).append(os.path.normpath(os.path.join(base, str(image).strip())))
    return groups


def _load_table(path: Path) -> pd.DataFrame:
    try:
        if path.suffix.lower() == ".csv":
            return pd.read_csv(path, dtype=str, keep_default_na=False)
        return pd.read_parquet(path)
    except ImportError as e:
        raise ActdbError(f"reading {path} needs pyarrow: pip install pyarrow ({e})") from e
    except (OSError, ValueError) as e:
        raise ActdbError(f"cannot read the list {path}: {e}") from e


def _blank(value) -> bool:
    return bool(pd.isna(value)) or str(value).strip() == ""


# --- classes ---------------------------------------------------------------------


@lru_cache(maxsize=4096)
def _identify(raw: str | None) -> ClassId:
    """A raw label to its ImageNet class when it is a wnid or an unambiguous name."""
    if raw is None:
        return UNLABELLED
    found = _imagenet_class(raw)
    if found is None:
        return ClassId(raw, raw if imagenet.WNID_PATTERN.match(raw) else None, None)
    return ClassId(found.name, found.wnid, found.index)


@lru_cache(maxsize=4096)
def _imagenet_class(name: str) -> imagenet.ImagenetClass | None:
    try:
        return imagenet.resolve(name)
    except ActdbError:
        return None


def _class_selector(requested: Iterable[str], root: Path) -> Select:
    wanted = [name.strip() for name in requested if name.strip()]

    def select(groups: dict) -> dict:
        chosen = {}
        for want in wanted:
            keys = [key for key in groups if key is not None and _matches(want, key)]
            if not keys:
                raise _unknown_class(want, groups, root)
            chosen.update((key, groups[key]) for key in keys)
        return chosen

    return select


def _matches(want: str, raw: str) -> bool:
    """By folder name or label (any case), wnid, or any ImageNet name of the same class."""
    c = _identify(raw)
    if want.casefold() in {raw.casefold(), (c.label or "").casefold()} or want == c.wnid:
        return True
    found = _imagenet_class(want)
    return c.wnid is not None and found is not None and found.wnid == c.wnid


def _unknown_class(want: str, groups: dict, root: Path) -> ActdbError:
    present = sorted({_identify(key).label for key in groups if key is not None})
    if not present:
        return ActdbError(f"{root} has no class labels, so class {want!r} cannot be selected: drop the classes filter")
    more = ", ..." if len(present) > 5 else ""
    return ActdbError(f"class {want!r} is not in {root}: choose from {', '.join(present[:5])}{more}")


def _merge_by_class(groups: Groups) -> tuple[dict[ClassId, list[str]], dict[ClassId, list[str]]]:
    """List labels `n02321529` and `sea cucumber` (or folders `Tabby` and `tabby`) are one class:
    the files of each class, and the raw labels of the classes several were merged into."""
    merged: dict[ClassId, list[str]] = {}
    raws: dict[ClassId, list[str]] = {}
    for raw, files in groups.items():
        c = _identify(raw)
        merged.setdefault(c, []).extend(files)
        raws.setdefault(c, []).append(raw)
    return merged, {c: sorted(names) for c, names in raws.items() if len(names) > 1}


def _class_order(c: ClassId) -> str:
    """Wnid order is ImageNet index order; unlabelled images come first."""
    return c.wnid or c.label or ""


def _file_order(path: str) -> tuple[str, str]:
    return path[path.rfind(os.sep) + 1:], path  # (file name, path); faster than basename


def _sample(files: list[str], count: int, seed: int, c: ClassId) -> list[str]:
    """The same files for a seed whatever the listing order or the other classes."""
    if len(files) <= count:
        return files
    ordered = sorted(files, key=_file_order)
    rng = np.random.default_rng([seed, zlib.crc32(_class_order(c).encode())])
    return [ordered[i] for i in rng.choice(len(ordered), size=count, replace=False)]
