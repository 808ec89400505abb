"""The Ray Data engine: the driver's plan executed by a pool of actors, on one machine,
one multi-GPU node or a cluster, writing the same store as the local engine.

- One Ray Data row per shard (a run of planned ids cut on the chunk grid, `Plan.shards`),
  so one task owns every chunk it writes. Workers get ids and paths from the driver
  through the object store: no listing on workers.
- Each actor loads the model once (`models.load_model`, the weights digest checked against
  the driver's) and runs the very `Extractor` of the local engine: same batch shape,
  padding and precision, so rows equal a local ingest's bit for bit. Decoding runs inside
  the actor through the local engine's tf.data reader (see the README for the measurement
  behind this split).
- The actor writes its shard's chunks and returns only metadata; the driver alone writes
  the catalog, committing done marks, image metadata, predictions and errors as results
  stream back. A worker that dies is restarted by Ray and its shard redone (chunks are
  rewritten whole with the same values); a killed driver leaves chunks written but not
  marked done, which the next run recomputes.
"""
from __future__ import annotations

import contextlib
import logging
import os
import pickle
import socket
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ...errors import ActdbError
from ...store import arrays
from .. import writer
from ..plan import IngestSummary, Plan, execute

INSTALL = "pip install 'actdb[ray]'"


def import_ray():
    try:
        import ray
        import ray.data  # noqa: F401 - the extra installs it; plain `ray` lacks it
    except ImportError:
        raise ActdbError(f"--engine ray needs Ray Data, which is not installed: {INSTALL}") from None
    return ray


@dataclass
class RayEngine:
    """A connected Ray and the pool this ingest asks of it."""

    workers: int
    cpus_per_worker: float
    gpus_per_worker: float
    name = "ray"
    worker_class = None  # the actor class: ShardWorker (tests put a subclass here)

    def default_batch_size(self, input_size: int) -> int:
        from ...models import forward

        return forward.batch_size_for(input_size, int(self.gpus_per_worker))

    def start(self, extractor) -> None:
        """Nothing to overlap: the workers trace their own model."""

    def run(self, plan: Plan, loaded, extractor, progress: bool) -> IngestSummary:
        return _run(self, plan, loaded, progress)


def connect(options) -> RayEngine:
    """Join `--address` / RAY_ADDRESS, a Ray already started in this process, or start one here."""
    ray = import_ray()
    _leave_gpus_to_workers()
    if not ray.is_initialized():
        address = options.address or os.environ.get("RAY_ADDRESS") or "local"
        try:
            ray.init(address=address, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING)
        except (ConnectionError, ValueError, RuntimeError) as exc:
            raise ActdbError(f"cannot connect to Ray at {address} ({str(exc).splitlines()[0][:120]}): start a cluster "
                             "with `ray start --head` or drop --address") from None
    resources = ray.cluster_resources()
    cpus, gpus = resources.get("CPU", 0.0), resources.get("GPU", 0.0)
    gpus_per_worker = options.gpus_per_worker if options.gpus_per_worker is not None else (1.0 if gpus >= 1 else 0.0)
    cpus_per_worker = options.cpus_per_worker or 1.0
    workers = options.workers or max(1, int(gpus // gpus_per_worker if gpus_per_worker else cpus // cpus_per_worker))
    for name, per_worker, available in (("cpus", cpus_per_worker, cpus), ("gpus", gpus_per_worker, gpus)):
        if workers * per_worker > available:
            raise ActdbError(f"--workers {workers} x --{name}-per-worker {per_worker:g} needs {workers * per_worker:g} "
                             f"{name.upper()[:-1]}s; the Ray cluster has {available:g}: ask for fewer")
    return RayEngine(workers, cpus_per_worker, gpus_per_worker)


def _leave_gpus_to_workers() -> None:
    """The driver only plans: its model must not take the memory of GPUs the actors need."""
    from ...tfquiet import import_tensorflow

    tf = import_tensorflow()
    try:
        tf.config.set_visible_devices([], "GPU")
    except RuntimeError:  # devices already initialised in this process (a notebook): leave them
        pass


@dataclass(frozen=True)
class WorkerSpec:
    """What an actor needs to rebuild the driver's model and open the arrays it writes."""

    store: str
    model: str
    weights: str
    precision: str
    preprocess: str | None
    weights_digest: str
    layers: tuple[str, ...]
    reduce: str
    batch_size: int
    predictions: bool
    resize: str
    zarr_paths: tuple[str, ...]  # one per target, in the plan's order
    threads: int


class ShardWorker:
    """A Ray Data actor: loads the model once, then computes and writes whole shards."""

    def __init__(self, spec: WorkerSpec):
        from ...models import forward, load_model, weights_digest
        from ...tfquiet import import_tensorflow

        tf = import_tensorflow()
        tf.config.threading.set_intra_op_parallelism_threads(spec.threads)
        tf.config.threading.set_inter_op_parallelism_threads(spec.threads)
        self.spec = spec
        self.name = f"{socket.gethostname()}:{os.getpid()}"
        loaded = load_model(spec.model, spec.weights, spec.precision, spec.preprocess)
        if weights_digest(loaded.keras_model) != spec.weights_digest:
            raise ActdbError(f"the {spec.weights} weights of {spec.model} built on {self.name} differ from the "
                             "driver's (another Keras or actdb version on that node?): install the same versions")
        self.extractor = forward.Extractor(loaded, list(spec.layers), spec.reduce, spec.batch_size, spec.predictions,
                                           forward.default_strategy())
        self.extractor.warm_up()
        self.arrays = [arrays.open_array(Path(spec.store), path, mode="r+") for path in spec.zarr_paths]
        self.ready_at = time.time()

    def __call__(self, batch: dict) -> dict:
        payloads = [pickle.dumps(self._shard(*pickle.loads(work))) for work in batch["work"]]
        return {"shard": batch["shard"], "result": np.array(payloads, dtype=object)}

    def _shard(self, ids: np.ndarray, paths: list[str], missing: np.ndarray, committed: list) -> dict:
        start = time.perf_counter()
        batch = self._forward(ids, paths)
        decoded = np.isin(ids, batch.ids)  # the reader keeps order and drops what it cannot decode
        errors = [(int(i), p, writer.failure_reason(p)) for i, p in zip(ids[~decoded], np.asarray(paths)[~decoded])]
        done, digests = [], []
        for wanted, layer, array, (kept, recorded) in zip(missing[:, decoded], self.spec.layers, self.arrays,
                                                          committed):
            rows_ids, rows, overflow = writer.drop_overflow(layer, array.dtype, batch.ids[wanted],
                                                            batch.outputs[layer][wanted])
            digests.append(arrays.write_rows(array, rows_ids, rows.astype(array.dtype), kept, recorded))
            errors.extend(overflow)
            done.append(rows_ids)
        batch.outputs = {k: v for k, v in batch.outputs.items() if k in ("top_index", "top_prob")}
        return {"batch": batch, "done": done, "digests": digests, "errors": errors, "worker": self.name, "ready_at": self.ready_at,
                "seconds": time.perf_counter() - start}

    def _forward(self, ids: np.ndarray, paths: list[str]) -> writer.Batch:
        from .. import pipeline  # TensorFlow: only where a model runs, not in the store probe

        parts = []
        dataset = pipeline.image_dataset(ids, paths, self.extractor.input_size, self.spec.resize,
                                         self.extractor.batch_size)
        for batch in dataset:
            parts.append(writer.Batch(batch["id"].numpy(), batch["fingerprint"].numpy(), batch["height"].numpy(),
                                      batch["width"].numpy(), self.extractor(batch["pixels"])))
        if not parts:
            outputs = {out.layer: np.zeros((0, out.channels), np.float32) for out in self.extractor.outputs}
            if self.spec.predictions:
                outputs.update(top_index=np.zeros((0, 5), np.int32), top_prob=np.zeros((0, 5), np.float32))
            return writer.Batch(np.zeros(0, np.int64), np.zeros(0, np.uint64), np.zeros(0, np.int32),
                                np.zeros(0, np.int32), outputs)
        return writer.Batch(*(np.concatenate([getattr(p, f) for p in parts]) for f in ("ids", "fingerprints",
                                                                                      "heights", "widths")),
                            {k: np.concatenate([p.outputs[k] for p in parts]) for k in parts[0].outputs})


def _run(engine: RayEngine, plan: Plan, loaded, progress: bool) -> IngestSummary:
    from ...models import weights_digest

    ray = import_ray()
    shards = plan.shards()
    committer = _Committer(plan)

    def body(advance):
        if not shards:
            return
        check_store(ray, plan.store)
        spec = WorkerSpec(str(plan.store), plan.options.model, plan.options.weights, plan.options.precision,
                          plan.options.preprocess, weights_digest(loaded.keras_model),
                          tuple(t.layer for t in plan.targets), plan.options.reduce, plan.batch_size,
                          plan.options.predictions, plan.options.resize,
                          tuple(t.zarr_array.path for t in plan.targets), max(1, int(engine.cpus_per_worker)))
        try:
            with contextlib.redirect_stdout(sys.stderr):  # Ray prints worker deaths to stdout: keep it for results
                for result in _execute(ray, engine, spec, _work(plan, shards)):
                    committer.add(result)
                    advance(len(result["batch"].ids) + len(result["errors"]))
        except ray.exceptions.RayError as exc:
            raise ActdbError(f"the Ray workers failed: {_last_line(exc)}") from None

    summary, started = execute(plan, committer, body, progress, engine.name)
    ready = [w["ready_at"] for w in committer.workers.values()]
    summary.startup_seconds = max(0.0, min(ready) - started) if ready else 0.0
    summary.workers = committer.worker_table()
    return summary


def _work(plan, shards: list[slice]) -> list[bytes]:
    """Per shard, pickled: ids, paths, which of them each array still lacks (targets x ids), and
    per array the committed ids in the shard's chunks with their recorded digests (what a
    chunk write keeps and checks)."""
    work = []
    for part in shards:
        ids = plan.todo[part]
        committed = []
        for target in plan.targets:
            kept = target.committed_near(ids)
            span = target.zarr_array.chunks[0]
            committed.append((kept, {int(c): target.digests[c] for c in np.unique(kept // span).tolist()
                                     if c in target.digests}))
        work.append(pickle.dumps((ids, plan.todo_paths[part], np.stack([t.missing[ids] for t in plan.targets]),
                                  committed)))
    return work


def _execute(ray, engine: RayEngine, spec: WorkerSpec, work: list[bytes]):
    """Results of the shards, as they complete."""
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False  # ours is the one bar
    context.print_on_execution_start = False
    logging.getLogger("ray.data").setLevel(logging.ERROR)  # "progress bars disabled"
    rows = [{"shard": k, "work": shard} for k, shard in enumerate(work)]
    dataset = ray.data.from_items(rows, override_num_blocks=len(rows))  # one block, one task per shard
    dataset = dataset.map_batches(
        engine.worker_class or ShardWorker,
        fn_constructor_kwargs={"spec": spec},
        batch_size=1,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=min(engine.workers, len(work))),
        num_cpus=engine.cpus_per_worker,
        num_gpus=engine.gpus_per_worker,
    )
    for row in dataset.iter_rows():
        yield pickle.loads(row["result"])


class _Committer:
    """The driver's catalog writes: whole shards, every `commit_seconds`."""

    def __init__(self, plan):
        self.plan = plan
        self.ingested = 0
        self.failed = 0
        self.workers: dict[str, dict] = {}
        self._reset()

    def _reset(self) -> None:
        self._done, self._digests, self._images, self._predictions, self._errors = [], [], [], [], []
        self._last = time.monotonic()

    def add(self, result: dict) -> None:
        batch = result["batch"]
        for target, ids, written in zip(self.plan.targets, result["done"], result["digests"]):
            self._done.append(pd.DataFrame({"array_id": target.array_id, "image_id": ids,
                                                   "run_id": self.plan.run_id}))
            self._digests.append(writer.digests_frame(target.array_id, written))
        self._images.append(writer.images_frame(batch))
        if self.plan.options.predictions:
            self._predictions.append(writer.predictions_frame(batch))
        self._errors.extend(result["errors"])
        worker = self.workers.setdefault(result["worker"], {"worker": result["worker"], "ready_at": result["ready_at"],
                                                            "shards": 0, "images": 0, "seconds": 0.0})
        worker["shards"] += 1
        worker["images"] += len(batch.ids)
        worker["seconds"] += result["seconds"]
        if time.monotonic() - self._last >= self.plan.options.commit_seconds:
            self.flush()

    def close(self) -> None:
        self.flush()

    def flush(self) -> None:
        if not (self._images or self._errors):
            return
        self.failed += writer.record(self.plan.catalog, self.plan.run_id, self.plan.model_id, self._done,
                                     self._images, self._predictions, self._errors, self._digests,
                                     self.plan.changed)
        self.ingested += sum(len(f) for f in self._images)
        self._reset()

    def worker_table(self) -> list[dict]:
        """Per worker: shards, images, busy seconds and images/s while busy."""
        return [{k: v for k, v in w.items() if k != "ready_at"} | {"images_per_s": w["images"] / w["seconds"]
                                                                   if w["seconds"] else 0.0}
                for w in self.workers.values()]


# How a task ends when its node is lost: never scheduled (the node died before), its worker or
# node died under it, or its result went with the node.
NODE_LOST = ("TaskUnschedulableError", "NodeDiedError", "WorkerCrashedError", "ObjectLostError")


def check_store(ray, store: Path) -> None:
    """Every node must see this very store (not a same-named local folder) and write into it.
    A node lost while it is probed runs no worker, so it is left out, not a failed run."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    token = uuid.uuid4().hex
    probe = store / f".ray-probe-{token}"
    probe.write_text(token)
    try:
        nodes = [n for n in ray.nodes() if n["Alive"]]
        check = ray.remote(num_cpus=0, max_retries=0)(_probe_store)
        refs = [check.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False))
                .remote(str(store), token) for n in nodes]
        for node, ref in zip(nodes, refs):
            problem = _probe_answer(ray, node, ref)
            if problem:
                raise ActdbError(f"Ray node {node['NodeManagerAddress']} cannot use the store {store}: {problem}; put "
                                 "the store on a filesystem every node mounts at the same path (NFS, Lustre, ...)")
    finally:
        probe.unlink(missing_ok=True)


def _probe_answer(ray, node: dict, ref) -> str | None:
    """The node's probe answer; None for a node lost meanwhile (Ray no longer lists it alive).
    A probe lost on a node that is still alive proves nothing: refused, to be run again."""
    lost = tuple(getattr(ray.exceptions, name) for name in NODE_LOST if hasattr(ray.exceptions, name))
    try:
        return ray.get(ref)
    except lost as exc:
        if any(n["NodeID"] == node["NodeID"] and n["Alive"] for n in ray.nodes()):
            raise ActdbError(f"the store probe on Ray node {node['NodeManagerAddress']} was lost ({_last_line(exc)}) "
                             "while the node is still up: run the ingest again") from None
        return None


def _probe_store(store: str, token: str) -> str | None:
    """Runs on a node: None when it reads the driver's probe and can write beside it."""
    probe = Path(store) / f".ray-probe-{token}"
    try:
        if probe.read_text() != token:
            return "it sees another file at that path"
    except OSError:
        return "it does not see the store's files"
    reply = Path(store) / arrays.ZARR_DIR / f".ray-probe-{token}-{socket.gethostname()}-{os.getpid()}"
    try:
        reply.write_text(token)
        reply.unlink()
    except OSError as exc:
        return f"it cannot write there ({exc.strerror})"
    return None


def _last_line(exc: BaseException) -> str:
    lines = [line for line in str(exc).splitlines() if line.strip()]
    return lines[-1][:300] if lines else type(exc).__name__
