"""The notebook API, actdb's one front door: `db = actdb.open(path)`, then one method per
command with the command's options as keyword arguments (`db.neighbors("photo.jpg",
model="vgg19", layer="block5_conv4", k=5)` is `actdb neighbors photo.jpg --model vgg19
--layer block5_conv4 -k 5`). The CLI parses, makes one call here and prints.

A stored array is chosen by `model`, `layer`, `reduce` and `weights` (model and layer may
be left out when one array fits) and handed to the features as a `StoredArray`. Commands
that need no store (models, layers, and predict, weights, featuremaps, differentiation
and optimize on files) are also module-level functions here; the methods of the same name
add the store, for queries such as `id:N` and `optimized:NAME`.

Features are imported on first use, so opening a store for SQL costs no FAISS or
TensorFlow import.
"""
from __future__ import annotations

import functools
import inspect
from pathlib import Path

import numpy as np
import pandas as pd

from . import choices  # noqa: F401 - the option words, for the CLI
from .choices import (CLASS_RANKINGS, COMPARE_METHODS, DTYPES, ENGINES, FLAT, INDEX_KINDS, MAP_METHODS, METRICS,
                      OBJECTIVES, OPTIMIZE_METHODS, PRECISIONS, PREPROCESS_MODES, REDUCTIONS, RESIZE_MODES,
                      TOP_CLASSES_BY)
from .errors import ActdbError
from .params import (AnyOf, Boolean, Choice, Condition, Integer, Names, OutputFile, OutputFolder, Real, Seed, Text,
                     declare, declared)  # noqa: F401 - declared: what each command accepts, as data
from .results import warnings_of  # noqa: F401 - how the CLI prints every result's advice
from .store.catalog import missing_store_message
from .store.locks import writing
from .store.reader import Store, store_path
from .store import derived
from .store.stored_array import StoredArray
from .units import parse_units  # noqa: F401 - the CLI checks unit lists while parsing

__all__ = ["Database", "StoredArray", "open", "models", "layers", "predict", "weights", "featuremaps",
           "differentiation", "optimize", "serve_report", "report_server"]


def open(path: str | Path | None = None, *, create: bool = False) -> "Database":  # noqa: A001 - as zarr.open
    """The store at `path` (or $ACTDB_STORE). `create`: a store that does not exist yet is
    made by the first command that writes (ingest, optimize); nothing is written before."""
    db = Database(store_path(path))
    if not create and not db.catalog.exists():
        raise ActdbError(missing_store_message(db.path))
    return db


# ---- what each command accepts: declared once, checked once at the door (see actdb.params) ------

PNG = OutputFile(".png")
MODEL = Text(path=True)  # a known name or a .keras file
WEIGHTS = Text(path=True)  # imagenet | random:SEED | a weights file | as `actdb info` lists them
ARRAY = {"model": MODEL, "layer": Text(), "reduce": Choice(REDUCTIONS), "weights": WEIGHTS}  # which stored array
RUN_MODEL = {"model": MODEL, "weights": WEIGHTS, "preprocess": Choice(PREPROCESS_MODES)}  # a model run here
WRITER = {"wait": Boolean(), "progress": Boolean()}


# ---- commands that need no store --------------------------------------------------------------

def models() -> pd.DataFrame:
    """Models known by name, with input size and preprocessing."""
    from .models import known_models

    return pd.DataFrame([{"name": s.name, "input_size": s.input_size, "preprocess": s.preprocess}
                         for s in known_models().values()])


@declare(model=MODEL)
def layers(model: str) -> pd.DataFrame:
    """A model's layers with their output shapes (built with random weights: nothing is loaded)."""
    from .models import layer_table, load

    rows = layer_table(load(model, weights="random").keras_model)
    return pd.DataFrame([{"layer": n, "type": t, "output_shape": list(s)} for n, t, s in rows])


@declare(models=Names(), weights=WEIGHTS, top=Integer(1, 1000), resize=Choice(RESIZE_MODES))
def predict(queries, *, models: str | list[str] = ("efficientnet_lite0",), weights: str = "imagenet",
            top: int = 5, resize: str = "center-crop", db: Store | None = None) -> pd.DataFrame:
    """Top ImageNet classes of each query (image file; `id:N` or `optimized:NAME` with a store), per model."""
    from .predict import predict as run

    return run(_texts(queries), models=_names(models), top=top, resize=resize, weights=weights, db=db)


@declare(**RUN_MODEL, layer=Text(), unit=Integer(0), from_layer=Text(), top=Integer(1), plot=PNG)
def weights(*, model: str, layer: str, unit: int, from_layer: str | None = None, top: int = 6,
            weights: str = "imagenet", preprocess: str | None = None, plot: str | Path | None = None):
    """The input channels feeding `unit` of a conv layer, ranked by kernel norm; with
    `from_layer`, Distill's expanded weights from that earlier layer."""
    from .analytics import weights as circuits

    result = circuits.incoming_weights(model=model, layer=layer, unit=unit, from_layer=from_layer,
                                       weights=weights, preprocess=preprocess)
    if plot:
        _save(lambda plots: plots.weights_figure(result, top), plot)
    return result


@declare(**RUN_MODEL, layer=Text(), unit=Integer(0), resize=Choice(RESIZE_MODES), plot=PNG)
def featuremaps(query: str, *, model: str, layer: str, channels=None, unit: int | None = None,
                weights: str = "imagenet", preprocess: str | None = None, resize: str = "center-crop",
                plot: str | Path | None = None, db: Store | None = None):
    """A layer's feature maps for one image; `plot`: the grid of maps (or, with `unit`, that map over the image)."""
    from .analytics.featuremaps import featuremaps as compute

    result = compute(query, model=model, layer=layer, channels=channels, unit=unit, weights=weights,
                     preprocess=preprocess, resize=resize, db=db)
    if plot:
        _save(lambda plots: (plots.unit_overlay if unit is not None else plots.featuremap_grid)(result), plot)
    return result


@declare(**RUN_MODEL, layers=Names(comma=True), units=Integer(2), normalize_by=Text(), max_images=Integer(2),
         seed=Seed(), batch_size=Integer(1), resize=Choice(RESIZE_MODES), plot=PNG, progress=Boolean())
def differentiation(sets, *, model: str, weights: str = "imagenet", preprocess: str | None = None,
                    layers: str = "all", units: int = 200, normalize_by: str | None = None, max_images: int = 200,
                    seed: int = 0, batch_size: int = 16, resize: str = "center-crop", plot: str | Path | None = None,
                    progress: bool = False, db: Store | None = None):
    """How differently each layer responds to the images of each SET (a folder, `where:SQL`
    on the store, or `noise:N`)."""
    from .analytics.differentiation import differentiation_of

    result = differentiation_of(_texts(sets), model=model, weights=weights, layers=layers, units=units,
                                normalize_by=normalize_by, max_images=max_images, seed=seed, batch_size=batch_size,
                                resize=resize, preprocess=preprocess, db=db, progress=progress)
    if plot:
        _save(lambda plots: plots.differentiation_figure(result), plot)
    return result


@declare(out=OutputFolder(), sheet=PNG, **WRITER, **RUN_MODEL, layer=Text(), objective=Choice(OBJECTIVES),
         class_name=Text(), negative=Boolean(), method=Choice(OPTIMIZE_METHODS), steps=Integer(),
         lr=Real(0, closed="neither"), size=Integer(), seed=Seed(), diversity=Integer(), snapshots=Text(),
         batch=Integer(), name=Text(), overwrite=Boolean())  # counts' ranges: checked with the method's defaults
def optimize(*, out: str | Path | None = None, sheet: str | Path | None = None, progress: bool = False,
             wait: bool = False, db: Store | None = None, **options) -> pd.DataFrame:
    """Optimized images (one row each), kept in the store `db` or written to the folder `out`.
    Options as `actdb optimize`: model, weights, preprocess, layer, units, objective, class_name,
    negative, method, steps, lr, size, seed, diversity, snapshots, batch, name, overwrite.
    `wait`: if another process writes the store, wait for it (else refused before any work)."""
    from .optimize.run import OptimizeOptions, optimize as run

    try:
        chosen = OptimizeOptions(**options)
    except TypeError as exc:
        raise ActdbError(f"optimize: {exc}") from None
    if db is None:
        return run(None, chosen, out=out, sheet=sheet, progress=progress)
    with writing(db.path, "actdb optimize", wait):
        return run(db.path, chosen, out=out, sheet=sheet, progress=progress)


@declare(port=Integer(1, 65535))
def serve_report(index: str | Path, *, port: int = 8000) -> None:
    """Serve a report's folder on http://127.0.0.1:PORT until Ctrl-C (the report also opens from file://)."""
    with report_server(port) as server:
        server.serve(index)


def report_server(port: int = 8000):
    """A server bound to 127.0.0.1:PORT now (a port in use is refused here, before a report is
    built); `.serve(index)` serves that report's folder until Ctrl-C; use it in `with`."""
    from .report.serve import ReportServer

    return ReportServer(port)


def _save(draw, path: Path) -> Path:
    from . import figures
    from .analytics import plots

    return figures.save(draw(plots), path)


def _store_method(function):
    """The module-level command as a method that passes this store as `db`."""
    @functools.wraps(function)
    def method(self, *args, **kwargs):
        return function(*args, db=self, **kwargs)

    signature = inspect.signature(function)
    method.__signature__ = signature.replace(
        parameters=[inspect.Parameter("self", inspect.Parameter.POSITIONAL_ONLY),
                    *(p for p in signature.parameters.values() if p.name != "db")])
    return method


# ---- the store's commands ---------------------------------------------------------------------

class Database(Store):
    """A store plus everything actdb computes over it; see the module doc."""

    models = staticmethod(models)
    layers = staticmethod(layers)
    predict = _store_method(predict)
    weights = staticmethod(weights)
    featuremaps = _store_method(featuremaps)
    differentiation = _store_method(differentiation)
    optimize = _store_method(optimize)

    # -- ingest --------------------------------------------------------------------------------

    @declare(**WRITER, **RUN_MODEL, layers=Names(comma=True), reduce=Choice(REDUCTIONS), classes=Names(),
             per_class=Integer(1), seed=Seed(), limit=Integer(1), batch_size=Integer(1), resize=Choice(RESIZE_MODES),
             precision=Choice(PRECISIONS), dtype=Choice(DTYPES), predictions=Boolean(), commit_seconds=Real(0),
             engine=Choice(ENGINES), address=Text(), workers=Integer(1), gpus_per_worker=Real(0),
             cpus_per_worker=Real(0, closed="neither"))
    def ingest(self, source: str | Path, *, progress: bool = False, wait: bool = False, **options):
        """Stream images from `source` through a model into this store (made if it does not exist).
        Options as `actdb ingest`: model, weights, preprocess, layers, reduce, classes, per_class,
        seed, limit, batch_size, resize, precision, dtype, predictions, commit_seconds, engine,
        address, workers, gpus_per_worker, cpus_per_worker. `wait`: if another process writes
        the store, wait for it (else refused before any work)."""
        from .ingest.run import IngestOptions, ingest

        if isinstance(options.get("classes"), str):
            options["classes"] = [c.strip() for c in options["classes"].split(",") if c.strip()]
        try:
            chosen = IngestOptions(**options)
        except TypeError as exc:
            raise ActdbError(f"ingest: {exc}") from None
        with writing(self.path, "actdb ingest", wait):
            summary = ingest(self.path, source, chosen, progress=progress)
        from .resolve import optimized_vectors_in_every_array

        optimized_vectors_in_every_array(type(self)(self.path))  # new arrays: the optimized images as queries
        return summary

    @declare(old=Text(path=True), new=Text(path=True), wait=Boolean())
    def relocate(self, old: str | Path, new: str | Path, *, wait: bool = False) -> dict:
        """The dataset under folder `old` moved to `new`: its images' recorded paths follow it
        (ids, rows and everything derived stay). Ingesting `new` instead would store every
        image twice. `wait`: if another process writes the store, wait for it."""
        from .store.relocate import relocate

        with writing(self.path, "actdb relocate", wait):
            return relocate(self, old, new)

    # -- integrity ------------------------------------------------------------------------------

    @declare(repair=Boolean(), wait=Boolean())
    def check(self, *, repair: bool = False, wait: bool = False) -> dict:
        """Verify every done row's chunk (crc32c, digest, finite), the arrays' shapes, the index
        files, optimized PNGs, kept unit statistics and the files of the report in STORE/report
        (damaged ones named in a note: not the store's data; `report` remakes them); `repair`
        unmarks damaged rows (the same ingest then recomputes exactly them), drops broken index
        records and unit statistics and adds checksums to arrays made without; `wait`: for
        repair, wait for another writer instead of being refused."""
        from .report.site import verify
        from .store import integrity

        result = integrity.check(self, repair, wait)
        report = result["report"] = verify(self.path / "report")
        if report and report["damaged"]:
            damaged = report["damaged"]
            named = ", ".join(damaged[:3]) + (", ..." if len(damaged) > 3 else "")
            result["notes"].append(f"the report in {report['folder']} has {len(damaged)} damaged or missing files "
                                   f"({named}): `actdb report` makes them again (the store is not affected)")
        return result

    # -- query: indexes, nearest images, nearest classes ----------------------------------------

    @declare(**ARRAY, metric=Choice(METRICS), kind=Choice(("auto", *INDEX_KINDS)), recall=Real(0, 1, closed="right"),
             rebuild=Boolean(), wait=Boolean())
    def index(self, *, model: str | None = None, layer: str | None = None, reduce: str = "mean",
              weights: str | None = None, metric: str = "l2", kind: str = "auto", recall: float = 0.99,
              rebuild: bool = False, wait: bool = False) -> dict:
        """Build or bring up to date the FAISS index and class centroids of an array; the build report.
        `recall`: the recall@10 an approximate index must reach, measured against exact search.
        `wait`: if another process writes the store, wait for it (else refused before any work)."""
        from .query import api

        with writing(self.path, "actdb index", wait):
            return api.build(self, self.array(model, layer, reduce=reduce, weights=weights), metric=metric,
                             kind=kind, recall=recall, rebuild=rebuild)

    @declare(**ARRAY, metric=Choice(METRICS), k=Integer(1), where=Condition())
    def neighbors(self, queries, *, model: str | None = None, layer: str | None = None, reduce: str = "mean",
                  weights: str | None = None, metric: str = "l2", k: int = 10,
                  where: str | None = None) -> pd.DataFrame:
        """Nearest stored images of each query (image file, `id:N`, `optimized:NAME`, `.npy`, NumPy
        vectors); `where` filters by images columns."""
        from .query import api

        return api.neighbors(self, self.array(model, layer, reduce=reduce, weights=weights), _queries(queries),
                             k=k, where=where, metric=metric)

    @declare(**ARRAY, metric=Choice(METRICS), by=Choice(CLASS_RANKINGS), k=Integer(1), top=Integer(1),
             class_name=Text())
    def classes(self, queries, *, model: str | None = None, layer: str | None = None, reduce: str = "mean",
                weights: str | None = None, metric: str = "l2", by: str = "centroid", k: int = 50, top: int = 10,
                class_name: str | None = None) -> pd.DataFrame:
        """Classes ranked for each query: by centroid, knn, or mean/median/min distance to all members;
        `class_name`'s row is kept whatever its rank."""
        from .query import api

        return api.classes(self, self.array(model, layer, reduce=reduce, weights=weights), _queries(queries),
                           by=by, k=k, top=top, class_name=class_name, metric=metric)

    # -- optimized images -------------------------------------------------------------------------

    @declare(names=Names(), sheet=PNG, title=Text())
    def optimized(self, names: list[str] | None = None, *, sheet: str | Path | None = None,
                  title: str | None = None) -> pd.DataFrame:
        """The store's optimized images (all, or `names`), with their parameters; `sheet`: a
        contact sheet of them."""
        from .optimize.run import listing

        frame = listing(self)
        if names is not None:
            frame = frame.set_index("name").loc[_names(names)].reset_index()
        if sheet:
            from . import figures
            from .optimize.sheet import contact_sheet
            from .resolve import optimized_png

            for name in frame.name:  # damaged pixels are never drawn
                optimized_png(self, name)

            figures.save(contact_sheet(frame, self.path, title=title), sheet, "sheet", dpi=100)
        return frame

    # -- analytics --------------------------------------------------------------------------------

    @declare(**(ARRAY | {"reduce": Choice((*REDUCTIONS, FLAT))}), classes=Names(), random_classes=Integer(0),
             per_class=AnyOf(Integer(), None), pairs=AnyOf(Integer(1), Choice(("all",))), metric=Choice(METRICS),
             seed=Seed(), max_images=Integer(2), plot=PNG, progress=Boolean())
    def distances(self, *, model: str | None = None, layer: str | None = None, reduce: str = "mean",
                  weights: str | None = None, queries=None, classes: str | list[str] | None = None,
                  random_classes: int = 10, per_class: int | None = 100, pairs: int | str = 5000,
                  metric: str = "l2", seed: int = 0, max_images: int = 2000, plot: str | Path | None = None,
                  progress: bool = False):
        """Same-class / different-class / random pair distances of a seeded selection and, with
        `queries`, each query's distances to every chosen class (a `DistanceReport`).
        `reduce="flat"`: whole feature maps computed from the images (at most `max_images`)."""
        from .analytics.distances import distances

        array = self._flat_source(model, layer, weights) if reduce == FLAT else \
            self.array(model, layer, reduce=reduce, weights=weights)
        report = distances(self, array, queries=_queries(queries) if queries is not None else None,
                           classes=classes, random_classes=random_classes, per_class=per_class, pairs=pairs,
                           metric=metric, seed=seed, max_images=max_images, flat=reduce == FLAT, progress=progress)
        if plot:
            _save(lambda plots: plots.distances_figure(report), plot)
        return report

    def _flat_source(self, model, layer, weights) -> StoredArray:
        """Flat maps are computed through a stored array's model and settings: any reduction of the layer."""
        try:
            return self.array(model, layer, reduce="mean", weights=weights)
        except ActdbError:
            return self.array(model, layer, reduce="max", weights=weights)

    @declare(**ARRAY, method=Choice(MAP_METHODS), classes=Names(), per_class=AnyOf(Integer(), None),
             centroids=Boolean(), seed=Seed(), out=OutputFile(".parquet", ".csv"), plot=PNG)
    def map(self, *, model: str | None = None, layer: str | None = None, reduce: str = "mean",
            weights: str | None = None, method: str = "pca", classes: str | list[str] | None = None,
            per_class: int | None = 100, centroids: bool = False, highlight=None, seed: int = 0,
            out: str | Path | None = None, plot: str | Path | None = None) -> pd.DataFrame:
        """2-D map (pca | tsne | umap) of stored images or class centroids, with `highlight` queries
        placed in it; `out`: every point's coordinates as .parquet or .csv."""
        from .analytics.maps import map_points, save_coordinates

        frame = map_points(self, self.array(model, layer, reduce=reduce, weights=weights), method=method,
                           classes=classes, per_class=per_class, centroids=centroids,
                           highlight=_queries(highlight) if highlight is not None else None, seed=seed)
        if out:
            save_coordinates(frame, out)
        if plot:
            _save(lambda plots: plots.map_figure(frame), plot)
        return frame

    @declare(unit=Integer(0), **ARRAY, k=Integer(1), bottom=Boolean(), where=Condition(), montage=PNG)
    def top_images(self, *, unit: int, model: str | None = None, layer: str | None = None, reduce: str = "mean",
                   weights: str | None = None, k: int = 16, bottom: bool = False, where: str | None = None,
                   montage: str | Path | None = None) -> pd.DataFrame:
        """The k stored images that excite (`bottom`: suppress) a unit most, streamed over the array."""
        from .analytics.top_images import top_images

        frame = top_images(self, self.array(model, layer, reduce=reduce, weights=weights), unit, k=k, bottom=bottom,
                           where=where)
        if montage:
            _save(lambda plots: plots.montage_figure(frame), montage)
        return frame

    @declare(unit=Integer(0), **ARRAY, by=Choice(TOP_CLASSES_BY), top=Integer(1), k=Integer(1), plot=PNG)
    def top_classes(self, *, unit: int, model: str | None = None, layer: str | None = None, reduce: str = "mean",
                    weights: str | None = None, by: str = "mean", top: int = 10, k: int = 100,
                    plot: str | Path | None = None) -> pd.DataFrame:
        """Classes ranked by a unit's mean or median over their members, or their share of its top k images."""
        from .analytics.top_classes import top_classes

        frame = top_classes(self, self.array(model, layer, reduce=reduce, weights=weights), unit, by=by, top=top,
                            k=k)
        if plot:
            _save(lambda plots: plots.top_classes_figure(frame), plot)
        return frame

    @declare(**ARRAY, vs_class=Text(), plot=PNG)
    def profile(self, queries, *, model: str | None = None, layer: str | None = None, reduce: str = "mean",
                weights: str | None = None, vs_class: str | None = None,
                plot: str | Path | None = None) -> pd.DataFrame:
        """Each query's activation over every unit, raw and as z-scores against the stored rows."""
        from .analytics.profile import profile

        frame = profile(self, self.array(model, layer, reduce=reduce, weights=weights), _queries(queries),
                        vs_class=vs_class)
        if plot:
            _save(lambda plots: plots.profile_figure(frame), plot)
        return frame

    @declare(**ARRAY, refresh=Boolean())
    def unit_stats(self, *, model: str | None = None, layer: str | None = None, reduce: str = "mean",
                   weights: str | None = None, refresh: bool = False):
        """Per-unit mean and std over all rows and per class (kept in the catalog, refreshed when rows change)."""
        from .analytics.unitstats import unit_stats

        return unit_stats(self, self.array(model, layer, reduce=reduce, weights=weights), refresh)

    @declare(model=MODEL, layers=Names(), models=Names(), layer=Text(), method=Choice(COMPARE_METHODS),
             reduce=Choice(REDUCTIONS), weights=WEIGHTS, where=Condition(), max_images=Integer(2), seed=Seed(),
             plot=PNG)
    def compare(self, *, model: str | None = None, layers: str | list[str] | None = None,
                models: str | list[str] | None = None, layer: str | None = None, method: str = "cka",
                reduce: str = "mean", weights: str | None = None, where: str | None = None,
                max_images: int = 5000, seed: int = 0, plot: str | Path | None = None):
        """Linear CKA, debiased CKA or RSA between stored arrays: `model` with `layers`, or
        `models` with one `layer`."""
        from .analytics import compare

        if bool(layers) == bool(models):
            raise ActdbError("name the arrays one way: model=M, layers=[a, b, c] or models=[m1, m2], layer=L",
                             "name the arrays one way: --model M --layers a,b,c or --models m1,m2 --layer L")
        pairs = [(model, name) for name in _names(layers)] if layers else [(name, layer) for name in _names(models)]
        found = [self.array(m, l, reduce=reduce, weights=weights) for m, l in pairs]
        result = compare.compare(self, found, method=method, where=where, max_images=max_images, seed=seed)
        if plot:
            _save(lambda plots: plots.comparison_heatmap(result), plot)
        return result

    @declare(model=MODEL, layers=Names(), weights=WEIGHTS, reduce=Choice(REDUCTIONS), metric=Choice(METRICS),
             k=Integer(1, counting="neighbour"), class_name=Text(), calibration=Real(0, 1, closed="neither"),
             calibration_where=Condition(), exact=Boolean(), seed=Seed(), plot=PNG)
    def trajectory(self, queries, *, model: str, layers: str | list[str] = "all", weights: str | None = None,
                   reduce: str = "mean", metric: str = "l2", k: int = 75, class_name: str | None = None,
                   calibration: float = 0.1, calibration_where: str | None = None, exact: bool = False,
                   seed: int = 0, plot: str | Path | None = None):
        """Where each query (image file, `id:N`, `optimized:NAME`) becomes its class, layer by layer
        over `model`'s stored arrays in the network's order: per layer its k nearest images, class
        shares, nearest class by centroid and `class_name`'s ranks and percentile; across the layers,
        Deep k-NN's p-values, prediction, credibility and confidence, calibrated on a seeded
        `calibration` share of the labelled images, at most 1000 (or those matching `calibration_where`),
        which are never neighbours. A `Trajectory`; `plot`: the trajectories drawn."""
        from .analytics import trajectory as deep_knn

        queries = _queries(queries)
        deep_knn.check_arguments(queries, k=k, calibration=calibration, metric=metric)
        found = deep_knn.choose_arrays(self, model, layers if layers == "all" else _names(layers), reduce, weights)
        result = deep_knn.trajectory(self, found, queries, metric=metric, k=k, class_name=class_name,
                                     calibration=calibration, calibration_where=calibration_where, exact=exact,
                                     seed=seed)
        if plot:
            _save(lambda plots: plots.trajectory_figure(result), plot)
        return result

    # -- the report --------------------------------------------------------------------------------

    @declare(model=MODEL, layers=Names(), out=OutputFolder(), top=Integer(1), optimize=Boolean(), absolute_paths=Boolean(),
             **WRITER)
    def report(self, *, model: str | None = None, layers: str | list[str] = "all", units=None,
               out: str | Path | None = None, top: int = 16, optimize: bool = False, absolute_paths: bool = False,
               wait: bool = False, progress: bool = False) -> dict:
        """A static site of the store (a Microscope for your model and data) in `out` (default
        STORE/report: a new or empty folder, or one an earlier report wrote; never one holding
        other files, nor the store's own folders): a page per stored array, unit (of `units`,
        default all), class, shown image and optimized image; re-runs rewrite only what changed
        or was damaged, and delete pages no longer made. Arrays without a current index get one
        (their image pages list nearest images and classes); `optimize`: the chosen units
        without a feature visualization get one first. A read-only store is reported when that
        work is done already. `absolute_paths`: pages name the store and images by their full
        paths (for a site kept beside the store; by default they name folders only, for a site
        to zip and send). Returns what was written."""
        from contextlib import nullcontext

        from .files import checked_folder
        from .report import site
        from .report.build import Queries, build
        from .resolve import model_arguments
        from .store.locks import writable
        from .units import expand_units

        named = None if layers == "all" else _names(layers)
        for name in named or ():
            if not any(a.layer == name and model in (None, a.model) for a in self.arrays()):
                self.array(model, name)  # not stored: refused as every command that names layers refuses it
        chosen = [a for a in self.arrays() if (model is None or a.model == model) and a.rows_done
                  and (named is None or a.layer in named)]
        if not chosen:
            wanted = f"model={model!r}, layers={layers!r}" if model or layers != "all" else "any array"
            raise ActdbError(f"no stored array with rows matches {wanted}: see `actdb info` for the arrays")
        ranges = parse_units(units) if units is not None else None
        layered = [(a, expand_units(ranges, a.channels, a.describe()) if ranges else list(range(a.channels)))
                   for a in chosen]
        if out is None and not writable(self.path):
            raise ActdbError(f"store {self.path} is read-only here: write its report elsewhere with out=FOLDER",
                             f"store {self.path} is read-only here: write its report elsewhere with --out FOLDER")
        out = Path(out).expanduser() if out is not None else self.path / "report"
        out = site.checked_out(checked_folder(out, "out"), self.path)
        to_optimize = [(a, self._units_without_visualization(a, u)) for a, u in layered] if optimize else []
        to_optimize = [(a, u) for a, u in to_optimize if u]
        to_index = [a for a in chosen if not self._index_current(a)]
        if writable(self.path):
            store_lock = writing(self.path, "actdb report", wait)
        elif to_optimize or to_index:
            raise self._read_only_report(to_optimize, to_index)
        else:
            store_lock = nullcontext()  # nothing to write there, and no actdb writer can be writing it
        with store_lock, site.locked(out, wait):
            for array, missing in to_optimize:
                self.optimize(**model_arguments(array), layer=array.layer, units=",".join(map(str, missing)),
                              progress=progress)
            for array in to_index:
                self.index(model=array.model, layer=array.layer, reduce=array.reduce, weights=array.weights)
            layered = [(self.array(a.model, a.layer, reduce=a.reduce, weights=a.weights), u) for a, u in layered]
            queries = Queries(
                neighbors=lambda texts, a: self.neighbors(texts, model=a.model, layer=a.layer, reduce=a.reduce,
                                                          weights=a.weights, k=9),
                classes=lambda texts, a: self.classes(texts, model=a.model, layer=a.layer, reduce=a.reduce,
                                                      weights=a.weights, top=5))
            return build(self, layered, out, queries, top=top, absolute_paths=absolute_paths, progress=progress)

    def _units_without_visualization(self, array: StoredArray, units: list[int]) -> list[int]:
        """The units with no feature visualization (maximized channel) made with the array's weights."""
        have = set()
        if self.has_table("optimized_images"):
            have = set(self.sql("SELECT unit FROM optimized_images WHERE model = ? AND layer = ? AND weights = ? "
                                "AND objective = 'channel' AND sign = 1",
                                [array.model, array.layer, array.weights]).unit)
        return [u for u in units if u not in have]

    def _index_current(self, array: StoredArray) -> bool:
        """Whether the array's l2 index (and class centroids) holds exactly its stored rows, undamaged."""
        record = derived.index_record(self, array, "l2")
        return (record is not None and record.get("data_version") == array.data_version
                and derived.index_damage(self, record) is None)

    def _read_only_report(self, to_optimize: list, to_index: list) -> ActdbError:
        """One line: what the report would have to write into a read-only store, and how to have it written."""
        start = f"store {self.path} is read-only here and the report needs to write to it: "
        if to_index:
            a = to_index[0]
            more = f" (and {len(to_index) - 1} more arrays)" if len(to_index) > 1 else ""
            need = f"the l2 index of {a.describe()}{more} is missing, out of date or damaged; "
            where = " where the store can be written (or report a writable copy)"
            return ActdbError(f"{start}{need}run db.index(model={a.model!r}, layer={a.layer!r}, reduce={a.reduce!r})"
                              f"{where}", f"{start}{need}run `actdb index --model {a.model} --layer {a.layer} "
                              f"--reduce {a.reduce}`{where}")
        a, units = to_optimize[0]
        need = f"feature visualizations of {len(units)} units of {a.describe()} are missing; "
        return ActdbError(f"{start}{need}report without optimize=True, or optimize where the store can be written",
                          f"{start}{need}report without --optimize, or optimize where the store can be written")

    # -- the demo ---------------------------------------------------------------------------------

    @declare(model=MODEL, views=Integer(1, 100), progress=Boolean())
    def demo(self, *, model: str | None = None, views: int = 8, progress: bool = False):
        """The demo's steps on this store (real photos end to end), one at a time: each is an
        `actdb` command line to run, or text to show (see `actdb.demo`)."""
        from .demo import story

        return story(self, model=model, views=views, progress=progress)


def _queries(queries) -> list:
    """Query texts (file, `id:N`, ...) or NumPy vectors: one, a list, or the rows of a 2-D array."""
    if isinstance(queries, np.ndarray):
        return list(np.atleast_2d(queries))
    if isinstance(queries, (str, Path)):
        return [str(queries)]
    chosen, seen = [], set()
    for query in queries:
        if isinstance(query, np.ndarray):
            chosen.append(query)
        elif str(query) not in seen:  # the same query twice asks one question: one answer
            seen.add(str(query))
            chosen.append(str(query))
    return chosen


def _texts(values) -> list[str]:
    return [str(values)] if isinstance(values, (str, Path)) else [str(v) for v in values]


def _names(values) -> list[str]:
    """A comma-separated string or a list of names."""
    if isinstance(values, str):
        return [v.strip() for v in values.split(",") if v.strip()]
    return list(values)
