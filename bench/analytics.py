"""Analytics I benchmark on a synthetic store (default 1,000,000 x 512 float32 rows in 1000
classes, the first of 1300 members like an ImageNet class), written block by block
through the store's own Zarr and catalog code (no images, no model):

- top-images: the streaming pass (memory: a few chunks) versus loading the whole array
  into NumPy and `argpartition`, time and peak memory in one run;
- per-unit statistics (one streaming pass): time and peak memory at 1/4 and all of the
  rows (the pass must not grow with the rows);
- `distances --query` against the 1300 members of one class, milliseconds;
- `map --method tsne` of 10 classes x 100 images: fitting it, then highlighting another
  query on the kept map via openTSNE's `transform`.

Peak memory is the growth of the resident set (VmHWM after resetting it, Linux) of a
forked process running only the measured call.

    python bench/analytics.py                # ~1M rows: several minutes on 2 cores
    python bench/analytics.py --rows 200000  # quick look
"""
from __future__ import annotations

import argparse
import multiprocessing
import tempfile
import time
from pathlib import Path

import numpy as np

import actdb
from actdb.analytics import selection
from actdb.analytics.top_images import running_top_k
from actdb.analytics.unitstats import unit_stats
from actdb.store import arrays
from actdb.store.catalog import Catalog

WRITE_ROWS = 65_536
FIRST_CLASS = 1300


def class_sizes(rows: int, classes: int) -> np.ndarray:
    """One class of 1300 members, the rest spread evenly."""
    first = min(FIRST_CLASS, rows // classes * 2)
    rest = np.array([len(part) for part in np.array_split(np.arange(rows - first), classes - 1)])
    return np.concatenate([[first], rest])


def build_store(root: Path, rows: int, classes: int, dim: int, seed: int = 0) -> Path:
    """Clustered ReLU rows, written a block at a time (memory stays at one block)."""
    store = root / f"store-{rows}"
    catalog = Catalog(store)
    catalog.create()
    sizes = class_sizes(rows, classes)
    labels = np.repeat(np.arange(classes), sizes)
    with catalog.write() as con:
        con.register("labels", {"label_code": labels})
        con.execute("INSERT INTO images (id, path, wnid, label, split, source) "
                    "SELECT row_number() OVER () - 1, '/synthetic/' || lpad(label_code::VARCHAR, 4, '0') || '/' || "
                    "(row_number() OVER () - 1) || '.jpg', NULL, 'c' || lpad(label_code::VARCHAR, 4, '0'), 'train', "
                    "'synthetic' FROM labels")
        con.execute("INSERT INTO runs (id, started, status) VALUES (1, current_timestamp, 'done')")
        con.execute("INSERT INTO models VALUES (1, 'synthetic', 'none', NULL, 'none', 224, NULL, NULL)")
        con.execute("INSERT INTO arrays VALUES (1, 1, 'layer', 'mean', ?, 'float32', 'float32', 'center-crop', "
                    "'synthetic/layer/mean')", [dim])
        con.execute("INSERT INTO done SELECT 1, i, 1 FROM range(?) t(i)", [rows])
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 1, (classes, dim)).astype(np.float32)
    zarr_array = arrays.create(store, "synthetic/layer/mean", rows, dim, "float32", {})
    for start in range(0, rows, WRITE_ROWS):
        ids = np.arange(start, min(start + WRITE_ROWS, rows))
        noise = rng.standard_normal((len(ids), dim), dtype=np.float32) * 0.7
        arrays.write_rows(zarr_array, ids, np.maximum(centres[labels[ids]] + noise, 0))
    return store


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field):
            return int(line.split()[1])
    raise RuntimeError(field)


def _child(function, args, queue) -> None:
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak resident set to the current one
    before = _rss_kib("VmRSS:")
    started = time.perf_counter()
    result = function(*args)
    seconds = time.perf_counter() - started
    queue.put((seconds, (_rss_kib("VmHWM:") - before) / 1024, result))


def measured(function, *args):
    """(seconds, peak MiB of growth, result) of function(*args) in a forked process."""
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    process = context.Process(target=_child, args=(function, args, queue))
    process.start()
    outcome = queue.get()
    process.join()
    return outcome


def top_streaming(store: Path, unit: int, k: int):
    db = actdb.open(store)
    array = db.find_array("synthetic", "layer")
    return running_top_k(selection.stream(db, array, []), unit, k)[0]


def top_load_all(store: Path, unit: int, k: int):
    db = actdb.open(store)
    ids, vectors = db.activations("synthetic", "layer", return_ids=True)
    column = vectors[:, unit]
    best = np.argpartition(-column, k)[:k]
    return ids[best[np.lexsort((ids[best], -column[best]))]]


def stats_pass(store: Path):
    db = actdb.open(store)
    return unit_stats(db, db.find_array("synthetic", "layer"), refresh=True).members


def median_ms(function, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        times.append(time.perf_counter() - started)
    return float(np.median(times) * 1e3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("-k", type=int, default=16)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir="/tmp") as tmp:
        started = time.perf_counter()
        quarter = build_store(Path(tmp), args.rows // 4, args.classes, args.dim)
        store = build_store(Path(tmp), args.rows, args.classes, args.dim)
        print(f"synthetic stores of {args.rows // 4:,} and {args.rows:,} rows x {args.dim} float32, {args.classes} "
              f"classes, written in {time.perf_counter() - started:.0f} s")

        seconds_s, peak_s, streamed = measured(top_streaming, store, 4, args.k)
        seconds_a, peak_a, loaded = measured(top_load_all, store, 4, args.k)
        assert np.array_equal(streamed, loaded), "streaming and load-all disagree"
        print(f"\ntop-images (k={args.k}, {args.rows:,} rows):")
        print(f"  streaming over chunks     {seconds_s:6.2f} s, peak +{peak_s:7.0f} MiB")
        print(f"  load all + argpartition   {seconds_a:6.2f} s, peak +{peak_a:7.0f} MiB")
        print(f"  streaming/load-all: time x{seconds_s / seconds_a:.2f}, memory x{peak_s / peak_a:.3f}")

        print("\nper-unit statistics, one streaming pass (overall and per class):")
        for rows, path in ((args.rows // 4, quarter), (args.rows, store)):
            seconds, peak, members = measured(stats_pass, path)
            print(f"  {rows:>9,} rows  {seconds:6.2f} s  ({rows / seconds / 1e3:.0f}k rows/s), peak +{peak:5.0f} MiB")

        db = actdb.open(store)
        query = Path(tmp) / "query.npy"
        np.save(query, np.maximum(np.random.default_rng(1).normal(0, 1, args.dim), 0).astype(np.float32))
        members = class_sizes(args.rows, args.classes)[0]
        def one_class():
            return db.distances("synthetic", "layer", queries=[str(query)], classes=["c0000"], random_classes=0,
                                per_class=members, pairs=5000)
        report = one_class()
        assert report.queries.n[0] == members
        print(f"\ndistances --query vs one class of {members} members (and 5000 pairs per group): "
              f"{median_ms(one_class, 5):.0f} ms (median of 5)")

        classes = [f"c{c:04d}" for c in range(10)]
        np.save(Path(tmp) / "q2.npy", np.maximum(np.random.default_rng(2).normal(0, 1, args.dim), 0).astype(np.float32))
        started = time.perf_counter()
        fitted = db.map("synthetic", "layer", method="tsne", classes=classes, per_class=100, highlight=[str(query)])
        fit = time.perf_counter() - started
        started = time.perf_counter()
        again = db.map("synthetic", "layer", method="tsne", classes=classes, per_class=100,
                       highlight=[str(Path(tmp) / "q2.npy")])
        highlight = time.perf_counter() - started
        assert not fitted.attrs["cached"] and again.attrs["cached"]
        print(f"\nmap --method tsne, 10 classes x 100 images: fit and place a query {fit:.2f} s; "
              f"another query on the kept map {highlight:.2f} s (transform {again.attrs['place_seconds']:.2f} s); "
              f"x{fit / highlight:.0f} faster than refitting")


if __name__ == "__main__":
    main()
