"""`actdb map`: stored images (or class centroids) in 2-D by PCA, t-SNE or UMAP, with query
vectors placed into the same map and returned with it, so the plot can draw them (the
notebooks' t-SNE plot drew two sea_cucumber images instead of the optimized one).

t-SNE is openTSNE's: FFT-accelerated, and its `transform` places new points into a fitted
embedding without refitting. Fitted t-SNE maps are kept under STORE/maps/ (store/derived.py) as plain data (the
coordinates as .npy, never a pickle, beside a JSON of everything they were fitted on: array,
its data version, ids, labels, method, perplexity, seed); what `transform` needs is rebuilt
from them and the stored rows. Highlighting another query on the same map costs the
affinities and a `transform`, not a fit. A damaged entry is dropped and refitted, with a note.
PCA is refitted every time (milliseconds); UMAP, optional, is refitted too.
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd

from ..choices import MAP_METHODS, check_choice
from ..errors import ActdbError
from ..files import atomic_path, checked_output
from ..resolve import resolve
from ..results import table
from ..store import derived
from ..store.stored_array import StoredArray
from . import selection
from .unitstats import unit_stats

METHODS = MAP_METHODS
TSNE_PERPLEXITY = 30.0
MAP_FORMAT = 2  # bump when what a cached map holds changes


def map_points(db, array: StoredArray, *, method: str = "pca", classes: str | list[str] | None = None,
               per_class: int | None = 100, centroids: bool = False, highlight: list | None = None,
               seed: int = 0) -> pd.DataFrame:
    """kind (image | centroid | query), id, label, x, y: the map and the highlighted queries.

    Images: the named classes (default: all) with at most `per_class` members each, seeded.
    `centroids`: one point per class, the class mean over all its stored rows."""
    check_choice("method", method, METHODS)
    points, vectors = (_centroid_points(db, array, classes) if centroids
                       else _image_points(db, array, classes, per_class, seed))
    if len(points) < 3:
        raise ActdbError(f"a map needs at least 3 points, the selection has {len(points)}: choose more classes")
    started = time.perf_counter()
    embedding, cached, warnings = _fitted(db, array, method, points, vectors, seed)
    points[["x", "y"]] = _coordinates(method, embedding, vectors)
    fit_seconds = time.perf_counter() - started
    frames = [points]
    if highlight:
        resolved = resolve(db, array, highlight)
        started = time.perf_counter()
        placed = _place(method, embedding, resolved.vectors.astype(np.float64))
        frames.append(pd.DataFrame({"kind": "query", "id": resolved.image_ids, "label": resolved.texts,
                                    "x": placed[:, 0], "y": placed[:, 1]}))
        points.attrs["place_seconds"] = time.perf_counter() - started
    result = pd.concat(frames, ignore_index=True)
    result["id"] = result["id"].astype("Int64")
    return table(result, warnings=warnings, **points.attrs, fit_seconds=fit_seconds, cached=cached,
                 title=f"{array.describe()}: {_method_title(method)} of "
                       f"{'class centroids' if centroids else 'stored images'}")


def _image_points(db, array, classes, per_class, seed) -> tuple[pd.DataFrame, np.ndarray]:
    chosen = selection.sample(db, array, classes or db.labels(array), 0, per_class, seed)
    vectors = db.rows(array, chosen.ids)
    finite = selection.finite_rows(vectors)
    points = pd.DataFrame({"kind": "image", "id": chosen.ids[finite], "label": chosen.labels[finite]})
    return points, vectors[finite].astype(np.float64)


def _centroid_points(db, array, classes) -> tuple[pd.DataFrame, np.ndarray]:
    stats = unit_stats(db, array)
    keep = np.ones(len(stats.classes), bool)
    if classes:
        keep = np.isin(stats.classes, db.class_labels(classes, array))
    return pd.DataFrame({"kind": "centroid", "id": None, "label": stats.classes[keep]}), stats.class_mean[keep]


def _method_title(method: str) -> str:
    return {"pca": "PCA", "tsne": "t-SNE (openTSNE)", "umap": "UMAP"}[method]


def _fitted(db, array, method: str, points: pd.DataFrame, vectors: np.ndarray, seed: int):
    """(the fitted model, whether it came from the cache, warnings)."""
    if method == "pca":
        from sklearn.decomposition import PCA

        return PCA(n_components=2, random_state=seed).fit(vectors), False, []
    if method == "umap":
        return _fit_umap(vectors, seed), False, []
    identity = _identity(array, points, seed, len(vectors))
    coordinates_file = derived.map_file(db, identity)
    cached, problem = derived.read_map(coordinates_file, identity)
    if cached is not None:
        return _tsne_embedding(cached, vectors, seed), True, []
    embedding = _fit_tsne(vectors, seed)
    warnings = [f"the cached t-SNE map {coordinates_file.name} was {problem}: refitted"] if problem else []
    try:
        derived.write_map(coordinates_file, identity, np.asarray(embedding))
    except OSError as exc:
        warnings.append(f"the map is not cached ({exc.strerror}): the next call fits it again")
    return embedding, False, warnings


def _identity(array, points: pd.DataFrame, seed: int, n: int) -> dict:
    """Everything a t-SNE map is fitted from: its cache key, kept beside it in JSON."""
    return {"format": MAP_FORMAT, "array": array.id, "data_version": array.data_version, "method": "tsne",
            "perplexity": tsne_perplexity(n), "seed": seed, "kind": points.kind.iloc[0],
            "labels": points.label.tolist(), "ids": [None if pd.isna(i) else int(i) for i in points.id]}


def _tsne_embedding(coordinates: np.ndarray, vectors: np.ndarray, seed: int):
    """A fitted openTSNE embedding rebuilt from its coordinates and the rows it was fitted on:
    the same affinities (same perplexity and seed), so `transform` places queries as the fit would."""
    from openTSNE import TSNEEmbedding
    from openTSNE.affinity import PerplexityBasedNN

    affinities = PerplexityBasedNN(vectors, perplexity=tsne_perplexity(len(vectors)), random_state=seed, n_jobs=1)
    return TSNEEmbedding(coordinates, affinities, random_state=seed)


def tsne_perplexity(n_points: int) -> float:
    """openTSNE needs a perplexity below a third of the points; 30 (its default) where it fits."""
    return float(min(TSNE_PERPLEXITY, max(1.0, (n_points - 1) / 3.0)))


def _fit_tsne(vectors: np.ndarray, seed: int):
    from openTSNE import TSNE

    return TSNE(perplexity=tsne_perplexity(len(vectors)), random_state=seed, n_jobs=1).fit(vectors)


def _fit_umap(vectors: np.ndarray, seed: int):
    try:
        import umap
    except ImportError:
        raise ActdbError("--method umap needs umap-learn: pip install 'actdb[umap]' (or use --method tsne)") from None
    return umap.UMAP(n_components=2, random_state=seed).fit(vectors)


def _coordinates(method: str, embedding, vectors: np.ndarray) -> np.ndarray:
    if method == "pca":
        return embedding.transform(vectors)
    if method == "tsne":
        return np.asarray(embedding)
    return embedding.embedding_


def _place(method: str, embedding, queries: np.ndarray) -> np.ndarray:
    """Queries into the fitted map without refitting it."""
    if method == "tsne":
        k = min(25, len(embedding) - 1)
        return np.asarray(embedding.transform(queries, k=k, perplexity=min(5.0, (k - 1) / 3.0)))
    return embedding.transform(queries)


COORDINATE_SUFFIXES = (".parquet", ".csv")


def save_coordinates(frame: pd.DataFrame, path: str | Path) -> Path:
    """--out: the map as Parquet or CSV, by the file's suffix."""
    path = checked_output(path, COORDINATE_SUFFIXES, "out")
    with atomic_path(path) as temporary:
        if path.suffix == ".parquet":
            frame.to_parquet(temporary, index=False)
        else:
            frame.to_csv(temporary, index=False)
    return path
