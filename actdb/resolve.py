"""QUERY arguments to vectors in the space of one stored array: shared by every feature
that takes a QUERY (query, predict, analytics), below them and above models/ and store/.

A QUERY is an image file (run through exactly the model, weights, preprocessing, resize,
precision and reduction of the stored rows), `id:N` (a stored row), `optimized:NAME`,
or a `.npy` vector.
"""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from .errors import ActdbError
from .store import arrays


@dataclass
class Queries:
    texts: list[str]
    vectors: np.ndarray  # float32 (n, channels)
    image_ids: list[int | None]  # the stored image a query is, if it is one


def resolve(db, array: pd.Series, queries: list[str]) -> Queries:
    """Vectors for every QUERY, files batched through one model load."""
    if not queries:
        raise ActdbError("give at least one QUERY: an image file, id:N, optimized:NAME or a .npy vector")
    vectors: list[np.ndarray | None] = [None] * len(queries)
    image_ids: list[int | None] = [None] * len(queries)
    files = []
    for position, text in enumerate(queries):
        if text.startswith("id:"):
            image_ids[position] = _parse_id(text)
            vectors[position] = _stored_row(db, array, image_ids[position])
        elif text.startswith("optimized:"):
            raise ActdbError(
                f"{text}: optimized images are not in this store yet (they come with `actdb optimize`); "
                "query with an image file, id:N or a .npy vector"
            )
        elif text.endswith(".npy"):
            vectors[position] = _npy_vector(text, int(array.channels))
        else:
            if not Path(text).is_file():
                raise ActdbError(f"query {text!r} is not a file, id:N, optimized:NAME or a .npy vector")
            files.append(position)
    if files:
        computed = file_vectors(db, array, [queries[p] for p in files])
        for position, vector in zip(files, computed):
            vectors[position] = vector
            image_ids[position] = _stored_id_of_file(db, array, queries[position])
    return Queries(list(queries), np.stack(vectors).astype(np.float32), image_ids)


def _parse_id(text: str) -> int:
    digits = text[3:]
    if not digits.isdigit():
        raise ActdbError(f"{text!r}: write id:N with N an image id (see `actdb sql \"SELECT id, path FROM images\"`)")
    return int(digits)


def _stored_row(db, array: pd.Series, image_id: int) -> np.ndarray:
    done = db.sql("SELECT count(*) AS n FROM done WHERE array_id = ? AND image_id = ?",
                  [int(array.array_id), image_id]).n[0]
    if not done:
        exists = db.sql("SELECT count(*) AS n FROM images WHERE id = ?", [image_id]).n[0]
        what = "has no row in this array yet: ingest it" if exists else "is not in the store"
        raise ActdbError(f"image id:{image_id} {what}")
    return arrays.read_rows(arrays.open_array(db.path, array.zarr_path), np.array([image_id]))[0]


def _stored_id_of_file(db, array: pd.Series, path: str) -> int | None:
    """A query file that is a stored image is that image (class statistics leave it out)."""
    found = db.sql("SELECT i.id FROM images i JOIN done d ON d.image_id = i.id AND d.array_id = ? WHERE i.path = ?",
                   [int(array.array_id), str(Path(path).resolve())])
    return None if found.empty else int(found.id[0])


def _npy_vector(path: str, channels: int) -> np.ndarray:
    try:
        vector = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise ActdbError(f"cannot read {path}: {exc}") from None
    vector = np.squeeze(vector)
    if vector.shape != (channels,):
        raise ActdbError(f"{path} holds shape {vector.shape}; this array's vectors have {channels} values")
    return vector


def file_vectors(db, array: pd.Series, paths: list[str], reduce: str | None = None,
                 progress: bool = False) -> np.ndarray:
    """Image files through the same model and settings as the stored rows.

    `reduce`: another spatial reduction than the array's, e.g. `forward.FULL_MAPS` for
    whole feature maps, returned flattened (H*W*C values per image)."""
    from .images import pixels_of_file
    from .models import load_model, weights_digest
    from .models.forward import Extractor

    model = db.sql("SELECT * FROM models WHERE id = (SELECT model_id FROM arrays WHERE id = ?)",
                   [int(array.array_id)]).iloc[0]
    loaded = load_model(_model_argument(model), _weights_argument(model), array.precision,
                        model.preprocess if model.model_path else None)
    if weights_digest(loaded.keras_model) != model.weights_digest:
        raise ActdbError(f"the weights of {model['name']} on this machine differ from those of the stored rows; "
                         "queries would not be comparable")
    extractor = Extractor(loaded, [array.layer], reduce or array.reduce, _ingest_batch_size(db, array))
    rows = []
    starts = range(0, len(paths), extractor.batch_size)
    if progress:
        from tqdm import tqdm

        starts = tqdm(starts, desc=f"{array.layer} forward", unit="batch", file=sys.stderr)
    for start in starts:
        chunk = paths[start : start + extractor.batch_size]
        pixels = np.stack([pixels_of_file(p, loaded.input_size, array.resize) for p in chunk])
        out = extractor(pixels)[array.layer]
        rows.append(out.reshape(len(chunk), -1))
    return np.concatenate(rows)


def _model_argument(model: pd.Series) -> str:
    if model.model_path:
        if not Path(model.model_path).is_file():
            raise ActdbError(f"the model file {model.model_path} of the stored rows is gone: restore it to query by file")
        return model.model_path
    return model["name"]


def _weights_argument(model: pd.Series) -> str:
    if model.model_path:
        return "imagenet"  # a saved .keras model carries its own weights; models.load ignores this
    if model.weights.startswith("random:seed="):
        return "random:" + model.weights.split("=", 1)[1]
    if model.weights.startswith("file:"):
        if not model.weights_path or not Path(model.weights_path).is_file():
            raise ActdbError(f"the weights file {model.weights_path} of the stored rows is gone: restore it "
                             "to query by file")
        return model.weights_path
    return model.weights


def _ingest_batch_size(db, array: pd.Series) -> int:
    """The batch shape the stored rows were computed with, so a stored file maps to its own row exactly."""
    params = db.sql("SELECT params FROM runs WHERE id = (SELECT max(run_id) FROM done WHERE array_id = ?)",
                    [int(array.array_id)])
    if params.empty or params.params[0] is None:
        return 32
    return int(json.loads(params.params[0]).get("batch_size") or 32)
