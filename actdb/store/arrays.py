"""Zarr v3 activation arrays: one (n_images, channels) array per (model, weights, layer, reduce).

Each chunk holds a run of image ids and is only ever written whole (read-modify-write
by the single writer that owns it), never through Zarr sharding: partial writes to a
shared shard lose data (zarr-python #3514). LocalStore writes through a temp file and a
rename, so a killed writer leaves each chunk old or new, never torn.

Integrity, end to end: every chunk of a new array ends in a crc32c checksum (Zarr v3's
`crc32c` codec), so a chunk damaged on disk fails to decode instead of decoding into
garbage; and every commit records, per touched chunk, the digest of its done rows
(`rows_digest`: their ids and stored values), so `check` can tell a chunk that decodes but
is not what was committed (another chunk's, array's or store's file put in its place). The
digest covers only the done rows, so a kill between a chunk write and its commit leaves the
committed rows and their digest in agreement.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import zarr
from zarr.codecs import BloscCodec, Crc32cCodec

from ..errors import ActdbError

ZARR_DIR = "activations.zarr"
TARGET_CHUNK_BYTES = 1 << 20  # the zarr docs' rule of thumb: chunks of at least 1 MB
MIN_CHUNK_ROWS, MAX_CHUNK_ROWS = 256, 4096  # powers of two, so 4096-id work shards align with every array


def chunk_rows_for(channels: int, itemsize: int) -> int:
    rows = TARGET_CHUNK_BYTES // (channels * itemsize)
    rows = 1 << max(0, int(rows).bit_length() - 1)  # round down to a power of two
    return int(np.clip(rows, MIN_CHUNK_ROWS, MAX_CHUNK_ROWS))


def root(store: Path, mode: str = "r") -> zarr.Group:
    return zarr.open_group(str(Path(store) / ZARR_DIR), mode=mode, zarr_format=3)


def create(store: Path, zarr_path: str, n_rows: int, channels: int, dtype: str, attributes: dict,
           chunk_rows: int | None = None, overwrite: bool = False) -> zarr.Array:
    """A new array; `overwrite` replaces one no catalog row names (written by a killed writer)."""
    itemsize = np.dtype(dtype).itemsize
    return root(store, "a").create_array(
        zarr_path,
        shape=(n_rows, channels),
        chunks=(chunk_rows or chunk_rows_for(channels, itemsize), channels),
        dtype=dtype,
        fill_value=np.nan,  # rows not computed yet read as NaN, never as plausible zeros
        compressors=(BloscCodec(cname="zstd", clevel=3, shuffle="bitshuffle"), Crc32cCodec()),
        dimension_names=("image_id", "channel"),
        attributes=attributes,
        overwrite=overwrite,
    )


class MissingArray(ActdbError):
    """An array the catalog lists is gone from activations.zarr."""


def open_array(store: Path, zarr_path: str, mode: str = "r") -> zarr.Array:
    try:
        return root(store, mode)[zarr_path]
    except (KeyError, FileNotFoundError):
        raise MissingArray(f"array {zarr_path}, listed in the catalog, is missing from {Path(store) / ZARR_DIR}: run "
                           "`actdb check --repair` (db.check(repair=True)) to drop it, then the same ingest again "
                           "to recompute it") from None


def stored_paths(store: Path) -> list[str]:
    """The path of every array in activations.zarr."""
    return [name for name, node in root(store).members(max_depth=None) if isinstance(node, zarr.Array)]


def has_checksums(array: zarr.Array) -> bool:
    """Whether each chunk carries a crc32c checksum (arrays made before actdb added it do not)."""
    return any(isinstance(codec, Crc32cCodec) for codec in getattr(array.metadata, "codecs", ()))


def rows_digest(ids: np.ndarray, rows: np.ndarray) -> str:
    """What the catalog records of a chunk: SHA-256 of its done rows' ids (int64, little-endian)
    followed by their values (the stored dtype, little-endian, row-major), ascending ids."""
    digest = hashlib.sha256(np.ascontiguousarray(ids, dtype="<i8").tobytes())
    digest.update(np.ascontiguousarray(rows, dtype=rows.dtype.newbyteorder("<")).tobytes())
    return digest.hexdigest()


def grow(array: zarr.Array, n_rows: int) -> None:
    if array.shape[0] < n_rows:
        array.resize((n_rows, array.shape[1]))


def chunk_groups(ids: np.ndarray, span: int):
    """Split sorted ids into (start, ids in [start, start + span)) with start a multiple of span."""
    cuts = np.flatnonzero(np.diff(ids // span)) + 1
    for part in np.split(ids, cuts):
        if len(part):
            yield int(part[0] // span) * span, part


def write_rows(array: zarr.Array, ids: np.ndarray, values: np.ndarray, done: np.ndarray | None = None,
               digests: dict[int, str] | None = None) -> dict[int, tuple[str, int]]:
    """Write rows `ids` (sorted, unique) and make them durable; every touched chunk is written whole.

    `done`: the sorted ids already committed (only those in touched chunks matter), `digests`
    the digests recorded for their chunks. A chunk that keeps committed rows is read back and,
    where a digest is recorded, checked against it, so that a damaged chunk is refused rather
    than merged and vouched for. Returns {chunk: (digest, rows)} over each touched chunk's
    committed rows plus the new ones: what the commit that marks `ids` done records."""
    chunk_rows = array.chunks[0]
    n_rows = array.shape[0]
    done = np.zeros(0, np.int64) if done is None else np.asarray(done, dtype=np.int64)
    digests = digests or {}
    written = {}
    offset = 0
    for start, part in chunk_groups(ids, chunk_rows):
        stop = min(start + chunk_rows, n_rows)
        chunk = start // chunk_rows
        rows = np.asarray(values[offset : offset + len(part)], dtype=array.dtype)
        offset += len(part)
        kept = done[np.searchsorted(done, start) : np.searchsorted(done, stop)]
        kept = kept[~np.isin(kept, part)]
        if len(part) == stop - start:
            block = rows
        elif len(kept):
            block = read_done_chunk(array, start, stop)
            if chunk in digests and rows_digest(kept, block[kept - start]) != digests[chunk]:
                raise DamagedChunk(array, chunk, CHANGED)
            block[part - start] = rows
        else:
            try:
                block = array[start:stop]
            except DECODE_ERRORS:  # no committed row in it: whatever the file holds is not data
                block = np.full((stop - start, array.shape[1]), np.nan, dtype=array.dtype)
            block[part - start] = rows
        array[start:stop] = block
        now = np.union1d(kept, part)
        written[chunk] = (rows_digest(now, block[now - start]), len(now))
        _sync(chunk_file(array, chunk))
    return written


def _sync(path: Path) -> None:
    """Chunks reach the disk before the catalog commit that vouches for them."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:  # an all-NaN chunk is not stored (Zarr drops fill-value chunks)
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


DECODE_ERRORS = (RuntimeError, ValueError, OSError, TypeError)
CHANGED = "holds other values than were committed (its digest differs)"


class DamagedChunk(ActdbError):
    """A chunk holding rows the catalog marks done is missing, cannot be decoded (its crc32c
    checksum fails, or it is not a chunk at all) or holds other values than were committed."""

    def __init__(self, array: zarr.Array, chunk: int, what: str):
        self.array_path, self.chunk, self.missing = array.path, chunk, what == "is missing"
        self.what = what
        first = chunk * array.chunks[0]
        super().__init__(
            f"array {array.path}: chunk {chunk_key(array, chunk)} (image ids {first}-{first + array.chunks[0] - 1}) "
            f"{what}; its rows are not served as data: run `actdb check --repair` (db.check(repair=True)), "
            "then the same ingest again to recompute them"
        )


def chunk_key(array: zarr.Array, chunk: int) -> str:
    return array.metadata.encode_chunk_key((chunk, 0))


def chunk_file(array: zarr.Array, chunk: int) -> Path:
    """Where a chunk of an array in a local store lives (absent until first written)."""
    return Path(array.store.root) / array.path / chunk_key(array, chunk)


def read_done_chunk(array: zarr.Array, start: int, stop: int) -> np.ndarray:
    """Rows [start, stop) of one chunk whose rows the catalog marks done. Zarr reads a missing
    chunk as its NaN fill value: here that is an error, never data."""
    chunk = start // array.chunks[0]
    if not chunk_file(array, chunk).is_file():
        raise DamagedChunk(array, chunk, "is missing")
    try:
        return array[start:stop]
    except DECODE_ERRORS as exc:
        if "checksum" in str(exc):
            raise DamagedChunk(array, chunk, "cannot be decoded: its crc32c checksum fails (changed or damaged on "
                               "disk)") from None
        raise DamagedChunk(array, chunk, f"cannot be decoded ({type(exc).__name__}: {str(exc)[:60]})") from None


def read_rows(array: zarr.Array, ids: np.ndarray) -> np.ndarray:
    """Rows `ids` (all done) in the given order, reading each touched chunk once."""
    ids = np.asarray(ids, dtype=np.int64)
    order = np.argsort(ids, kind="stable")
    out = np.empty((len(ids), array.shape[1]), dtype=np.float32)
    sorted_ids = ids[order]
    offset = 0
    for start, part in chunk_groups(sorted_ids, array.chunks[0]):
        stop = int(part[-1]) + 1
        block = read_done_chunk(array, start, stop)
        out[order[offset : offset + len(part)]] = block[part - start]
        offset += len(part)
    return out


BLOCK_BYTES = 64 << 20  # a streamed block: 32,768 rows of 512 float32 values, 8,192 of 2048


def iter_blocks(array: zarr.Array, ids: np.ndarray, rows_per_block: int | None = None):
    """Stream (ids, float32 rows) over sorted ids, whole chunks at a time: memory stays bounded
    (by default about BLOCK_BYTES per block, whatever the width of a row)."""
    if rows_per_block is None:
        rows_per_block = BLOCK_BYTES // (array.shape[1] * array.dtype.itemsize)
    span = array.chunks[0] * max(1, rows_per_block // array.chunks[0])
    for _, part in chunk_groups(np.sort(np.asarray(ids, dtype=np.int64)), span):
        yield part, read_rows(array, part)
