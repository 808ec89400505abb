"""QUERY arguments to vectors in the space of one stored array: shared by every feature
that takes a QUERY (query, predict, analytics), below them and above models/ and store/.

A QUERY is an image file (run through exactly the model, weights, preprocessing, resize,
precision and reduction of the stored rows), `id:N` (a stored row), `optimized:NAME`,
or a `.npy` vector.
"""
from __future__ import annotations

import contextlib
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import weightspec
from .errors import ActdbError
from .store import derived
from .store.stored_array import StoredArray


OPTIMIZED_PREFIX = "optimized:"


@dataclass
class Queries:
    texts: list[str]
    vectors: np.ndarray  # float32 (n, channels)
    image_ids: list[int | None]  # the stored image a query is, if it is one


def resolve(db, array: StoredArray, queries: list, computed: dict[str, np.ndarray] | None = None) -> Queries:
    """Vectors for every QUERY, files batched through one model load. From Python a query may
    also be a NumPy vector; it is named `vector:POSITION` in the results. `computed`: vectors
    of image files already run through the array's model (see `resolve_in_arrays`)."""
    if not len(queries):
        raise ActdbError("give at least one QUERY: an image file, id:N, optimized:NAME or a .npy vector")
    queries = list(queries)
    vectors: list[np.ndarray | None] = [None] * len(queries)
    image_ids: list[int | None] = [None] * len(queries)
    files = []
    for position, text in enumerate(queries):
        if isinstance(text, np.ndarray):
            vectors[position] = _checked_vector(text, array.channels, f"vector {position}")
            queries[position] = f"vector:{position}"
        elif text.startswith("id:"):
            image_ids[position] = _parse_id(text)
            vectors[position] = _stored_row(db, array, image_ids[position])
        elif text.startswith(OPTIMIZED_PREFIX):
            vectors[position] = optimized_vectors(db, array, [optimized_name(db, text)])[0]
        elif text.endswith(".npy"):
            vectors[position] = _npy_vector(text, array.channels)
        else:
            readable_image(text)
            files.append(position)
    computed = dict(computed or {})
    pending = list(dict.fromkeys(queries[p] for p in files if queries[p] not in computed))
    if pending:
        computed.update(zip(pending, file_vectors(db, array, pending)))
    for position in files:
        vectors[position] = computed[queries[position]]
        image_ids[position] = _stored_id_of_file(db, array, queries[position])
    return Queries(list(queries), np.stack(vectors).astype(np.float32), image_ids)


def resolve_in_arrays(db, stored: list[StoredArray], queries: list[str]) -> list[Queries]:
    """Every QUERY in each of several arrays (one `Queries` per array, in order), image files
    run once per model and settings for all those arrays' layers, not once per layer. Every
    query is checked before a model runs."""
    files = []
    for text in queries:
        if text.startswith("id:"):
            _parse_id(text)
        elif text.startswith(OPTIMIZED_PREFIX):
            optimized_name(db, text)
        elif not text.endswith(".npy"):
            readable_image(text)
            files.append(text)
    computed: dict[int, dict[str, np.ndarray]] = {}
    if files:
        files = list(dict.fromkeys(files))
        groups: dict[tuple, list[StoredArray]] = {}
        for array in stored:
            groups.setdefault(_forward_settings(db, array), []).append(array)
        for group in groups.values():
            vectors = _files_through_layers(db, group[0], [a.layer for a in group], files)
            for array in group:
                computed[array.id] = dict(zip(files, vectors[array.layer]))
    return [resolve(db, array, queries, computed.get(array.id)) for array in stored]


def _forward_settings(db, array: StoredArray) -> tuple:
    """What a forward pass depends on besides the layer: arrays that share it share one model run."""
    return array.model_id, array.precision, array.resize, array.reduce, _ingest_batch_size(db, array)


def _parse_id(text: str) -> int:
    digits = text[3:]
    if not digits.isdigit():
        raise ActdbError(f"{text!r}: write id:N with N an image id (see `actdb sql \"SELECT id, path FROM images\"`)")
    return int(digits)


def _stored_row(db, array: StoredArray, image_id: int) -> np.ndarray:
    done = db.sql("SELECT count(*) AS n FROM done WHERE array_id = ? AND image_id = ?", [array.id, image_id]).n[0]
    if not done:
        raise ActdbError(f"image id:{image_id} {_why_not_stored(db, image_id)}")
    return db.rows(array, [image_id])[0]


def _why_not_stored(db, image_id: int) -> str:
    failed = db.sql("SELECT path, reason FROM errors WHERE image_id = ? ORDER BY logged_at DESC LIMIT 1", [image_id])
    if not failed.empty:
        return f"failed to ingest ({failed.path[0]}: {failed.reason[0]}), so it has no stored rows"
    if db.sql("SELECT count(*) AS n FROM images WHERE id = ?", [image_id]).n[0]:
        return "has no row in this array yet: ingest its source with this model and layer"
    return "is not in the store"


def image_file(text: str, db=None) -> str:
    """A QUERY as an image file, for commands that run a model on pixels (predict): a file is
    itself, `id:N` the stored image's file, `optimized:NAME` its PNG (then `db`, the store, is needed)."""
    if text.startswith(("id:", OPTIMIZED_PREFIX)) and db is None:
        raise ActdbError(f"{text} names an image in a store: give the store (actdb --store PATH, or $ACTDB_STORE)")
    if text.startswith("id:"):
        image_id = _parse_id(text)
        found = db.sql("SELECT path FROM images WHERE id = ?", [image_id])
        if found.empty:
            raise ActdbError(f"image {text} is not in the store {db.path}")
        text = found.path[0]
    elif text.startswith(OPTIMIZED_PREFIX):
        text = str(optimized_image_file(db, text))
    elif text.endswith(".npy"):
        raise ActdbError(f"{text}: a vector has no pixels to classify; give an image file, id:N or optimized:NAME")
    if not Path(text).is_file():
        raise ActdbError(f"cannot read image {text}: no such file (a query here is an image file, id:N or "
                         "optimized:NAME)")
    return readable_image(text)


def readable_image(path: str) -> str:
    """A query file, decoded as the model run will decode it, before any model is loaded: an
    unreadable file is refused in a moment, not after the model is built."""
    from .images import pixels_of_file

    if not Path(path).is_file():
        raise ActdbError(f"query {path!r} is not a file, id:N, optimized:NAME or a .npy vector")
    pixels_of_file(path, 1, "squash")
    return path


def _stored_id_of_file(db, array: StoredArray, path: str) -> int | None:
    """A query file that is a stored image is that image (class statistics leave it out)."""
    found = db.sql("SELECT i.id FROM images i JOIN done d ON d.image_id = i.id AND d.array_id = ? WHERE i.path = ?",
                   [array.id, str(Path(path).resolve())])
    return None if found.empty else int(found.id[0])


def optimized_name(db, text: str) -> str:
    """`optimized:NAME` -> NAME, if the store holds it."""
    name = text[len(OPTIMIZED_PREFIX):]
    known = db.has_table("optimized_images") and not db.sql(
        "SELECT name FROM optimized_images WHERE name = ?", [name]).empty
    if not known:
        raise ActdbError(f"{text}: no optimized image {name!r} in {db.path}; list them with "
                         "`actdb sql \"SELECT name, model, layer, unit FROM optimized_images\"` or make it with "
                         "`actdb optimize`")
    return name


def optimized_image_file(db, text: str) -> Path:
    """The PNG of `optimized:NAME`, for commands that read pixels (predict)."""
    return optimized_png(db, optimized_name(db, text))


def optimized_png(db, name: str, recorded: tuple[str, str] | None = None) -> Path:
    """The PNG of an optimized image, for every reader of its pixels: the file its row was
    committed with (sha256), else refused in one line with the fix, so damaged pixels are
    never classified, embedded or shown. `recorded`: its row's (png, png_sha256), when read."""
    if recorded is None:
        row = db.sql("SELECT png, png_sha256 FROM optimized_images WHERE name = ?", [name])
        recorded = (row.png[0], row.png_sha256[0])
    path = db.path / recorded[0]
    damage = derived.png_damage(path, recorded[1])
    if damage:
        raise ActdbError(f"optimized:{name}: its PNG {path} {damage}, so its pixels are not used: `actdb check` "
                         "names every damaged image; run the same `actdb optimize` again to remake it")
    return path


def optimized_vectors(db, array: StoredArray, names: list[str]) -> np.ndarray:
    """Optimized images' vectors in one stored array: each PNG through the array's model exactly
    as a query file is. Kept in the catalog by the writers (optimize, ingest); computed here,
    never written, where one is missing (reading never writes the store)."""
    found = derived.optimized_vectors(db, array, names)
    missing = [n for n in names if n not in found]
    if missing:
        pngs = db.sql("SELECT name, png, png_sha256 FROM optimized_images WHERE name IN (SELECT unnest(?::VARCHAR[]))",
                      [missing])
        recorded = {name: (png, sha256) for name, png, sha256 in zip(pngs.name, pngs.png, pngs.png_sha256)}
        computed = file_vectors(db, array, [str(optimized_png(db, n, recorded[n])) for n in missing])
        found.update(zip(missing, computed))
    return np.stack([np.asarray(found[n], np.float32) for n in names])


def optimized_vectors_in_every_array(db, names: list[str] | None = None) -> None:
    """Writers: keep the vectors of optimized images (`names`, default all) that some stored
    array lacks, one model load per model and settings; an array whose model cannot be loaded
    here is computed when queried instead."""
    if not db.arrays() or not db.has_table("optimized_images"):
        return
    pngs = db.sql("SELECT name, png, png_sha256 FROM optimized_images" + ("" if names is None else
                  " WHERE name IN (SELECT unnest(?::VARCHAR[]))"), None if names is None else [names])
    intact = {}
    for name, png, sha256 in zip(pngs.name, pngs.png, pngs.png_sha256):
        with contextlib.suppress(ActdbError):  # a damaged one is named by `check`, never embedded
            intact[name] = str(optimized_png(db, name, (png, sha256)))
    pngs = pngs[pngs.name.isin(intact)]
    have = derived.kept_optimized_vectors(db)
    groups: dict[tuple, list[StoredArray]] = {}
    for array in db.arrays():
        groups.setdefault(_forward_settings(db, array), []).append(array)
    for group in groups.values():
        lacking = pngs[[any((n, a.id) not in have for a in group) for n in pngs.name]]
        if lacking.empty:
            continue
        try:
            computed = _files_through_layers(db, group[0], [a.layer for a in group],
                                             [intact[name] for name in lacking.name])
        except ActdbError:
            continue
        derived.keep_optimized_vectors(db, [(name, a.id, vector) for a in group
                                            for name, vector in zip(lacking.name, computed[a.layer])])


def _npy_vector(path: str, channels: int) -> np.ndarray:
    try:
        vector = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise ActdbError(f"query {path}: no such file") from None
    except (OSError, ValueError):
        raise ActdbError(f"{path} is not a NumPy .npy file holding a vector (write one with numpy.save)") from None
    return _checked_vector(vector, channels, path)


def _checked_vector(vector: np.ndarray, channels: int, name: str) -> np.ndarray:
    """A query vector: numbers, this array's width, all finite."""
    if not (np.issubdtype(vector.dtype, np.number) or vector.dtype == bool):
        raise ActdbError(f"{name} holds {vector.dtype} values; a query vector holds numbers")
    if np.iscomplexobj(vector):
        raise ActdbError(f"{name} holds complex numbers; a query vector holds real ones (take .real or abs())")
    vector = np.squeeze(vector)
    if vector.shape != (channels,):
        raise ActdbError(f"{name} holds shape {vector.shape}; this array's vectors have {channels} values")
    if not np.isfinite(vector).all():
        raise ActdbError(f"{name} holds NaN or infinite values; a query vector must be finite")
    if np.abs(vector.astype(np.float64)).max(initial=0) > np.finfo(np.float32).max:
        raise ActdbError(f"{name} holds values beyond float32's range (|x| > 3.4e38), which stored vectors "
                         "cannot hold: rescale it")
    return vector.astype(np.float32)


def file_vectors(db, array: StoredArray, paths: list[str], reduce: str | None = None,
                 progress: bool = False) -> np.ndarray:
    """Image files through the same model and settings as the stored rows.

    `reduce`: another spatial reduction than the array's, e.g. `forward.FULL_MAPS` for
    whole feature maps, returned flattened (H*W*C values per image)."""
    return _files_through_layers(db, array, [array.layer], paths, reduce, progress)[array.layer]


def _files_through_layers(db, array: StoredArray, layers: list[str], paths: list[str], reduce: str | None = None,
                          progress: bool = False) -> dict[str, np.ndarray]:
    """Files through `array`'s model and settings, at every layer in `layers` (one model load)."""
    from .images import pixels_of_file
    from .models import load_model, weights_digest
    from .models.forward import Extractor

    loaded = load_model(_model_argument(array), _weights_argument(array), array.precision,
                        array.preprocess if array.model_path else None)
    if weights_digest(loaded.keras_model) != array.weights_digest:
        raise ActdbError(f"the weights of {array.model} on this machine differ from those of the stored rows; "
                         "queries would not be comparable")
    extractor = Extractor(loaded, layers, reduce or array.reduce, _ingest_batch_size(db, array))
    rows = []
    starts = range(0, len(paths), extractor.batch_size)
    if progress:
        from tqdm import tqdm

        starts = tqdm(starts, desc=f"{array.layer} forward", unit="batch", file=sys.stderr)
    for start in starts:
        chunk = paths[start : start + extractor.batch_size]
        pixels = np.stack([pixels_of_file(p, loaded.input_size, array.resize) for p in chunk])
        out = extractor(pixels)
        rows.append({layer: out[layer].reshape(len(chunk), -1) for layer in layers})
    return {layer: np.concatenate([r[layer] for r in rows]) for layer in layers}


def model_arguments(array: StoredArray) -> dict:
    """The model, weights and preprocess options that load the array's model again exactly
    (a zoo model by name, a saved .keras model by its file), e.g. to optimize its units."""
    return {"model": _model_argument(array), "weights": _weights_argument(array),
            "preprocess": array.preprocess if array.model_path else None}


def _model_argument(array: StoredArray) -> str:
    if array.model_path:
        if not Path(array.model_path).is_file():
            raise ActdbError(f"the model file {array.model_path} of the stored rows is gone: restore it to query by file")
        return array.model_path
    return array.model


def _weights_argument(array: StoredArray) -> str:
    """What `load_model` needs to rebuild the recorded weights."""
    if array.model_path:
        return weightspec.IMAGENET  # a saved .keras model carries its own weights; models.load ignores this
    if array.weights.startswith(weightspec.FILE_PREFIX):
        if not array.weights_path or not Path(array.weights_path).is_file():
            raise ActdbError(f"the weights file {array.weights_path} of the stored rows is gone: restore it "
                             "to query by file")
        return array.weights_path
    return weightspec.given(array.weights)


def _ingest_batch_size(db, array: StoredArray) -> int:
    """The batch shape the stored rows were computed with, so a stored file maps to its own row exactly."""
    params = db.sql("SELECT params FROM runs WHERE id = (SELECT max(run_id) FROM done WHERE array_id = ?)",
                    [array.id], memoize=True)
    if params.empty or params.params[0] is None:
        return 32
    return int(json.loads(params.params[0]).get("batch_size") or 32)
