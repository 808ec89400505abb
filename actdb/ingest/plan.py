"""What one ingest run computes and how it ends, shared by every engine.

The driver (`run.ingest`) decides a `Plan` from the catalog; an engine executes it inside
`execute`, the one run lifecycle: a progress bar, the run's status (done, interrupted,
failed) recorded whatever happens, and one `IngestSummary` back.
"""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol

import numpy as np

from ..store.catalog import Catalog
from . import writer


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
    hidden_folders: list[str] = field(default_factory=list)  # in SOURCE, holding images: names starting with '.'
    warnings: list[str] = field(default_factory=list)  # what a user should know: files changed since their ingest, merged folders, ...

    @property
    def images_per_s(self) -> float:
        return self.ingested / self.seconds if self.seconds > 0 else 0.0


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
    changed: writer.ChangedFiles = field(default_factory=writer.ChangedFiles)  # filled by the commits

    @property
    def skipped(self) -> int:
        return self.listed - len(self.todo) - self.previously_failed

    @property
    def shard_rows(self) -> int:
        """The largest chunk height: chunk heights are powers of two, so a multiple of every one."""
        return max(t.zarr_array.chunks[0] for t in self.targets)

    def shards(self) -> list[slice]:
        """Runs of `todo` cut at multiples of `shard_rows`: every chunk of every array written
        falls in exactly one shard, so one task can write it whole."""
        cuts = np.flatnonzero(np.diff(self.todo // self.shard_rows)) + 1
        bounds = [0, *cuts.tolist(), len(self.todo)]
        return [slice(a, b) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]


class Sink(Protocol):
    """Where an engine's results go: counts what it committed; `close` commits the rest."""

    ingested: int
    failed: int

    def close(self) -> None: ...


class Engine(Protocol):
    """Executes a plan: chosen once by name (`engines.engine`), one signature for all."""

    name: str

    def default_batch_size(self, input_size: int) -> int: ...

    def start(self, extractor) -> None:
        """Called before the catalog is touched: work that can overlap it (tracing)."""

    def run(self, plan: Plan, loaded, extractor, progress: bool) -> IngestSummary: ...


def execute(plan: Plan, sink: Sink, body: Callable[[Callable[[int], None]], None], progress: bool,
            engine: str) -> tuple[IngestSummary, float]:
    """Run `body(advance)` as the run: whatever happens, `sink` is closed and the run's status
    recorded. Returns the summary and the wall-clock start (engines time workers against it)."""
    from tqdm import tqdm

    bar = tqdm(total=len(plan.todo), unit="img", disable=not progress or len(plan.todo) == 0, file=sys.stderr,
               dynamic_ncols=True, smoothing=0.1)
    status, started = "failed", time.time()
    try:
        body(bar.update)
        status = "done"
    except KeyboardInterrupt:
        status = "interrupted"
        raise
    finally:
        bar.close()
        sink.close()  # what came back is written: record it whatever happens next
        seconds = time.time() - started
        if status == "done" and sink.ingested == 0 and plan.skipped == 0:
            status = "failed"  # every listed file failed: nothing at all was ingested
        writer.finish_run(plan.catalog, plan.run_id, status, len(plan.todo), plan.skipped, seconds,
                          plan.previously_failed)
    summary = IngestSummary(plan.run_id, plan.listed, sink.ingested, plan.skipped,
                            sink.failed + plan.previously_failed, seconds, [t.layer for t in plan.targets],
                            engine=engine)
    return summary, started


def todo(catalog: Catalog, ids: np.ndarray, targets, model_id: int, predictions: bool):
    """Which listed images still lack something; earlier decode failures are not retried."""
    with catalog.read() as con:
        for target in targets:
            done = con.execute("SELECT image_id FROM done WHERE array_id = ?", [target.array_id]).fetchnumpy()
            target.missing[ids] = True
            target.missing[done["image_id"]] = False
            target.committed[done["image_id"]] = True
            target.digests = dict(con.execute("SELECT chunk, digest FROM chunk_digests WHERE array_id = ?",
                                              [target.array_id]).fetchall())
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
    planned = np.flatnonzero(needed & listed)
    previously_failed = int(np.isin(ids, failed).sum())
    return planned, previously_failed
