"""ImageNet scale on one machine: every command of the research loop on a 1,281,167-image
store and on a quarter of it, with wall time and peak memory (RSS) of each, the cost
exponent between the sizes, and the targets met or missed.

The stores are synthetic but laid out exactly as an ingest lays them out: written through
actdb's own catalog and writer (`ingest.writer.StoreWriter`: Zarr chunks with crc32c,
chunk digests, done marks, predictions, in its commits), 1000 ImageNet classes with their
wnids and names, ImageNet-train-like paths, one model (`resnet50`) with two arrays:
`conv3_block4_out` (512 channels, as VGG19 block5_conv4) and `avg_pool` (2048), rows with
class structure (bench/query.py's generator), top-5 predictions for every image and three
optimized images. A store is cached under --cache and reused while its parameters match.

Each command runs as `actdb ...` in a fresh process (start-up included; the bare start-up
is measured on its own), its peak RSS from wait4.

    python bench/scale.py                  # 320,292 and 1,281,167 rows (~40 min the first time)
    python bench/scale.py --rows 50000     # one quick size
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from query import Activations  # noqa: E402 - the class-structured generator of the query benchmark

from actdb import imagenet  # noqa: E402
from actdb.ingest import writer  # noqa: E402
from actdb.ingest.sources import ImageRecord  # noqa: E402
from actdb.store import arrays, derived  # noqa: E402
from actdb.store.catalog import OPTIMIZED_SCHEMA, Catalog, next_array_id  # noqa: E402

IMAGENET_TRAIN = 1_281_167
MODEL = "resnet50"
LAYERS = {"conv3_block4_out": 512, "avg_pool": 2048}
SMALL, BIG = "conv3_block4_out", "avg_pool"
BATCH = 8192
FORMAT = 1  # bump when what a cached store holds changes
OPTIMIZED = [("scale.u4", SMALL, 4, "sea_cucumber"), ("scale.u7", SMALL, 7, "tabby"),
             ("scale.logit", "logits", 328, "sea_cucumber")]


# -- the store -----------------------------------------------------------------------------------

def class_counts(rows: int) -> np.ndarray:
    """Images per class, ImageNet-like: 732 to 1300 (most 1300), summing to `rows`."""
    rng = np.random.default_rng(7)
    weights = np.where(rng.random(1000) < 0.9, 1300.0, rng.uniform(732, 1300, 1000))
    counts = np.floor(weights / weights.sum() * rows).astype(np.int64)
    counts[: rows - counts.sum()] += 1
    return counts


def disk_needed(rows: int) -> int:
    """Bytes: the float32 rows (the noise does not compress much) plus ~300 bytes per image of catalog."""
    return rows * (sum(LAYERS.values()) * 4 + 300)


def make_store(path: Path, rows: int) -> Path:
    params = {"format": FORMAT, "rows": rows, "layers": LAYERS, "seed": 0}
    stamp = path / "bench-params.json"
    if stamp.is_file() and json.loads(stamp.read_text()) == params:
        print(f"  reusing {path}", flush=True)
        return path
    shutil.rmtree(path, ignore_errors=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(path.parent).free
    need = disk_needed(rows)
    print(f"  writing {path}: {rows:,} images, needs ~{need / 2**30:.1f} GiB ({free / 2**30:.0f} GiB free)",
          flush=True)
    if need > free * 0.95:
        sys.exit(f"not enough disk under {path.parent}: {need / 2**30:.1f} GiB needed; pass --cache elsewhere")
    started = time.perf_counter()
    catalog = Catalog(path)
    catalog.create()
    run_id = writer.start_run(catalog, {"bench": "scale", "rows": rows})
    classes = imagenet.classes()
    counts = class_counts(rows)
    records = [ImageRecord(f"/datasets/imagenet/train/{c.wnid}/{c.wnid}_{k + 1}.JPEG", c.name, c.wnid, c.index,
                           "train") for c, n in zip(classes, counts) for k in range(n)]
    ids = writer.register_images(catalog, records, "/datasets/imagenet/train", run_id)
    labels = np.repeat(np.arange(1000), counts)
    del records
    with catalog.write() as con:
        con.execute("INSERT INTO models VALUES (1, ?, 'imagenet', 'synthetic', 'caffe', 224, NULL, NULL)", [MODEL])
    targets = []
    for layer, channels in LAYERS.items():
        zarr_path = f"{MODEL}/imagenet/{layer}/mean"
        zarr_array = arrays.create(path, zarr_path, rows, channels, "float32", {"model": MODEL, "layer": layer})
        with catalog.write() as con:
            array_id = next_array_id(con)
            con.execute("INSERT INTO arrays VALUES (?, 1, ?, 'mean', ?, 'float32', 'float32', 'center-crop', ?)",
                        [array_id, layer, channels, zarr_path])
        targets.append(writer.ArrayTarget(array_id, layer, zarr_array, np.ones(rows, bool)))
    generators = {layer: Activations(1000, channels, 1.1, 0.5, 0.1, seed=i) for i, (layer, channels)
                  in enumerate(LAYERS.items())}
    rng = np.random.default_rng(0)
    sink = writer.StoreWriter(catalog, run_id, targets, model_id=1, predictions=True)
    for start in range(0, rows, BATCH):
        batch_ids = ids[start:start + BATCH]
        batch_labels = labels[start:start + BATCH]
        outputs = {layer: g.rows_of(batch_labels, rng) for layer, g in generators.items()}
        others = rng.integers(0, 1000, (len(batch_ids), 4))
        outputs["top_index"] = np.column_stack([batch_labels, others])
        outputs["top_prob"] = np.sort(rng.dirichlet(np.ones(6), len(batch_ids))[:, :5], axis=1)[:, ::-1]
        sink.put(writer.Batch(batch_ids, rng.integers(0, 256, (len(batch_ids), 8), dtype=np.uint8),
                              np.full(len(batch_ids), 375), np.full(len(batch_ids), 500), outputs))
        if start // BATCH % 16 == 0:
            print(f"    {start + len(batch_ids):,} / {rows:,} rows, {time.perf_counter() - started:.0f} s", flush=True)
    sink.close()
    writer.finish_run(catalog, run_id, "done", rows, 0, time.perf_counter() - started)
    _optimized_images(path, catalog, generators, rng)
    stamp.write_text(json.dumps(params))
    print(f"  written in {time.perf_counter() - started:.0f} s, "
          f"{sum(f.stat().st_size for f in path.rglob('*') if f.is_file()) / 2**30:.1f} GiB", flush=True)
    return path


def _optimized_images(path: Path, catalog: Catalog, generators, rng) -> None:
    """Three optimized images as `actdb optimize` records them: content-addressed PNGs, their
    rows, and their vectors in both arrays (as the optimizing writer keeps them)."""
    import io

    from PIL import Image

    class_index = {c.name: c.index for c in imagenet.classes()}
    with catalog.write() as con:
        con.execute(OPTIMIZED_SCHEMA)
    vectors = []
    for name, layer, unit, top1 in OPTIMIZED:
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (224, 224, 3), dtype=np.uint8)).save(buffer, format="PNG")
        data = buffer.getvalue()
        png = f"optimized/{name}.{hashlib.sha256(data).hexdigest()[:16]}.png"
        (path / "optimized").mkdir(exist_ok=True)
        (path / png).write_bytes(data)
        params = {"model": MODEL, "weights": "imagenet", "layer": layer, "unit": unit, "synthetic": True}
        with catalog.write() as con:
            con.execute("INSERT INTO optimized_images VALUES (?, ?, 'imagenet', 'synthetic', ?, ?, ?, 1, 'fft', 0, 0, "
                        "?, 0.1, 9.9, ?, ?, ?, current_timestamp)",
                        [name, MODEL, layer, unit, "logit" if layer == "logits" else "channel", json.dumps(params),
                         top1, png, hashlib.sha256(data).hexdigest()])
        for array_id, g in enumerate(generators.values(), start=1):
            vectors.append((name, array_id, g.rows_of(np.array([class_index[top1]]), rng)[0]))

    class _Store:  # what derived.keep_optimized_vectors needs of a Database
        def __init__(self):
            self.catalog = catalog

    derived.keep_optimized_vectors(_Store(), vectors)


# -- the commands --------------------------------------------------------------------------------

# Linux keeps a process's peak RSS across exec: a child forked from this (large) process would
# report at least this one's. So a bare interpreter forks each command and reports its peak.
LAUNCH = """
import os, sys, time
started = time.perf_counter()
pid = os.fork()
if pid == 0:
    os.execv(sys.argv[1], sys.argv[1:])
_, status, usage = os.wait4(pid, 0)
print(f"@@ {os.waitstatus_to_exitcode(status)} {time.perf_counter() - started} {usage.ru_maxrss}", file=sys.stderr)
"""


def run(command: list[str], env: dict) -> tuple[float, float, str]:
    """(seconds, peak RSS in MiB, last output line) of one process."""
    done = subprocess.run([sys.executable, "-S", "-c", LAUNCH, *command], capture_output=True, env=env)
    *rest, summary = done.stderr.decode(errors="replace").rstrip().splitlines()
    code, seconds, peak_kib = summary.split()[1:]
    output = done.stdout.decode(errors="replace") + "\n".join(rest)
    if int(code) != 0:
        print(f"    FAILED ({code}): {' '.join(command)}\n{output[-2000:]}", flush=True)
        return float(seconds), int(peak_kib) / 1024, "FAILED"
    lines = [line for line in done.stdout.decode(errors="replace").splitlines() if line.strip()]
    return float(seconds), int(peak_kib) / 1024, (lines[-1] if lines else "")[:100]


READ_ONCE = """
import sys, time, numpy as np
from actdb.store import arrays
a = arrays.open_array(sys.argv[1], sys.argv[2])
for _ in arrays.iter_blocks(a, np.arange(a.shape[0]), rows_per_block=a.chunks[0] * 8):
    pass
"""

REPORT_PASS = """
import sys, actdb
from actdb.analytics import unit_summary
db = actdb.open(sys.argv[1])
summary = unit_summary.summarize(db, db.array(sys.argv[2], sys.argv[3]))
print(len(summary.mean), "units summarized")
"""


def commands(store: Path, work: Path, rows: int) -> list[tuple[str, str, list[str]]]:
    """(name, kind, argv): kind says which target applies: selection (under 10 s), full (within 2x
    of one read), pass (ratio to one read shown), check, index, baseline, other (timed only)."""
    one = f"id:{rows // 2}"
    actdb = [str(Path(sys.executable).with_name("actdb")), "--store", str(store)]
    small = ["--model", MODEL, "--layer", SMALL]
    query = work / "query.npy"
    np.save(query, Activations(1000, LAYERS[SMALL], 1.1, 0.5, 0.1, seed=0).rows_of(np.array([328]),
                                                                                     np.random.default_rng(5))[0])
    python = [sys.executable, "-c"]
    zarr_small = f"{MODEL}/imagenet/{SMALL}/mean"
    return [
        ("start-up (actdb --version)", "other", actdb[:1] + ["--version"]),
        ("info", "selection", actdb + ["info"]),
        ("sql: images by class", "other", actdb + ["sql", "SELECT label, count(*) AS n FROM images GROUP BY label "
                                                  "ORDER BY n DESC LIMIT 3"]),
        ("check", "check", actdb + ["check"]),
        ("index (auto)", "index", actdb + ["index", *small]),
        ("neighbors FILE.npy", "selection", actdb + ["neighbors", str(query), *small, "-k", "10"]),
        ("neighbors id:N", "selection", actdb + ["neighbors", one, *small, "-k", "10"]),
        ("neighbors optimized:NAME", "selection", actdb + ["neighbors", "optimized:scale.u4", *small, "-k", "10"]),
        ("classes FILE.npy", "selection", actdb + ["classes", str(query), *small]),
        ("classes id:N", "selection", actdb + ["classes", one, *small]),
        ("distances (2 + 10 classes x 100)", "selection", actdb + ["distances", *small, "--classes",
                                                                 "sea_cucumber,groenendael"]),
        ("distances --query", "selection", actdb + ["distances", *small, "--classes", "sea_cucumber,groenendael",
                                                   "--query", "optimized:scale.u4"]),
        ("map pca (12 x 100)", "selection", actdb + ["map", *small, "--classes", TWELVE, "--method", "pca"]),
        ("map tsne (12 x 100)", "selection", actdb + ["map", *small, "--classes", TWELVE, "--method", "tsne"]),
        ("read + decompress once", "baseline", python + [READ_ONCE, str(store), zarr_small]),
        ("top-images --unit 4", "full", actdb + ["top-images", *small, "--unit", "4"]),
        ("top-classes --by median", "full", actdb + ["top-classes", *small, "--unit", "4", "--by", "median"]),
        ("statistics (first --by mean)", "full", actdb + ["top-classes", *small, "--unit", "4", "--by", "mean"]),
        ("top-classes --by mean", "selection", actdb + ["top-classes", *small, "--unit", "4", "--by", "mean"]),
        ("profile", "selection", actdb + ["profile", one, *small]),
        ("compare (cka, 5000 images)", "other", actdb + ["compare", "--model", MODEL, "--layers",
                                                            f"{SMALL},{BIG}"]),
        ("report all-units pass", "pass", python + [REPORT_PASS, str(store), MODEL, SMALL]),
        ("trajectory id:N (2 layers)", "other", actdb + ["trajectory", one, "--model", MODEL]),
    ]


TWELVE = ("sea_cucumber,groenendael,tench,tabby,goldfish,daisy,espresso,palace,missile,military_uniform,"
          "lemon,volcano")


def measure(store: Path, work: Path, rows: int, only: list[str] | None = None) -> dict[str, tuple]:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    results = {}
    for name, kind, argv in commands(store, work, rows):
        if only and kind != "baseline" and not any(word in name for word in only):
            continue
        seconds, rss, last = run(argv, env)
        results[name] = (seconds, rss, kind, last)
        print(f"    {name:<34} {seconds:8.2f} s {rss:9.0f} MiB   {last}", flush=True)
    return results


# -- the table and the targets -------------------------------------------------------------------

def report(sizes: list[int], measured: list[dict]) -> None:
    names = list(measured[0])
    head = "".join(f" {f'{n:,} rows':>22}" for n in sizes)
    print(f"\n{'command':<34}{head}" + ("   exponent (time, memory)" if len(sizes) == 2 else ""))
    for name in names:
        cells = "".join(f" {m[name][0]:9.2f} s {m[name][1]:7.0f} MiB" for m in measured)
        line = f"{name:<34}{cells}"
        if len(sizes) == 2:
            ratio = np.log(sizes[1] / sizes[0])
            time_exp = np.log(measured[1][name][0] / measured[0][name][0]) / ratio
            rss_exp = np.log(measured[1][name][1] / measured[0][name][1]) / ratio
            line += f"   {time_exp:5.2f}, {rss_exp:5.2f}"
        print(line)
    big, rows = measured[-1], sizes[-1]
    print(f"\ntargets at {rows:,} rows:")
    baseline = big["read + decompress once"][0]
    if "check" in big:
        check = big["check"][0]
        print(f"  check under 120 s: {check:.1f} s: {'met' if check < 120 else 'MISSED'}")
    for name, (seconds, _, kind, _) in big.items():
        if kind == "selection":
            print(f"  {name} under 10 s: {seconds:.2f} s: {'met' if seconds < 10 else 'MISSED'}")
        if kind == "full":
            print(f"  {name} within 2x of one read ({baseline:.1f} s): {seconds / baseline:.2f}x: "
                  f"{'met' if seconds <= 2 * baseline else 'MISSED'}")
        if kind == "pass":
            print(f"  {name} (no target; every unit's top/bottom 16, moments, sample): {seconds / baseline:.2f}x "
                  "one read")
    if len(sizes) == 2:
        extra = sizes[1] - sizes[0]
        print("  memory per row (growth between the sizes; the index's own is the index):")
        for name in names:
            per_row = (measured[1][name][1] - measured[0][name][1]) * 2**20 / extra
            if per_row > 8:
                print(f"    {name}: {per_row:.0f} bytes per row")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, help="one size only (default: a quarter of ImageNet-train and all of it)")
    parser.add_argument("--only", help="comma-separated words: only the commands whose names hold one "
                        "(plus the read baseline)")
    parser.add_argument("--cache", type=Path, default=Path(os.environ.get("ACTDB_BENCH_CACHE", "/tmp/actdb-scale")))
    options = parser.parse_args()
    if options.rows is not None and options.rows < 5000:
        parser.error(f"--rows {options.rows}: give at least 5000 (an IVF index and the commands' samples need them)")
    sizes = [options.rows] if options.rows else [-(-IMAGENET_TRAIN // 4), IMAGENET_TRAIN]
    print(f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}; stores under {options.cache} "
          f"(~{sum(disk_needed(n) for n in sizes) / 2**30:.0f} GiB for {', '.join(f'{n:,}' for n in sizes)} rows)")
    measured = []
    for rows in sizes:
        store = make_store(options.cache / f"store-{rows}", rows)
        work = options.cache / f"work-{rows}"
        work.mkdir(parents=True, exist_ok=True)
        _reset_derived(store)
        print(f"  {rows:,} rows:", flush=True)
        measured.append(measure(store, work, rows, options.only.split(",") if options.only else None))
    report(sizes, measured)


def _reset_derived(store: Path) -> None:
    """Every run measures the first index build and statistics pass, not a cached one."""
    with Catalog(store).write() as con:
        for table in ("indexes", "class_centroids", "unit_stats"):
            con.execute(f"DELETE FROM {table}")
    shutil.rmtree(store / "indexes", ignore_errors=True)
    shutil.rmtree(store / "maps", ignore_errors=True)


if __name__ == "__main__":
    main()
