"""`actdb ingest`: wires sources -> pipeline -> writer. Everything that can be wrong
with the input is checked before the store is touched."""
from __future__ import annotations

import os
import signal
import socket
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .. import models
from ..errors import ActdbError, Terminated
from ..images import RESIZE_MODES
from ..models import forward, load_model, weights_digest
from ..store import arrays
from ..store.catalog import Catalog
from ..store.integrity import check_layout
from ..store.locks import writer_lock
from . import pipeline, writer
from .sources import list_images

DTYPES = ("float32", "float16")


@dataclass
class IngestOptions:
    model: str = "efficientnet_lite0"  # trained ImageNet weights that ship with actdb: works offline
    weights: str = "imagenet"
    layers: str = "avg_pool"
    reduce: str = "mean"
    classes: list[str] | None = None
    per_class: int | None = None
    seed: int = 0
    limit: int | None = None
    batch_size: int | None = None
    resize: str = "center-crop"
    precision: str = "float32"
    dtype: str = "float32"
    predictions: bool = False
    preprocess: str | None = None
    commit_seconds: float = 5.0


@dataclass
class IngestSummary:
    run_id: int
    listed: int
    ingested: int
    skipped: int
    failed: int
    seconds: float
    arrays: list[str]

    @property
    def images_per_s(self) -> float:
        return self.ingested / self.seconds if self.seconds > 0 else 0.0


def _check_choice(name: str, value: str, choices) -> None:
    if value not in choices:
        raise ActdbError(f"--{name} {value!r} is not one of {', '.join(choices)}")


def zarr_path(model: str, weights: str, layer: str, reduce: str) -> str:
    slug = weights.replace("file:sha256=", "file-")[:21].replace(":", "-").replace("=", "")
    return f"{model}/{slug}/{layer}/{reduce}"


def ingest(store: str | Path, source: str | Path, options: IngestOptions, progress: bool = True) -> IngestSummary:
    store = Path(store)
    check_layout(store)
    _check_choice("resize", options.resize, RESIZE_MODES)
    _check_choice("reduce", options.reduce, forward.REDUCTIONS)
    _check_choice("dtype", options.dtype, DTYPES)
    if options.batch_size is not None and options.batch_size < 1:
        raise ActdbError("--batch-size must be a positive integer")
    records = list_images(source, classes=options.classes, per_class=options.per_class, seed=options.seed,
                          limit=options.limit)
    loaded = load_model(options.model, options.weights, options.precision, options.preprocess)
    layers = forward.resolve_layers(loaded.keras_model, options.layers)
    strategy = forward.default_strategy()
    batch_size = options.batch_size or forward.default_batch_size(loaded.input_size, strategy)
    replicas = strategy.num_replicas_in_sync
    batch_size = -(-batch_size // replicas) * replicas
    extractor = forward.Extractor(loaded, layers, options.reduce, batch_size, options.predictions, strategy)

    warm_up = threading.Thread(target=extractor.warm_up, name="actdb-trace", daemon=True)
    warm_up.start()  # tracing overlaps the weights digest and the catalog registration below

    store.mkdir(parents=True, exist_ok=True)
    with writer_lock(store, "actdb ingest"):
        catalog = Catalog(store)
        if not catalog.exists():
            catalog.create()
        params = {"source": str(source), **asdict(options), "batch_size": batch_size,
                  "pid": os.getpid(), "host": socket.gethostname()}  # so a reader can tell a killed run
        run_id = writer.start_run(catalog, params)
        try:
            ids = writer.register_images(catalog, records, str(source), run_id)
            model_id = _register_model(catalog, loaded)
            targets = _register_arrays(store, catalog, model_id, loaded, extractor, options)
        except BaseException:
            writer.finish_run(catalog, run_id, "failed", 0, 0, 0.0)
            raise
        warm_up.join()
        with _sigterm_as_interrupt():
            summary = _run(catalog, run_id, ids, records, targets, extractor, model_id, options, progress)
    if summary.ingested == 0 and summary.skipped == 0:
        raise ActdbError(f"none of the {summary.listed} listed images could be ingested ({_an_error(catalog)}); "
                         "see `actdb sql \"SELECT path, reason FROM errors\"`")
    return summary


@contextmanager
def _sigterm_as_interrupt():
    """SIGTERM (`kill`, a scheduler) stops a run like Ctrl-C: what was computed is committed and
    the run is recorded as interrupted. A second SIGTERM cannot cut that commit short."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum, frame):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _an_error(catalog: Catalog) -> str:
    with catalog.read() as con:
        row = con.execute("SELECT path, reason FROM errors ORDER BY logged_at DESC LIMIT 1").fetchone()
    return f"e.g. {row[0]}: {row[1]}" if row else "no file could be read"


def _register_model(catalog: Catalog, loaded: models.LoadedModel) -> int:
    digest = weights_digest(loaded.keras_model)
    with catalog.write() as con:
        row = con.execute(
            "SELECT id, weights_digest, preprocess FROM models WHERE name = ? AND weights = ?",
            [loaded.name, loaded.weights_id],
        ).fetchone()
        if row is None:
            model_id = con.execute("SELECT coalesce(max(id), 0) + 1 FROM models").fetchone()[0]
            con.execute(
                "INSERT INTO models VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [model_id, loaded.name, loaded.weights_id, digest, loaded.preprocess, loaded.input_size,
                 loaded.model_path, loaded.weights_path],
            )
            return int(model_id)
    model_id, stored_digest, stored_preprocess = row
    if stored_digest != digest:
        raise ActdbError(
            f"the {loaded.weights_id} weights of {loaded.name} differ from those this store was built with "
            "(another Keras version or weights file?); use another --store or the original weights"
        )
    if stored_preprocess != loaded.preprocess:
        raise ActdbError(f"{loaded.name} was ingested with --preprocess {stored_preprocess}; use the same")
    return int(model_id)


def _register_arrays(store: Path, catalog: Catalog, model_id: int, loaded, extractor, options) -> list:
    with catalog.read() as con:
        n_images = con.execute("SELECT count(*) FROM images").fetchone()[0]
        existing = {
            row[0]: row[1:]
            for row in con.execute(
                "SELECT layer, id, dtype, precision, resize, zarr_path FROM arrays WHERE model_id = ? AND reduce = ?",
                [model_id, options.reduce],
            ).fetchall()
        }
    targets = []
    for out in extractor.outputs:
        if out.layer in existing:
            array_id, dtype, precision, resize, path = existing[out.layer]
            for name, stored, asked in (("dtype", dtype, options.dtype), ("precision", precision, options.precision),
                                        ("resize", resize, options.resize)):
                if stored != asked:
                    raise ActdbError(
                        f"{loaded.name}/{out.layer} is stored with --{name} {stored}; pass --{name} {stored} "
                        "to extend it, or use another --store"
                    )
            zarr_array = arrays.open_array(store, path, mode="a")
        else:
            path = zarr_path(loaded.name, loaded.weights_id, out.layer, options.reduce)
            attributes = {"model": loaded.name, "weights": loaded.weights_id, "layer": out.layer,
                          "reduce": options.reduce if out.spatial else "none", "precision": options.precision,
                          "resize": options.resize, "rows": "row i is images.id = i in catalog.duckdb"}
            zarr_array = arrays.create(store, path, n_images, out.channels, options.dtype, attributes)
            with catalog.write() as con:
                array_id = con.execute("SELECT coalesce(max(id), 0) + 1 FROM arrays").fetchone()[0]
                con.execute(
                    "INSERT INTO arrays VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [array_id, model_id, out.layer, options.reduce, out.channels, options.dtype,
                     options.precision, options.resize, path],
                )
        arrays.grow(zarr_array, n_images)
        targets.append(writer.ArrayTarget(int(array_id), out.layer, zarr_array, np.zeros(n_images, bool)))
    return targets


def _plan(catalog: Catalog, ids: np.ndarray, targets, model_id: int, predictions: bool):
    """Which listed images still lack something; earlier decode failures are not retried."""
    with catalog.read() as con:
        for target in targets:
            done = con.execute("SELECT image_id FROM done WHERE array_id = ?", [target.array_id]).fetchnumpy()
            target.missing[ids] = True
            target.missing[done["image_id"]] = False
        failed = con.execute(
            "SELECT DISTINCT image_id FROM errors WHERE image_id IS NOT NULL AND reason NOT LIKE 'float16 overflow%'"
        ).fetchnumpy()["image_id"]
        with_predictions = (
            con.execute("SELECT DISTINCT image_id FROM predictions WHERE model_id = ?", [model_id]).fetchnumpy()["image_id"]
            if predictions else None
        )
    needed = np.zeros(len(targets[0].missing), bool)
    for target in targets:
        needed |= target.missing
    if predictions:
        lacks_predictions = np.zeros_like(needed)
        lacks_predictions[ids] = True
        lacks_predictions[with_predictions] = False
        needed |= lacks_predictions
    needed[failed] = False
    listed = np.zeros_like(needed)
    listed[ids] = True
    todo = np.flatnonzero(needed & listed)
    previously_failed = int(np.isin(ids, failed).sum())
    return todo, previously_failed


def _run(catalog, run_id, ids, records, targets, extractor, model_id, options, progress) -> IngestSummary:
    from tqdm import tqdm

    todo, previously_failed = _plan(catalog, ids, targets, model_id, options.predictions)
    path_of = dict(zip(ids.tolist(), (r.path for r in records)))
    todo_paths = [path_of[i] for i in todo.tolist()]
    del path_of
    dataset = pipeline.image_dataset(todo, todo_paths, extractor.input_size, options.resize, extractor.batch_size)
    store_writer = writer.StoreWriter(catalog, run_id, targets, model_id, options.predictions,
                                      commit_seconds=options.commit_seconds)
    bar = tqdm(total=len(todo), unit="img", disable=not progress or len(todo) == 0, file=sys.stderr,
               dynamic_ncols=True, smoothing=0.1)
    expected = 0  # position in todo: ids that never came out of the pipeline failed to decode
    status = "failed"
    start = time.monotonic()
    try:
        for batch in dataset:
            batch_ids = batch["id"].numpy()
            expected = _report_dropped(store_writer, todo, todo_paths, expected, batch_ids)
            outputs = extractor(batch["pixels"])
            store_writer.put(writer.Batch(batch_ids, batch["fingerprint"].numpy(), batch["height"].numpy(),
                                          batch["width"].numpy(), outputs))
            bar.update(len(batch_ids))
        _report_dropped(store_writer, todo, todo_paths, expected, None)
        status = "done"
    except KeyboardInterrupt:
        status = "interrupted"
        raise
    finally:
        bar.close()
        store_writer.close()
        seconds = time.monotonic() - start
        skipped = len(ids) - len(todo) - previously_failed
        if status == "done" and store_writer.ingested == 0 and skipped == 0:
            status = "failed"  # every listed file failed: nothing at all was ingested
        writer.finish_run(catalog, run_id, status, len(todo), skipped, seconds, previously_failed)
    return IngestSummary(run_id, len(ids), store_writer.ingested, skipped, store_writer.failed + previously_failed,
                         seconds, [t.layer for t in targets])


def _report_dropped(store_writer, todo, todo_paths, expected: int, batch_ids) -> int:
    """Ids before the end of this batch that it does not contain were dropped as undecodable."""
    stop = len(todo) if batch_ids is None else int(np.searchsorted(todo, batch_ids[-1], side="right"))
    window = todo[expected:stop]
    dropped = window if batch_ids is None else window[~np.isin(window, batch_ids)]
    if len(dropped):
        positions = np.searchsorted(todo, dropped)
        store_writer.fail([(int(i), todo_paths[p]) for i, p in zip(dropped, positions)])
    return stop
