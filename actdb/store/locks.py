"""Inter-process locks for a store directory.

DuckDB lets one process write *or* many read a file, never both at once, and its own
lock fails instead of waiting. So every actdb process takes `catalog.lock` around each
short catalog session (shared to read, exclusive to write) and therefore waits its turn
for a few milliseconds instead of failing. Long writers (an ingest, an index build) also
hold `write.lock` for their whole run so that a second writer is told who holds the store.
"""
from __future__ import annotations

import fcntl
import json
import os
import time
from contextlib import contextmanager
from pathlib import Path

from ..errors import ActdbError


@contextmanager
def catalog_lock(store: Path, exclusive: bool):
    with open(store / "catalog.lock", "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


@contextmanager
def writer_lock(store: Path, command: str):
    """Held for a whole writing command; a second writer gets a clear one-line error."""
    path = store / "write.lock"
    f = open(path, "a+")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        holder = _describe(f.read())
        f.close()
        raise ActdbError(
            f"store {store} is being written by {holder}; wait for it to finish (readers still work) "
            "or use another --store"
        ) from None
    f.seek(0)
    f.truncate()
    f.write(json.dumps({"pid": os.getpid(), "command": command, "since": time.strftime("%Y-%m-%d %H:%M:%S")}))
    f.flush()
    try:
        yield
    finally:
        f.truncate(0)
        fcntl.flock(f, fcntl.LOCK_UN)
        f.close()


def _describe(text: str) -> str:
    try:
        info = json.loads(text)
        return f"pid {info['pid']} ({info['command']}, since {info['since']})"
    except (ValueError, KeyError):
        return "another actdb process"
