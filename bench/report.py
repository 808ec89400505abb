"""The report's all-units pass against one `top-images` pass, on a synthetic array stored as
an ingest stores it (actdb's Zarr layout: row chunks, Blosc-zstd, crc32c).

Both read and decompress every chunk of the same array in the same blocks (actdb's
`arrays.iter_blocks`); the all-units pass keeps, for every unit, the top and bottom 16,
mean, min, max, density and a 10,000-row sample, where `top-images` keeps one unit's top
16. Printed: seconds of each, their ratio (target: at most 3x), and the peak of memory
allocated by each (tracemalloc), at two row counts (target: flat in the row count).

    python bench/report.py                       # 1,281,167 x 512 (ImageNet-train at VGG19 block5_conv4)
    python bench/report.py --rows 200000         # quick look
"""
from __future__ import annotations

import argparse
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np

from actdb.analytics.top_images import running_top_k
from actdb.analytics.unit_summary import SAMPLE_ROWS, summarize_blocks
from actdb.store import arrays

CHANNELS = 512
BLOCK = 8  # chunks per block, as analytics.selection streams


def make_array(folder: Path, rows: int, seed: int = 0):
    array = arrays.create(folder, "bench/report", rows, CHANNELS, "float32", {})
    rng = np.random.default_rng(seed)
    step = array.chunks[0] * 16
    for start in range(0, rows, step):
        ids = np.arange(start, min(rows, start + step))
        values = np.maximum(rng.normal(0, 1, (len(ids), CHANNELS)), 0).astype(np.float32)
        arrays.write_rows(array, ids, values)
    return array


def blocks(array, rows: int):
    for ids, vectors in arrays.iter_blocks(array, np.arange(rows), rows_per_block=array.chunks[0] * BLOCK):
        yield ids, None, vectors


def measure(run) -> tuple[float, float]:
    tracemalloc.start()
    started = time.perf_counter()
    run()
    seconds = time.perf_counter() - started
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return seconds, peak / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_281_167)
    options = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        for rows in (options.rows // 4, options.rows):
            started = time.perf_counter()
            array = make_array(Path(folder) / str(rows), rows)
            print(f"{rows:,} x {CHANNELS} float32 written in {time.perf_counter() - started:.0f} s")
            one, one_peak = measure(lambda: running_top_k(blocks(array, rows), 4, 16))
            every, every_peak = measure(lambda: summarize_blocks(blocks(array, rows), CHANNELS, k=16,
                                                                 rate=min(1.0, SAMPLE_ROWS / rows)))
            print(f"  top-images, one unit:   {one:6.1f} s, peak {one_peak:6.0f} MiB")
            print(f"  report, all {CHANNELS} units: {every:6.1f} s, peak {every_peak:6.0f} MiB   "
                  f"ratio {every / one:.2f}x (target <= 3x)")


if __name__ == "__main__":
    main()
