"""End-to-end `actdb ingest` throughput and memory, as ratios against baselines run in the same process.

Absolute images/s drift with whatever else runs on the machine, so every figure printed
is a ratio of two measurements taken in this run, on the same model, images and batch
size. Measurements are interleaved round by round and the best round of each is kept.

Per model (vgg19 -> block5_conv4, mobilenet_v2 -> out_relu):
  (a) ingest / bare forward pass: `actdb.ingest.run.ingest` into a fresh store (its
      summary's images_per_s: the pipeline loop incl. tracing, writer and final commit;
      not model build or Python start-up) against a tf.function of the same cut model +
      spatial mean on one fixed in-memory batch of decoded photos, called repeatedly;
  (b) ingest / a hand-written tf.data pipeline (decode_jpeg, resize + centre crop, batch,
      prefetch, same cut model + mean, results kept in memory);
  (c) ingest / the notebooks' per-image loop (keras load_img -> img_to_array ->
      preprocess_input -> model.predict(x[None]) -> np.mean), on a subset;
  (d) peak RSS of `python -m actdb ingest` on 1x and 4x the images, each in a fresh
      subprocess (per-child rusage from os.wait4);
  (e) --precision bfloat16 against float32 on the same images: ingest and bare-forward
      speed-ups, and how far the stored vectors move.
Then efficientnet_lite0 (real ImageNet weights, shipped offline): float32 vs bfloat16
top-1 agreement of `--predictions` on the real-photo views, and the stored-vector drift.

Images are JPEG views of the real photos in actdb.photos (random crops, flips, colour
jitter; 256 px shorter side), so decode cost is that of small JPEGs. VGG19 and
MobileNetV2 use seeded random weights (`--weights random`): no ImageNet download is
possible offline, and speed does not depend on weight values.

Run:  python bench/ingest.py [--model vgg19|mobilenet_v2|all] [--images N] [--batch-size 32]
                             [--precision float32|bfloat16] [--rounds 2] [--no-precision-check]
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from actdb.tfquiet import import_tensorflow

tf = import_tensorflow()

import keras  # noqa: E402

from actdb import images  # noqa: E402
from actdb.database import open as open_store  # noqa: E402
from actdb.ingest import pipeline  # noqa: E402
from actdb.ingest.engines import local as local_engine  # noqa: E402
from actdb.ingest.run import IngestOptions, ingest  # noqa: E402
from actdb.ingest.sources import list_images  # noqa: E402
from actdb.models import load_model  # noqa: E402
from actdb.models import preprocess as preprocessing  # noqa: E402
from actdb.photos import available_photos, write_augmented_views  # noqa: E402

# model -> (layer, default images, default images of the memory check (1x; 4x is also run))
MODELS = {
    "vgg19": ("block5_conv4", 160, 48),
    "mobilenet_v2": ("out_relu", 600, 600),
}
SEED_PREPROCESS = {  # what the notebooks called on one image
    "vgg19": keras.applications.vgg19.preprocess_input,
    "mobilenet_v2": keras.applications.mobilenet_v2.preprocess_input,
}
# (metric key, model) -> minimum ratio; the per-image targets hold for float32 on this 2-core CPU
TARGETS = {
    ("a", "vgg19"): 0.9,
    ("b", "vgg19"): 1.0, ("b", "mobilenet_v2"): 1.0,
    ("c", "vgg19"): 2.2, ("c", "mobilenet_v2"): 6.0,
}
MEMORY_GROWTH_LIMIT = 1.10  # 4x the images may cost at most 10% more peak RSS
LITE = ("efficientnet_lite0", "top_activation")
WEIGHT_SEED = 0
SIZE = 224


def cpu_description() -> str:
    """CPU model and whether it has the bfloat16 instructions mixed_bfloat16 can use."""
    model, flags = "unknown CPU", set()
    with open("/proc/cpuinfo") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                model = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
                break
    bf16 = [flag for flag in ("avx512_bf16", "amx_bf16", "amx_tile") if flag in flags]
    return f"{model}, {CPUS} CPUs, bfloat16 instructions: {', '.join(bf16) or 'none'}"


def other(precision: str) -> str:
    return "bfloat16" if precision == "float32" else "float32"


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
CPUS = os.cpu_count() or 1


def snapshot() -> tuple[float, float, float]:
    """(wall s, this process's CPU s over all its threads, busy CPU s of the whole machine incl. steal)."""
    with open("/proc/stat") as f:
        ticks = [int(x) for x in f.readline().split()[1:9]]
    busy = (sum(ticks) - ticks[3] - ticks[4]) / CLOCK_TICKS  # all but idle and iowait
    times = os.times()
    return time.perf_counter(), times.user + times.system, busy


@dataclass
class Sample:
    """One timed run: images, wall seconds, own CPU seconds, CPU seconds other processes used meanwhile."""

    images: int
    wall: float
    cpu: float
    others: float
    window: float | None = None  # seconds the CPU figures cover, when not `wall`

    @classmethod
    def between(cls, images: int, start, stop) -> "Sample":
        wall, cpu, busy = (b - a for a, b in zip(start, stop))
        return cls(images, wall, cpu, max(0.0, busy - cpu))

    @property
    def ips(self) -> float:
        return self.images / self.wall

    @property
    def cpu_per_image(self) -> float:
        return self.cpu / self.images

    @property
    def other_cores(self) -> float:
        return self.others / (self.window or self.wall)

    @property
    def utilisation(self) -> float:
        """Share of the CPU time other processes left free that this run used (1: no idle stalls)."""
        return self.cpu / max(1e-9, (self.window or self.wall) * CPUS - self.others)


class Meter:
    def __enter__(self):
        self.start = snapshot()
        self.sample = None
        return self

    def stop(self, images: int) -> Sample:
        self.sample = Sample.between(images, self.start, snapshot())
        return self.sample

    def __exit__(self, *exc):
        return False


@dataclass
class Best:
    """Every round of one measurement; the best wall rate and the least CPU per image are kept."""

    samples: list = field(default_factory=list)

    def add(self, sample: Sample) -> Sample:
        self.samples.append(sample)
        return sample

    @property
    def ips(self) -> float:
        return max(s.ips for s in self.samples)

    @property
    def cpu_per_image(self) -> float:
        return min(s.cpu_per_image for s in self.samples)

    def __str__(self) -> str:
        rounds = ", ".join(f"{s.ips:.2f}" for s in self.samples)
        load = ", ".join(f"{s.other_cores:.1f}" for s in self.samples)
        util = ", ".join(f"{s.utilisation:.2f}" for s in self.samples)
        return (f"{self.ips:8.2f} img/s (rounds {rounds}); CPU {self.cpu_per_image * 1000:7.1f} ms/img; "
                f"other processes {load} cores; used {util} of the CPU they left")


# ---------------------------------------------------------------- images


def make_views(root: Path, n: int) -> Path:
    """A folder of >= n real-photo JPEG views (ImageNet layout); ingest takes the first n with --limit."""
    folder = root / f"views_{n}"
    if not folder.exists():
        per_photo = math.ceil(n / len(available_photos()))
        write_augmented_views(folder, per_photo, seed=0, size=256)
    return folder


def listed_paths(folder: Path, n: int) -> list[str]:
    """The very files, in the very order, that `actdb ingest SRC --limit n` processes."""
    return [r.path for r in list_images(folder, limit=n)]


# ---------------------------------------------------------------- baselines


def build_cut(name: str, layer: str, precision: str):
    loaded = load_model(name, f"random:{WEIGHT_SEED}", precision)
    model = loaded.keras_model
    cut = keras.Model(model.inputs, model.get_layer(layer).output)
    return loaded, cut


def mean_forward(cut, preprocess):
    """Same graph as ingest's: preprocess, cut model, float32 spatial mean."""

    @tf.function(input_signature=[tf.TensorSpec([None, SIZE, SIZE, 3], tf.float32)])
    def forward(pixels):
        return tf.reduce_mean(tf.cast(cut(preprocess(pixels), training=False), tf.float32), axis=[1, 2])

    return forward


def bare_forward(forward, batch: tf.Tensor, calls: int) -> Sample:
    with Meter() as meter:
        for _ in range(calls):
            forward(batch).numpy()
        return meter.stop(calls * int(batch.shape[0]))


def hand_dataset(paths: list[str], batch_size: int) -> tf.data.Dataset:
    """What one writes by hand: decode_jpeg, shorter side to 224 + centre crop, batch, prefetch."""

    def load(path):
        image = tf.io.decode_jpeg(tf.io.read_file(path), channels=3)
        hw = tf.cast(tf.shape(image)[:2], tf.float32)
        new_hw = tf.maximum(tf.cast(tf.round(hw * (SIZE / tf.reduce_min(hw))), tf.int32), SIZE)
        image = tf.image.resize(image, new_hw, antialias=True)
        return tf.image.resize_with_crop_or_pad(image, SIZE, SIZE)

    return (tf.data.Dataset.from_tensor_slices(paths)
            .map(load, num_parallel_calls=tf.data.AUTOTUNE)
            .batch(batch_size)
            .prefetch(tf.data.AUTOTUNE))


def hand_pipeline(cut, preprocess, paths: list[str], batch_size: int) -> tuple[Sample, float, float]:
    """(the loop's sample, first-batch extra seconds (tracing), iterator teardown seconds).

    A fresh tf.function each time, as ingest builds a fresh Extractor: both pay one trace.
    The sample stops when the last result is in memory; teardown is reported apart.
    """
    forward = mean_forward(cut, preprocess)
    results, batch_seconds = [], []
    with Meter() as meter:
        iterator = iter(hand_dataset(paths, batch_size))
        last = time.perf_counter()
        for pixels in iterator:
            results.append(forward(pixels).numpy())
            now = time.perf_counter()
            batch_seconds.append(now - last)
            last = now
        sample = meter.stop(len(paths))
    del iterator
    teardown = time.perf_counter() - last
    assert sum(len(r) for r in results) == len(paths)
    steady = float(np.median(batch_seconds[1:])) if len(batch_seconds) > 1 else batch_seconds[0]
    return sample, batch_seconds[0] - steady, teardown


def seeds_loop(cut, name: str, paths: list[str]) -> Sample:
    """The notebooks' code, one image at a time (the first call, untimed, builds predict's function)."""
    preprocess_input = SEED_PREPROCESS[name]

    def one(path):
        image = keras.utils.load_img(path, target_size=(SIZE, SIZE))
        x = preprocess_input(keras.utils.img_to_array(image))
        return np.mean(cut.predict(x[None], verbose=0), axis=(1, 2))

    one(paths[0])
    with Meter() as meter:
        rows = [one(p) for p in paths]
        sample = meter.stop(len(paths))
    assert len(rows) == len(paths)
    return sample


def cut_only(cut, preprocess):
    """The forward pass without the spatial mean: the reduction's cost is the difference."""

    @tf.function(input_signature=[tf.TensorSpec([None, SIZE, SIZE, 3], tf.float32)])
    def forward(pixels):
        return tf.cast(cut(preprocess(pixels), training=False), tf.float32)

    return forward


def hand_loop_on_actdb_reader(forward, paths: list[str], batch_size: int) -> Sample:
    """The hand pipeline's loop over actdb's own reader: isolates the reader from the rest of ingest."""
    ids = np.arange(len(paths), dtype=np.int64)
    with Meter() as meter:
        n = 0
        for batch in pipeline.image_dataset(ids, paths, SIZE, "center-crop", batch_size):
            forward(batch["pixels"]).numpy()
            n += int(batch["id"].shape[0])
        return meter.stop(n)


def write_only(root: Path, channels: int, n: int, batch_size: int) -> Sample:
    """actdb's writer (StoreWriter: Zarr chunks, digests, catalog commits) fed ready rows of one
    layer's width, as the forward pass hands them over."""
    from actdb.ingest import writer
    from actdb.store import arrays
    from actdb.store.catalog import Catalog

    store = Path(tempfile.mkdtemp(prefix="write_", dir=root))
    catalog = Catalog(store)
    catalog.create()
    with catalog.write() as con:
        con.execute("INSERT INTO images (id, path) SELECT i, 'p' || i FROM range(?) t(i)", [n])
        con.execute("INSERT INTO models VALUES (1, 'bench', 'none', NULL, 'none', 224, NULL, NULL)")
        con.execute("INSERT INTO arrays VALUES (1, 1, 'layer', 'mean', ?, 'float32', 'float32', 'center-crop', 'b')",
                    [channels])
    run_id = writer.start_run(catalog, {})
    target = writer.ArrayTarget(1, "layer", arrays.create(store, "b", n, channels, "float32", {}), np.ones(n, bool))
    rows = np.random.default_rng(0).random((batch_size, channels), dtype=np.float32)
    with Meter() as meter:
        sink = writer.StoreWriter(catalog, run_id, [target], 1, predictions=False)
        for start in range(0, n, batch_size):
            ids = np.arange(start, min(n, start + batch_size))
            sink.put(writer.Batch(ids, np.zeros((len(ids), 8), np.uint8), np.full(len(ids), 256),
                                  np.full(len(ids), 256), {"layer": rows[: len(ids)]}))
        sink.close()
        sample = meter.stop(n)
    shutil.rmtree(store)
    return sample


def decode_only(paths: list[str], batch_size: int) -> Sample:
    """actdb's own tf.data pipeline (read, decode, resize, batch) with no model."""
    ids = np.arange(len(paths), dtype=np.int64)
    with Meter() as meter:
        n = sum(int(b["id"].shape[0]) for b in pipeline.image_dataset(ids, paths, SIZE, "center-crop", batch_size))
        sample = meter.stop(n)
    assert n == len(paths)
    return sample


# ---------------------------------------------------------------- actdb


@contextmanager
def ingest_loop_meter():
    """Snapshots around ingest's timed loop, without touching the library: the local engine calls
    pipeline.image_dataset just before its clock starts and writer.finish_run right after it stops."""
    marks = {}
    make_dataset, finish_run = local_engine.pipeline.image_dataset, local_engine.writer.finish_run

    def dataset_hook(*args, **kwargs):
        marks["start"] = snapshot()
        return make_dataset(*args, **kwargs)

    def finish_hook(*args, **kwargs):
        marks.setdefault("stop", snapshot())
        return finish_run(*args, **kwargs)

    local_engine.pipeline.image_dataset, local_engine.writer.finish_run = dataset_hook, finish_hook
    try:
        yield marks
    finally:
        local_engine.pipeline.image_dataset, local_engine.writer.finish_run = make_dataset, finish_run


def ingest_once(root: Path, source: Path, n: int, name: str, layer: str, precision: str, batch_size: int,
                weights: str, predictions: bool = False) -> tuple[Sample, Path]:
    """One library ingest into a fresh store. The sample's wall time is the summary's
    (n / images_per_s); its CPU figures come from the same loop window."""
    store = Path(tempfile.mkdtemp(prefix="store_", dir=root))
    options = IngestOptions(model=name, weights=weights, layers=layer, limit=n, batch_size=batch_size,
                            precision=precision, predictions=predictions)
    with ingest_loop_meter() as marks:
        summary = ingest(store, source, options, progress=False)
    assert summary.ingested == n and summary.failed == 0, summary
    sample = Sample.between(n, marks["start"], marks["stop"])
    sample.window, sample.wall = sample.wall, n / summary.images_per_s
    return sample, store


LAUNCHER = """import os, subprocess, sys
child = subprocess.Popen(sys.argv[2:])
_, status, usage = os.wait4(child.pid, 0)
with open(sys.argv[1], "w") as f:
    f.write(str(usage.ru_maxrss))
sys.exit(os.waitstatus_to_exitcode(status))
"""


def peak_rss_mb(args: list[str], workdir: Path) -> tuple[float, float, dict | None]:
    """(max RSS MB, wall seconds, --json summary) of one fresh child process.

    Through a small launcher: a child spawned straight from this (large) process would
    report this process's peak, since Linux carries the max RSS across vfork + exec.
    """
    out_path = workdir / f"child_{time.monotonic_ns()}.out"
    err_path, rss_path = out_path.with_suffix(".err"), out_path.with_suffix(".rss")
    start = time.perf_counter()
    with open(out_path, "w") as out, open(err_path, "w") as err:
        code = subprocess.call([sys.executable, "-c", LAUNCHER, str(rss_path), *args], stdout=out, stderr=err)
    wall = time.perf_counter() - start
    if code != 0:
        raise RuntimeError(f"{' '.join(args)} failed ({code}): {err_path.read_text()[-2000:]}")
    text = out_path.read_text().strip()
    return int(rss_path.read_text()) / 1024, wall, (json.loads(text) if text else None)


def cli_ingest_args(store: Path, source: Path, n: int, name: str, layer: str, precision: str, batch_size: int):
    return [sys.executable, "-m", "actdb", "--store", str(store), "ingest", str(source), "--model", name,
            "--weights", f"random:{WEIGHT_SEED}", "--layers", layer, "--limit", str(n),
            "--batch-size", str(batch_size), "--precision", precision, "--quiet", "--json"]


BUILD_ONLY = """
import sys
from actdb.tfquiet import import_tensorflow
import_tensorflow()
from actdb.models import forward, load_model
loaded = load_model(sys.argv[1], sys.argv[2], sys.argv[3])
forward.Extractor(loaded, [sys.argv[4]], "mean", 32)
"""


def stored(store: Path, name: str, layer: str) -> tuple[list[str], np.ndarray]:
    db = open_store(store)
    ids, values = db.activations(name, layer, return_ids=True)
    paths = db.images().set_index("id").loc[ids, "path"].tolist()
    return paths, values


def drift(store_a: Path, store_b: Path, name: str, layer: str) -> tuple[float, float, float]:
    """Of a against reference b: max over rows ||a-b||/||b||, max|a-b|/max|b|, median row ||a-b||/||b||."""
    paths_a, a = stored(store_a, name, layer)
    paths_b, b = stored(store_b, name, layer)
    assert paths_a == paths_b and len(a) > 0
    rows = np.linalg.norm(a - b, axis=1) / np.maximum(np.linalg.norm(b, axis=1), 1e-30)
    return float(rows.max()), float(np.abs(a - b).max() / np.abs(b).max()), float(np.median(rows))


def top1(store: Path) -> dict[str, tuple[int, int | None]]:
    """path -> (predicted class index, ImageNet label index)."""
    frame = open_store(store).sql(
        "SELECT i.path, p.class_index, i.class_index AS label FROM predictions p "
        "JOIN images i ON i.id = p.image_id WHERE p.rank = 1")
    return {r.path: (int(r.class_index), None if r.label is None else int(r.label)) for r in frame.itertuples()}


# ---------------------------------------------------------------- sections


def ratios(ours: Best, base: Best) -> tuple[float, float]:
    """(wall: ours' best images/s over base's, CPU: base's CPU per image over ours')."""
    return ours.ips / base.ips, base.cpu_per_image / ours.cpu_per_image


def section(name: str, args, root: Path, table: list) -> None:
    layer, default_images, default_memory = MODELS[name]
    n = args.images or default_images
    n_memory = args.memory_images or default_memory
    bs = args.batch_size
    precision, alt = args.precision, other(args.precision)
    weights = f"random:{WEIGHT_SEED}"
    print(f"\n=== {name} -> {layer}: {n} images, batch {bs}, precision {precision}, "
          f"weights random (seed {WEIGHT_SEED}; speed does not depend on weight values) ===", flush=True)
    source = make_views(root, n)
    paths = listed_paths(source, n)
    seed_paths = paths[: args.seed_images]

    loaded, cut = build_cut(name, layer, precision)
    preprocess = preprocessing.get(loaded.preprocess)
    batch = tf.constant(np.stack([images.pixels_of_file(p, SIZE, "center-crop") for p in (paths * bs)[:bs]]))
    forward = mean_forward(cut, preprocess)
    forward(batch).numpy()  # warm-up: trace and oneDNN primitives
    bare_calls = max(2, round(n / bs / 4))  # a quarter of the images, at least 2 batches
    if args.precision_check:
        _, alt_cut = build_cut(name, layer, alt)
        alt_forward = mean_forward(alt_cut, preprocess)
        alt_forward(batch).numpy()

    bare, hand, seeds, ours, alt_ingest, alt_bare = Best(), Best(), Best(), Best(), Best(), Best()
    trace_extra, teardowns = [], []
    stores = {}
    for r in range(args.rounds):  # interleaved, so that drift hits every measurement alike
        bare.add(bare_forward(forward, batch, bare_calls))
        sample, stores[precision] = ingest_once(root, source, n, name, layer, precision, bs, weights)
        ours.add(sample)
        sample, extra, teardown = hand_pipeline(cut, preprocess, paths, bs)
        hand.add(sample)
        trace_extra.append(extra)
        teardowns.append(teardown)
        if r == 0:
            seeds.add(seeds_loop(cut, name, seed_paths))
        if args.precision_check:
            sample, stores[alt] = ingest_once(root, source, n, name, layer, alt, bs, weights)
            alt_ingest.add(sample)
            alt_bare.add(bare_forward(alt_forward, batch, bare_calls))
        print(f"  round {r + 1}/{args.rounds} done", flush=True)
    decode = Best()
    decode.add(decode_only(paths, bs))
    if args.split:
        split_batch(name, layer, root, cut, preprocess, forward, batch, bare_calls, paths, bs, decode, ours, hand)

    print(f"bare forward ({bare_calls} x fixed batch)   {bare}")
    print(f"hand tf.data pipeline            {hand}")
    print(f"  (its first batch {max(trace_extra):+.1f}s over the others: trace; "
          f"AUTOTUNE iterator teardown {max(teardowns):.2f}s, not counted)")
    print(f"notebooks' per-image loop ({len(seed_paths)} img)  {seeds}")
    print(f"actdb ingest (library call)      {ours}")
    print(f"  actdb decode+resize, no model  {decode}")
    cap = 1 / (1 / bare.ips + 1 / decode.ips)
    cap_cpu = bare.cpu_per_image / (bare.cpu_per_image + decode.cpu_per_image)
    print(f"  decode shares the CPU with the model: ingest can reach ~{cap / bare.ips:.3f} of bare (wall), "
          f"~{cap_cpu:.3f} (CPU)")
    print(f"  ingest CPU per image above bare forward + decode: "
          f"{(ours.cpu_per_image - bare.cpu_per_image - decode.cpu_per_image) * 1000:+.1f} ms "
          f"({math.ceil(n / bs)} batches)")
    results = {"a": ratios(ours, bare), "b": ratios(ours, hand), "c": ratios(ours, seeds)}
    labels = {"a": "ingest / bare forward", "b": "ingest / hand tf.data", "c": f"ingest / notebooks' loop [{precision}]"}
    for key, (wall, cpu) in results.items():
        target = TARGETS.get((key, name)) if key != "c" or precision == "float32" else None
        shown = f"target >= {target}" if target else "no target"
        print(f"({key}) {labels[key]:<34} wall {wall:6.3f}   CPU {cpu:6.3f}   {shown}")
        table.append((name, f"({key}) {labels[key]}", wall, cpu, target))

    if args.precision_check:
        f32, b16 = (ours, alt_ingest) if precision == "float32" else (alt_ingest, ours)
        f32_bare, b16_bare = (bare, alt_bare) if precision == "float32" else (alt_bare, bare)
        row_max, elem, row_median = drift(stores["bfloat16"], stores["float32"], name, layer)
        print(f"bfloat16 ingest                  {b16}")
        print(f"bfloat16 bare forward            {b16_bare}")
        speed, speed_cpu = ratios(b16, f32)
        bare_speed, bare_speed_cpu = ratios(b16_bare, f32_bare)
        print(f"(e) bfloat16 / float32 ingest    wall {speed:6.3f}   CPU {speed_cpu:6.3f}")
        print(f"    bfloat16 / float32 bare      wall {bare_speed:6.3f}   CPU {bare_speed_cpu:6.3f}")
        print(f"    stored {layer}, bf16 vs f32: max over rows ||a-b||/||b|| = {row_max:.2e} "
              f"(median {row_median:.2e}); max|a-b| / max|b| = {elem:.2e}")
        table.append((name, "(e) bfloat16 / float32 ingest speed", speed, speed_cpu, None))
        table.append((name, "(e) bfloat16 / float32 bare speed", bare_speed, bare_speed_cpu, None))
        table.append((name, "(e) bf16 stored: max row ||a-b||/||b||", row_max, None, None))

    if args.memory:
        rss = {}
        for label, count in (("1x", n_memory), ("4x", 4 * n_memory)):
            src = make_views(root, count)
            store = Path(tempfile.mkdtemp(prefix="mem_", dir=root))
            mb, wall, summary = peak_rss_mb(cli_ingest_args(store, src, count, name, layer, precision, bs), root)
            rss[label] = mb
            print(f"(d) peak RSS, `python -m actdb ingest` of {count:5d} images ({label}): {mb:8.1f} MB "
                  f"(child wall {wall:.0f}s, {summary['images_per_s']:.1f} img/s)", flush=True)
            shutil.rmtree(store)
        mb, _, _ = peak_rss_mb([sys.executable, "-c", BUILD_ONLY, name, weights, precision, layer], root)
        print(f"    peak RSS of import + model build + Extractor, no ingest:    {mb:8.1f} MB")
        ratio = rss["4x"] / rss["1x"]
        print(f"(d) peak RSS 4x / 1x             {ratio:6.3f}   target <= {MEMORY_GROWTH_LIMIT} (streaming)")
        table.append((name, f"(d) peak RSS 4x / 1x ({n_memory} / {4 * n_memory} img)", ratio, None,
                      -MEMORY_GROWTH_LIMIT))
    for store in stores.values():
        shutil.rmtree(store, ignore_errors=True)


def split_batch(name, layer, root, cut, preprocess, forward, batch, calls, paths, bs, decode, ours, hand):
    """One batch's time split into decode, forward, reduction and write (each measured alone,
    best of 2), against the batch time of ingest and of the hand pipeline."""
    model_only, with_mean, reader_loop, write = Best(), Best(), Best(), Best()
    no_mean = cut_only(cut, preprocess)
    no_mean(batch).numpy()
    channels = int(forward(batch).shape[-1])
    for _ in range(2):
        model_only.add(bare_forward(no_mean, batch, calls))
        with_mean.add(bare_forward(forward, batch, calls))  # interleaved with it: the difference is the mean
        reader_loop.add(hand_loop_on_actdb_reader(forward, paths, bs))
        write.add(write_only(root, channels, len(paths), bs))
    ms = {"decode (actdb reader, no model)": bs / decode.ips, "forward (cut model, no mean)": bs / model_only.ips,
          "reduction (mean; forward with it - without)": bs / with_mean.ips - bs / model_only.ips,
          "write (StoreWriter, ready rows)": bs / write.ips}
    print(f"  one batch of {bs} ({name} -> {layer}), each part alone, ms:")
    for part, seconds in ms.items():
        print(f"    {part:<46} {1000 * seconds:8.1f}")
    print(f"    {'sum (if nothing overlapped)':<46} {1000 * sum(ms.values()):8.1f}")
    for label, best in (("actdb ingest", ours), ("hand tf.data pipeline", hand),
                        ("hand loop on actdb's reader", reader_loop)):
        print(f"    {label + ', per batch':<46} {1000 * bs / best.ips:8.1f}   ({best.ips:.1f} img/s)")


def lite_section(args, root: Path, table: list) -> None:
    name, layer = LITE
    n = args.lite_images
    print(f"\n=== {name} -> {layer} + --predictions: {n} real-photo views, batch {args.batch_size}, "
          f"real ImageNet weights: bfloat16 against float32 ===", flush=True)
    source = make_views(root, n)
    speed, stores = {"float32": Best(), "bfloat16": Best()}, {}
    for _ in range(args.rounds):
        for precision in ("float32", "bfloat16"):
            shutil.rmtree(stores.get(precision, root / "none"), ignore_errors=True)
            sample, stores[precision] = ingest_once(root, source, n, name, layer, precision, args.batch_size,
                                                    "imagenet", predictions=True)
            speed[precision].add(sample)
    f32, b16 = top1(stores["float32"]), top1(stores["bfloat16"])
    agree = float(np.mean([f32[p][0] == b16[p][0] for p in f32]))
    accuracy = {k: np.mean([pred == label for pred, label in v.values()]) for k, v in (("float32", f32),
                                                                                     ("bfloat16", b16))}
    row_max, elem, row_median = drift(stores["bfloat16"], stores["float32"], name, layer)
    wall, cpu = ratios(speed["bfloat16"], speed["float32"])
    print(f"top-1 agreement bfloat16 vs float32: {agree:.4f} of {len(f32)} images "
          f"(top-1 = the photo's label: float32 {accuracy['float32']:.3f}, bfloat16 {accuracy['bfloat16']:.3f})")
    print(f"stored {layer}, bf16 vs f32: max over rows ||a-b||/||b|| = {row_max:.2e} (median {row_median:.2e}); "
          f"max|a-b| / max|b| = {elem:.2e}")
    print(f"float32 ingest                   {speed['float32']}")
    print(f"bfloat16 ingest                  {speed['bfloat16']}")
    print(f"bfloat16 / float32 ingest speed  wall {wall:6.3f}   CPU {cpu:6.3f}")
    table.append((name, "(e) bf16 top-1 agreement", agree, None, None))
    table.append((name, "(e) bf16 stored: max row ||a-b||/||b||", row_max, None, None))
    table.append((name, "(e) bfloat16 / float32 ingest speed", wall, cpu, None))
    for store in stores.values():
        shutil.rmtree(store, ignore_errors=True)


def print_table(table: list) -> None:
    print("\n=== summary: ratios measured within this run (wall: best images/s; CPU: least CPU s per image) ===")
    print(f"{'model':<19}{'metric':<44}{'wall':>8}{'CPU':>8}  target (on wall)")
    for model, metric, value, cpu, target in table:
        if target is None:
            verdict = ""
        elif target < 0:  # an upper bound
            verdict = f"<= {-target:<5} {'ok' if value <= -target else 'MISSED'}"
        else:
            verdict = f">= {target:<5} {'ok' if value >= target else 'MISSED'}"
        cpu_text = f"{cpu:8.3f}" if cpu is not None else " " * 8
        print(f"{model:<19}{metric:<44}{value:8.3f}{cpu_text}  {verdict}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=[*MODELS, "all"], default="all")
    parser.add_argument("--images", type=int, help="images per timing run (default: 160 vgg19, 600 mobilenet_v2)")
    parser.add_argument("--batch-size", type=int, default=32, help="default: what actdb picks on CPU")
    parser.add_argument("--precision", choices=["float32", "bfloat16"], default="float32")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved rounds; the best of each is kept")
    parser.add_argument("--seed-images", type=int, default=40, help="images timed through the per-image loop")
    parser.add_argument("--memory-images", type=int, help="1x of the memory check (default: 48 vgg19, 600 mobilenet_v2)")
    parser.add_argument("--lite-images", type=int, default=240, help="views for the efficientnet_lite0 top-1 check")
    parser.add_argument("--no-memory", dest="memory", action="store_false")
    parser.add_argument("--no-precision-check", dest="precision_check", action="store_false")
    parser.add_argument("--no-split", dest="split", action="store_false",
                        help="skip splitting one batch into decode, forward, reduction and write")
    args = parser.parse_args()

    start = time.perf_counter()
    print(f"TensorFlow {tf.__version__}, Keras {keras.__version__}; {cpu_description()}; load average "
          f"{os.getloadavg()[0]:.1f} at start; {len(available_photos())} real photos -> JPEG views "
          f"(256 px shorter side)")
    print("wall: images/s (the figure the targets are on); CPU: CPU seconds per image of this process, "
          "blind to idle stalls but not to other processes' load, which drifts on a shared machine")
    table: list = []
    with tempfile.TemporaryDirectory(prefix="actdb_bench_") as tmp:
        root = Path(tmp)
        for name in (MODELS if args.model == "all" else [args.model]):
            section(name, args, root, table)
        if args.precision_check:
            lite_section(args, root, table)
    print_table(table)
    print(f"\nbench wall time {time.perf_counter() - start:.0f}s")


if __name__ == "__main__":
    main()
