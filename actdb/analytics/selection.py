"""Which stored rows an analysis looks at: classes by name, seeded per-class samples, and a
stream over every row in bounded memory (catalog ids a span at a time, Zarr a few chunks
at a time), shared by the analytics commands."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from ..errors import ActdbError
from ..store import arrays
from ..store.stored_array import StoredArray

CATALOG_SPAN = 65536  # ids fetched from the catalog per query while streaming
BLOCK_CHUNKS = 8  # Zarr chunks decoded at a time while streaming (4096 rows of 512 floats: 8 MB)


@dataclass(frozen=True)
class Selection:
    ids: np.ndarray  # int64, sorted within each class
    labels: np.ndarray  # object (str), one per id
    named: list[str]  # classes asked for by name, in the order given
    random: list[str]  # classes drawn at random

    def members(self, label: str) -> np.ndarray:
        return np.flatnonzero(self.labels == label)


def sample(db, array: StoredArray, classes: str | list[str] | None, random_classes: int, per_class: int | None,
           seed: int) -> Selection:
    """Named classes plus `random_classes` others drawn with `seed`; at most `per_class`
    members of each (a seeded sample; None: all)."""
    if per_class is not None and per_class < 1:
        raise ActdbError(f"--per-class must be at least 1, got {per_class}")
    if random_classes < 0:
        raise ActdbError(f"--random-classes must be 0 or more, got {random_classes}")
    named = db.class_labels(classes, array) or []
    rng = np.random.default_rng(seed)
    others = [label for label in db.labels(array) if label not in named]
    drawn = sorted(rng.choice(others, min(random_classes, len(others)), replace=False).tolist()) if others else []
    chosen = named + drawn
    if not chosen:
        raise ActdbError(f"no labelled rows to select in {array.describe()}: name --classes or ingest labelled images")
    members = db.sql("SELECT d.image_id AS id, i.label FROM done d JOIN images i ON i.id = d.image_id "
                     "WHERE d.array_id = ? AND i.label IN (SELECT unnest(?::VARCHAR[])) ORDER BY id",
                     [array.id, chosen])
    ids, labels = [], []
    for label in chosen:
        found = members.id[members.label == label].to_numpy(np.int64)
        if per_class is not None and len(found) > per_class:
            found = np.sort(rng.choice(found, per_class, replace=False))
        ids.append(found)
        labels.append(np.full(len(found), label, dtype=object))
    return Selection(np.concatenate(ids), np.concatenate(labels), named, drawn)


def finite_rows(vectors: np.ndarray) -> np.ndarray:
    """Rows without NaN/inf: failed images are stored as NaN and belong to no statistic."""
    return np.isfinite(vectors).all(axis=1)


def stream(db, array: StoredArray, labels: list[str], where: str | None = None):
    """Every done row of `array` as (ids, class codes, float32 vectors) blocks, in id order.

    Class codes index `labels` (-1: unlabelled or another class). Memory holds one
    catalog span of ids and a few Zarr chunks, whatever the number of rows; `where` is an
    SQL condition on the images table."""
    zarr_array = arrays.open_array(db.path, array.zarr_path)
    chunk = zarr_array.chunks[0]
    span = max(chunk, CATALOG_SPAN // chunk * chunk)
    condition = f"AND ({where})" if where else ""
    for start in range(0, zarr_array.shape[0], span):
        frame = db.sql(f"SELECT d.image_id AS id, images.label FROM done d JOIN images ON images.id = d.image_id "
                       f"WHERE d.array_id = ? AND d.image_id >= ? AND d.image_id < ? {condition} ORDER BY id",
                       [array.id, start, start + span])
        if frame.empty:
            continue
        ids = frame.id.to_numpy(np.int64)
        codes = pd.Index(labels, dtype=object).get_indexer(frame.label).astype(np.int32)
        for block_ids, vectors in arrays.iter_blocks(zarr_array, ids, rows_per_block=chunk * BLOCK_CHUNKS):
            yield block_ids, codes[np.searchsorted(ids, block_ids)], vectors


def image_info(db, ids) -> pd.DataFrame:
    """id, label, path of the given images (only those rows: the table may hold millions)."""
    return db.sql("SELECT id, label, path FROM images WHERE id IN (SELECT unnest(?::BIGINT[]))",
                  [[int(i) for i in ids]])
