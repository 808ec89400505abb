"""Query benchmark: actdb flat and `auto` indexes against scikit-learn brute force.

Synthetic activations with class structure: 1000 classes with centres in a 64-d latent
space, within-class variation along a decaying spectrum (SD of latent axis i ~ i^-decay;
decay 0.5 gives a participation ratio of ~14, in the range measured for deep CNN
representations), rows = ReLU(latent @ W) + small uniform noise, 512-d float32:
non-negative, low intrinsic dimension, classes overlapping by --spread. Queries are
fresh draws, not stored rows. The printed share of same-class neighbours says how
clustered the data came out; --spread 1.25 --latent-decay 0 is a much harder set.

    python bench/query.py                 # 1,000,000 rows, ~10-15 min on 2 cores
    python bench/query.py --rows 100000   # quick look
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
from sklearn.neighbors import NearestNeighbors

from actdb.query.classes import class_centroids, rank_classes
from actdb.knn.index import build_index, choose_kind, save_index, search

LATENT_DIM = 64
BLOCK_ROWS = 65_536
K = 10


class Activations:
    """Deterministic synthetic activation rows with class labels, generated in blocks."""

    def __init__(self, n_classes: int, dim: int, spread: float, latent_decay: float, noise: float, seed: int = 0):
        rng = np.random.default_rng(seed)
        self.mixing = (rng.normal(size=(LATENT_DIM, dim)) / np.sqrt(LATENT_DIM)).astype(np.float32)
        self.centres = rng.normal(size=(n_classes, LATENT_DIM)).astype(np.float32)
        axis_sd = np.arange(1, LATENT_DIM + 1) ** -latent_decay
        self.axis_sd = (spread * np.sqrt(LATENT_DIM) * axis_sd / np.linalg.norm(axis_sd)).astype(np.float32)
        self.noise = noise

    def participation_ratio(self) -> float:
        variances = self.axis_sd.astype(np.float64) ** 2
        return variances.sum() ** 2 / (variances**2).sum()

    def sample(self, n_rows: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        labels = rng.integers(0, len(self.centres), n_rows)
        return self.rows_of(labels, rng), labels

    def rows_of(self, labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """One row per label (class index)."""
        latent = self.centres[labels] + self.axis_sd * rng.standard_normal((len(labels), LATENT_DIM), np.float32)
        rows = np.maximum(latent @ self.mixing, 0.0)
        rows += self.noise * rng.random(rows.shape, dtype=np.float32)
        return rows

    def table(self, n_rows: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng(seed)
        rows = np.empty((n_rows, self.mixing.shape[1]), np.float32)
        labels = np.empty(n_rows, np.int64)
        for start in range(0, n_rows, BLOCK_ROWS):
            stop = min(n_rows, start + BLOCK_ROWS)
            rows[start:stop], labels[start:stop] = self.sample(stop - start, rng)
        return rows, labels


def blocks(rows, labels=None):
    for start in range(0, len(rows), BLOCK_ROWS):
        stop = min(len(rows), start + BLOCK_ROWS)
        ids = np.arange(start, stop)
        yield (ids, rows[start:stop]) if labels is None else (ids, rows[start:stop], labels[start:stop])


def single_query_latencies(answer, queries) -> np.ndarray:
    seconds = []
    for query in queries:
        started = time.perf_counter()
        answer(query[None])
        seconds.append(time.perf_counter() - started)
    return np.array(seconds)


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(np.intersect1d(f, t)) / K for f, t in zip(found, truth)]))


def index_bytes(index) -> int:
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "index.faiss"
        save_index(index, path)
        return path.stat().st_size


def measure(name, answer, single, batch, truth, build_seconds, size_bytes):
    latencies = single_query_latencies(answer, single)
    started = time.perf_counter()
    found = answer(batch)
    batch_seconds = time.perf_counter() - started
    result = {
        "name": name,
        "p50_ms": 1e3 * np.percentile(latencies, 50),
        "p99_ms": 1e3 * np.percentile(latencies, 99),
        "batch_qps": len(batch) / batch_seconds,
        "recall": recall(found, truth) if truth is not None else 1.0,
        "build_s": build_seconds,
        "size_mb": size_bytes / 2**20,
    }
    print(
        f"{name:<28} p50 {result['p50_ms']:9.2f} ms  p99 {result['p99_ms']:9.2f} ms  "
        f"batch {result['batch_qps']:9.1f} q/s  recall@10 {result['recall']:.4f}  "
        f"build {build_seconds:7.1f} s  size {result['size_mb']:8.1f} MiB",
        flush=True,
    )
    return result, found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--spread", type=float, default=1.1, help="within-class SD relative to the centres' SD")
    parser.add_argument("--latent-decay", type=float, default=0.5, help="0: isotropic within-class variation")
    parser.add_argument("--noise", type=float, default=0.1)
    parser.add_argument("--single-queries", type=int, default=200)
    parser.add_argument("--batch-queries", type=int, default=1000)
    parser.add_argument("--memory-gib", type=float, default=8.0, help="memory budget given to the auto policy")
    parser.add_argument("--recall-target", type=float, default=0.99)
    args = parser.parse_args()
    started = time.perf_counter()

    generator = Activations(args.classes, args.dim, args.spread, args.latent_decay, args.noise)
    rows, labels = generator.table(args.rows, seed=1)
    batch, batch_labels = generator.sample(args.batch_queries, np.random.default_rng(2))
    single = batch[: args.single_queries]
    print(f"{args.rows} x {args.dim} float32 rows ({rows.nbytes / 2**30:.2f} GiB), {args.classes} classes "
          f"(spread {args.spread}, participation ratio {generator.participation_ratio():.1f}); "
          f"{len(single)} single queries, {len(batch)} batched; load average {os.getloadavg()[0]:.1f} "
          f"on {os.cpu_count()} cores; generated in {time.perf_counter() - started:.0f} s", flush=True)

    t0 = time.perf_counter()
    flat, _ = build_index(blocks(rows), args.dim, "l2", "flat")
    flat_result, truth = measure(
        "actdb flat (exact)", lambda q: search(flat, q, K, "l2")[0], single, batch, None,
        time.perf_counter() - t0, index_bytes(flat),
    )
    del flat
    purity = float(np.mean(labels[truth] == batch_labels[:, None]))
    print(f"  data: share of a query's 10 nearest rows in its own class = {purity:.2f}")

    auto_kind = choose_kind(args.rows, args.dim, int(args.memory_gib * 2**30))
    kind = auto_kind if auto_kind != "flat" else "ivf"
    print(f"auto policy picks {auto_kind!r} for {args.rows} x {args.dim} with {args.memory_gib:g} GiB"
          + ("" if kind == auto_kind else "; forcing 'ivf' to measure an approximate index"), flush=True)
    t0 = time.perf_counter()
    approximate, report = build_index(
        blocks(rows), args.dim, "l2", kind, valid_ids=np.arange(args.rows), read_rows=lambda ids: rows[ids],
        recall_target=args.recall_target,
    )
    print(f"  {report.factory} {report.search_params}: reported recall@10 {report.recall_at_10:.4f} on "
          f"{report.n_eval_queries} held-out rows (target {report.recall_target}, reached {report.target_reached}); "
          f"tuning curve {report.recall_curve}", flush=True)
    auto_result, _ = measure(
        f"actdb {kind} ({'auto' if kind == auto_kind else 'forced'})",
        lambda q: search(approximate, q, K, "l2")[0], single, batch, truth,
        time.perf_counter() - t0, index_bytes(approximate),
    )
    del approximate

    t0 = time.perf_counter()
    brute = NearestNeighbors(n_neighbors=K, algorithm="brute", metric="euclidean").fit(rows)
    sklearn_result, _ = measure(
        "sklearn NearestNeighbors brute", lambda q: brute.kneighbors(q, return_distance=False), single, batch, truth,
        time.perf_counter() - t0, rows.nbytes,
    )
    del brute

    for result in (flat_result, auto_result):
        print(f"sklearn p50 / {result['name']} p50 = {sklearn_result['p50_ms'] / result['p50_ms']:.1f}x; "
              f"batched q/s ratio {result['batch_qps'] / sklearn_result['batch_qps']:.1f}x")

    t0 = time.perf_counter()
    centroids = class_centroids(blocks(rows, labels), "l2")
    centroid_seconds = time.perf_counter() - t0
    timings = []
    for query in single[:50]:
        t0 = time.perf_counter()
        rank_classes(query, "centroid", "l2", centroids=centroids)
        timings.append(time.perf_counter() - t0)
    print(f"class centroids for {len(centroids.labels)} classes in {centroid_seconds:.1f} s (one pass); "
          f"ranking them for one query: median {1e3 * np.median(timings):.2f} ms, max {1e3 * np.max(timings):.2f} ms")
    print(f"total {time.perf_counter() - started:.0f} s, load average {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
