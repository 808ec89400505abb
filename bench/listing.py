"""How long listing a large ImageNet-style tree takes, against a naive rglob baseline.

Builds FOLDERS x FILES empty .JPEG files in a temp dir (a 1.28M-file ImageNet train
split is 1000 x 1300), then times `list_images` and `sorted(Path.rglob('*'))` with an
`is_file()` stat per entry. Run: python bench/listing.py [folders] [files_per_folder]
"""
from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

from actdb import imagenet
from actdb.ingest.sources import list_images


def build_tree(root: Path, folders: int, files: int) -> None:
    for c in imagenet.classes()[:folders]:
        folder = root / c.wnid
        folder.mkdir()
        for k in range(files):
            (folder / f"{c.wnid}_{k}.JPEG").touch()


def naive(root: Path) -> list[Path]:
    return [p for p in sorted(root.rglob("*")) if p.is_file()]


def timed(fn, *args) -> tuple[float, int]:
    start = time.perf_counter()
    found = fn(*args)
    return time.perf_counter() - start, len(found)


def main(folders: int = 200, files: int = 1300) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "train"
        root.mkdir()
        build_tree(root, folders, files)
        naive_s, naive_n = timed(naive, root)
        ours_s, ours_n = timed(list_images, root)
        subset_s, subset_n = timed(list_images, root, ["tench", "goldfish"])
    assert ours_n == naive_n == folders * files, (ours_n, naive_n)
    print(f"{folders} folders x {files} files = {ours_n} images")
    print(f"naive rglob + is_file: {naive_s:6.2f} s")
    print(f"list_images:           {ours_s:6.2f} s   ({naive_s / ours_s:.1f}x faster)")
    print(f"list_images, 2 classes: {subset_s:5.3f} s  ({subset_n} images)")


if __name__ == "__main__":
    main(*map(int, sys.argv[1:3]))
