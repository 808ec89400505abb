"""Files written whole or not at all, and output paths checked before the work.

A file a reader may see is written as a temporary file beside it, fsynced, renamed over
it and the folder fsynced: after a kill or a crash the old file or the new one is there,
never part of one.
"""
from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .choices import invalid


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """A temporary path to write `path`'s new content to; it replaces `path` on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    try:
        yield Path(temporary)
        with open(temporary, "rb") as written:
            os.fsync(written.fileno())
        os.replace(temporary, path)
        _fsync_folder(path.parent)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def atomic_write(path: str | os.PathLike, data: bytes) -> Path:
    with atomic_path(path) as temporary:
        temporary.write_bytes(data)
    return Path(path)


def _fsync_folder(folder: Path) -> None:
    """The rename itself survives a power cut only once the folder is on disk."""
    try:
        handle = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(handle)
    except OSError:
        pass  # some filesystems refuse to fsync a folder; the rename is still atomic
    finally:
        os.close(handle)


def checked_output(path: str | os.PathLike, suffixes: tuple[str, ...], name: str = "plot") -> Path:
    """An output file the work will end by writing, checked before the work starts: a
    supported suffix, and a folder that exists (or can be made) and can be written."""
    path = Path(path).expanduser()
    if path.suffix.lower() not in suffixes:
        raise invalid(name, str(path), f"write a {' or '.join(suffixes)} file: name it FILE{suffixes[0]}")
    folder = path.parent
    existing = next(p for p in (folder, *folder.parents) if p.exists())
    if not existing.is_dir():
        raise invalid(name, str(path), f"{existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise invalid(name, str(path), f"cannot write into {existing}")
    if path.is_dir():
        raise invalid(name, str(path), "that is a folder; name a file")
    return path.resolve()


def checked_folder(path: str | os.PathLike, name: str = "out") -> Path:
    """An output folder, checked before the work: a folder (or nothing yet) inside one that can be written."""
    path = Path(path).expanduser()
    existing = next(p for p in (path, *path.parents) if p.exists())
    if not existing.is_dir():
        raise invalid(name, str(path), f"{existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise invalid(name, str(path), f"cannot write into {existing}")
    return path.resolve()
