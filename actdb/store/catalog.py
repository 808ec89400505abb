"""The DuckDB catalog: every image's metadata, models, arrays, runs, completion, errors.
Derived tables (indexes, centroids, statistics, optimized vectors) are derived.py's.

Sessions are short (open, one transaction, close) so that readers and the one writer
take turns; see locks.py. Row i of every Zarr array is images.id = i.
"""
from __future__ import annotations

import time
from contextlib import contextmanager
from pathlib import Path

import duckdb

from ..errors import ActdbError
from .locks import catalog_lock, writable

CATALOG_FILE = "catalog.duckdb"
INDEX_DIR = "indexes"  # index files, named by indexes.file
SCHEMA_VERSION = "1"

SCHEMA = """
CREATE TABLE meta (key VARCHAR PRIMARY KEY, value VARCHAR);
CREATE TABLE images (
    id BIGINT PRIMARY KEY,
    path VARCHAR NOT NULL UNIQUE,
    content_hash VARCHAR,          -- of the file bytes when first decoded (FarmHash64; ALGO:HEX with a prefix); a
                                   -- file that changed is re-ingested (ingest/writer.py ChangedFiles)
    wnid VARCHAR,
    class_index SMALLINT,          -- ImageNet-1k index, sorted-wnid order
    label VARCHAR,
    split VARCHAR,
    source VARCHAR,                -- the SOURCE argument the image was listed from
    width INTEGER,
    height INTEGER,
    added_run INTEGER
);
CREATE TABLE models (
    id INTEGER PRIMARY KEY,
    name VARCHAR NOT NULL,
    weights VARCHAR NOT NULL,      -- imagenet | random:seed=N | file:sha256=...
    weights_digest VARCHAR,        -- SHA256 of all weight values: resumed runs must match it
    preprocess VARCHAR NOT NULL,
    input_size INTEGER NOT NULL,
    model_path VARCHAR,            -- the .keras file, for models loaded from a path
    weights_path VARCHAR,          -- the weights file, for --weights PATH
    UNIQUE (name, weights)
);
CREATE TABLE arrays (
    id INTEGER PRIMARY KEY,
    model_id INTEGER NOT NULL,
    layer VARCHAR NOT NULL,
    reduce VARCHAR NOT NULL,       -- mean | max over the spatial axes (vector layers are stored as they are)
    channels INTEGER NOT NULL,
    dtype VARCHAR NOT NULL,        -- float32 | float16 on disk
    precision VARCHAR NOT NULL,    -- compute precision: float32 | bfloat16 | float16
    resize VARCHAR NOT NULL,       -- center-crop | squash
    zarr_path VARCHAR NOT NULL,    -- inside activations.zarr
    UNIQUE (model_id, layer, reduce)
);
CREATE TABLE runs (
    id INTEGER PRIMARY KEY,
    started TIMESTAMP NOT NULL,
    finished TIMESTAMP,
    status VARCHAR NOT NULL,       -- running | done | failed | interrupted | killed (found dead by a later writer)
    params JSON,
    planned BIGINT,
    ingested BIGINT DEFAULT 0,
    skipped BIGINT DEFAULT 0,
    failed BIGINT DEFAULT 0,
    seconds DOUBLE,
    images_per_s DOUBLE
);
CREATE TABLE done (array_id INTEGER NOT NULL, image_id BIGINT NOT NULL, run_id INTEGER,
                   PRIMARY KEY (array_id, image_id));
CREATE TABLE predictions (model_id INTEGER NOT NULL, image_id BIGINT NOT NULL, rank TINYINT NOT NULL,
                          class_index SMALLINT NOT NULL, probability FLOAT NOT NULL,
                          PRIMARY KEY (model_id, image_id, rank));
CREATE TABLE errors (path VARCHAR NOT NULL, image_id BIGINT, reason VARCHAR NOT NULL, run_id INTEGER,
                     logged_at TIMESTAMP DEFAULT current_timestamp);
CREATE TABLE imagenet_classes (class_index SMALLINT PRIMARY KEY, wnid VARCHAR, name VARCHAR);
CREATE VIEW array_list AS
    SELECT a.id AS array_id, m.name AS model, m.weights, a.layer, a.reduce, a.channels, a.dtype,
           a.precision, a.resize, a.zarr_path,
           (SELECT count(*) FROM done d WHERE d.array_id = a.id) AS rows_done
    FROM arrays a JOIN models m ON m.id = a.model_id;
"""

# Optimized images (`actdb optimize`): not rows of `images`, so they never count as dataset
# neighbours, class members or statistics. Created by new stores and, on first use, in older ones.
OPTIMIZED_SCHEMA = """
CREATE TABLE IF NOT EXISTS optimized_images (
    name VARCHAR PRIMARY KEY,      -- queried as optimized:NAME
    model VARCHAR NOT NULL,
    weights VARCHAR NOT NULL,      -- imagenet | random:seed=N | file:sha256=...
    weights_digest VARCHAR NOT NULL,
    layer VARCHAR NOT NULL,        -- 'logits' for the logit objective
    unit INTEGER NOT NULL,         -- channel, or class index for logits
    objective VARCHAR NOT NULL,    -- channel | neuron | logit
    sign TINYINT NOT NULL,         -- +1 maximized, -1 minimized (--negative)
    method VARCHAR NOT NULL,       -- fft | pixel | pattern
    seed BIGINT NOT NULL,
    diversity_index INTEGER NOT NULL,
    params JSON NOT NULL,          -- every parameter; the same name with other params is refused
    start_activation DOUBLE,       -- the target on the start image and on the saved PNG
    final_activation DOUBLE,
    top1_class VARCHAR,            -- the optimizing model's top-1 class of the PNG, when it has a classifier
    png VARCHAR NOT NULL,          -- relative to the store
    png_sha256 VARCHAR NOT NULL,
    created TIMESTAMP NOT NULL DEFAULT current_timestamp
);
"""

# Tables whose rows are keyed by an array id: what a dropped array leaves behind.
ARRAY_KEYED_TABLES = ("done", "chunk_digests", "class_centroids", "indexes", "unit_stats", "optimized_vectors")


def table_names(con) -> set[str]:
    return {row[0] for row in con.execute("SELECT table_name FROM information_schema.tables").fetchall()}


def next_array_id(con) -> int:
    """A new array's id, never one used before: a reused id would inherit whatever derived
    data (statistics, vectors, maps) is still keyed by the dropped array's."""
    if not con.execute("SELECT count(*) FROM duckdb_sequences() WHERE sequence_name = 'array_ids'").fetchone()[0]:
        used = [con.execute("SELECT coalesce(max(id), 0) FROM arrays").fetchone()[0]]
        present = table_names(con)
        used += [con.execute(f"SELECT coalesce(max(array_id), 0) FROM {t}").fetchone()[0]
                 for t in ARRAY_KEYED_TABLES if t in present]
        con.execute(f"CREATE SEQUENCE array_ids START WITH {max(used) + 1}")
    return int(con.execute("SELECT nextval('array_ids')").fetchone()[0])


# Per committed chunk, the digest of its done rows (arrays.rows_digest), written in the very
# transaction that marks those rows done: `check` compares it with the chunk as stored. Added
# after schema version 1: created by new stores and by the first ingest into an older one.
CHUNK_DIGESTS_TABLE = """
CREATE TABLE IF NOT EXISTS chunk_digests (
    array_id INTEGER NOT NULL,
    chunk BIGINT NOT NULL,         -- the chunk of image ids [chunk * chunk_rows, (chunk + 1) * chunk_rows)
    rows BIGINT NOT NULL,          -- done rows it covers
    digest VARCHAR NOT NULL,       -- SHA-256 (hex) of those rows' ids (int64 LE) then values (stored dtype, LE)
    PRIMARY KEY (array_id, chunk)
);
"""

_LOCK_RETRY_SECONDS = 10.0

# Every read session, the user's SQL among them, reaches only the catalog's own tables: no
# files, URLs or extensions, and the SQL cannot switch that back on (DuckDB, "Securing DuckDB").
LOCKED_DOWN = {"enable_external_access": False, "autoload_known_extensions": False,
               "autoinstall_known_extensions": False, "lock_configuration": True}


class Catalog:
    """Short read-only or read-write sessions on `STORE/catalog.duckdb`."""

    def __init__(self, store: Path):
        self.store = Path(store)
        self.path = self.store / CATALOG_FILE

    def stamp(self) -> tuple:
        """Changes whenever a transaction commits (the file or its write-ahead log is written)."""
        stats = []
        for path in (self.path, self.path.with_name(self.path.name + ".wal")):
            try:
                info = path.stat()
                stats.append((info.st_mtime_ns, info.st_size, info.st_ino))
            except FileNotFoundError:
                stats.append(None)
        return tuple(stats)

    def exists(self) -> bool:
        return self.path.is_file()

    def writable(self) -> bool:
        """False on a read-only directory or filesystem: a reading command keeps no cache there."""
        return writable(self.store)

    def create(self) -> None:
        """Create the schema; the caller holds the writer lock."""
        from .. import imagenet
        from .derived import DERIVED_SCHEMA

        self.store.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".creating")
        tmp.unlink(missing_ok=True)
        con = duckdb.connect(str(tmp))
        try:
            con.execute(SCHEMA)
            con.execute(OPTIMIZED_SCHEMA)
            con.execute(DERIVED_SCHEMA)
            con.execute(CHUNK_DIGESTS_TABLE)
            con.execute("INSERT INTO meta VALUES ('schema_version', ?)", [SCHEMA_VERSION])
            classes = imagenet.classes()  # one statement: executemany costs seconds for 1000 rows
            con.execute("INSERT INTO imagenet_classes SELECT unnest(?::SMALLINT[]), unnest(?::VARCHAR[]), "
                        "unnest(?::VARCHAR[])", [[c.index for c in classes], [c.wnid for c in classes],
                                                 [c.name for c in classes]])
        finally:
            con.close()
        tmp.rename(self.path)  # a half-created catalog is never seen

    @contextmanager
    def read(self):
        if not self.exists():
            raise ActdbError(missing_store_message(self.store))
        with catalog_lock(self.store, exclusive=False):
            con = _connect(self.path, read_only=True, config=LOCKED_DOWN)
            try:
                yield con
            finally:
                con.close()

    @contextmanager
    def write(self):
        """One transaction: everything in the block commits together or not at all."""
        with catalog_lock(self.store, exclusive=True):
            con = _connect(self.path, read_only=False)
            try:
                con.execute("BEGIN TRANSACTION")
                try:
                    yield con
                except BaseException:
                    con.execute("ROLLBACK")
                    raise
                con.execute("COMMIT")
            finally:
                con.close()


def missing_store_message(store: Path) -> str:
    from .arrays import ZARR_DIR

    if (Path(store) / ZARR_DIR).exists():
        return (f"{store} holds {ZARR_DIR} but no {CATALOG_FILE}, which says what its rows are: restore the "
                f"catalog from a backup, or move {ZARR_DIR} away to start a new store")
    return f"no actdb store at {store}: run `actdb --store {store} ingest SOURCE` first"


def _connect(path: Path, read_only: bool, config: dict | None = None) -> duckdb.DuckDBPyConnection:
    """Connect, waiting a little if a non-actdb program (a duckdb shell) holds the file."""
    deadline = time.monotonic() + _LOCK_RETRY_SECONDS
    while True:
        try:
            return duckdb.connect(str(path), read_only=read_only, config={"threads": 2, **(config or {})})
        except duckdb.IOException as exc:
            if "not a valid duckdb database" in str(exc).lower():
                raise ActdbError(f"the catalog {path} is not a DuckDB database (corrupt, or overwritten by another "
                                 "file): restore it from a backup") from None
            if "lock" not in str(exc).lower() or time.monotonic() > deadline:
                raise ActdbError(
                    f"cannot open the catalog {path}: another program holds it ({str(exc).splitlines()[0][:120]}); "
                    "close it and retry"
                ) from None
            time.sleep(0.05)
