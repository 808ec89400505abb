"""Everything an ingest writes to the store: image and array registration, and a
background writer that turns forward-pass batches into Zarr chunks and catalog commits.

A commit writes the touched chunks first (synced to disk) and then, in one catalog
transaction, marks their rows done and records each touched chunk's digest. A kill between
the two only costs recomputing those rows: the rows already committed, and their digest, are
what the chunk still holds.
"""
from __future__ import annotations

import json
import queue
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..store import arrays
from ..store.catalog import CHUNK_DIGESTS_TABLE, Catalog
from ..store.integrity import unmark_rows
from .sources import ImageRecord

FLOAT16_MAX = float(np.finfo(np.float16).max)


def register_images(catalog: Catalog, records: list[ImageRecord], source: str, run_id: int) -> np.ndarray:
    """Give new paths the next ids; return the id of every record, in order."""
    frame = pd.DataFrame(
        {
            "path": [r.path for r in records],
            "wnid": [r.wnid for r in records],
            "class_index": pd.array([r.class_index for r in records], dtype="Int16"),
            "label": [r.label for r in records],
            "split": [r.split for r in records],
            "order": np.arange(len(records)),
        }
    )
    with catalog.write() as con:
        con.register("listed", frame)
        con.execute(
            """
            INSERT INTO images (id, path, wnid, class_index, label, split, source, added_run)
            SELECT (SELECT coalesce(max(id), -1) FROM images) + row_number() OVER (ORDER BY l."order"),
                   l.path, l.wnid, l.class_index, l.label, l.split, ?, ?
            FROM listed l ANTI JOIN images i ON i.path = l.path
            """,
            [source, run_id],
        )
        ids = con.execute(
            'SELECT i.id FROM listed l JOIN images i ON i.path = l.path ORDER BY l."order"'
        ).fetchnumpy()["id"]
        con.unregister("listed")
    return ids.astype(np.int64)


def start_run(catalog: Catalog, params: dict) -> int:
    """A new run; runs still `running` were killed, since the caller holds the writer lock."""
    with catalog.write() as con:
        con.execute(CHUNK_DIGESTS_TABLE)  # stores made before chunk digests get the table here
        con.execute("UPDATE runs SET status = 'killed' WHERE status = 'running'")
        run_id = con.execute("SELECT coalesce(max(id), 0) + 1 FROM runs").fetchone()[0]
        con.execute(
            "INSERT INTO runs (id, started, status, params) VALUES (?, current_timestamp, 'running', ?)",
            [run_id, json.dumps(params)],
        )
    return int(run_id)


def finish_run(catalog: Catalog, run_id: int, status: str, planned: int, skipped: int, seconds: float,
               previously_failed: int = 0) -> None:
    """`previously_failed`: listed images that failed in an earlier run (not retried), counted as
    failed here too, as the run's summary does."""
    with catalog.write() as con:
        con.execute(
            """UPDATE runs SET finished = current_timestamp, status = ?, planned = ?, skipped = ?, seconds = ?,
                      images_per_s = CASE WHEN ? > 0 THEN ingested / ? END, failed = failed + ?
               WHERE id = ?""",
            [status, planned, skipped, seconds, seconds, seconds, previously_failed, run_id],
        )


@dataclass
class ArrayTarget:
    """One array this run writes, and which of the planned images it still lacks."""

    array_id: int
    layer: str
    zarr_array: object
    missing: np.ndarray  # bool mask over image ids: 1.3 MB for ImageNet, unlike a set of ints
    committed: np.ndarray | None = None  # bool mask over image ids: rows marked done in the catalog
    digests: dict = field(default_factory=dict)  # chunk -> digest recorded for its committed rows

    def __post_init__(self):
        if self.committed is None:
            self.committed = np.zeros_like(self.missing)

    def committed_near(self, ids: np.ndarray) -> np.ndarray:
        """The committed ids in the chunks that `ids` (sorted) touch: what a chunk write keeps."""
        if not len(ids):
            return np.zeros(0, np.int64)
        span = self.zarr_array.chunks[0]
        lo, hi = int(ids[0]) // span * span, (int(ids[-1]) // span + 1) * span
        return np.flatnonzero(self.committed[lo:hi]) + lo


def digests_frame(array_id: int, written: dict) -> pd.DataFrame:
    """`arrays.write_rows`' {chunk: (digest, rows)} as chunk_digests rows."""
    return pd.DataFrame({"array_id": array_id, "chunk": np.array(list(written), dtype=np.int64),
                         "rows": [n for _, n in written.values()], "digest": [d for d, _ in written.values()]})


FARMHASH64 = "farmhash64"  # tf.fingerprint: content hashes recorded without an algorithm prefix


def hash_algorithm(content_hash: str) -> str:
    """`blake2b` of `blake2b:<hex>`; a value without a prefix is FarmHash64, as recorded before prefixes."""
    name, prefixed, _ = content_hash.partition(":")
    return name if prefixed else FARMHASH64


def same_content(recorded: str | None, computed: str | None) -> bool | None:
    """Whether a file's content hash now is the one recorded when it was first ingested; None
    where they cannot be compared (either is missing, or they come from different algorithms:
    then the recorded one is kept)."""
    if recorded is None or computed is None or hash_algorithm(recorded) != hash_algorithm(computed):
        return None
    return recorded == computed


@dataclass
class ChangedFiles:
    """Known images whose file changed since it was first ingested (its content hash differs).
    Policy: the file at the path is the image. Its new rows are stored, and in the same
    transaction its rows of the old picture are unmarked in every other array (chunk digests
    re-recorded, those arrays' indexes dropped) and its predictions deleted, so no id ever
    stands for two pictures; the run's warning names the files and the arrays to refill."""

    paths: dict = field(default_factory=dict)  # image id -> path
    unmarked: dict = field(default_factory=dict)  # array id -> set of image ids unmarked

    def unmarked_ids(self, array_id: int) -> np.ndarray:
        return np.array(sorted(self.unmarked.get(array_id, ())), dtype=np.int64)


@dataclass
class Batch:
    ids: np.ndarray
    fingerprints: np.ndarray
    heights: np.ndarray
    widths: np.ndarray
    outputs: dict[str, np.ndarray]


@dataclass
class _Pending:
    ids: list = field(default_factory=list)
    rows: list = field(default_factory=list)


class StoreWriter:
    """A background thread so that the model never waits on disk or on the catalog."""

    def __init__(self, catalog: Catalog, run_id: int, targets: list[ArrayTarget], model_id: int,
                 predictions: bool, commit_seconds: float = 5.0, max_pending_bytes: int = 256 << 20,
                 changed: ChangedFiles | None = None):
        self.catalog = catalog
        self.changed = changed if changed is not None else ChangedFiles()
        self.run_id = run_id
        self.targets = targets
        self.model_id = model_id
        self.predictions = predictions
        self.commit_seconds = commit_seconds
        self.max_pending_bytes = max_pending_bytes
        self.ingested = 0
        self.failed = 0
        self._queue: queue.Queue = queue.Queue(maxsize=16)
        self._error: BaseException | None = None
        self._reset_pending()
        self._thread = threading.Thread(target=self._loop, name="actdb-writer", daemon=True)
        self._thread.start()

    def put(self, batch: Batch) -> None:
        self._check()
        self._queue.put(("batch", batch))

    def fail(self, failures: list[tuple[int, str]]) -> None:
        """Images the pipeline could not decode: (id, path). Reasons are found here, off the hot path."""
        self._check()
        self._queue.put(("fail", failures))

    def close(self) -> None:
        self._queue.put(("close", None))
        self._thread.join()
        self._check()

    def _check(self) -> None:
        if self._error is not None:
            raise self._error

    def _reset_pending(self) -> None:
        self._pending = {t.layer: _Pending() for t in self.targets}
        self._images: list[pd.DataFrame] = []
        self._predictions: list[pd.DataFrame] = []
        self._errors: list[tuple[int, str | None, str]] = []
        self._pending_bytes = 0
        self._last_commit = time.monotonic()

    def _loop(self) -> None:
        kind = None
        try:
            while True:
                kind, item = self._queue.get()
                if kind == "close":
                    self._commit()
                    return
                if kind == "batch":
                    self._add(item)
                else:
                    self._errors.extend((i, path, failure_reason(path)) for i, path in item)
                if (time.monotonic() - self._last_commit >= self.commit_seconds
                        or self._pending_bytes >= self.max_pending_bytes):
                    self._commit()
        except BaseException as exc:  # noqa: BLE001 - handed to the main thread
            self._error = exc
            while kind != "close":  # unblock the producer until it closes; nothing more is written
                kind, _ = self._queue.get()

    def _add(self, batch: Batch) -> None:
        for target in self.targets:
            keep = target.missing[batch.ids]
            if keep.any():
                pending = self._pending[target.layer]
                pending.ids.append(batch.ids[keep])
                rows = batch.outputs[target.layer][keep]
                pending.rows.append(rows)
                self._pending_bytes += rows.nbytes
        self._images.append(images_frame(batch))
        if self.predictions:
            self._predictions.append(predictions_frame(batch))
        self.ingested += len(batch.ids)

    def _commit(self) -> None:
        done, digests, committed = [], [], []
        for target in self.targets:
            pending = self._pending[target.layer]
            if not pending.ids:
                continue
            ids = np.concatenate(pending.ids)
            rows = np.concatenate(pending.rows)
            order = np.argsort(ids)
            ids, rows = ids[order], rows[order]
            ids, rows = self._drop_overflow(target, ids, rows)
            written = arrays.write_rows(target.zarr_array, ids, rows.astype(target.zarr_array.dtype),
                                        target.committed_near(ids), target.digests)
            done.append(pd.DataFrame({"array_id": target.array_id, "image_id": ids, "run_id": self.run_id}))
            digests.append(digests_frame(target.array_id, written))
            committed.append((target, ids, written))
            target.missing[ids] = False
        image_failures = record(self.catalog, self.run_id, self.model_id, done, self._images, self._predictions,
                                self._errors, digests, self.changed)
        for target, ids, written in committed:  # what the next write into these chunks keeps
            target.committed[ids] = True
            target.digests.update((chunk, digest) for chunk, (digest, _) in written.items())
        self._forget_unmarked()
        self.failed += image_failures
        self._reset_pending()

    def _forget_unmarked(self) -> None:
        """Rows of changed files unmarked in this run's own arrays: the next write into their
        chunks keeps the rows still committed, checked against the digests recorded now."""
        for target in self.targets:
            lost = self.changed.unmarked_ids(target.array_id)
            if len(lost) and target.committed[lost].any():
                target.committed[lost] = False
                with self.catalog.read() as con:
                    target.digests = dict(con.execute("SELECT chunk, digest FROM chunk_digests WHERE array_id = ?",
                                                      [target.array_id]).fetchall())

    def _drop_overflow(self, target: ArrayTarget, ids: np.ndarray, rows: np.ndarray):
        ids, rows, errors = drop_overflow(target.layer, target.zarr_array.dtype, ids, rows)
        self._errors.extend(errors)
        return ids, rows


def drop_overflow(layer: str, dtype, ids: np.ndarray, rows: np.ndarray):
    """float16 arrays: a row that would overflow is reported in `errors`, never stored as inf.
    Returns (ids kept, rows kept, [(id, None, reason)])."""
    if dtype != np.float16:
        return ids, rows, []
    peak = np.nanmax(np.abs(rows), axis=1) if rows.size else np.zeros(0)
    bad = peak > FLOAT16_MAX
    errors = [(int(i), None, f"float16 overflow in {layer}: max |x| = {value:.4g}; use --dtype float32")
              for i, value in zip(ids[bad], peak[bad])]
    return ids[~bad], rows[~bad], errors


def images_frame(batch: Batch) -> pd.DataFrame:
    return pd.DataFrame({"id": batch.ids, "content_hash": [bytes(f).hex() for f in batch.fingerprints],
                         "width": batch.widths, "height": batch.heights})


def predictions_frame(batch: Batch) -> pd.DataFrame:
    k = batch.outputs["top_index"].shape[1]
    return pd.DataFrame({
        "image_id": np.repeat(batch.ids, k),
        "rank": np.tile(np.arange(1, k + 1, dtype=np.int8), len(batch.ids)),
        "class_index": batch.outputs["top_index"].reshape(-1).astype(np.int16),
        "probability": batch.outputs["top_prob"].reshape(-1),
    })


def record(catalog: Catalog, run_id: int, model_id: int, done: list[pd.DataFrame], images: list[pd.DataFrame],
           predictions: list[pd.DataFrame], errors: list[tuple[int, str | None, str]],
           digests: list[pd.DataFrame] = (), changed: ChangedFiles | None = None) -> int:
    """One catalog transaction for rows whose chunks are already written: done marks and the
    digests of their chunks, image metadata, predictions, errors, run counters; and for a known
    image whose file changed, its rows of the old picture unmarked (see `ChangedFiles`, which
    collects them). Returns how many images failed."""
    stale_indexes = []
    with catalog.write() as con:
        if done:
            con.register("new_done", pd.concat(done))
            con.execute("INSERT INTO done SELECT array_id, image_id, run_id FROM new_done ON CONFLICT DO NOTHING")
        if digests:
            con.register("new_digests", pd.concat(digests))
            con.execute("""INSERT INTO chunk_digests SELECT array_id, chunk, rows, digest FROM new_digests
                           ON CONFLICT (array_id, chunk) DO UPDATE SET rows = excluded.rows, digest = excluded.digest""")
        if images:
            con.register("decoded", pd.concat(images))
            replaced = _changed_images(con, pd.concat(done) if done else None)
            stale_indexes = _unmark_old_pictures(con, catalog.store, replaced, changed)
            con.execute(
                """UPDATE images SET content_hash = d.content_hash, width = d.width, height = d.height
                   FROM decoded d WHERE images.id = d.id AND (images.content_hash IS NULL
                                                              OR images.id IN (SELECT unnest(?::BIGINT[])))""",
                [sorted(replaced)],
            )
        if predictions:
            con.register("new_predictions", pd.concat(predictions))
            con.execute(
                """INSERT INTO predictions SELECT ?, image_id, rank, class_index, probability
                   FROM new_predictions ON CONFLICT DO NOTHING""",
                [model_id],
            )
        if errors:
            con.executemany(
                """INSERT INTO errors (image_id, path, reason, run_id)
                   VALUES (?, coalesce(?, (SELECT path FROM images WHERE id = ?)), ?, ?)""",
                [(i, path, i, reason, run_id) for i, path, reason in errors],
            )
        decoded = sum(len(f) for f in images)
        image_failures = len({i for i, _, _ in errors})
        con.execute(
            "UPDATE runs SET ingested = ingested + ?, failed = failed + ? WHERE id = ?",
            [decoded, image_failures, run_id],
        )
    for path in stale_indexes:  # their records went with the commit
        Path(path).unlink(missing_ok=True)
    return image_failures


def _changed_images(con, written: pd.DataFrame | None) -> dict[int, tuple[str, set[int]]]:
    """Decoded images that were known with another content hash: id -> (path, the arrays whose
    row this transaction wrote, which are of the new picture)."""
    known = con.execute("""SELECT i.id, i.path, i.content_hash AS recorded, d.content_hash AS computed
                           FROM decoded d JOIN images i ON i.id = d.id
                           WHERE i.content_hash IS NOT NULL AND i.content_hash <> d.content_hash""").fetchall()
    changed = {}
    for image_id, path, recorded, computed in known:
        if same_content(recorded, computed) is False:
            rows = written[written.image_id == image_id] if written is not None else None
            changed[int(image_id)] = (path, set() if rows is None else set(rows.array_id.astype(int).tolist()))
    return changed


def _unmark_old_pictures(con, store: Path, changed: dict, collected: ChangedFiles | None) -> list[Path]:
    """Every row of a changed image that this transaction did not write is of the old picture:
    unmarked, array by array; its predictions (of every model) are of the old picture too."""
    if not changed:
        return []
    old = con.execute("SELECT array_id, image_id FROM done WHERE image_id IN (SELECT unnest(?::BIGINT[]))",
                      [sorted(changed)]).fetchall()
    by_array: dict[int, list[int]] = {}
    for array_id, image_id in old:
        if int(array_id) not in changed[int(image_id)][1]:
            by_array.setdefault(int(array_id), []).append(int(image_id))
    files = []
    for array_id, ids in sorted(by_array.items()):
        files += unmark_rows(con, store, array_id, np.array(ids, np.int64))
    con.execute("DELETE FROM predictions WHERE image_id IN (SELECT unnest(?::BIGINT[]))", [sorted(changed)])
    if collected is not None:
        collected.paths.update((image_id, path) for image_id, (path, _) in changed.items())
        for array_id, ids in by_array.items():
            collected.unmarked.setdefault(array_id, set()).update(ids)
    return files


def failure_reason(path: str) -> str:
    """Why a file could not be decoded, in words a person can act on."""
    from PIL import Image, UnidentifiedImageError

    file = Path(path)
    if not file.exists():
        return "file not found"
    if file.stat().st_size == 0:
        return "empty file"
    try:
        with Image.open(file) as image:
            image.load()
    except UnidentifiedImageError:
        return "not an image (unknown format)"
    except (OSError, SyntaxError, ValueError) as exc:
        return f"corrupt or truncated image ({str(exc)[:80]})"
    return "TensorFlow could not decode this image format"
