"""`actdb classes --by centroid` latency after the forward pass, on a store of 1000 classes.

Builds a synthetic store through the library (1000 classes x 100 rows x 512 floats,
clustered), indexes it, then times `db.classes(vector.npy, by="centroid")` (catalog
read, centroid fetch, ranking) against the bare ranking on centroids already in memory,
in one run. Target: under 50 ms per query.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

import actdb
from actdb.query import classes as class_ranking
from actdb.store import arrays
from bench_support import synthetic_store


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--per-class", type=int, default=100)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        store = synthetic_store(Path(tmp), args.classes, args.per_class, args.dim)
        db = actdb.open(store)
        db.build_index("synthetic", "layer", kind="flat")
        query = np.random.default_rng(1).normal(0, 1, args.dim).astype(np.float32)
        np.save(Path(tmp) / "q.npy", query)
        centroids = class_ranking.class_centroids(
            ((i, v, np.array([f"c{x // args.per_class:04d}" for x in i])) for i, v in
             arrays.iter_blocks(arrays.open_array(store, "synthetic/none/layer/mean"), np.arange(
                 args.classes * args.per_class))), "l2")
        store_times, cold_times, bare_times = [], [], []
        for _ in range(args.repeats):
            start = time.perf_counter()
            db.classes(str(Path(tmp) / "q.npy"), "synthetic", "layer", by="centroid", top=10)
            store_times.append(time.perf_counter() - start)
            start = time.perf_counter()
            actdb.open(store).classes(str(Path(tmp) / "q.npy"), "synthetic", "layer", by="centroid", top=10)
            cold_times.append(time.perf_counter() - start)
            start = time.perf_counter()
            class_ranking.rank_classes(query[None], "centroid", "l2", centroids=centroids)
            bare_times.append(time.perf_counter() - start)
        p50_store, p50_bare = np.median(store_times) * 1e3, np.median(bare_times) * 1e3
        print(f"{args.classes} classes x {args.dim} dims")
        print(f"db.classes(by=centroid) on an open Database, p50 {p50_store:.1f} ms, "
              f"p90 {np.percentile(store_times, 90) * 1e3:.1f} ms (target < 50 ms)")
        print(f"first query of a freshly opened Database (as each CLI call is), p50 "
              f"{np.median(cold_times) * 1e3:.1f} ms")
        print(f"bare ranking on in-memory centroids, p50 {p50_bare:.1f} ms; store overhead x{p50_store / p50_bare:.1f}")


if __name__ == "__main__":
    main()
