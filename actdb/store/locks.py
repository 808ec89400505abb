"""Inter-process locks for a store directory.

DuckDB lets one process write *or* many read a file, never both at once, and its own
lock fails instead of waiting. So every actdb process takes `catalog.lock` around each
short catalog session (shared to read, exclusive to write) and therefore waits its turn
for a few milliseconds instead of failing. Long writers (an ingest, an index build) also
hold `write.lock` for their whole run so that a second writer is told who holds the store.

Reading needs no lock file: where `catalog.lock` is absent and cannot be made (a read-only
directory or filesystem) a reader goes without it, since no actdb writer can be writing
there. A writer takes `write.lock` before any long work (the notebook API does it first
thing in every writing method: `writing`), so that it is refused, or waits with
`wait=True`, before it computes anything; a store it cannot write is one clear line.
"""
from __future__ import annotations

import errno
import fcntl
import json
import os
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

from ..errors import ActdbError

_READ_ONLY = {errno.EROFS, errno.EACCES, errno.EPERM}
_held: dict[tuple[str, int], dict] = {}  # (store, thread) -> {"file": the open write.lock or None, "wait": bool}


class ReadOnlyStore(ActdbError):
    """A write was asked of a store this process cannot write."""


def read_only_error(store: Path, command: str, exc: OSError) -> ReadOnlyStore:
    reason = exc.strerror or type(exc).__name__
    return ReadOnlyStore(f"store {store} is read-only here ({reason}): {command} writes to it; every command that "
                         "only reads works, or run this one on a writable copy of the store")


def writable(store: Path) -> bool:
    """Whether this process can write the store (its directory and catalog): caches that a
    reading command would keep are skipped where it cannot."""
    store = Path(store)
    catalog = store / "catalog.duckdb"
    return os.access(store, os.W_OK) and (not catalog.exists() or os.access(catalog, os.W_OK))


@contextmanager
def catalog_lock(store: Path, exclusive: bool):
    path = Path(store) / "catalog.lock"
    if exclusive:
        try:
            f = open(path, "a+")
        except OSError as exc:
            if exc.errno in _READ_ONLY:
                raise read_only_error(Path(store), "this command", exc) from None
            raise
    else:
        f = _open_to_read(path)
        if f is None:  # nobody can write here, so there is no writer to wait for
            yield
            return
    with f:
        fcntl.flock(f, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _open_to_read(path: Path):
    """The lock file opened for a shared lock (a read-only descriptor will do), made if it can be;
    None where it is absent and cannot be made, or cannot be opened."""
    try:
        return open(path, "rb")
    except FileNotFoundError:
        try:
            return open(path, "a+")
        except OSError:
            return None
    except OSError:
        return None


@contextmanager
def writer_lock(store: Path, command: str, wait: bool = False):
    """Held for a whole writing command; a second writer gets a clear one-line error naming the
    holder, or with `wait` waits for it. Inside `writing` (the notebook API's up-front hold of
    the same store, in this thread) it is a no-op."""
    store = Path(store)
    entry = _held.get(_key(store))
    if entry is not None and entry["file"] is not None:
        yield
        return
    f = _acquire(store, command, wait or (entry is not None and entry["wait"]))
    if entry is not None:
        entry["file"] = f
    try:
        yield
    finally:
        if entry is not None:
            entry["file"] = None
        _release(f)


@contextmanager
def writing(store: Path, command: str, wait: bool = False):
    """The writer lock taken first thing by a command that will write, so that it is refused
    (or waits, with `wait`) before any long work rather than after it; the writer_lock its
    feature takes inside is then a no-op. A store that does not exist yet has nothing to lock:
    the writer that makes it takes the lock then, waiting if `wait` was given here."""
    store = Path(store)
    key = _key(store)
    if key in _held:  # already inside a writing command on this store
        yield
        return
    entry = _held[key] = {"file": None, "wait": wait}
    try:
        if not store.is_dir():
            yield
            return
        entry["file"] = _acquire(store, command, wait)
        try:
            yield
        finally:
            f, entry["file"] = entry["file"], None
            _release(f)
    finally:
        del _held[key]


def _key(store: Path) -> tuple[str, int]:
    return os.path.realpath(store), threading.get_ident()


def _release(f) -> None:
    f.truncate(0)
    fcntl.flock(f, fcntl.LOCK_UN)
    f.close()


def _acquire(store: Path, command: str, wait: bool):
    try:
        f = open(store / "write.lock", "a+")
    except OSError as exc:
        if exc.errno in _READ_ONLY:
            raise read_only_error(store, command, exc) from None
        raise
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        holder = _describe(f.read())
        if not wait:
            f.close()
            raise ActdbError(
                f"store {store} is being written by {holder}; {command} did nothing: run it when that one is done, "
                "or with wait=True to wait for it (readers still work), or use another store",
                f"store {store} is being written by {holder}; {command} did nothing: run it when that one is done, "
                "or with --wait to wait for it (readers still work), or use another --store",
            ) from None
        print(f"actdb: {command} waits for {holder} to finish writing {store}", file=sys.stderr, flush=True)
        try:
            fcntl.flock(f, fcntl.LOCK_EX)
        except BaseException:  # Ctrl-C while waiting
            f.close()
            raise
    f.seek(0)
    f.truncate()
    f.write(json.dumps({"pid": os.getpid(), "command": command, "since": time.strftime("%Y-%m-%d %H:%M:%S")}))
    f.flush()
    return f


def _describe(text: str) -> str:
    try:
        info = json.loads(text)
        return f"pid {info['pid']} ({info['command']}, since {info['since']})"
    except (ValueError, KeyError):
        return "another actdb process"
