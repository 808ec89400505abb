"""`actdb ingest`: wires sources -> pipeline -> writer. Everything that can be wrong
with the input is checked before the store is touched."""
from __future__ import annotations

import os
import signal
import socket
import threading
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
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
from . import writer
from .engines import local
from .sources import list_images

DTYPES = ("float32", "float16")
ENGINES = ("local", "ray")


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
    engine: str = "local"  # local | ray: who executes the plan (engines/)
    address: str | None = None  # ray: an existing cluster (else RAY_ADDRESS, else a local Ray)
    workers: int | None = None  # ray: actors, each loading the model once (default: per GPU, else per CPU)
    gpus_per_worker: float | None = None  # ray: default 1 where the cluster has GPUs, else 0
    cpus_per_worker: float | None = None  # ray: default 1


@dataclass
class IngestSummary:
    run_id: int
    listed: int
    ingested: int
    skipped: int
    failed: int
    seconds: float
    arrays: list[str]
    engine: str = "local"
    startup_seconds: float = 0.0  # ray: from submitting the work to the first worker ready (model loaded)
    workers: list[dict] = field(default_factory=list)  # ray: per worker images, busy seconds, images/s

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
    _check_choice("engine", options.engine, ENGINES)
    if options.batch_size is not None and options.batch_size < 1:
        raise ActdbError("--batch-size must be a positive integer")
    records = list_images(source, classes=options.classes, per_class=options.per_class, seed=options.seed,
                          limit=options.limit)
    cluster = _ray_cluster(options) if options.engine == "ray" else None  # before the model: GPUs go to workers
    loaded = load_model(options.model, options.weights, options.precision, options.preprocess)
    layers = forward.resolve_layers(loaded.keras_model, options.layers)
    strategy = forward.default_strategy()
    batch_size = options.batch_size or (cluster.default_batch_size(loaded.input_size) if cluster
                                        else forward.default_batch_size(loaded.input_size, strategy))
    replicas = strategy.num_replicas_in_sync
    batch_size = -(-batch_size // replicas) * replicas
    extractor = forward.Extractor(loaded, layers, options.reduce, batch_size, options.predictions, strategy)

    warm_up = threading.Thread(target=extractor.warm_up, name="actdb-trace", daemon=True)
    if cluster is None:  # Ray workers trace their own
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
        todo, previously_failed = _plan(catalog, ids, targets, model_id, options.predictions)
        path_of = dict(zip(ids.tolist(), (r.path for r in records)))
        plan = Plan(store, catalog, run_id, model_id, len(ids), todo, [path_of[i] for i in todo.tolist()],
                    previously_failed, targets, options, batch_size)
        del path_of
        if cluster is None:
            warm_up.join()
        with _sigterm_as_interrupt():
            if cluster is not None:
                summary = cluster.run(plan, loaded, progress)
            else:
                summary = local.run(plan, extractor, progress)
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


@dataclass
class Plan:
    """What a run must compute, decided by the driver from the catalog; an engine executes it."""

    store: Path
    catalog: Catalog
    run_id: int
    model_id: int
    listed: int
    todo: np.ndarray  # sorted ids that still lack a row, a prediction or their metadata
    todo_paths: list[str]
    previously_failed: int  # listed images whose decoding failed in an earlier run: not retried
    targets: list[writer.ArrayTarget]
    options: IngestOptions
    batch_size: int

    @property
    def skipped(self) -> int:
        return self.listed - len(self.todo) - self.previously_failed

    @property
    def shard_rows(self) -> int:
        """The largest chunk height: chunk heights are powers of two, so a multiple of every one."""
        return max(t.zarr_array.chunks[0] for t in self.targets)

    def finish(self, status: str, ingested: int, seconds: float) -> None:
        """Record how the run ended; every engine ends through here."""
        if status == "done" and ingested == 0 and self.skipped == 0:
            status = "failed"  # every listed file failed: nothing at all was ingested
        writer.finish_run(self.catalog, self.run_id, status, len(self.todo), self.skipped, seconds,
                          self.previously_failed)

    def shards(self) -> list[slice]:
        """Runs of `todo` cut at multiples of `shard_rows`: every chunk of every array written
        falls in exactly one shard, so one task can write it whole."""
        cuts = np.flatnonzero(np.diff(self.todo // self.shard_rows)) + 1
        bounds = [0, *cuts.tolist(), len(self.todo)]
        return [slice(a, b) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]


def _ray_cluster(options: IngestOptions):
    from .engines import ray as ray_engine

    return ray_engine.connect(options)


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
