"""Queries over a store: build/refresh indexes and class centroids, nearest images, nearest classes.

The FAISS math lives in actdb/knn and classes.py; this module only connects it to the
store (Zarr rows, catalog metadata, index files under STORE/indexes/: store/derived.py).
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict

import faiss
import numpy as np
import pandas as pd

from ..choices import check_choice, invalid
from ..distance import check_metric
from ..errors import ActdbError
from ..knn import index as faiss_index
from ..resolve import resolve
from ..results import table
from ..store import arrays, derived
from ..store.catalog import INDEX_DIR
from ..store.locks import writer_lock
from ..store.stored_array import StoredArray
from . import classes as class_ranking


def memory_budget_bytes() -> int:
    """Half of this machine's memory: an index must leave room for everything else."""
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2


def build(db, array: StoredArray, *, metric: str = "l2", kind: str = "auto",
          recall: float = faiss_index.DEFAULT_RECALL_TARGET, rebuild: bool = False) -> dict:
    """Build or bring up to date the index and class centroids of one array.

    An existing index of the same kind only gets the new rows added; `rebuild` retrains
    (IVF lists trained on the old rows drift as a store grows)."""
    check_metric(metric)
    if kind != "auto":
        faiss_index.checked_kind(kind)
    with writer_lock(db.path, "actdb index"):
        ids = db.done_ids(array)
        if len(ids) == 0:
            raise ActdbError(f"{array.name} has no stored rows yet: ingest images first")
        zarr_array = arrays.open_array(db.path, array.zarr_path)
        existing = derived.index_record(db, array, metric)
        report = _refresh(db, existing, ids, zarr_array, metric, kind) if existing is not None and not rebuild else None
        if report is None:
            centroids = class_ranking.CentroidPass(metric)  # fed by the build's one pass over the rows
            report = _build_new(db, array, ids, zarr_array, metric, kind, recall, centroids)
        else:
            centroids = class_ranking.CentroidPass(metric)
            for block in _labelled_blocks(db, zarr_array, ids):
                centroids.add(*block)
        _record(db, array, metric, report, centroids.result())
    if report["kind"] != "flat" and not report.get("target_reached", True):
        report["warnings"].append(f"recall target {recall} not reached (best measured: {report['recall_at_10']:.3f})")
    return report


def _build_new(db, array, ids, zarr_array, metric, kind, recall_target, centroids) -> dict:
    dim = array.channels
    chosen = faiss_index.choose_kind(len(ids), dim, memory_budget_bytes()) if kind == "auto" else kind
    note = None
    if chosen != "flat" and len(ids) < faiss_index.MIN_APPROXIMATE_ROWS:
        note = (f"{chosen} needs at least {faiss_index.MIN_APPROXIMATE_ROWS} rows to train; built flat "
                f"(exact, instant at {len(ids)} rows) instead")
        chosen = "flat"
    index, built = faiss_index.build_index(
        _feeding(db, arrays.iter_blocks(zarr_array, ids), centroids), dim, metric, chosen, valid_ids=ids,
        read_rows=lambda wanted: arrays.read_rows(zarr_array, wanted), recall_target=recall_target,
    )
    path = derived.index_file(db, array, metric)
    faiss_index.save_index(index, path)
    report = asdict(built)
    report.update(file=path.name, action="built", requested_kind=kind, warnings=[note] if note else [])
    return report


def _refresh(db, existing: pd.Series, ids, zarr_array, metric, kind) -> dict | None:
    """Add new rows to an existing index; None when it must be rebuilt instead."""
    path = db.path / INDEX_DIR / existing.file
    if kind not in ("auto", existing.kind) or derived.index_damage(db, existing):
        return None  # a missing or damaged file is rebuilt
    index = faiss_index.load_index(path)
    indexed = faiss_index.indexed_ids(index)
    if np.setdiff1d(indexed, ids).size:
        return None  # it holds rows no longer stored: rebuilt, not patched
    new_ids = np.setdiff1d(ids, indexed)
    added = 0
    if len(new_ids):
        added, _ = faiss_index.add_to_index(index, arrays.iter_blocks(zarr_array, new_ids), metric)
        faiss_index.save_index(index, path)
    params = json.loads(existing.params) if existing.params else {}
    return {"kind": existing.kind, "metric": metric, "factory": existing.factory, "search_params": params,
            "n_rows": int(index.ntotal), "added": int(added), "recall_at_10": existing.recall_at_10,
            "n_eval_queries": int(existing.eval_queries or 0), "build_seconds": existing.build_seconds,
            "file": existing.file, "action": "updated" if len(new_ids) else "up to date", "requested_kind": kind,
            "warnings": []}


def _record(db, array, metric: str, report: dict, centroids: class_ranking.ClassCentroids) -> None:
    derived.record_index(db, array, metric, report, centroids.labels, centroids.counts, centroids.centroids)


def _labels_by_id(db) -> np.ndarray:
    return db.memoized("labels_by_id", lambda: _read_labels_by_id(db))


def _read_labels_by_id(db) -> np.ndarray:
    images = db.sql("SELECT id, label FROM images ORDER BY id")
    labels = np.full(int(images.id.max()) + 1 if len(images) else 0, None, dtype=object)
    labels[images.id.to_numpy()] = images.label.to_numpy(dtype=object)
    return labels


def _feeding(db, blocks, centroids: class_ranking.CentroidPass):
    """The blocks, each also added to the class centroids (its labelled rows)."""
    labels = _labels_by_id(db)
    for ids, vectors in blocks:
        labelled = pd.notna(labels[ids])
        if labelled.any():
            keep = slice(None) if labelled.all() else labelled
            centroids.add(ids[keep], vectors[keep], labels[ids[keep]].astype(str))
        yield ids, vectors


def _labelled_blocks(db, zarr_array, ids):
    """(ids, vectors, labels) of the labelled rows: unlabelled images belong to no class."""
    labels = _labels_by_id(db)
    labelled = ids[pd.notna(labels[ids])]
    for block_ids, vectors in arrays.iter_blocks(zarr_array, labelled):
        yield block_ids, vectors, labels[block_ids].astype(str)


# --- querying -------------------------------------------------------------------------


def _index_hint(array: StoredArray, metric: str) -> str:
    return f"actdb index --model {array.model} --layer {array.layer} --metric {metric}"


def _missing_index(message: str, array: StoredArray, metric: str) -> ActdbError:
    """The error with the call that fixes it: db.index(...) in a notebook, `actdb index` on the CLI."""
    call = f"db.index(model={array.model!r}, layer={array.layer!r}, metric={metric!r})"
    return ActdbError(f"{message}: run {call}", f"{message}: run `{_index_hint(array, metric)}`")


def _checked_index_row(db, array, metric: str, index: faiss.Index | None = None) -> tuple[pd.Series, list[str]]:
    """The array's index record, and a warning if rows were ingested since it was built.

    Refused when rows it holds are no longer stored (unmarked by `check --repair`): their
    neighbours and the class centroids would be answers about data the store disowns.
    `index`: the record's index, when the caller has opened it already."""
    row = derived.index_record(db, array, metric)
    if row is None:
        raise _missing_index(f"no {metric} index for {array.name} yet", array, metric)
    if row.get("data_version") == array.data_version:
        return row, []
    indexed = faiss_index.indexed_ids(index if index is not None else derived.open_index(db, row))
    stored = db.done_ids(array)
    removed = np.setdiff1d(indexed, stored).size
    if removed:
        raise ActdbError(f"the {metric} index of {array.name} holds {removed} rows that are no longer stored: "
                         f"rebuild it with `{_index_hint(array, metric)} --rebuild`")
    behind = len(stored) - len(indexed)
    warnings = []
    if behind > 0:
        warnings.append(f"the index and class centroids are behind: {behind} rows ingested since they were built "
                        f"are not searched; run `{_index_hint(array, metric)}`")
    return row, warnings


def _open_index(db, array, metric: str) -> tuple[faiss.Index, list[str]]:
    """The array's index with its tuned search effort (opened and verified once), and a warning
    if it is behind."""
    row = derived.index_record(db, array, metric)
    if row is None:
        raise _missing_index(f"no {metric} index for {array.name} yet", array, metric)
    index = derived.open_index(db, row)
    return index, _checked_index_row(db, array, metric, index)[1]


def neighbors(db, array: StoredArray, queries: list, *, k: int = 10, where: str | None = None,
              metric: str = "l2") -> pd.DataFrame:
    """The k nearest stored images of each query; `where` filters by catalog columns."""
    check_metric(metric)
    if k < 1:
        raise invalid("k", k, "give at least 1")
    index, warnings = _open_index(db, array, metric)
    allowed = None
    if where:
        allowed = db.sql(f"SELECT id FROM images WHERE {where}").id.to_numpy(np.int64)
        if len(allowed) == 0:
            raise ActdbError(f"no stored image matches --where {where!r}")
    resolved = resolve(db, array, queries)
    ids, distances = faiss_index.search(index, resolved.vectors, k, metric, allowed)
    rows = [
        {"query": resolved.texts[q], "rank": rank + 1, "id": int(image_id), "distance": float(distance)}
        for q in range(len(resolved.texts))
        for rank, (image_id, distance) in enumerate(zip(ids[q], distances[q]))
    ]
    frame = pd.DataFrame(rows, columns=["query", "rank", "id", "distance"])
    found = sorted(set(frame.id.tolist()))  # only these rows: the images table may hold millions
    images = db.sql("SELECT id, label, path FROM images WHERE id IN (SELECT unnest(?::BIGINT[]))", [found])
    return table(frame.merge(images, on="id", how="left"), warnings=warnings)


def classes(db, array: StoredArray, queries: list, *, by: str = "centroid", k: int = 50, top: int = 10,
            class_name: str | None = None, metric: str = "l2") -> pd.DataFrame:
    """Classes ranked for each query; with `class_name`, that class's row is kept whatever its rank."""
    check_metric(metric)
    check_choice("by", by, class_ranking.BY, "class ranking")
    if class_name is not None:
        class_name = db.class_label(class_name, array)
    labels = _labels_by_id(db)
    if not pd.notna(labels).any():
        raise ActdbError("this store has no classes: none of its images has a label (ingest class folders, or a "
                         "list with a label column, to rank classes); nearest images still work")
    warnings: list[str] = []
    if by == "centroid":  # the index first: a missing one is said before a query file runs through the model
        _, warnings = _checked_index_row(db, array, metric)  # centroids are refreshed with the index
        centroids = _centroids(db, array, metric)
    elif by == "knn":
        index, warnings = _open_index(db, array, metric)
    resolved = resolve(db, array, queries)
    query_ids = np.array([-1 if i is None else i for i in resolved.image_ids], np.int64)
    if by == "centroid":
        ranked = class_ranking.rank_classes(resolved.vectors, by, metric, centroids=centroids,
                                            query_ids=query_ids, labels_of=lambda ids: labels[ids])
    elif by == "knn":
        ranked = class_ranking.rank_classes(resolved.vectors, by, metric, index=index, k=k,
                                            labels_of=lambda ids: labels[ids], query_ids=query_ids)
    else:
        ids = db.done_ids(array)
        zarr_array = arrays.open_array(db.path, array.zarr_path)
        ranked = class_ranking.rank_classes(resolved.vectors, by, metric,
                                            blocks=_labelled_blocks(db, zarr_array, ids), query_ids=query_ids)
    ranked["query"] = [resolved.texts[q] for q in ranked["query"]]
    keep = (ranked["rank"] <= top) | (ranked["class"] == class_name)
    return table(ranked[keep].reset_index(drop=True), warnings=warnings)


def _centroids(db, array, metric: str) -> class_ranking.ClassCentroids:
    return db.memoized(("centroids", array.id, metric), lambda: _read_centroids(db, array, metric))


def _read_centroids(db, array, metric: str) -> class_ranking.ClassCentroids:
    rows = derived.read_centroids(db, array, metric)
    if rows is None:
        raise _missing_index(f"no class centroids for {array.name} ({metric}) yet", array, metric)
    centroids = np.stack(rows["centroid"]).astype(np.float64)
    return class_ranking.ClassCentroids(np.asarray(rows["label"], dtype=object), centroids,
                                        np.asarray(rows["members"]), metric)
