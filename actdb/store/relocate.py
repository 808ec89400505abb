"""`actdb relocate OLD NEW`: the dataset moved; point the store's images at their new place.

A store records every image by its absolute path. When a dataset folder moves, its stored
rows stay valid (they are the activations of the same files), but commands that read
pixels (query by file of a stored image, the report's thumbnails, `--reduce flat`,
`featuremaps id:N`) cannot find them. Ingesting the new place would not help: a new path
is a new image, so every image would be stored twice. Relocating rewrites the paths under
OLD to the same paths under NEW in one transaction; ids, labels, rows and derived data
stay as they are.
"""
from __future__ import annotations

import os
from pathlib import Path

from ..errors import ActdbError

SHOWN = 3  # missing files named in the warning


def relocate(db, old: str | os.PathLike, new: str | os.PathLike) -> dict:
    """Paths under the folder `old` become the same paths under `new` (which must exist and
    hold at least one of the moved files). The caller holds the writer lock."""
    old = os.path.normpath(os.path.abspath(os.path.expanduser(os.fspath(old))))
    new_path = Path(os.fspath(new)).expanduser()
    if not new_path.is_dir():
        raise ActdbError(f"{new}: no such folder; give the dataset's new place")
    new = str(new_path.resolve())
    if new == old:
        raise ActdbError(f"{old} is already where the store looks: nothing to relocate")
    with db.catalog.read() as con:
        moved = con.execute("SELECT id, path FROM images WHERE starts_with(path, ?) ORDER BY id",
                            [old + os.sep]).fetchall()
        if not moved:
            raise ActdbError(f"no stored image lies under {old}; `actdb info` lists the sources")
        targets = [new + path[len(old):] for _, path in moved]
        clash = con.execute("SELECT count(*) FROM images WHERE path IN (SELECT unnest(?::VARCHAR[]))",
                            [targets]).fetchone()[0]
    if clash:
        raise ActdbError(f"{clash} image(s) under {new} are already stored (ingested from there): relocating would "
                         f"make two images of one file; relocate into a fresh copy of the store instead")
    missing = [path for path in targets if not os.path.isfile(path)]
    if len(missing) == len(targets):
        raise ActdbError(f"none of the {len(targets)} images under {old} is at {new} (e.g. {targets[0]}): give the "
                         f"folder that now holds what {old} held")
    with db.catalog.write() as con:
        con.execute("UPDATE images SET path = ? || substr(path, ?) WHERE starts_with(path, ?)",
                    [new, len(old) + 1, old + os.sep])
        con.execute("UPDATE images SET source = ? || substr(source, ?) WHERE source = ? OR starts_with(source, ?)",
                    [new, len(old) + 1, old, old + os.sep])
    warnings = []
    if missing:
        shown = ", ".join(missing[:SHOWN]) + (", ..." if len(missing) > SHOWN else "")
        warnings.append(f"{len(missing)} of the {len(targets)} relocated images are not at the new place ({shown}): "
                        "commands that read their pixels will say so")
    return {"old": old, "new": new, "images": len(targets), "missing": len(missing), "warnings": warnings}
