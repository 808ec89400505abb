"""`actdb ingest`: wires sources -> pipeline -> writer. Everything that can be wrong
with the input is checked before the store is touched."""
from __future__ import annotations

import os
import signal
import socket
import threading
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path

import numpy as np

from .. import models, weightspec
from ..choices import DTYPES, ENGINES, REDUCTIONS, RESIZE_MODES, check_choice
from ..errors import ActdbError, Terminated
from ..models import forward, load_model, weights_digest
from ..store import arrays
from ..store.catalog import Catalog, next_array_id
from ..store.integrity import check_layout
from ..store.locks import writer_lock
from . import plan as planning
from . import writer
from .engines import engine as connect_engine
from .plan import IngestOptions, IngestSummary, Plan
from .sources import list_images

__all__ = ["IngestOptions", "IngestSummary", "ingest", "zarr_path"]

def zarr_path(model: str, weights: str, layer: str, reduce: str) -> str:
    slug = weights.replace("file:sha256=", "file-")[:21].replace(":", "-").replace("=", "")
    return f"{model}/{slug}/{layer}/{reduce}"


def ingest(store: str | Path, source: str | Path, options: IngestOptions, progress: bool = True) -> IngestSummary:
    store = Path(store)
    check_layout(store)
    check_choice("resize", options.resize, RESIZE_MODES)
    check_choice("reduce", options.reduce, REDUCTIONS)
    check_choice("dtype", options.dtype, DTYPES)
    check_choice("engine", options.engine, ENGINES)
    if options.batch_size is not None and options.batch_size < 1:
        raise ActdbError("--batch-size must be a positive integer")
    records = list_images(source, classes=options.classes, per_class=options.per_class, seed=options.seed,
                          limit=options.limit)
    engine = connect_engine(options)  # before the model: GPUs go to workers
    loaded = load_model(options.model, options.weights, options.precision, options.preprocess)
    layers = forward.resolve_layers(loaded.keras_model, options.layers)
    strategy = forward.default_strategy()
    batch_size = options.batch_size or engine.default_batch_size(loaded.input_size)
    replicas = strategy.num_replicas_in_sync
    batch_size = -(-batch_size // replicas) * replicas
    extractor = forward.Extractor(loaded, layers, options.reduce, batch_size, options.predictions, strategy)
    engine.start(extractor)

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
        todo, previously_failed = planning.todo(catalog, ids, targets, model_id, options.predictions)
        path_of = dict(zip(ids.tolist(), (r.path for r in records)))
        plan = Plan(store, catalog, run_id, model_id, len(ids), todo, [path_of[i] for i in todo.tolist()],
                    previously_failed, targets, options, batch_size)
        del path_of
        with _sigterm_as_interrupt():
            summary = engine.run(plan, loaded, extractor, progress)
        summary.warnings += changed_files_warning(catalog, source, plan.changed)
    if summary.ingested == 0 and summary.skipped == 0:
        raise ActdbError(f"none of the {summary.listed} listed images could be ingested ({_an_error(catalog)}); "
                         "see `actdb sql \"SELECT path, reason FROM errors\"`")
    summary.hidden_folders, summary.warnings = records.hidden, [*records.warnings, *summary.warnings]
    return summary


def changed_files_warning(catalog: Catalog, source, changed: writer.ChangedFiles) -> list[str]:
    """One line for the run: which known files changed (the first few and a count), and which
    arrays lost the old picture's rows, with the ingest that refills them."""
    if not changed.paths:
        return []
    paths = [changed.paths[i] for i in sorted(changed.paths)]
    shown = ", ".join(paths[:3]) + (f" and {len(paths) - 3} more" if len(paths) > 3 else "")
    text = (f"{len(paths)} known file{'s' if len(paths) > 1 else ''} changed since first ingested (content hash "
            f"differs): {shown}; the rows written now are of the file as it is")
    if not changed.unmarked:
        return [text]
    with catalog.read() as con:
        rows = con.execute(
            "SELECT a.id, m.name, m.weights, m.model_path, m.weights_path, m.preprocess, a.layer, a.reduce, a.dtype, "
            "a.precision, a.resize FROM arrays a JOIN models m ON m.id = a.model_id "
            "WHERE a.id IN (SELECT unnest(?::INTEGER[])) ORDER BY a.id", [sorted(changed.unmarked)]).fetchall()
    groups: dict[tuple, list[str]] = {}
    for _, name, weights, model_path, weights_path, preprocess, layer, reduce, dtype, precision, resize in rows:
        if model_path:
            model = f"--model {model_path} --preprocess {preprocess}"
        else:
            given = weights_path if weights.startswith(weightspec.FILE_PREFIX) else weightspec.given(weights)
            model = f"--model {name}" + ("" if weights == weightspec.IMAGENET else f" --weights {given}")
        options = "".join(f" --{option} {value}" for option, value, default in (
            ("reduce", reduce, "mean"), ("dtype", dtype, "float32"), ("precision", precision, "float32"),
            ("resize", resize, "center-crop")) if value != default)
        groups.setdefault((model, options), []).append(layer)
    arrays_text = ", ".join(f"{name}/{layer} ({reduce})" for _, name, _, _, _, _, layer, reduce, *_ in rows)
    commands = "; ".join(f"`actdb ingest {source} {model} --layers {','.join(layers)}{options}`"
                         for (model, options), layers in groups.items())
    return [f"{text}; the old pictures' rows were unmarked in {arrays_text} (and those arrays' indexes dropped): "
            f"refill them with {commands}"]


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
        listed_paths = {row[0] for row in con.execute("SELECT zarr_path FROM arrays").fetchall()}
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
            zarr_array = arrays.create(store, path, n_images, out.channels, options.dtype, attributes,
                                       overwrite=path not in listed_paths)  # a killed run's, never committed
            with catalog.write() as con:
                array_id = next_array_id(con)
                con.execute(
                    "INSERT INTO arrays VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    [array_id, model_id, out.layer, options.reduce, out.channels, options.dtype,
                     options.precision, options.resize, path],
                )
        arrays.grow(zarr_array, n_images)
        targets.append(writer.ArrayTarget(int(array_id), out.layer, zarr_array, np.zeros(n_images, bool)))
    return targets
