"""Is the store what its catalog says? `check` reads every chunk that holds done rows and
every index file; `repair` unmarks the rows it cannot vouch for, so that the next ingest of
the same source recomputes exactly them, and drops index records whose file is gone or
whose rows it unmarked.

A chunk is vouched for when it exists, decodes (its crc32c checksum holds: bytes flipped,
truncated or emptied fail here), its done rows are finite, and their digest is the one the
committing transaction recorded (a valid chunk file of another chunk, array or store fails
here). Arrays made before checksums have neither: `check` names them, and `repair` rewrites
each into a new array with the codec and records digests of its rows as they are then.

Also the layout check every writer makes first: an `activations.zarr` without the catalog
that names its rows (or a catalog whose arrays are gone) is refused before anything is written.
"""
from __future__ import annotations

import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..errors import ActdbError
from . import arrays, derived
from .catalog import (ARRAY_KEYED_TABLES, CATALOG_FILE, CHUNK_DIGESTS_TABLE, INDEX_DIR, Catalog,
                      missing_store_message, table_names)
from .locks import writer_lock
from .stored_array import StoredArray


@dataclass
class Problem:
    problem: str  # missing | corrupt | changed | unverified chunk | NaN rows | missing array | index ...
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


CHECKSUMMED_SUFFIX = "-crc32c"  # where repair rewrites an array made before checksums


def check(db, repair: bool = False, wait: bool = False) -> dict:
    """Verify the store; with `repair`, fix what can be fixed (under the writer lock, taken before
    anything is read: refused, or with `wait` waiting, while another process writes)."""
    if not repair:
        return _report(db, *_inspect(db), repaired=[])
    with writer_lock(db.path, "actdb check --repair", wait):
        problems, fixes, checked, notes = _inspect(db)
        repaired = _apply(db, fixes)
    return _report(db, problems, fixes, checked, notes, repaired)


def _report(db, problems, fixes, checked, notes, repaired) -> dict:
    return {"store": str(db.path), "ok": not problems, "checked": checked,
            "problems": [asdict(p) for p in problems], "notes": notes, "repaired": repaired}


@dataclass
class _Fixes:
    unmark: list  # (array_id, image ids)
    delete_files: list  # chunk and index files
    drop_arrays: list  # array ids whose Zarr array is gone
    drop_indexes: list  # (array_id, metric)
    digests: list = field(default_factory=list)  # (array_id, chunk, rows, digest or None: delete)
    add_checksums: list = field(default_factory=list)  # StoredArrays made before checksums
    recreate_tables: list = field(default_factory=list)  # derived tables with other columns: rebuilt empty
    delete_arrays: list = field(default_factory=list)  # Zarr arrays no catalog row names
    drop_unit_stats: list = field(default_factory=list)  # array ids whose kept statistics disagree


def _inspect(db):
    problems: list[Problem] = []
    notes: list[str] = []
    fixes = _Fixes([], [], [], [])
    checked = {"arrays": 0, "chunks": 0, "rows": 0, "digests": 0, "indexes": 0}
    if not _check_columns(db, problems, fixes):
        return problems, fixes, checked, notes  # nothing else can be read as actdb wrote it
    recorded = _recorded_digests(db)
    for array in db.arrays():
        checked["arrays"] += 1
        _check_array(db, array, recorded.get(array.id, {}), problems, fixes, checked, notes)
    _check_stale_arrays(db, notes, fixes)
    if "indexes" not in fixes.recreate_tables:
        _check_indexes(db, problems, fixes, checked)
        _drop_indexes_of_unmarked_rows(db, fixes)
    _check_optimized(db, problems, checked)
    if "unit_stats" not in fixes.recreate_tables:
        _check_unit_stats(db, problems, fixes, checked)
    return problems, fixes, checked, notes


def _check_unit_stats(db, problems, fixes, checked) -> None:
    """Kept unit statistics of the current data version are the rows written (each row's version
    and digest) and cover the array's classes with its member counts; stale ones are not a
    problem (recomputed on use). Repair deletes a set that disagrees: recomputed on use."""
    if not db.has_table("unit_stats"):
        return
    for array in db.arrays():
        if array.id in fixes.drop_arrays:
            continue
        rows, problem = derived.unit_stats_state(db, array)
        checked["unit_stats"] = checked.get("unit_stats", 0) + (rows is not None or problem is not None)
        if problem:
            problems.append(Problem("changed unit statistics", array.zarr_path,
                                    f"the unit statistics of {array.describe()} disagree with it: {problem}; "
                                    "`actdb check --repair` deletes them (recomputed on use)"))
            fixes.drop_unit_stats.append(array.id)


def _check_columns(db, problems, fixes) -> bool:
    """actdb's own tables have the columns this version reads. A derived table that does not is
    rebuilt empty by repair (and recomputed on use); a primary one cannot be: False, stop."""
    with db.catalog.read() as con:
        wrong = derived.column_problems(con)
    primary_ok = True
    for table, what in wrong:
        is_derived = table in derived.DERIVED_TABLES
        problems.append(Problem("catalog table changed", table, f"the catalog table {table} {what}: " + (
            "`actdb check --repair` rebuilds it empty, recomputed on use" if is_derived else
            "it is not the table actdb wrote; restore the catalog from a backup"), repairable=is_derived))
        if is_derived:
            fixes.recreate_tables.append(table)
        primary_ok = primary_ok and is_derived
    return primary_ok


def _recorded_digests(db) -> dict[int, dict[int, str]]:
    """array id -> chunk -> digest; none in a store made before chunk digests."""
    if not db.has_table("chunk_digests"):
        return {}
    recorded: dict[int, dict[int, str]] = {}
    for array_id, chunk, digest in db.sql("SELECT array_id, chunk, digest FROM chunk_digests").itertuples(
            index=False):
        recorded.setdefault(int(array_id), {})[int(chunk)] = digest
    return recorded


def _check_optimized(db, problems: list, checked: dict) -> None:
    """Every optimized image's PNG is the one its row was committed with (sha256)."""
    if not db.has_table("optimized_images"):
        return
    for row in db.sql("SELECT name, png, png_sha256 FROM optimized_images ORDER BY name").itertuples():
        checked["optimized"] = checked.get("optimized", 0) + 1
        damage = derived.png_damage(db.path / row.png, row.png_sha256)
        if damage:
            problems.append(Problem("damaged optimized image", row.png,
                                    f"optimized:{row.name}: its PNG {damage}; run the same `actdb optimize` again "
                                    "to remake it", repairable=False))


def _drop_indexes_of_unmarked_rows(db, fixes) -> None:
    """An index (and its class centroids) still holds the vectors of rows that repair unmarks:
    queries would keep answering with them. Drop it; `actdb index` rebuilds after the ingest."""
    unmarked = {array_id for array_id, _ in fixes.unmark}
    for row in db.sql("SELECT array_id, metric, file FROM indexes").itertuples():
        array_id = int(row.array_id)
        if array_id in unmarked and (array_id, row.metric) not in fixes.drop_indexes:
            fixes.drop_indexes.append((array_id, row.metric))
            fixes.delete_files.append(db.path / INDEX_DIR / row.file)


def _check_array(db, array: StoredArray, digests: dict[int, str], problems, fixes, checked, notes) -> None:
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
    checksummed = arrays.has_checksums(zarr_array)
    without_digest = 0
    for start, part in arrays.chunk_groups(done[done < zarr_array.shape[0]], zarr_array.chunks[0]):
        checked["chunks"] += 1
        checked["rows"] += len(part)
        digest = digests.get(start // zarr_array.chunks[0])
        without_digest += digest is None
        checked["digests"] += digest is not None
        _check_chunk(array, zarr_array, start, part, digest, checksummed, problems, fixes)
    if not checksummed:
        notes.append(f"array {array.zarr_path} has no checksums (made before actdb recorded them): a damaged chunk "
                     f"that still decodes would go unnoticed ({without_digest} of its chunks have no digest either). "
                     "`actdb check --repair` rewrites it with crc32c checksums and records digests of its rows as "
                     "they are then; to be sure of the rows themselves, ingest again into a new store")
        fixes.add_checksums.append(array)


def _check_chunk(array, zarr_array, start, part, digest, checksummed, problems, fixes) -> None:
    chunk = start // zarr_array.chunks[0]
    where = f"chunk {arrays.chunk_key(zarr_array, chunk)} (ids {start}-{start + zarr_array.chunks[0] - 1})"
    rows = f"done rows {ids_text(part)}"

    def unmark_chunk(problem: str, what: str, delete: bool = True) -> None:
        problems.append(Problem(problem, array.zarr_path, f"{where} {what}: {rows}", len(part)))
        fixes.unmark.append((array.id, part))
        fixes.digests.append((array.id, chunk, 0, None))
        if delete:
            fixes.delete_files.append(arrays.chunk_file(zarr_array, chunk))

    try:
        block = arrays.read_done_chunk(zarr_array, start, int(part[-1]) + 1)
    except arrays.DamagedChunk as exc:
        unmark_chunk("missing chunk" if exc.missing else "corrupt chunk", exc.what, delete=not exc.missing)
        return
    values = block[part - start]
    if digest is not None and arrays.rows_digest(part, values) != digest:
        unmark_chunk("changed chunk", arrays.CHANGED)
        return
    if digest is None and checksummed:
        unmark_chunk("unverified chunk", "has no digest recorded, so its rows cannot be vouched for")
        return
    finite = np.isfinite(values).all(axis=1)
    if not finite.all():
        bad = part[~finite]
        problems.append(Problem("NaN rows", array.zarr_path, f"{where}: ids {ids_text(bad)}", len(bad)))
        fixes.unmark.append((array.id, bad))
        if digest is not None:  # the rows that stay done get their own digest
            kept = part[finite]
            fixes.digests.append((array.id, chunk, len(kept),
                                  arrays.rows_digest(kept, values[finite]) if len(kept) else None))


def ids_text(ids: np.ndarray, most: int = 6) -> str:
    """Sorted ids as ranges: `0-17`, `3, 7, 12-15, ... (40 ids)`."""
    cuts = np.flatnonzero(np.diff(ids) != 1) + 1
    runs = [f"{r[0]}-{r[-1]}" if len(r) > 1 else f"{r[0]}" for r in np.split(np.asarray(ids), cuts)]
    text = ", ".join(runs[:most]) + (", ..." if len(runs) > most else "")
    return text + (f" ({len(ids)} ids)" if len(runs) > 1 else "")


def _check_stale_arrays(db, notes, fixes) -> None:
    """Zarr arrays no catalog row names: written but never committed, by an ingest or a repair
    killed in between. Nothing reads them and no row is lost (a note, not a problem); repair
    deletes them."""
    if not (db.path / arrays.ZARR_DIR).is_dir():
        return
    listed = {a.zarr_path for a in db.arrays()}
    for path in sorted(set(arrays.stored_paths(db.path)) - listed):
        notes.append(f"{arrays.ZARR_DIR}/{path} is an array no catalog row names (left by an interrupted ingest "
                     "or repair): `actdb check --repair` deletes it")
        fixes.delete_arrays.append(path)


def _check_indexes(db, problems, fixes, checked) -> None:
    import faiss

    folder = db.path / INDEX_DIR
    recorded = db.sql("SELECT * FROM indexes ORDER BY array_id, metric")
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
                elif damage := derived.index_damage(db, recorded.loc[row.Index]):
                    what = ("changed index file", damage)
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
        for table in fixes.recreate_tables:
            con.execute(f"DROP TABLE {table}")
            done.append(f"the catalog table {table} rebuilt empty (derived: recomputed on use)")
        derived.ensure_tables(con)
        con.execute(CHUNK_DIGESTS_TABLE)
        for array_id, ids in fixes.unmark:
            con.execute("DELETE FROM done WHERE array_id = ? AND image_id IN (SELECT unnest(?::BIGINT[]))",
                        [array_id, ids.tolist()])
            done.append(f"array {array_id}: {len(ids)} rows unmarked; the same ingest recomputes them")
        for array_id, chunk, rows, digest in fixes.digests:
            con.execute("DELETE FROM chunk_digests WHERE array_id = ? AND chunk = ?", [array_id, chunk])
            if digest is not None:
                con.execute("INSERT INTO chunk_digests VALUES (?, ?, ?, ?)", [array_id, chunk, rows, digest])
        present = table_names(con)
        for array_id in fixes.drop_arrays:
            for table in (*ARRAY_KEYED_TABLES, "arrays"):
                if table in present:
                    con.execute(f"DELETE FROM {table} WHERE {'id' if table == 'arrays' else 'array_id'} = ?",
                                [array_id])
            done.append(f"array {array_id}: dropped from the catalog (its Zarr array is gone)")
        for array_id, metric in fixes.drop_indexes:
            derived.drop_index(con, array_id, metric)
            done.append(f"array {array_id}: {metric} index record dropped; run `actdb index` to rebuild it")
        for array_id in fixes.drop_unit_stats:
            con.execute("DELETE FROM unit_stats WHERE array_id = ?", [array_id])
            done.append(f"array {array_id}: unit statistics deleted (recomputed on use)")
    for path in fixes.delete_files:
        Path(path).unlink(missing_ok=True)
        done.append(f"deleted {Path(path).relative_to(db.path)}")
    for path in fixes.delete_arrays:
        shutil.rmtree(db.path / arrays.ZARR_DIR / path, ignore_errors=True)
        done.append(f"deleted {arrays.ZARR_DIR}/{path} (no catalog row names it)")
    for array in fixes.add_checksums:
        if array.id not in fixes.drop_arrays:
            done.append(_add_checksums(db, array))
    return done


def unmark_rows(con, store: Path, array_id: int, ids: np.ndarray) -> list[Path]:
    """In the caller's catalog transaction: rows `ids` of one array stop being stored, as repair
    unmarks them. Each touched chunk's digest is re-recorded over the rows it still holds, once
    the recorded one is seen to hold (a chunk that no longer matches keeps it, for `check` to
    name), and the array's indexes and class centroids, which hold those rows, are dropped.
    Returns the index files to delete once the transaction has committed."""
    ids = np.unique(np.asarray(ids, dtype=np.int64))
    zarr_path = con.execute("SELECT zarr_path FROM arrays WHERE id = ?", [array_id]).fetchone()[0]
    zarr_array = arrays.open_array(store, zarr_path)
    span = zarr_array.chunks[0]
    for chunk in np.unique(ids // span).tolist():
        start, stop = chunk * span, min((chunk + 1) * span, zarr_array.shape[0])
        done = con.execute("SELECT image_id FROM done WHERE array_id = ? AND image_id >= ? AND image_id < ? "
                           "ORDER BY image_id", [array_id, start, stop]).fetchnumpy()["image_id"].astype(np.int64)
        recorded = con.execute("SELECT digest FROM chunk_digests WHERE array_id = ? AND chunk = ?",
                               [array_id, chunk]).fetchone()
        kept = done[~np.isin(done, ids)]
        if recorded is None or not len(done):
            continue  # an array made before digests, or nothing of this chunk stored
        try:
            block = arrays.read_done_chunk(zarr_array, start, int(done[-1]) + 1)
        except arrays.DamagedChunk:
            continue
        if arrays.rows_digest(done, block[done - start]) != recorded[0]:
            continue
        con.execute("DELETE FROM chunk_digests WHERE array_id = ? AND chunk = ?", [array_id, chunk])
        if len(kept):
            con.execute("INSERT INTO chunk_digests VALUES (?, ?, ?, ?)",
                        [array_id, chunk, len(kept), arrays.rows_digest(kept, block[kept - start])])
    con.execute("DELETE FROM done WHERE array_id = ? AND image_id IN (SELECT unnest(?::BIGINT[]))",
                [array_id, ids.tolist()])
    files = []
    if "indexes" in table_names(con):
        for metric, file in con.execute("SELECT metric, file FROM indexes WHERE array_id = ?", [array_id]).fetchall():
            derived.drop_index(con, array_id, metric)
            files.append(Path(store) / INDEX_DIR / file)
    return files


def _add_checksums(db, array: StoredArray) -> str:
    """Rewrite an array made before checksums into a new one with the crc32c codec, and switch
    the catalog to it in the transaction that records its chunks' digests: a kill before the
    commit leaves the old array in use (the new one is stale), after it the old one is stale."""
    old = arrays.open_array(db.path, array.zarr_path)
    path = array.zarr_path + CHECKSUMMED_SUFFIX
    shutil.rmtree(db.path / arrays.ZARR_DIR / path, ignore_errors=True)  # an earlier, killed rewrite
    new = arrays.create(db.path, path, old.shape[0], old.shape[1], str(old.dtype), dict(old.attrs),
                        chunk_rows=old.chunks[0])
    done = db.done_ids(array)
    rows = []
    for start, part in arrays.chunk_groups(done[done < old.shape[0]], old.chunks[0]):
        written = arrays.write_rows(new, part, arrays.read_done_chunk(old, start, int(part[-1]) + 1)[part - start])
        rows.extend((array.id, chunk, n, digest) for chunk, (digest, n) in written.items())
    with db.catalog.write() as con:
        con.execute("DELETE FROM chunk_digests WHERE array_id = ?", [array.id])
        con.executemany("INSERT INTO chunk_digests VALUES (?, ?, ?, ?)", rows)
        con.execute("UPDATE arrays SET zarr_path = ? WHERE id = ?", [path, array.id])
    shutil.rmtree(db.path / arrays.ZARR_DIR / array.zarr_path, ignore_errors=True)
    return (f"array {array.id}: rewritten as {path} with crc32c checksums and the digests of its {len(done)} rows "
            "as they are now")
