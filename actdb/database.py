"""The notebook API: `db = actdb.open(path)`. Every CLI command is one call here; the
features (query, and the ones to come) sit below it and take the store it wraps."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from .errors import ActdbError
from .store.catalog import missing_store_message
from .store.reader import Store, store_path


def open(path: str | Path | None = None) -> "Database":  # noqa: A001 - mirrors zarr.open / duckdb.connect
    db = Database(store_path(path))
    if not db.catalog.exists():
        raise ActdbError(missing_store_message(db.path))
    return db


class Database(Store):
    """A store plus everything actdb computes over it. Feature modules are imported on first
    use, so opening a store for SQL costs no FAISS or TensorFlow import."""

    # -- query: indexes, nearest images, nearest classes --------------------------------------

    def build_index(self, model: str | None = None, layer: str | None = None, reduce: str = "mean",
                    metric: str = "l2", kind: str = "auto", recall: float = 0.95,
                    weights: str | None = None, rebuild: bool = False) -> dict:
        """Build or update the FAISS index and class centroids of an array; returns the build report.
        `recall`: the recall@10 an approximate index must reach (the CLI's --recall)."""
        from .query import api

        return api.build(self, model, layer, reduce, metric, kind, recall, weights, rebuild)

    def neighbors(self, queries, model: str | None = None, layer: str | None = None, k: int = 10,
                  where: str | None = None, reduce: str = "mean", metric: str = "l2",
                  weights: str | None = None) -> pd.DataFrame:
        """Nearest stored images of each query (file path, `id:N`, `.npy`, NumPy vectors); `where` filters by
        catalog columns."""
        from .query import api

        return api.neighbors(self, _as_list(queries), model, layer, k, where, reduce, metric, weights)

    def classes(self, queries, model: str | None = None, layer: str | None = None, by: str = "centroid",
                k: int = 50, top: int = 10, class_name: str | None = None, reduce: str = "mean",
                metric: str = "l2", weights: str | None = None) -> pd.DataFrame:
        """Classes ranked for each query: by centroid, knn, or mean/median/min distance to all members."""
        from .query import api

        return api.classes(self, _as_list(queries), model, layer, by, k, top, class_name, reduce, metric, weights)

    # -- integrity: check and repair -----------------------------------------------------------

    def check(self, repair: bool = False) -> dict:
        """Verify every done row's chunk, the arrays' shapes and the index files; `repair` unmarks
        damaged rows (the same ingest then recomputes exactly them) and drops broken index records."""
        from .store import integrity

        return integrity.check(self, repair)


    # -- optimize: activation maximization ------------------------------------------------------

    def optimize(self, layer: str | None = None, units: str | int | list[int] | None = None, *,
                 model: str = "efficientnet_lite0", sheet: str | Path | None = None, progress: bool = True,
                 **options) -> pd.DataFrame:
        """Optimized images for `units` of `layer`, kept in this store; one row per image.
        Options as `actdb optimize` (objective, class_name, negative, method, steps, lr, size, seed,
        diversity, snapshots, batch, name, overwrite, weights, preprocess)."""
        from .optimize.run import OptimizeOptions, optimize

        if isinstance(units, int):
            units = str(units)
        elif units is not None and not isinstance(units, str):
            units = ",".join(str(u) for u in units)
        return optimize(self.path, OptimizeOptions(model=model, layer=layer, units=units, **options),
                        sheet=sheet, progress=progress)

    def optimized(self) -> pd.DataFrame:
        """Every optimized image of this store, with its parameters and activations."""
        from .optimize.run import listing

        return listing(self)

    # -- analytics I: distances, maps, dataset examples, profiles ----------------------------------

    def distances(self, model: str | None = None, layer: str | None = None, reduce: str = "mean", queries=None,
                  classes: list[str] | None = None, random_classes: int = 10, per_class: int | None = 100,
                  pairs: int | str = 5000, metric: str = "l2", seed: int = 0, max_images: int = 2000,
                  weights: str | None = None, progress: bool = False):
        """Same-class / different-class / random pair distances of a seeded selection and, with
        `queries`, each query's distances to every chosen class (a `DistanceReport`).
        `reduce="flat"`: whole feature maps computed from the images (at most `max_images`)."""
        from .analytics.distances import distances

        return distances(self, model, layer, reduce, _as_list(queries) if queries else None, classes,
                         random_classes, per_class, pairs, metric, seed, max_images, weights, progress)

    def map(self, model: str | None = None, layer: str | None = None, reduce: str = "mean", method: str = "pca",
            classes: list[str] | None = None, per_class: int | None = 100, centroids: bool = False,
            highlight=None, seed: int = 0, weights: str | None = None) -> pd.DataFrame:
        """2-D map (pca | tsne | umap) of stored images or class centroids, with `highlight` queries placed in it."""
        from .analytics.maps import map_points

        return map_points(self, model, layer, reduce, method, classes, per_class, centroids,
                          _as_list(highlight) if highlight else None, seed, weights)

    def top_images(self, unit: int, model: str | None = None, layer: str | None = None, reduce: str = "mean",
                   k: int = 16, bottom: bool = False, where: str | None = None,
                   weights: str | None = None) -> pd.DataFrame:
        """The k stored images that excite (`bottom`: suppress) a unit most, streamed over the array."""
        from .analytics.top_images import top_images

        return top_images(self, model, layer, unit, reduce, k, bottom, where, weights)

    def top_classes(self, unit: int, model: str | None = None, layer: str | None = None, reduce: str = "mean",
                    by: str = "mean", top: int = 10, k: int = 100, weights: str | None = None) -> pd.DataFrame:
        """Classes ranked by a unit's mean or median over their members, or their share of its top k images."""
        from .analytics.top_classes import top_classes

        return top_classes(self, model, layer, unit, reduce, by, top, k, weights)

    def profile(self, queries, model: str | None = None, layer: str | None = None, reduce: str = "mean",
                vs_class: str | None = None, weights: str | None = None) -> pd.DataFrame:
        """Each query's activation over every unit, raw and as z-scores against the stored rows."""
        from .analytics.profile import profile

        return profile(self, _as_list(queries), model, layer, reduce, vs_class, weights)

    def unit_stats(self, model: str | None = None, layer: str | None = None, reduce: str = "mean",
                   weights: str | None = None, refresh: bool = False):
        """Per-unit mean and std over all rows and per class (kept in the catalog, refreshed when rows are added)."""
        from .analytics.unitstats import unit_stats

        return unit_stats(self, self.find_array(model, layer, reduce, weights), refresh)


    # -- analytics II: circuits, feature maps, differentiation, comparison -------------------------

    def compare(self, arrays: list[tuple[str, str]], method: str = "cka", where: str | None = None,
                max_images: int = 5000, seed: int = 0, reduce: str = "mean", weights: str | None = None):
        """Linear CKA, debiased CKA or RSA between every pair of stored (model, layer) arrays."""
        from .analytics import compare

        return compare.compare(self, arrays, method, where, max_images, seed, reduce, weights)

    def differentiation(self, sets: list[str], model: str, weights: str = "imagenet", layers: str = "all",
                        units: int = 200, normalize_by: str | None = None, max_images: int = 200, seed: int = 0):
        """Differentiation per layer of image SETs (folders, where:SQL on this store, noise:N)."""
        from .analytics import differentiation

        return differentiation.differentiation_of(_as_list(sets), model, weights, layers, units, normalize_by,
                                                  max_images, seed, db=self)

    def featuremaps(self, query: str, model: str, layer: str, channels: str | None = None,
                    unit: int | None = None, weights: str = "imagenet"):
        """A layer's feature maps for one image file or stored image `id:N`."""
        from .analytics import featuremaps

        return featuremaps.featuremaps_of(query, model, layer, channels, unit, weights, db=self)



def _as_list(queries) -> list:
    """Query texts (file, `id:N`, ...) or NumPy vectors: one, a list, or the rows of a 2-D array."""
    if isinstance(queries, np.ndarray):
        return list(np.atleast_2d(queries))
    if isinstance(queries, (str, Path)):
        return [str(queries)]
    return [q if isinstance(q, np.ndarray) else str(q) for q in queries]
