"""The notebook API: `db = actdb.open(path)`. Every CLI command is one call here; the
features (query, and the ones to come) sit below it and take the store it wraps."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from .errors import ActdbError
from .store.reader import Store, store_path


def open(path: str | Path | None = None) -> "Database":  # noqa: A001 - mirrors zarr.open / duckdb.connect
    db = Database(store_path(path))
    if not db.catalog.exists():
        raise ActdbError(f"no actdb store at {db.path}: run `actdb ingest SOURCE --store {db.path}` first")
    return db


class Database(Store):
    """A store plus everything actdb computes over it. Feature modules are imported on first
    use, so opening a store for SQL costs no FAISS or TensorFlow import."""

    # -- query: indexes, nearest images, nearest classes --------------------------------------

    def build_index(self, model: str | None = None, layer: str | None = None, reduce: str = "mean",
                    metric: str = "l2", kind: str = "auto", recall_target: float = 0.95,
                    weights: str | None = None, rebuild: bool = False) -> dict:
        """Build or update the FAISS index and class centroids of an array; returns the build report."""
        from .query import api

        return api.build(self, model, layer, reduce, metric, kind, recall_target, weights, rebuild)

    def neighbors(self, queries, model: str | None = None, layer: str | None = None, k: int = 10,
                  where: str | None = None, reduce: str = "mean", metric: str = "l2",
                  weights: str | None = None) -> pd.DataFrame:
        """Nearest stored images of each query (file path, `id:N`, `.npy`); `where` filters by catalog columns."""
        from .query import api

        return api.neighbors(self, _as_list(queries), model, layer, k, where, reduce, metric, weights)

    def classes(self, queries, model: str | None = None, layer: str | None = None, by: str = "centroid",
                k: int = 50, top: int = 10, class_name: str | None = None, reduce: str = "mean",
                metric: str = "l2", weights: str | None = None) -> pd.DataFrame:
        """Classes ranked for each query: by centroid, knn, or mean/median/min distance to all members."""
        from .query import api

        return api.classes(self, _as_list(queries), model, layer, by, k, top, class_name, reduce, metric, weights)

    # -- integrity: check and repair -----------------------------------------------------------


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


    # -- analytics II: circuits, feature maps, differentiation, comparison -------------------------



def _as_list(queries) -> list[str]:
    return [str(queries)] if isinstance(queries, (str, Path)) else [str(q) for q in queries]
