"""What Ray costs on one machine: `actdb ingest --engine ray` against `--engine local`, same
images, model, layer and batch size, measured in one run (rounds interleaved, best kept).

Figures, all ratios of measurements taken in this run:
  ray / local, steady: images / (seconds - startup_seconds) of the Ray ingest (from the first
      worker ready to the last shard committed) over the local ingest's images/s (its loop,
      which likewise excludes model build and tracing);
  ray / local, end to end: the Ray ingest's whole execution (actor start, TensorFlow import
      and model build in every actor included) over the local loop;
  stage split: two bare Ray Data pipelines over the same shards, no store, images/s between
      the first and the last shard result: decode inside the model actors (what the engine
      does) against separate CPU decode tasks feeding one model actor through the object store.
The arrays of every Ray store are checked bit for bit against the local store.

Images are JPEG views of the real photos in actdb.photos (256 px shorter side). MobileNetV2
uses seeded random weights (`--weights random:0`): no ImageNet download offline, and speed
does not depend on weight values.

Run:  python bench/distributed.py [--images 1024] [--rounds 2] [--batch-size 32] [--no-split]
"""
from __future__ import annotations

import argparse
import math
import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from actdb.tfquiet import import_tensorflow

tf = import_tensorflow()

import ray  # noqa: E402

from actdb.database import open as open_store  # noqa: E402
from actdb.ingest.run import IngestOptions, ingest  # noqa: E402
from actdb.ingest.sources import list_images  # noqa: E402
from actdb.photos import available_photos, write_augmented_views  # noqa: E402

MODEL, LAYER, WEIGHTS = "mobilenet_v2", "out_relu", "random:0"
CPUS = os.cpu_count() or 1
TARGET = 0.9  # ray / local, steady, on this machine with a compute-bound model


def make_views(root: Path, n: int) -> Path:
    folder = root / "views"
    write_augmented_views(folder, math.ceil(n / len(available_photos())), seed=0, size=256)
    return folder


def run_ingest(root: Path, source: Path, n: int, batch_size: int, **engine) -> tuple[object, Path]:
    store = Path(tempfile.mkdtemp(prefix="store_", dir=root))
    options = IngestOptions(model=MODEL, weights=WEIGHTS, layers=LAYER, limit=n, batch_size=batch_size, **engine)
    summary = ingest(store, source, options, progress=False)
    assert summary.ingested == n and summary.failed == 0, summary
    return summary, store


def same_arrays(store: Path, reference: Path) -> bool:
    return np.array_equal(open_store(store).activations(MODEL, LAYER), open_store(reference).activations(MODEL, LAYER))


# ---------------------------------------------------------------- stage split, bare Ray Data


def _shards(paths: list[str], rows: int = 256) -> list[dict]:
    return [{"shard": k, "paths": paths[i:i + rows]} for k, i in enumerate(range(0, len(paths), rows))]


def _decode(paths, size: int) -> np.ndarray:
    from actdb.images import pixels_of_file

    return np.stack([pixels_of_file(p, size, "center-crop").astype(np.uint8) for p in paths])


class _Model:
    def __init__(self, batch_size: int, threads: int, decode: bool):
        from actdb.models import forward, load_model

        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
        loaded = load_model(MODEL, WEIGHTS)
        self.extractor = forward.Extractor(loaded, [LAYER], "mean", batch_size)
        self.extractor.warm_up()
        self.decode = decode

    def __call__(self, batch: dict) -> dict:
        from actdb.ingest import pipeline

        images = 0
        for k in range(len(batch["shard"])):
            if self.decode:
                paths = list(batch["paths"][k])
                data = pipeline.image_dataset(np.arange(len(paths)), paths, self.extractor.input_size, "center-crop",
                                              self.extractor.batch_size)
                for part in data:
                    self.extractor(part["pixels"])
                    images += int(part["id"].shape[0])
            else:
                pixels = batch["pixels"][k]
                for i in range(0, len(pixels), self.extractor.batch_size):
                    self.extractor(tf.cast(pixels[i:i + self.extractor.batch_size], tf.float32))
                images += len(pixels)
        return {"images": np.array([images])}


def split_pipeline(paths: list[str], batch_size: int, separate_decode: bool) -> float:
    """Images/s of a bare pipeline (no store) between its first and last shard results."""
    ray.data.DataContext.get_current().enable_progress_bars = False
    rows = _shards(paths)
    data = ray.data.from_items(rows, override_num_blocks=len(rows))
    if separate_decode:  # one CPU decodes, one runs the model
        data = data.map_batches(lambda b: {"shard": b["shard"], "pixels": [_decode(list(p), 224) for p in b["paths"]]},
                                batch_size=1, num_cpus=1, batch_format="numpy")
        workers, threads = 1, 1
    else:  # every CPU an actor that decodes and runs the model
        workers, threads = CPUS, 1
    data = data.map_batches(_Model, fn_constructor_kwargs={"batch_size": batch_size, "threads": threads,
                                                           "decode": not separate_decode},
                            batch_size=1, batch_format="numpy", num_cpus=1,
                            compute=ray.data.ActorPoolStrategy(size=workers))
    counts, times = [], []
    for row in data.iter_rows():
        counts.append(int(row["images"]))
        times.append(time.perf_counter())
    assert sum(counts) == len(paths)
    return sum(counts[1:]) / (times[-1] - times[0])  # after the first shard: the actors' start-up left out


# ---------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--no-split", dest="split", action="store_false")
    args = parser.parse_args()
    n, bs = args.images, args.batch_size
    start = time.perf_counter()
    print(f"TensorFlow {tf.__version__}, Ray {ray.__version__}, {CPUS} CPUs, load average {os.getloadavg()[0]:.1f}; "
          f"{MODEL} -> {LAYER} (weights {WEIGHTS}), {n} JPEG views of real photos, batch {bs}")
    ray.init(num_cpus=CPUS, include_dashboard=False, log_to_driver=False, object_store_memory=512 << 20)
    configs = {f"ray, {CPUS} workers x 1 CPU (default)": {},
               f"ray, 1 worker x {CPUS} CPUs": {"workers": 1, "cpus_per_worker": CPUS}}
    local_ips, steady, whole, startup = [], {c: [] for c in configs}, {c: [] for c in configs}, {c: [] for c in configs}
    with tempfile.TemporaryDirectory(prefix="actdb_distributed_") as tmp:
        root = Path(tmp)
        source = make_views(root, n)
        for r in range(args.rounds):
            summary, reference = run_ingest(root, source, n, bs)
            local_ips.append(summary.images_per_s)
            for name, engine in configs.items():
                summary, store = run_ingest(root, source, n, bs, engine="ray", **engine)
                steady[name].append(n / (summary.seconds - summary.startup_seconds))
                whole[name].append(n / summary.seconds)
                startup[name].append(summary.startup_seconds)
                assert same_arrays(store, reference), f"{name}: arrays differ from the local engine's"
                shutil.rmtree(store)
                workers = ", ".join(f"{w['images_per_s']:.1f}" for w in summary.workers)
                print(f"  round {r + 1} {name}: {steady[name][-1]:.1f} img/s steady, {whole[name][-1]:.1f} end to "
                      f"end, startup {summary.startup_seconds:.1f}s; per worker while busy: {workers}", flush=True)
            print(f"  round {r + 1} local: {local_ips[-1]:.1f} img/s", flush=True)
            shutil.rmtree(reference)
        best_local = max(local_ips)
        print(f"\nlocal engine                    {best_local:7.1f} img/s (rounds "
              f"{', '.join(f'{x:.1f}' for x in local_ips)})")
        for name in configs:
            ratio, ratio_whole = max(steady[name]) / best_local, max(whole[name]) / best_local
            verdict = "ok" if ratio >= TARGET else "MISSED"
            print(f"{name:<31} {max(steady[name]):7.1f} img/s steady ({ratio:.3f}x local, target >= {TARGET} {verdict});"
                  f" end to end {max(whole[name]):.1f} ({ratio_whole:.3f}x), startup {min(startup[name]):.1f}s")
        print("arrays of every Ray store equal the local store's bit for bit")
        if args.split:
            paths = [r.path for r in list_images(source, limit=n)]
            inside = max(split_pipeline(paths, bs, separate_decode=False) for _ in range(args.rounds))
            separate = max(split_pipeline(paths, bs, separate_decode=True) for _ in range(args.rounds))
            print(f"\nstage split, bare Ray Data, after the first shard: decode inside {CPUS} model actors {inside:.1f} "
                  f"img/s; 1 CPU of decode tasks + 1 model actor {separate:.1f} img/s ({inside / separate:.2f}x)")
    print(f"\nbench wall time {time.perf_counter() - start:.0f}s")


if __name__ == "__main__":
    main()
