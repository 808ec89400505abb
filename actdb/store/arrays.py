"""Zarr v3 activation arrays: one (n_images, channels) array per (model, weights, layer, reduce).

Each chunk holds a run of image ids and is only ever written whole (read-modify-write
by the single writer that owns it), never through Zarr sharding: partial writes to a
shared shard lose data (zarr-python #3514). LocalStore writes through a temp file and a
rename, so a killed writer leaves each chunk old or new, never torn.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import zarr
from zarr.codecs import BloscCodec

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


def create(store: Path, zarr_path: str, n_rows: int, channels: int, dtype: str, attributes: dict) -> zarr.Array:
    itemsize = np.dtype(dtype).itemsize
    return root(store, "a").create_array(
        zarr_path,
        shape=(n_rows, channels),
        chunks=(chunk_rows_for(channels, itemsize), channels),
        dtype=dtype,
        fill_value=np.nan,  # rows not computed yet read as NaN, never as plausible zeros
        compressors=BloscCodec(cname="zstd", clevel=3, shuffle="bitshuffle"),
        dimension_names=("image_id", "channel"),
        attributes=attributes,
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


def grow(array: zarr.Array, n_rows: int) -> None:
    if array.shape[0] < n_rows:
        array.resize((n_rows, array.shape[1]))


def chunk_groups(ids: np.ndarray, span: int):
    """Split sorted ids into (start, ids in [start, start + span)) with start a multiple of span."""
    cuts = np.flatnonzero(np.diff(ids // span)) + 1
    for part in np.split(ids, cuts):
        if len(part):
            yield int(part[0] // span) * span, part


def write_rows(array: zarr.Array, ids: np.ndarray, values: np.ndarray) -> None:
    """Write rows `ids` (sorted, unique); every touched chunk is written whole."""
    chunk_rows = array.chunks[0]
    n_rows = array.shape[0]
    offset = 0
    for start, part in chunk_groups(ids, chunk_rows):
        stop = min(start + chunk_rows, n_rows)
        rows = values[offset : offset + len(part)]
        offset += len(part)
        if len(part) == stop - start:
            block = rows
        else:
            block = array[start:stop]
            block[part - start] = rows
        array[start:stop] = block


class DamagedChunk(ActdbError):
    """A chunk holding rows the catalog marks done is missing or cannot be decoded."""

    def __init__(self, array: zarr.Array, chunk: int, what: str):
        self.array_path, self.chunk, self.missing = array.path, chunk, what == "is missing"
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
    except (RuntimeError, ValueError, OSError, TypeError) as exc:
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


def iter_blocks(array: zarr.Array, ids: np.ndarray, rows_per_block: int = 65536):
    """Stream (ids, float32 rows) over sorted ids, whole chunks at a time: memory stays bounded."""
    span = array.chunks[0] * max(1, rows_per_block // array.chunks[0])
    for _, part in chunk_groups(np.sort(np.asarray(ids, dtype=np.int64)), span):
        yield part, read_rows(array, part)
