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
  (c) ingest / the seeds' per-image loop (keras load_img -> img_to_array ->
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
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from actdb.tfquiet import import_tensorflow

tf = import_tensorflow()

import keras  # noqa: E402

from actdb.ingest import pipeline  # noqa: E402
from actdb.ingest.run import IngestOptions, ingest, load_model  # noqa: E402
from actdb.ingest.sources import list_images  # noqa: E402
from actdb.models import preprocess as preprocessing  # noqa: E402
from actdb.photos import available_photos, write_augmented_views  # noqa: E402
from actdb.store.db import open as open_store  # noqa: E402

# model -> (layer, default images, default images of the memory check (1x; 4x is also run))
MODELS = {
    "vgg19": ("block5_conv4", 160, 48),
    "mobilenet_v2": ("out_relu", 600, 600),
}
SEED_PREPROCESS = {  # what the seeds called on one image
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


def other(precision: str) -> str:
    return "bfloat16" if precision == "float32" else "float32"


@dataclass
class Best:
    """Best (highest) images/s over rounds, with every round kept for the printout."""

    values: list = field(default_factory=list)

    def add(self, value: float) -> None:
        self.values.append(value)

    @property
    def best(self) -> float:
        return max(self.values)

    def __str__(self) -> str:
        rounds = ", ".join(f"{v:.2f}" for v in self.values)
        return f"{self.best:8.2f} img/s (rounds: {rounds})"


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


def bare_forward(forward, batch: tf.Tensor, calls: int) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        forward(batch).numpy()
    return calls * int(batch.shape[0]) / (time.perf_counter() - start)


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


def hand_pipeline(cut, preprocess, paths: list[str], batch_size: int) -> tuple[float, float, float]:
    """(images/s of the loop, first-batch extra seconds (tracing), iterator teardown seconds).

    A fresh tf.function each time, as ingest builds a fresh Extractor: both pay one trace.
    The rate excludes teardown (reported apart): the stronger baseline.
    """
    forward = mean_forward(cut, preprocess)
    results, batch_seconds = [], []
    start = time.perf_counter()
    iterator = iter(hand_dataset(paths, batch_size))
    last = start
    for pixels in iterator:
        results.append(forward(pixels).numpy())
        now = time.perf_counter()
        batch_seconds.append(now - last)
        last = now
    loop = time.perf_counter() - start
    del iterator
    teardown = time.perf_counter() - last
    assert sum(len(r) for r in results) == len(paths)
    steady = float(np.median(batch_seconds[1:])) if len(batch_seconds) > 1 else batch_seconds[0]
    return len(paths) / loop, batch_seconds[0] - steady, teardown


def seeds_loop(cut, name: str, paths: list[str]) -> float:
    """The seeds' code, one image at a time (the first call, untimed, builds predict's function)."""
    preprocess_input = SEED_PREPROCESS[name]

    def one(path):
        image = keras.utils.load_img(path, target_size=(SIZE, SIZE))
        x = preprocess_input(keras.utils.img_to_array(image))
        return np.mean(cut.predict(x[None], verbose=0), axis=(1, 2))

    one(paths[0])
    start = time.perf_counter()
    rows = [one(p) for p in paths]
    assert len(rows) == len(paths)
    return len(paths) / (time.perf_counter() - start)


def decode_only(paths: list[str], batch_size: int) -> float:
    """images/s of actdb's own tf.data pipeline (read, decode, resize, batch) with no model."""
    ids = np.arange(len(paths), dtype=np.int64)
    start = time.perf_counter()
    n = sum(int(b["id"].shape[0]) for b in pipeline.image_dataset(ids, paths, SIZE, "center-crop", batch_size))
    assert n == len(paths)
    return n / (time.perf_counter() - start)


# ---------------------------------------------------------------- actdb


def ingest_once(root: Path, source: Path, n: int, name: str, layer: str, precision: str, batch_size: int,
                weights: str, predictions: bool = False) -> tuple[float, Path]:
    store = Path(tempfile.mkdtemp(prefix="store_", dir=root))
    options = IngestOptions(model=name, weights=weights, layers=layer, limit=n, batch_size=batch_size,
                            precision=precision, predictions=predictions)
    summary = ingest(store, source, options, progress=False)
    assert summary.ingested == n and summary.failed == 0, summary
    return summary.images_per_s, store


def peak_rss_mb(args: list[str], workdir: Path) -> tuple[float, float, dict | None]:
    """(max RSS MB, wall seconds, --json summary) of one fresh child process."""
    out_path = workdir / f"child_{time.monotonic_ns()}.out"
    err_path = out_path.with_suffix(".err")
    start = time.perf_counter()
    with open(out_path, "w") as out, open(err_path, "w") as err:
        proc = subprocess.Popen(args, stdout=out, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)  # this child's own rusage, unlike RUSAGE_CHILDREN
        proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed ({proc.returncode}): {err_path.read_text()[-2000:]}")
    text = out_path.read_text().strip()
    return usage.ru_maxrss / 1024, wall, (json.loads(text) if text else None)


def cli_ingest_args(store: Path, source: Path, n: int, name: str, layer: str, precision: str, batch_size: int):
    return [sys.executable, "-m", "actdb", "--store", str(store), "ingest", str(source), "--model", name,
            "--weights", f"random:{WEIGHT_SEED}", "--layers", layer, "--limit", str(n),
            "--batch-size", str(batch_size), "--precision", precision, "--quiet", "--json"]


BUILD_ONLY = """
import sys
from actdb.tfquiet import import_tensorflow
import_tensorflow()
from actdb.ingest import pipeline
from actdb.ingest.run import load_model
loaded = load_model(sys.argv[1], sys.argv[2], sys.argv[3])
pipeline.Extractor(loaded, [sys.argv[4]], "mean", 32)
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
    batch = tf.constant(np.stack([pipeline.pixels_of_file(p, SIZE, "center-crop") for p in (paths * bs)[:bs]]))
    forward = mean_forward(cut, preprocess)
    forward(batch).numpy()  # warm-up: trace and oneDNN primitives
    bare_calls = max(1, round(n / bs / 4))
    if args.precision_check:
        _, alt_cut = build_cut(name, layer, alt)
        alt_forward = mean_forward(alt_cut, preprocess)
        alt_forward(batch).numpy()

    bare, hand, ours, alt_ingest, alt_bare = Best(), Best(), Best(), Best(), Best()
    trace_extra, teardowns = [], []
    stores = {}
    seeds = None
    for r in range(args.rounds):
        bare.add(bare_forward(forward, batch, bare_calls))
        if args.precision_check:
            alt_bare.add(bare_forward(alt_forward, batch, bare_calls))
        ips, extra, teardown = hand_pipeline(cut, preprocess, paths, bs)
        hand.add(ips)
        trace_extra.append(extra)
        teardowns.append(teardown)
        ips, stores[precision] = ingest_once(root, source, n, name, layer, precision, bs, weights)
        ours.add(ips)
        if args.precision_check:
            ips, stores[alt] = ingest_once(root, source, n, name, layer, alt, bs, weights)
            alt_ingest.add(ips)
        if r == 0:
            seeds = seeds_loop(cut, name, seed_paths)
        print(f"  round {r + 1}/{args.rounds} done", flush=True)
    decode = decode_only(paths, bs)

    print(f"bare forward ({bare_calls} x fixed batch)  {bare}")
    print(f"hand tf.data pipeline           {hand}; first batch +{max(trace_extra):.1f}s (trace), "
          f"iterator teardown {max(teardowns):.2f}s (not counted)")
    print(f"seeds' per-image loop           {seeds:8.2f} img/s ({len(seed_paths)} images, 1 round)")
    print(f"actdb ingest (library call)     {ours}")
    print(f"  actdb decode+resize alone     {decode:8.2f} img/s (its tf.data pipeline, no model)")
    cpu_bound = 1 / (1 / bare.best + 1 / decode)
    print(f"  decode sharing the CPU with the model caps ingest at ~{cpu_bound / bare.best:.3f} of bare "
          f"({cpu_bound:.2f} img/s)")
    overhead = n / ours.best - n / bare.best
    print(f"  ingest time above bare forward: {overhead:.1f}s over {math.ceil(n / bs)} batches")
    a, b, c = ours.best / bare.best, ours.best / hand.best, ours.best / seeds
    print(f"(a) ingest / bare forward       {a:6.3f}   target >= 0.9 for vgg19")
    print(f"(b) ingest / hand tf.data       {b:6.3f}   target >= 1.0")
    print(f"(c) ingest / seeds' loop        {c:6.2f}   target >= {TARGETS[('c', name)]} (float32)")
    table += [(name, "(a) ingest / bare forward", a, TARGETS.get(("a", name))),
              (name, "(b) ingest / hand tf.data", b, TARGETS.get(("b", name))),
              (name, f"(c) ingest / seeds' loop [{precision}]", c,
               TARGETS.get(("c", name)) if precision == "float32" else None)]

    if args.precision_check:
        f32, b16 = (ours, alt_ingest) if precision == "float32" else (alt_ingest, ours)
        f32_bare, b16_bare = (bare, alt_bare) if precision == "float32" else (alt_bare, bare)
        row_max, elem, row_median = drift(stores["bfloat16"], stores["float32"], name, layer)
        print(f"(e) bfloat16 / float32 ingest   {b16.best / f32.best:6.2f}   (bfloat16 ingest {b16})")
        print(f"    bfloat16 / float32 bare     {b16_bare.best / f32_bare.best:6.2f}   (bfloat16 bare {b16_bare})")
        print(f"    stored vectors, bf16 vs f32: max_row ||a-b||/||b|| = {row_max:.2e} (median {row_median:.2e}), "
              f"max|a-b|/max|b| = {elem:.2e}")
        table.append((name, "(e) bfloat16 / float32 ingest speed", b16.best / f32.best, None))
        table.append((name, "(e) bf16 max row rel. diff", row_max, None))

    if args.memory:
        rss = {}
        for label, count in (("1x", n_memory), ("4x", 4 * n_memory)):
            src = make_views(root, count)
            store = Path(tempfile.mkdtemp(prefix="mem_", dir=root))
            mb, wall, summary = peak_rss_mb(cli_ingest_args(store, src, count, name, layer, precision, bs), root)
            rss[label] = mb
            print(f"(d) peak RSS, ingest {count:5d} images ({label}): {mb:8.1f} MB "
                  f"(child wall {wall:.0f}s, {summary['images_per_s']:.1f} img/s)", flush=True)
            shutil.rmtree(store)
        mb, _, _ = peak_rss_mb([sys.executable, "-c", BUILD_ONLY, name, weights, precision, layer], root)
        print(f"    peak RSS of import + model build + Extractor only: {mb:8.1f} MB")
        ratio = rss["4x"] / rss["1x"]
        print(f"(d) peak RSS 4x / 1x            {ratio:6.3f}   target <= {MEMORY_GROWTH_LIMIT} (streaming)")
        table.append((name, f"(d) peak RSS 4x/1x ({n_memory}/{4 * n_memory} img)", ratio, -MEMORY_GROWTH_LIMIT))
    for store in stores.values():
        shutil.rmtree(store, ignore_errors=True)


def lite_section(args, root: Path, table: list) -> None:
    name, layer = LITE
    n = args.lite_images
    print(f"\n=== {name} -> {layer} + predictions: {n} real-photo views, batch {args.batch_size}, "
          f"ImageNet weights: float32 vs bfloat16 ===", flush=True)
    try:
        from actdb.models import efficientnet_lite  # noqa: F401
    except ImportError as exc:
        print(f"NOTE: {name} is not importable yet ({exc}); top-1 agreement is not measured. "
              "Only the random-weight stored-vector drift above says what bfloat16 does.")
        return
    source = make_views(root, n)
    speed, stores = {}, {}
    for precision in ("float32", "bfloat16"):
        speed[precision], stores[precision] = ingest_once(root, source, n, name, layer, precision,
                                                          args.batch_size, "imagenet", predictions=True)
    f32, b16 = top1(stores["float32"]), top1(stores["bfloat16"])
    agree = np.mean([f32[p][0] == b16[p][0] for p in f32])
    acc = {k: np.mean([pred == label for pred, label in v.values()]) for k, v in (("float32", f32), ("bfloat16", b16))}
    row_max, elem, row_median = drift(stores["bfloat16"], stores["float32"], name, layer)
    print(f"top-1 agreement bfloat16 vs float32: {agree:.4f} ({len(f32)} images); "
          f"top-1 = photo's label: float32 {acc['float32']:.3f}, bfloat16 {acc['bfloat16']:.3f}")
    print(f"stored {layer}, bf16 vs f32: max_row ||a-b||/||b|| = {row_max:.2e} (median {row_median:.2e}), "
          f"max|a-b|/max|b| = {elem:.2e}")
    print(f"bfloat16 / float32 ingest speed {speed['bfloat16'] / speed['float32']:6.2f} "
          f"(1 round each: {speed['bfloat16']:.1f} vs {speed['float32']:.1f} img/s)")
    table.append((name, "(e) bf16 top-1 agreement", agree, None))
    table.append((name, "(e) bf16 max row rel. diff", row_max, None))
    table.append((name, "(e) bfloat16 / float32 ingest speed", speed["bfloat16"] / speed["float32"], None))
    for store in stores.values():
        shutil.rmtree(store, ignore_errors=True)


def print_table(table: list) -> None:
    print("\n=== summary (ratios measured within this run) ===")
    print(f"{'model':<19}{'metric':<44}{'value':>9}  target")
    for model, metric, value, target in table:
        if target is None:
            verdict = ""
        elif target < 0:  # an upper bound
            verdict = f"<= {-target:<5} {'ok' if value <= -target else 'MISSED'}"
        else:
            verdict = f">= {target:<5} {'ok' if value >= target else 'MISSED'}"
        print(f"{model:<19}{metric:<44}{value:9.3f}  {verdict}")


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
    args = parser.parse_args()

    start = time.perf_counter()
    print(f"TensorFlow {tf.__version__}, Keras {keras.__version__}, {os.cpu_count()} CPUs; "
          f"{len(available_photos())} real photos -> JPEG views (256 px shorter side)")
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
