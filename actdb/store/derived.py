"""Every derived table and file of a store: its DDL, its SQL, and what each is keyed by.

Derived data is recomputable from the primary data (Zarr rows + catalog), so a stale or
damaged entry is never served: it is recomputed (statistics, maps), refused with the
command that rebuilds it (indexes, centroids), or computed for the answer (optimized
vectors). Features ask this module for "the X of this array at its current version".

What each artifact is keyed by (array ids are never reused, see catalog.next_array_id):
- index file + `indexes` row: (array id, metric); records the array's data version, the
  file's size and crc32c (verified before FAISS reads it).
- `class_centroids`: (array id, metric), written in the index's transaction, so they are as
  fresh as the index row.
- `unit_stats`: (array id, class); served only at the data version every row records, each row
  as written (its digest), and only while its classes and member counts are the array's.
- `optimized_vectors`: (optimized name, array id); deleted with their image when it is remade.
- `maps/tsne-KEY.npy` + `.json`: KEY is a digest of the fit's identity (array id, data
  version, method, perplexity, seed, the points); the sidecar holds the identity and the
  .npy's sha256, both compared before use.
- report pages: keyed in the report's own manifest (report/site.py).
"""
from __future__ import annotations

import functools
import hashlib
import io
import json
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd

from ..errors import ActdbError
from ..files import atomic_write
from .catalog import INDEX_DIR
from .stored_array import StoredArray

MAPS_DIR = "maps"  # cached t-SNE coordinates: NAME.npy (float64, no pickle) + NAME.json (identity, sha256)
ALL_ROWS = "*"  # unit_stats.class of the figures over every row

DERIVED_SCHEMA = """
CREATE TABLE IF NOT EXISTS indexes (
    array_id INTEGER NOT NULL,
    metric VARCHAR NOT NULL,       -- l2 | cosine | correlation
    kind VARCHAR NOT NULL,         -- flat | ivf | hnsw | ivfpq
    factory VARCHAR,
    params JSON,                   -- search effort chosen at build time (nprobe, efSearch)
    n_rows BIGINT NOT NULL,        -- rows indexed; fewer than done rows means the index is behind
    recall_at_10 DOUBLE,           -- measured against exact search at build time (1.0 for flat)
    eval_queries INTEGER,
    build_seconds DOUBLE,
    file VARCHAR NOT NULL,         -- inside indexes/
    built_at TIMESTAMP DEFAULT current_timestamp,
    data_version VARCHAR,          -- the array's data version it was built at (NULL: before versions)
    file_bytes BIGINT,             -- the index file's size and crc32c when written (NULL: before digests)
    file_crc32c VARCHAR,
    PRIMARY KEY (array_id, metric)
);
CREATE TABLE IF NOT EXISTS class_centroids (
    array_id INTEGER NOT NULL,
    metric VARCHAR NOT NULL,       -- centroids of the vectors as the metric sees them
    label VARCHAR NOT NULL,
    members BIGINT NOT NULL,
    centroid FLOAT[] NOT NULL,
    PRIMARY KEY (array_id, metric, label)
);
CREATE TABLE IF NOT EXISTS unit_stats (
    array_id INTEGER NOT NULL,
    class VARCHAR NOT NULL,        -- a label, or '*' for every row
    members BIGINT NOT NULL,       -- finite rows counted
    mean DOUBLE[] NOT NULL,        -- per channel
    std DOUBLE[] NOT NULL,         -- per channel, population (ddof 0)
    rows_done BIGINT NOT NULL,     -- done rows of the array when computed
    data_version VARCHAR NOT NULL, -- the array's data version (its done ids and values) when computed: else stale
    computed_at TIMESTAMP DEFAULT current_timestamp,
    digest VARCHAR,                -- SHA-256 of the row as written (unit_stats_digest); NULL: before digests
    PRIMARY KEY (array_id, class)
);
CREATE TABLE IF NOT EXISTS optimized_vectors (  -- the PNG through each stored array's model, as a query file
    name VARCHAR NOT NULL,
    array_id INTEGER NOT NULL,
    vector FLOAT[] NOT NULL,
    PRIMARY KEY (name, array_id)
);
"""
DERIVED_TABLES = ("indexes", "class_centroids", "unit_stats", "optimized_vectors")
# Column types earlier versions wrote: not a damaged table, replaced on the next write.
OLDER_TYPES = {("unit_stats", "mean"): "FLOAT[]", ("unit_stats", "std"): "FLOAT[]"}


def ensure_tables(con) -> None:
    """Create the derived tables a store lacks, add the columns a newer actdb added, and replace
    any table whose columns have other types (older actdb, or replaced by hand): derived
    tables hold nothing primary, and every reader checks the version its rows record."""
    expected, present = expected_columns(), _columns(con)
    for table in DERIVED_TABLES:
        missing, retyped = _differences(expected[table], present.get(table))
        if retyped:
            con.execute(f"DROP TABLE {table}")
        else:
            for column in missing:
                con.execute(f"ALTER TABLE {table} ADD COLUMN IF NOT EXISTS {column} {expected[table][column]}")
    con.execute(DERIVED_SCHEMA)


@functools.cache
def expected_columns() -> dict[str, dict[str, str]]:
    """table -> column -> type, of every table actdb creates (from the DDL itself, in memory)."""
    from .catalog import CHUNK_DIGESTS_TABLE, OPTIMIZED_SCHEMA, SCHEMA

    con = duckdb.connect()
    try:
        for ddl in (SCHEMA, OPTIMIZED_SCHEMA, DERIVED_SCHEMA, CHUNK_DIGESTS_TABLE):
            con.execute(ddl)
        return _columns(con)
    finally:
        con.close()


def _columns(con) -> dict[str, dict[str, str]]:
    columns: dict[str, dict[str, str]] = {}
    for table, column, kind in con.execute(
            "SELECT table_name, column_name, data_type FROM information_schema.columns "
            "WHERE table_name NOT IN (SELECT view_name FROM duckdb_views())").fetchall():
        columns.setdefault(table, {})[column] = kind
    return columns


def _differences(expected: dict, present: dict | None) -> tuple[list[str], list[str]]:
    """(columns missing, 'column is TYPE, not TYPE' for those of another type); extra columns are allowed."""
    if present is None:
        return [], []
    return ([c for c in expected if c not in present],
            [f"{c} is {present[c]}, not {kind}" for c, kind in expected.items() if c in present and present[c] != kind])


def readable(con, table: str) -> bool:
    """Present with every column this version reads, of its type."""
    present = _columns(con).get(table)
    return present is not None and _differences(expected_columns()[table], present) == ([], [])


def column_problems(con) -> list[tuple[str, str]]:
    """(table, what is wrong) for each actdb table whose columns are not this version's. A derived
    table only lacking columns added since is not wrong: the next write adds them."""
    expected, present = expected_columns(), _columns(con)
    problems = []
    for table, columns in expected.items():
        missing, retyped = _differences(columns, present.get(table))
        older = {f"{c} is {kind}, not {columns[c]}" for (t, c), kind in OLDER_TYPES.items() if t == table}
        retyped = [r for r in retyped if r not in older]
        if table in DERIVED_TABLES and not retyped:
            continue
        if missing or retyped:
            problems.append((table, "; ".join(([f"lacks {', '.join(missing)}"] if missing else []) + retyped)))
    return problems


# -- indexes and class centroids --------------------------------------------------------------

def index_file(db, array: StoredArray, metric: str) -> Path:
    """Where the index of `array` for `metric` is written (the folder made if needed)."""
    folder = db.path / INDEX_DIR
    folder.mkdir(exist_ok=True)
    return folder / f"array{array.id}-{metric}.faiss"


def index_record(db, array: StoredArray, metric: str) -> pd.Series | None:
    """The catalog's record of the array's index for `metric`, or None when none was built."""
    if not db.has_table("indexes"):
        return None
    rows = db.sql("SELECT * FROM indexes WHERE array_id = ? AND metric = ?", [array.id, metric], memoize=True)
    return None if rows.empty else rows.iloc[0]


def file_digest(path: Path) -> tuple[int, str]:
    """(bytes, crc32c hex) of a file, streamed: ~12 GB/s, so verifying costs less than reading."""
    import google_crc32c

    checksum = google_crc32c.Checksum()
    size = 0
    with open(path, "rb") as handle:
        while block := handle.read(1 << 24):
            checksum.update(block)
            size += len(block)
    return size, checksum.hexdigest().decode()


def index_damage(db, record: pd.Series) -> str | None:
    """What is wrong with the file an index record names, or None when it is the one written."""
    path = db.path / INDEX_DIR / record.file
    if not path.is_file():
        return f"the index file {path} is missing"
    if record.get("file_crc32c") is None or pd.isna(record.get("file_crc32c")):
        return None  # built before index digests: FAISS's own checks only
    if path.stat().st_size != record.file_bytes:
        return f"the index file {path} is {path.stat().st_size} bytes, not the {record.file_bytes} written"
    if file_digest(path)[1] != record.file_crc32c:
        return f"the index file {path} is not the one written (crc32c differs)"
    return None


def open_index(db, record: pd.Series):
    """The index a record names, verified, with its tuned search effort; read-only (IVF kinds
    memory-mapped): writers load the file themselves."""
    from ..knn import index as faiss_index

    problem = index_damage(db, record)
    if problem:
        raise ActdbError(f"{problem}: run `actdb check --repair`, then `actdb index` to rebuild it")
    index = faiss_index.load_index(db.path / INDEX_DIR / record.file, mapped=record.kind in ("ivf", "ivfpq"))
    faiss_index.apply_search_params(index, json.loads(record.params) if record.params else {})
    return index


def record_index(db, array: StoredArray, metric: str, report: dict, labels, members, centroids) -> None:
    """The index row and its class centroids, in one transaction (after the file is in place)."""
    size, crc = file_digest(db.path / INDEX_DIR / report["file"])
    with db.catalog.write() as con:
        ensure_tables(con)
        con.execute("DELETE FROM indexes WHERE array_id = ? AND metric = ?", [array.id, metric])
        con.execute(
            "INSERT INTO indexes (array_id, metric, kind, factory, params, n_rows, recall_at_10, eval_queries, "
            "build_seconds, file, data_version, file_bytes, file_crc32c) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [array.id, metric, report["kind"], report["factory"], json.dumps(report["search_params"]),
             report["n_rows"], report["recall_at_10"], report["n_eval_queries"], report["build_seconds"],
             report["file"], array.data_version, size, crc],
        )
        con.execute("DELETE FROM class_centroids WHERE array_id = ? AND metric = ?", [array.id, metric])
        frame = pd.DataFrame({"label": labels, "members": members,
                              "centroid": [row.astype(np.float32).tolist() for row in centroids]})
        con.register("new_centroids", frame)
        con.execute("INSERT INTO class_centroids SELECT ?, ?, label, members, centroid FROM new_centroids",
                    [array.id, metric])


def drop_index(con, array_id: int, metric: str) -> None:
    con.execute("DELETE FROM indexes WHERE array_id = ? AND metric = ?", [array_id, metric])
    con.execute("DELETE FROM class_centroids WHERE array_id = ? AND metric = ?", [array_id, metric])


def has_index(db, array: StoredArray, metric: str = "l2") -> bool:
    return index_record(db, array, metric) is not None


def read_centroids(db, array: StoredArray, metric: str) -> dict | None:
    """label, members, centroid (NumPy; a DataFrame of lists costs ~50 ms for 1000 classes), or None."""
    if not db.has_table("class_centroids"):
        return None
    with db.catalog.read() as con:
        rows = con.execute(
            f"SELECT label, members, centroid::FLOAT[{array.channels}] AS centroid FROM class_centroids "
            "WHERE array_id = ? AND metric = ? ORDER BY label", [array.id, metric]).fetchnumpy()
    return rows if len(rows["label"]) else None


# -- unit statistics ----------------------------------------------------------------------------

def read_unit_stats(db, array: StoredArray) -> dict | None:
    """class, members, mean, std (float64) at the array's current data version; None when
    missing, stale, not a table this version wrote, or disagreeing with the array (then it
    is recomputed, never served: see `unit_stats_state`)."""
    rows, _ = unit_stats_state(db, array)
    if rows is None:
        return None
    return {"class": np.asarray(rows["class"], dtype=object), "members": np.asarray(rows["members"], np.int64),
            "mean": np.stack(rows["mean"]).astype(np.float64), "std": np.stack(rows["std"]).astype(np.float64)}


def unit_stats_state(db, array: StoredArray) -> tuple[dict | None, str | None]:
    """The kept statistics of an array, verified: (rows, None) when they may be served; (None,
    None) when none are kept or they are stale (computed from other rows) or written before
    digests (recomputed on use, nothing wrong); (None, what is wrong) when rows of the current
    data version disagree with what was written or with the array (a row's version or digest,
    a class missing or extra, a member count): `check` names that, the reader recomputes."""
    channels = array.channels
    with db.catalog.read() as con:
        if not readable(con, "unit_stats"):
            return None, None
        rows = con.execute(
            f"SELECT class, members, mean::DOUBLE[{channels}] AS mean, std::DOUBLE[{channels}] AS std, "
            "data_version, digest FROM unit_stats WHERE array_id = ? ORDER BY class", [array.id]).fetchnumpy()
    versions = set(rows["data_version"].tolist())
    if array.data_version not in versions:
        return None, None  # none kept, or stale: computed from other rows
    if len(versions) > 1:
        return None, f"its rows record {len(versions)} data versions; only one set is ever written"
    digests = rows["digest"].tolist()
    if all(digest is None for digest in digests):
        return None, None  # written before row digests
    for i, label in enumerate(rows["class"].tolist()):
        written = unit_stats_digest(array.id, label, int(rows["members"][i]), rows["mean"][i], rows["std"][i],
                                    rows["data_version"][i])
        if digests[i] != written:
            return None, f"the row of {_class_text(label)} is not the one written (its digest differs)"
    expected = _members_by_class(db, array)
    recorded = dict(zip(rows["class"].tolist(), rows["members"].tolist()))
    missing, extra = sorted(set(expected) - set(recorded)), sorted(set(recorded) - set(expected))
    if missing or extra:
        return None, "; ".join(([f"it lacks {', '.join(map(_class_text, missing))}"] if missing else [])
                               + ([f"it holds {', '.join(map(_class_text, extra))}, which the array does not"]
                                  if extra else []))
    for label, members in recorded.items():
        if members != expected[label]:
            return None, (f"it counts {members} members of {_class_text(label)}, the array holds {expected[label]} "
                          "rows of it")
    return rows, None


def _members_by_class(db, array: StoredArray) -> dict[str, int]:
    """Done rows per label of the array, and every done row under ALL_ROWS: what its statistics count."""
    counts = db.sql("SELECT i.label, count(*) AS n FROM done d JOIN images i ON i.id = d.image_id "
                    "WHERE d.array_id = ? AND i.label IS NOT NULL GROUP BY i.label", [array.id], memoize=True)
    members = dict(zip(counts.label.tolist(), counts.n.astype(int).tolist()))
    members[ALL_ROWS] = array.rows_done
    return members


def _class_text(label: str) -> str:
    return "every row ('*')" if label == ALL_ROWS else f"class {label!r}"


def unit_stats_digest(array_id: int, label: str, members: int, mean, std, data_version: str) -> str:
    """SHA-256 of one unit_stats row: its key, member count and data version (JSON), then its
    means and standard deviations (float64, little-endian)."""
    digest = hashlib.sha256(json.dumps([int(array_id), label, int(members), data_version]).encode())
    digest.update(np.ascontiguousarray(mean, dtype="<f8").tobytes())
    digest.update(np.ascontiguousarray(std, dtype="<f8").tobytes())
    return digest.hexdigest()


def write_unit_stats(db, array: StoredArray, classes, members, mean: np.ndarray, std: np.ndarray) -> None:
    """Kept for the array's current data version, each row with its digest; nothing on a
    read-only store."""
    if not db.catalog.writable():
        return
    mean, std = np.asarray(mean, np.float64), np.asarray(std, np.float64)
    frame = pd.DataFrame({"class": list(classes), "members": [int(m) for m in members],
                          "mean": [row.tolist() for row in mean], "std": [row.tolist() for row in std],
                          "digest": [unit_stats_digest(array.id, label, n, m, d, array.data_version)
                                     for label, n, m, d in zip(classes, members, mean, std)]})
    with db.catalog.write() as con:
        ensure_tables(con)
        con.execute("DELETE FROM unit_stats WHERE array_id = ?", [array.id])
        con.register("new_unit_stats", frame)
        con.execute("INSERT INTO unit_stats (array_id, class, members, mean, std, rows_done, data_version, digest) "
                    "SELECT ?, class, members, mean, std, ?, ?, digest FROM new_unit_stats",
                    [array.id, array.rows_done, array.data_version])


# -- optimized images' vectors ------------------------------------------------------------------

def png_damage(path: Path, sha256: str) -> str | None:
    """What is wrong with an optimized image's PNG, or None when it is the file its row was
    committed with (the sha256 recorded in optimized_images.png_sha256)."""
    try:
        data = Path(path).read_bytes()
    except OSError:
        return "is missing"
    if hashlib.sha256(data).hexdigest() != sha256:
        return "is not the one committed (sha256 differs)"
    return None


def optimized_vectors(db, array: StoredArray, names: list[str]) -> dict[str, np.ndarray]:
    """The kept vectors of optimized images in one array (those kept; the caller computes the rest)."""
    if not db.has_table("optimized_vectors"):
        return {}
    kept = db.sql("SELECT name, vector FROM optimized_vectors WHERE array_id = ? AND name IN "
                  "(SELECT unnest(?::VARCHAR[]))", [array.id, names])
    return {name: np.asarray(vector, np.float32) for name, vector in zip(kept.name, kept.vector)}


def kept_optimized_vectors(db) -> set[tuple[str, int]]:
    """(name, array id) of every kept vector."""
    if not db.has_table("optimized_vectors"):
        return set()
    kept = db.sql("SELECT name, array_id FROM optimized_vectors")
    return set(zip(kept.name, kept.array_id.astype(int)))


def keep_optimized_vectors(db, rows: list[tuple[str, int, np.ndarray]]) -> None:
    with db.catalog.write() as con:
        ensure_tables(con)
        con.executemany("INSERT INTO optimized_vectors VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
                        [(name, array_id, np.asarray(vector, np.float32).tolist()) for name, array_id, vector in rows])


def forget_optimized_vectors(con, names: list[str]) -> None:
    """In the transaction that replaces those optimized images: their old vectors go with them."""
    ensure_tables(con)
    con.execute("DELETE FROM optimized_vectors WHERE name IN (SELECT unnest(?::VARCHAR[]))", [names])


# -- cached map coordinates ---------------------------------------------------------------------

def map_file(db, identity: dict) -> Path:
    key = hashlib.sha256(json.dumps(identity).encode()).hexdigest()[:20]
    return db.path / MAPS_DIR / f"{identity['method']}-{key}.npy"


def read_map(path: Path, identity: dict) -> tuple[np.ndarray | None, str | None]:
    """The cached (points x 2) coordinates, or None and what was wrong with them (None: not cached)."""
    sidecar = path.with_suffix(".json")
    if not path.exists() and not sidecar.exists():
        return None, None
    try:
        recorded = json.loads(sidecar.read_text())
        data = path.read_bytes()
        coordinates = np.load(io.BytesIO(data), allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        return None, f"unreadable ({type(exc).__name__})"
    n = len(identity["ids"])
    if not isinstance(recorded, dict) or recorded.get("identity") != identity:
        return None, "recorded for other points"
    if recorded.get("sha256") != hashlib.sha256(data).hexdigest():
        return None, "changed since it was written (checksum mismatch)"
    if coordinates.shape != (n, 2) or coordinates.dtype != np.float64 or not np.isfinite(coordinates).all():
        return None, f"damaged (shape {coordinates.shape}, {coordinates.dtype})"
    return coordinates, None


def write_map(path: Path, identity: dict, coordinates: np.ndarray) -> None:
    """The .npy, then the sidecar naming its sha256: a kill between them leaves a mismatch, refitted."""
    buffer = io.BytesIO()
    np.save(buffer, coordinates.astype(np.float64), allow_pickle=False)
    data = buffer.getvalue()
    atomic_write(path, data)
    atomic_write(path.with_suffix(".json"), json.dumps({"identity": identity,
                                                        "sha256": hashlib.sha256(data).hexdigest()}).encode())
