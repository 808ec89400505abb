"""The store's FAISS index files (STORE/indexes/) and their catalog records: where an
array's index lives, its record, and the index loaded with the search effort tuned when it
was built. Building and searching are `actdb.knn.index`; `actdb index` writes them, the
nearest-image queries and the trajectory read them."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from .catalog import INDEX_DIR
from .stored_array import StoredArray


def index_file(db, array: StoredArray, metric: str) -> Path:
    """Where the index of `array` for `metric` is written (the folder made if needed)."""
    folder = db.path / INDEX_DIR
    folder.mkdir(exist_ok=True)
    return folder / f"array{array.id}-{metric}.faiss"


def index_record(db, array: StoredArray, metric: str) -> pd.Series | None:
    """The catalog's record of the array's index for `metric`, or None when none was built."""
    rows = db.sql("SELECT * FROM indexes WHERE array_id = ? AND metric = ?", [array.id, metric], memoize=True)
    return None if rows.empty else rows.iloc[0]


def open_recorded_index(db, record: pd.Series):
    """The index a record names, with its tuned search effort; None when its file is gone."""
    from ..knn import index as faiss_index

    path = db.path / INDEX_DIR / record.file
    if not path.is_file():
        return None
    index = faiss_index.load_index(path)
    faiss_index.apply_search_params(index, json.loads(record.params) if record.params else {})
    return index
