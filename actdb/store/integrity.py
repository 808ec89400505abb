"""Is the store what its catalog says? `check` reads every chunk that holds done rows and
every index file; `repair` unmarks the rows it cannot vouch for, so that the next ingest of
the same source recomputes exactly them, and drops index records whose file is gone or
whose rows it unmarked.

Also the layout check every writer makes first: an `activations.zarr` without the catalog
that names its rows (or a catalog whose arrays are gone) is refused before anything is written.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..errors import ActdbError
from . import arrays
from .catalog import ARRAY_KEYED_TABLES, CATALOG_FILE, INDEX_DIR, Catalog, missing_store_message, table_names
from .locks import writer_lock
from .stored_array import StoredArray


@dataclass
class Problem:
    problem: str  # missing chunk | corrupt chunk | NaN rows | missing array | shape mismatch | index ...
    array: str  # zarr path, or the index file
    detail: str
    rows: int = 0  # done rows it concerns
    repairable: bool = True


def check_layout(store: Path) -> None:
    """Refuse a store whose catalog and arrays have come apart, touching nothing."""
    store = Path(store)
    has_zarr = (store / arrays.ZARR_DIR).exists()
    if not (store / CATALOG_FILE).exists():
        if has_zarr:
            raise ActdbError(missing_store_message(store))
        return
    if not has_zarr:
        with Catalog(store).read() as con:
            n_arrays = con.execute("SELECT count(*) FROM arrays").fetchone()[0]
        if n_arrays:
            raise ActdbError(f"the catalog of {store} lists {n_arrays} arrays but {arrays.ZARR_DIR} is gone: restore "
                             f"it from a backup, or move {CATALOG_FILE} away to start a new store")


def check(db, repair: bool = False) -> dict:
    """Verify the store; with `repair`, fix what can be fixed (under the writer lock)."""
    if not repair:
        return _report(db, *_inspect(db), repaired=[])
    with writer_lock(db.path, "actdb check --repair"):
        problems, fixes, checked = _inspect(db)
        repaired = _apply(db, fixes)
    return _report(db, problems, fixes, checked, repaired)


def _report(db, problems, fixes, checked, repaired) -> dict:
    return {"store": str(db.path), "ok": not problems, "checked": checked,
            "problems": [asdict(p) for p in problems], "repaired": repaired}


@dataclass
class _Fixes:
    unmark: list  # (array_id, image ids)
    delete_files: list  # chunk and index files
    drop_arrays: list  # array ids whose Zarr array is gone
    drop_indexes: list  # (array_id, metric)


def _inspect(db):
    problems: list[Problem] = []
    fixes = _Fixes([], [], [], [])
    checked = {"arrays": 0, "chunks": 0, "rows": 0, "indexes": 0}
    for array in db.arrays():
        checked["arrays"] += 1
        _check_array(db, array, problems, fixes, checked)
    _check_indexes(db, problems, fixes, checked)
    _drop_indexes_of_unmarked_rows(db, fixes)
    return problems, fixes, checked


def _drop_indexes_of_unmarked_rows(db, fixes) -> None:
    """An index (and its class centroids) still holds the vectors of rows that repair unmarks:
    queries would keep answering with them. Drop it; `actdb index` rebuilds after the ingest."""
    unmarked = {array_id for array_id, _ in fixes.unmark}
    for row in db.sql("SELECT array_id, metric, file FROM indexes").itertuples():
        array_id = int(row.array_id)
        if array_id in unmarked and (array_id, row.metric) not in fixes.drop_indexes:
            fixes.drop_indexes.append((array_id, row.metric))
            fixes.delete_files.append(db.path / INDEX_DIR / row.file)


def _check_array(db, array: StoredArray, problems, fixes, checked) -> None:
    done = db.done_ids(array)
    try:
        zarr_array = arrays.open_array(db.path, array.zarr_path)
    except arrays.MissingArray:
        problems.append(Problem("missing array", array.zarr_path, f"{arrays.ZARR_DIR}/{array.zarr_path} is gone",
                                len(done)))
        fixes.drop_arrays.append(array.id)
        for index in db.sql("SELECT file FROM indexes WHERE array_id = ?", [array.id]).itertuples():
            fixes.delete_files.append(db.path / INDEX_DIR / index.file)  # an index of rows that are gone
        return
    if zarr_array.shape[1] != array.channels or str(zarr_array.dtype) != array.dtype:
        problems.append(Problem("shape mismatch", array.zarr_path,
                                f"catalog: {array.channels} channels {array.dtype}; Zarr: {zarr_array.shape[1]} "
                                f"{zarr_array.dtype}", len(done), repairable=False))
        return
    beyond = done[done >= zarr_array.shape[0]]
    if len(beyond):
        problems.append(Problem("rows beyond the array", array.zarr_path,
                                f"{len(beyond)} done rows past its {zarr_array.shape[0]} rows", len(beyond)))
        fixes.unmark.append((array.id, beyond))
    for start, part in arrays.chunk_groups(done[done < zarr_array.shape[0]], zarr_array.chunks[0]):
        checked["chunks"] += 1
        checked["rows"] += len(part)
        _check_chunk(array, zarr_array, start, part, problems, fixes)


def _check_chunk(array, zarr_array, start, part, problems, fixes) -> None:
    chunk = start // zarr_array.chunks[0]
    where = f"chunk {arrays.chunk_key(zarr_array, chunk)} (ids {start}-{start + zarr_array.chunks[0] - 1})"
    try:
        block = arrays.read_done_chunk(zarr_array, start, int(part[-1]) + 1)
    except arrays.DamagedChunk as exc:
        problems.append(Problem("missing chunk" if exc.missing else "corrupt chunk", array.zarr_path, where, len(part)))
        fixes.unmark.append((array.id, part))
        if not exc.missing:
            fixes.delete_files.append(arrays.chunk_file(zarr_array, chunk))
        return
    bad = part[~np.isfinite(block[part - start]).all(axis=1)]
    if len(bad):
        problems.append(Problem("NaN rows", array.zarr_path, f"{where}: ids {bad[:5].tolist()}", len(bad)))
        fixes.unmark.append((array.id, bad))


def _check_indexes(db, problems, fixes, checked) -> None:
    import faiss

    folder = db.path / INDEX_DIR
    recorded = db.sql("SELECT array_id, metric, file, n_rows FROM indexes ORDER BY array_id, metric")
    for row in recorded.itertuples():
        checked["indexes"] += 1
        path = folder / row.file
        what = None
        if not path.is_file():
            what = ("missing index file", f"{path} is gone")
        else:
            try:
                n_total = faiss.read_index(str(path), faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY).ntotal
            except RuntimeError:
                what = ("corrupt index file", f"{path} cannot be read")
            else:
                if n_total != row.n_rows:
                    what = ("index rows differ", f"{path} holds {n_total} rows, its catalog record {row.n_rows}")
        if what:
            problems.append(Problem(what[0], row.file, what[1]))
            fixes.drop_indexes.append((int(row.array_id), row.metric))
            fixes.delete_files.append(path)
    stale = sorted(set(p.name for p in folder.glob("*.faiss")) - set(recorded.file)) if folder.is_dir() else []
    for name in stale:
        problems.append(Problem("stale index file", name, "no catalog record names it"))
        fixes.delete_files.append(folder / name)


def _apply(db, fixes: _Fixes) -> list[str]:
    """Catalog first (rows unmarked are recomputed by the next ingest), then the files."""
    done = []
    with db.catalog.write() as con:
        for array_id, ids in fixes.unmark:
            con.execute("DELETE FROM done WHERE array_id = ? AND image_id IN (SELECT unnest(?::BIGINT[]))",
                        [array_id, ids.tolist()])
            done.append(f"array {array_id}: {len(ids)} rows unmarked; the same ingest recomputes them")
        present = table_names(con)
        for array_id in fixes.drop_arrays:
            for table in (*ARRAY_KEYED_TABLES, "arrays"):
                if table in present:
                    con.execute(f"DELETE FROM {table} WHERE {'id' if table == 'arrays' else 'array_id'} = ?",
                                [array_id])
            done.append(f"array {array_id}: dropped from the catalog (its Zarr array is gone)")
        for array_id, metric in fixes.drop_indexes:
            con.execute("DELETE FROM indexes WHERE array_id = ? AND metric = ?", [array_id, metric])
            con.execute("DELETE FROM class_centroids WHERE array_id = ? AND metric = ?", [array_id, metric])
            done.append(f"array {array_id}: {metric} index record dropped; run `actdb index` to rebuild it")
    for path in fixes.delete_files:
        Path(path).unlink(missing_ok=True)
        done.append(f"deleted {Path(path).relative_to(db.path)}")
    return done
