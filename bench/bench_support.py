"""A synthetic store written through the library (no images, no model): for benchmarks and
tests of the query side at sizes that real ingests cannot reach on a laptop."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from actdb.ingest import writer
from actdb.ingest.sources import ImageRecord
from actdb.store import arrays
from actdb.store.catalog import Catalog


def synthetic_store(root: Path, n_classes: int, per_class: int, dim: int) -> Path:
    store = root / "store"
    catalog = Catalog(store)
    catalog.create()
    run_id = writer.start_run(catalog, {"bench": "classes"})
    records = [ImageRecord(f"/synthetic/c{c:04d}/{i}.jpg", f"c{c:04d}", None, None, "train")
               for c in range(n_classes) for i in range(per_class)]
    ids = writer.register_images(catalog, records, "synthetic", run_id)
    rng = np.random.default_rng(0)
    centres = rng.normal(0, 1, (n_classes, dim)).astype(np.float32)
    vectors = np.maximum(np.repeat(centres, per_class, axis=0) + rng.normal(0, 0.7, (len(ids), dim)), 0)
    zarr_array = arrays.create(store, "synthetic/none/layer/mean", len(ids), dim, "float32", {})
    arrays.write_rows(zarr_array, ids, vectors.astype(np.float32))
    with catalog.write() as con:
        con.execute("INSERT INTO models VALUES (1, 'synthetic', 'none', NULL, 'none', 224, NULL, NULL)")
        con.execute("INSERT INTO arrays VALUES (1, 1, 'layer', 'mean', ?, 'float32', 'float32', 'center-crop', "
                    "'synthetic/none/layer/mean')", [dim])
        con.execute("INSERT INTO done SELECT 1, i, ? FROM range(?) t(i)", [run_id, len(ids)])
    return store
