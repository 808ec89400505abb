"""`actdb trajectory`: where an image becomes its class, layer by layer, and how sure that is:
Deep k-NN (Papernot & McDaniel 2018, arXiv 1803.04765) over a model's stored arrays.

The layers are taken in the network's order (the model's own layer list, built without its
weights; where the model cannot be built here, in the order they were stored, and a warning
says so). The **neighbour set**, the paper's training data, is the labelled stored images
with a row in every chosen layer, less the **calibration set**: a seeded share of each class
(`calibration`, stratified so that the neighbour set keeps the classes' proportions) or those
matching `calibration_where`. Then:

- **per layer**, for each query: its k nearest images in the neighbour set and each class's
  share of them; every class's centroid (the mean of its members' rows as the metric sees
  them, as `classes` computes it) and the nearest; for a target class its rank by centroid
  distance (ties by name) and by kNN share (equal shares by the rank of the class's nearest
  neighbour; classes with no neighbour share the rank after the last class present), and the
  query's distance to its centroid as a percentile: the share of the class's members that are
  nearer to the centroid of the *other* members than the query is to the centroid (0: deeper
  inside the class than every member; 100: farther out than all of them).
- **across the layers**: the nonconformity of class j is the number of neighbours, over all
  layers, whose label is not j. Each calibration image is searched like a query; its
  nonconformity for its own label forms the calibration scores. The p-value of class j is the
  share of calibration scores >= the query's nonconformity for j; the prediction is the class
  of the largest p (equal p: the lower nonconformity, then the name), credibility that p,
  confidence 1 - the second largest p.

A stored image as the query is left out of its own neighbours, of its class's centroid and
members, and of the calibration scores its p-values are taken from.

Where the store cannot give these numbers meaning, warnings say so (in the result, `--json`
and on the plot; see `credibility_warnings`): k is lowered to what the smallest class can
supply, and one class or fewer than MIN_CALIBRATION calibration images are named.

Each layer is searched with its FAISS index (`actdb index`, the same metric) when that
index holds every image of the neighbour set, else exactly (streamed over the stored rows);
`exact` searches every layer exactly. The result says how each layer was searched.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from .. import weightspec
from ..choices import invalid
from ..distance import check_metric, paired_distances, pairwise_distances, prepare
from ..errors import ActdbError
from ..knn import index as knn
from ..moments import GroupMoments
from ..resolve import OPTIMIZED_PREFIX, resolve_in_arrays
from ..results import Result
from ..store import arrays as zarr_arrays
from ..store import derived
from ..store.stored_array import StoredArray

DEFAULT_K = 75  # the paper's tutorial
DEFAULT_CALIBRATION = 0.1
# The share is capped: every calibration image is a k-NN search per layer, so 10% of ImageNet
# (128,000 searches over 1.15M rows per layer) would take hours; the paper's tutorial uses 750.
MAX_CALIBRATION = 1000
# With n calibration scores a p-value moves in steps of 1/n: 20 is the least that resolves 0.05.
MIN_CALIBRATION = 20
TOP_SHOWN = 3  # classes named per layer in the table and drawn beside the target


@dataclass
class LayerStep:
    """One query at one layer."""

    layer: str
    neighbour_ids: np.ndarray  # the k nearest in the neighbour set, nearest first (ties by id)
    neighbour_distances: np.ndarray
    neighbour_labels: list[str]
    shares: dict[str, float]  # each class present among the neighbours, largest share first
    centroid_distances: dict[str, float]  # every class with members, nearest first
    nearest_class: str  # by centroid
    # the followed class (class_name, else the query's prediction): class, share, knn_rank,
    # centroid_rank, distance (to its centroid), percentile, members (compared in the percentile)
    target: dict | None = None


@dataclass
class QueryTrajectory:
    query: str
    image_id: int | None  # the stored image the query is, if it is one
    label: str | None  # that image's label
    steps: list[LayerStep]  # one per layer, in the network's order
    nonconformity: dict[str, int]  # per class: neighbours over all layers whose label is not it
    p_values: dict[str, float]  # per class, largest first
    prediction: str
    credibility: float
    confidence: float
    calibration_scores: int  # calibration scores its p-values were taken from (itself left out)

    def step(self, layer: str) -> LayerStep:
        return next(s for s in self.steps if s.layer == layer)


@dataclass
class Trajectory(Result):
    model: str
    weights: str
    reduce: str
    metric: str
    k: int
    layers: list[str]  # in the network's order
    search: dict[str, str]  # per layer: how its neighbours were found
    class_name: str | None
    classes: list[str]  # every label of the neighbour and calibration sets
    neighbour_ids: np.ndarray  # the neighbour set
    calibration: str  # how the calibration set was chosen
    calibration_ids: np.ndarray
    calibration_labels: list[str]
    calibration_nonconformity: np.ndarray  # of each calibration image's own label
    queries: list[QueryTrajectory] = field(default_factory=list)

    @property
    def title(self) -> str:
        return (f"{self.model} ({self.reduce}), {self.metric}, k={self.k} over {len(self.layers)} layers; "
                f"{len(self.neighbour_ids)} neighbour images, {len(self.calibration_ids)} calibration images")

    def per_layer(self, query: QueryTrajectory | None = None) -> pd.DataFrame:
        """One row per query (or just `query`) and layer: the nearest class by centroid, the top
        classes by kNN share, and the followed class's share, ranks and percentile."""
        rows = []
        for shown in [query] if query is not None else self.queries:
            for depth, step in enumerate(shown.steps, 1):
                target = step.target
                rows.append({"query": shown.query, "depth": depth, "layer": step.layer,
                             "nearest_centroid": step.nearest_class,
                             "top_classes": ", ".join(f"{c} {s:.2f}" for c, s in list(step.shares.items())[:TOP_SHOWN]),
                             "class": target["class"], "share": target["share"], "knn_rank": target["knn_rank"],
                             "centroid_rank": target["centroid_rank"], "percentile": target["percentile"]})
        frame = pd.DataFrame(rows)
        for column in ("knn_rank", "centroid_rank"):
            frame[column] = pd.array(frame[column].tolist(), dtype="Int64")
        frame["percentile"] = frame["percentile"].astype(float)
        return frame

    def to_json(self) -> dict:
        """The whole computation, so that anyone can check it."""
        return {
            "model": self.model, "weights": self.weights, "reduce": self.reduce, "metric": self.metric, "k": self.k,
            "class": self.class_name, "classes": self.classes,
            "layers": [{"layer": layer, "depth": depth, "search": self.search[layer]}
                       for depth, layer in enumerate(self.layers, 1)],
            "neighbour_images": len(self.neighbour_ids),
            "calibration": {"chosen": self.calibration, "ids": self.calibration_ids, "labels": self.calibration_labels,
                            "nonconformity": self.calibration_nonconformity},
            "queries": [{
                "query": q.query, "image_id": q.image_id, "label": q.label,
                "layers": [{"layer": s.layer,
                            "neighbours": {"ids": s.neighbour_ids, "distances": s.neighbour_distances,
                                           "labels": s.neighbour_labels},
                            "shares": s.shares, "nearest_class": s.nearest_class,
                            "centroid_distances": s.centroid_distances, "target": s.target} for s in q.steps],
                "nonconformity": q.nonconformity, "p_values": q.p_values, "prediction": q.prediction,
                "credibility": q.credibility, "confidence": q.confidence,
                "calibration_scores": q.calibration_scores,
            } for q in self.queries],
            "warnings": self.warnings,
        }


# --- checking and choosing, before any work --------------------------------------------------


def check_arguments(queries: list, *, k: int, calibration: float, metric: str) -> None:
    """The mistakes that need no store: say them before anything is read or run."""
    check_metric(metric)
    if not queries:
        raise ActdbError("give at least one QUERY: an image file, id:N or optimized:NAME")
    for query in queries:
        if isinstance(query, np.ndarray) or str(query).endswith(".npy"):
            shown = "a NumPy vector" if isinstance(query, np.ndarray) else str(query)
            raise ActdbError(f"{shown}: a vector holds one layer only, and a trajectory needs every layer: "
                             f"query with an image file, id:N or {OPTIMIZED_PREFIX}NAME")
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise invalid("k", k, "give at least 1 neighbour")
    if not isinstance(calibration, (int, float)) or not 0 < calibration < 1:
        raise invalid("calibration", calibration, "give the share of labelled images held out, between 0 and 1")


def choose_arrays(db, model: str, layers: str | list[str], reduce: str, weights: str | None) -> list[StoredArray]:
    """The stored arrays of `model`: every stored layer (`layers="all"`) or the named ones."""
    if layers == "all":
        wanted = weightspec.recorded(weights)
        found = [a for a in db.arrays() if a.model == model and a.reduce == reduce
                 and (weights is None or a.weights == wanted)]
        if not found:
            stored = sorted({f"{a.model} ({a.reduce})" for a in db.arrays()})
            raise ActdbError(f"no stored array of model {model!r} with reduce {reduce}"
                             f"{f' and weights {weights}' if weights else ''} in {db.path}; stored: "
                             f"{', '.join(stored) or 'none yet'}")
        stored_weights = sorted({a.weights for a in found})
        if len(stored_weights) > 1:
            shown = " or ".join(weightspec.given(w) for w in stored_weights)
            raise ActdbError(f"{model} is stored under several weights: name one with weights={shown}",
                             f"{model} is stored under several weights: name one with --weights {shown}")
        return found
    names = [layers] if isinstance(layers, str) else list(layers)
    if not names:
        raise invalid("layers", layers, "name stored layers, or all")
    return list(dict.fromkeys(db.array(model, name, reduce=reduce, weights=weights) for name in names))


def network_order(found: list[StoredArray]) -> tuple[list[StoredArray], list[str]]:
    """The arrays in the order of the model's layers, and a warning where that order is unknown."""
    if len(found) < 2:
        return list(found), []
    names = _model_layer_names(found[0].model_path or found[0].model, found[0].preprocess if found[0].model_path
                               else None)
    if names is None:
        return sorted(found, key=lambda a: a.id), [
            f"{found[0].model} could not be built here to read its layer order: the layers are in the order "
            "they were stored"]
    position = {name: i for i, name in enumerate(names)}
    return sorted(found, key=lambda a: (position.get(a.layer, len(names)), a.id)), []


@functools.lru_cache(maxsize=8)
def _model_layer_names(model: str, preprocess: str | None) -> tuple[str, ...] | None:
    """The model's layer names in order, from its architecture (random weights: nothing loaded)."""
    from ..models import load

    try:
        return tuple(layer.name for layer in load(model, weights="random", preprocess=preprocess).keras_model.layers)
    except ActdbError:
        return None


# --- the computation ---------------------------------------------------------------------------


@dataclass
class _Sets:
    """The labelled images, split: neighbours (searched) and calibration (held out)."""

    label_of: np.ndarray  # object, indexed by image id (None: unlabelled or not chosen)
    code_of: np.ndarray  # int64, indexed by image id: the position of its label in `classes` (-1: none)
    classes: list[str]  # sorted
    neighbours: np.ndarray  # ids, sorted
    calibration: np.ndarray  # ids, sorted
    how: str


def split(db, found: list[StoredArray], calibration: float, calibration_where: str | None, seed: int) -> _Sets:
    """The labelled images with a row in every chosen array, split into neighbour and calibration sets."""
    array_ids = ", ".join(str(int(a.id)) for a in found)
    images = db.sql(f"SELECT i.id, i.label FROM images i WHERE i.label IS NOT NULL AND i.id IN (SELECT image_id "
                    f"FROM done WHERE array_id IN ({array_ids}) GROUP BY image_id HAVING count(*) = {len(found)}) "
                    "ORDER BY i.id")
    ids = images.id.to_numpy(np.int64)
    if len(ids) < 3:
        raise ActdbError(f"only {len(ids)} labelled image(s) have a row in every chosen layer: a trajectory needs "
                         "labelled images to search and to calibrate on (ingest class folders)")
    labels = images.label.to_numpy(str)
    if calibration_where:
        chosen = db.sql(f"SELECT id FROM images WHERE {calibration_where}").id.to_numpy(np.int64)
        held_out = np.isin(ids, chosen)
        how = f"where {calibration_where}"
    else:
        share = max(1, int(round(calibration * len(ids))))
        count = min(share, MAX_CALIBRATION)
        held_out = stratified(labels, count, np.random.default_rng(seed))
        how = f"a seeded share {calibration:g} (seed {seed}) of each class" + (
            f", capped at {MAX_CALIBRATION} images" if count < share else "")
    if not held_out.any():
        raise invalid("calibration_where", calibration_where,
                      "no labelled image with a row in every chosen layer matches it")
    if held_out.sum() > len(ids) - 2:
        what = ("calibration_where", calibration_where) if calibration_where else ("calibration", calibration)
        raise invalid(*what, f"holds out {int(held_out.sum())} of the {len(ids)} labelled images: leave at least 2 "
                             "to search")
    label_of = np.full(int(ids.max()) + 1, None, dtype=object)
    label_of[ids] = images.label.to_numpy(object)
    classes, codes = np.unique(labels, return_inverse=True)
    code_of = np.full(len(label_of), -1, np.int64)
    code_of[ids] = codes
    return _Sets(label_of, code_of, classes.tolist(), ids[~held_out], ids[held_out], how)


def stratified(labels: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """A mask holding out `count` images, each class in proportion to its size (largest
    remainders first, equal ones in a seeded order) and never a class's last image: the
    neighbour set keeps the classes' proportions, so a share does not empty a small class."""
    classes, codes, sizes = np.unique(labels, return_inverse=True, return_counts=True)
    quota = count * sizes / len(labels)
    taken = np.minimum(np.floor(quota).astype(np.int64), sizes - 1)
    order = np.lexsort((rng.permutation(len(classes)), -(quota - taken)))  # largest remainder first
    extra = [c for c in order if taken[c] < sizes[c] - 1][:max(0, count - int(taken.sum()))]
    taken[extra] += 1
    held_out = np.zeros(len(labels), bool)
    for c, n in enumerate(taken):
        members = np.flatnonzero(codes == c)
        held_out[rng.choice(members, n, replace=False)] = True
    return held_out


def credibility_warnings(sets: _Sets, query_ids: list[int | None], k: int) -> tuple[int, list[str]]:
    """The k Deep k-NN can use here and what keeps its p-values from measuring anything.

    A class j's nonconformity is the number of the k neighbours per layer (over all layers)
    whose label is not j. A class with n members in the neighbour set (n - 1 for a stored
    query of it, which leaves itself out) can supply at most n of a query's k neighbours, so
    for k > n a query of that class never looks conforming: k is lowered to what the smallest
    class supplies. With one class every neighbour agrees with it, and every query is
    credible; with n calibration scores p-values move in steps of 1/n."""
    warnings = []
    neighbour_labels = sets.label_of[sets.neighbours]
    members = {c: int(np.sum(neighbour_labels == c)) for c in sets.classes}
    present = {c: n for c, n in members.items() if n}
    stored = set(sets.neighbours.tolist()) & {i for i in query_ids if i is not None}
    for label in {sets.label_of[i] for i in stored}:  # a stored query leaves itself out of its class's neighbours
        present[label] -= 1
    smallest = min(present, key=lambda c: (present[c], c))
    supply = max(1, min(present[smallest], len(sets.neighbours) - 1))
    if k > supply:
        reason = f"{smallest} has {present[smallest]} image(s) in the neighbour set" if present[smallest] == supply \
            else f"the neighbour set holds {len(sets.neighbours)} images, a stored query leaving itself out"
        warnings.append(f"k={k} is more than the smallest class can supply ({reason}): a query of it could never "
                        f"look conforming, so k={supply} is used; for a larger k, store more images of every class")
        k = supply
    if len(present) < 2:
        warnings.append(f"the neighbour set holds one class ({smallest}): every neighbour agrees with it, so every "
                        "query gets credibility 1; Deep k-NN needs at least 2 classes to measure credibility")
    if len(sets.calibration) < MIN_CALIBRATION:
        warnings.append(f"{len(sets.calibration)} calibration image(s): p-values move in steps of "
                        f"1/{len(sets.calibration)}, too coarse to tell a credibility of 0.05 from 0 (it takes "
                        f"{MIN_CALIBRATION}); hold out a larger calibration share or store more labelled images")
    return k, warnings


def trajectory(db, found: list[StoredArray], queries: list[str], *, metric: str = "l2", k: int = DEFAULT_K,
               class_name: str | None = None, calibration: float = DEFAULT_CALIBRATION,
               calibration_where: str | None = None, exact: bool = False, seed: int = 0) -> Trajectory:
    """Deep k-NN over `found` (arrays of one model) for each query; see the module doc."""
    check_arguments(queries, k=k, calibration=calibration, metric=metric)
    target = db.class_label(class_name) if class_name is not None else None
    sets = split(db, found, calibration, calibration_where, seed)
    if target is not None and target not in set(sets.label_of[sets.neighbours]):
        raise invalid("class_name", class_name, "has no image in the neighbour set (all of its images are held out "
                                                "for calibration, or lack a row in some chosen layer)")
    found, warnings = network_order(found)
    resolved = resolve_in_arrays(db, found, [str(q) for q in queries])
    query_ids = [next((r.image_ids[q] for r in resolved if r.image_ids[q] is not None), None)
                 for q in range(len(queries))]
    k, measure_warnings = credibility_warnings(sets, query_ids, k)
    warnings += measure_warnings
    n_queries, n_calibration = len(queries), len(sets.calibration)
    own = np.array([-1 if i is None else i for i in query_ids] + sets.calibration.tolist(), np.int64)
    agree = np.zeros((n_queries + n_calibration, len(sets.classes)), np.int64)  # neighbours of each class, summed
    layers, search = [], {}
    for array, queried in zip(found, resolved):
        zarr_array = zarr_arrays.open_array(db.path, array.zarr_path)
        calibration_rows = zarr_arrays.read_rows(zarr_array, sets.calibration)
        if not np.isfinite(calibration_rows).all():
            raise ActdbError(f"calibration images have NaN rows in {array.describe()}: run `actdb check`")
        vectors = np.concatenate([queried.vectors, calibration_rows])
        ids, distances, search[array.layer] = _search(db, array, zarr_array, vectors, sets.neighbours, k, metric,
                                                      exact)
        ids, distances = _without_own(ids, distances, own, k)
        counts = np.zeros((len(ids), len(sets.classes)), np.int64)
        np.add.at(counts, (np.repeat(np.arange(len(ids)), ids.shape[1]), sets.code_of[ids].ravel()), 1)
        agree += counts
        layers.append(_Layer(array.layer, ids[:n_queries], distances[:n_queries], counts[:n_queries],
                             prepare(queried.vectors, metric).astype(np.float64),
                             _Centroids.of(zarr_array, sets, metric), zarr_array))
    alpha = len(found) * k - agree  # nonconformity of every class
    calibration_alpha = alpha[n_queries + np.arange(n_calibration), sets.code_of[sets.calibration]]
    neighbour_set = set(sets.neighbours.tolist())
    results = []
    for q, text in enumerate(queries):
        own_id = query_ids[q] if query_ids[q] in neighbour_set else None  # left out of its class's centroid
        steps = [layer.step(q, own_id, sets) for layer in layers]
        result = _deep_knn(str(text), query_ids[q], _label(db, query_ids[q]), steps, alpha[q], calibration_alpha,
                           sets)
        followed = target or result.prediction
        for step, layer in zip(steps, layers):
            step.target = layer.followed(q, own_id, followed, sets)
        results.append(result)
    first = found[0]
    return Trajectory(
        model=first.model, weights=first.weights, reduce=first.reduce, metric=metric, k=k,
        layers=[a.layer for a in found], search=search, class_name=target, classes=sets.classes,
        neighbour_ids=sets.neighbours, calibration=sets.how, calibration_ids=sets.calibration,
        calibration_labels=sets.label_of[sets.calibration].tolist(), calibration_nonconformity=calibration_alpha,
        queries=results, warnings=warnings)


def _label(db, image_id: int | None) -> str | None:
    if image_id is None:
        return None
    found = db.sql("SELECT label FROM images WHERE id = ?", [image_id])
    return None if found.empty or pd.isna(found.label[0]) else str(found.label[0])


def _search(db, array, zarr_array, vectors, neighbours, k, metric, exact) -> tuple[np.ndarray, np.ndarray, str]:
    """The k + 1 nearest of each vector in the neighbour set (one more, for a stored query's own
    row): with the array's index when it holds the whole set, else exactly; and how."""
    reason = "exact (asked)" if exact else None
    if reason is None:
        record = derived.index_record(db, array, metric)
        index = None
        if record is not None:
            try:
                index = derived.open_index(db, record)
            except ActdbError:  # missing or changed since it was written: searched exactly instead
                pass
        if record is None:
            reason = f"exact (no {metric} index)"
        elif index is None:
            reason = "exact (its index file is missing or damaged)"
        elif not np.isin(neighbours, knn.indexed_ids(index)).all():
            reason = "exact (its index is behind the stored rows: run `actdb index`)"
        else:
            ids, distances = knn.search(index, vectors, k + 1, metric, allowed_ids=neighbours)
            how = f"{record.kind} index" if record.kind == "flat" else \
                f"{record.kind} index (recall@10 {float(record.recall_at_10):.3f})"
            return ids, distances, how
    ids, distances = knn.exact_search(vectors, zarr_arrays.iter_blocks(zarr_array, neighbours), k + 1, metric)
    return ids, distances, reason


def _without_own(ids, distances, own, k):
    """Each row's k nearest with its own image (`own`, -1 for none) left out."""
    keep = ids != own[:, None]
    kept_ids = np.stack([row[mask][:k] for row, mask in zip(ids, keep)])
    kept_distances = np.stack([row[mask][:k] for row, mask in zip(distances, keep)])
    return kept_ids, kept_distances


@dataclass
class _Centroids:
    """Each class's mean over the neighbour set (rows as the metric sees them) and member count."""

    means: np.ndarray  # (classes, dim) float64
    counts: np.ndarray  # members per class
    metric: str

    @classmethod
    def of(cls, zarr_array, sets: _Sets, metric: str) -> "_Centroids":
        """One pass over the neighbour set's rows (rows with NaN, failed images, belong to no class)."""
        moments = None
        for ids, rows in _finite_blocks(zarr_array, sets.neighbours):
            moments = moments or GroupMoments(rows.shape[1], len(sets.classes), second_moment=False)
            moments.add(sets.code_of[ids], prepare(rows, metric))
        return cls(moments.mean, moments.n.astype(np.int64), metric)

    def distances(self, prepared: np.ndarray, own_code: int | None) -> np.ndarray:
        """A prepared query's distance to every centroid; to its own class's, without itself."""
        distances = pairwise_distances(prepared[None], prepare(self.means, self.metric, np.float64), self.metric)[0]
        distances[self.counts == 0] = np.nan
        if own_code is not None:
            distances[own_code] = _distance_to_others(prepared[None], self.means[[own_code]],
                                                      self.counts[[own_code]], self.metric)[0]
        return distances


def _finite_blocks(zarr_array, ids: np.ndarray):
    for block_ids, rows in zarr_arrays.iter_blocks(zarr_array, ids):
        finite = np.isfinite(rows).all(axis=1)
        yield block_ids[finite], rows[finite]


def _distance_to_others(rows: np.ndarray, means: np.ndarray, counts: np.ndarray, metric: str) -> np.ndarray:
    """Each member row's distance to the mean of the other members of its class (NaN for a class of one)."""
    counts = counts.astype(np.float64)[:, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        others = (counts * means - rows) / (counts - 1)
    distances = paired_distances(rows, prepare(np.nan_to_num(others), metric, np.float64), metric)
    distances[counts[:, 0] < 2] = np.nan
    return distances


@dataclass
class _Layer:
    """What one layer's search left for the queries: their neighbours, class counts, prepared rows."""

    name: str
    ids: np.ndarray  # (queries, k)
    distances: np.ndarray
    counts: np.ndarray  # (queries, classes) neighbours of each class
    prepared: np.ndarray  # (queries, dim) as the metric sees them
    centroids: _Centroids
    zarr_array: object
    _members: dict = field(default_factory=dict)

    def centroid_distances(self, q: int, own_id: int | None, sets: _Sets) -> np.ndarray:
        own_code = sets.classes.index(sets.label_of[own_id]) if own_id is not None else None
        return self.centroids.distances(self.prepared[q], own_code)

    def step(self, q: int, own_id: int | None, sets: _Sets) -> LayerStep:
        ids, counts = self.ids[q], self.counts[q]
        to_centroids = self.centroid_distances(q, own_id, sets)
        by_centroid = _by_centroid(to_centroids)
        return LayerStep(
            layer=self.name, neighbour_ids=ids, neighbour_distances=self.distances[q],
            neighbour_labels=sets.label_of[ids].tolist(),
            shares={sets.classes[c]: float(counts[c] / len(ids)) for c in _by_share(counts, ids, sets)},
            centroid_distances={sets.classes[c]: float(to_centroids[c]) for c in by_centroid},
            nearest_class=sets.classes[by_centroid[0]])

    def followed(self, q: int, own_id: int | None, target: str, sets: _Sets) -> dict:
        """The target class at this layer: share, ranks, distance to its centroid and percentile."""
        t = sets.classes.index(target)
        counts = self.counts[q]
        to_centroids = self.centroid_distances(q, own_id, sets)
        by_share, by_centroid = _by_share(counts, self.ids[q], sets), _by_centroid(to_centroids)
        own_member = own_id if own_id is not None and sets.label_of[own_id] == target else None
        members = self.member_distances(target, own_member, sets)
        distance = float(to_centroids[t])
        return {"class": target, "share": float(counts[t] / len(self.ids[q])),
                "knn_rank": by_share.index(t) + 1 if counts[t] else len(by_share) + 1,
                "centroid_rank": by_centroid.index(t) + 1 if t in by_centroid else None,
                "distance": distance,
                "percentile": 100.0 * float(np.mean(members < distance)) if len(members) and np.isfinite(distance)
                else None,
                "members": len(members)}

    def member_distances(self, target: str, left_out: int | None, sets: _Sets) -> np.ndarray:
        """Each member of `target` in the neighbour set (less `left_out`, the query): its distance
        to the centroid of the other members, the reference a query's percentile is taken in."""
        if (target, left_out) not in self._members:
            ids = sets.neighbours[sets.label_of[sets.neighbours] == target]
            rows = zarr_arrays.read_rows(self.zarr_array, ids[ids != left_out])
            rows = prepare(rows[np.isfinite(rows).all(axis=1)], self.centroids.metric).astype(np.float64)
            n = len(rows)
            self._members[(target, left_out)] = np.empty(0) if n < 2 else _distance_to_others(
                rows, np.repeat(rows.mean(axis=0, keepdims=True), n, axis=0), np.full(n, n), self.centroids.metric)
        return self._members[(target, left_out)]


def _by_share(counts: np.ndarray, ids: np.ndarray, sets: _Sets) -> list[int]:
    """The classes present among the neighbours, largest count first, ties by their nearest neighbour."""
    nearest = {}
    for rank, label in enumerate(sets.label_of[ids]):
        nearest.setdefault(sets.classes.index(label), rank)
    return sorted(np.flatnonzero(counts).tolist(), key=lambda c: (-counts[c], nearest[c]))


def _by_centroid(to_centroids: np.ndarray) -> list[int]:
    """The classes with a centroid, nearest first, ties by name."""
    order = np.lexsort((np.arange(len(to_centroids)), to_centroids))
    return [int(c) for c in order if np.isfinite(to_centroids[c])]


def _deep_knn(text, query_id, label, steps, alpha, calibration_alpha, sets: _Sets) -> QueryTrajectory:
    """p-values from the calibration scores (the query's own left out), prediction, credibility, confidence."""
    scores = calibration_alpha[sets.calibration != (-1 if query_id is None else query_id)]
    p = (scores[None, :] >= alpha[:, None]).mean(axis=1)
    order = np.lexsort((np.arange(len(p)), alpha, -p))  # largest first; ties: lower nonconformity, then name
    second = p[order[1]] if len(p) > 1 else 0.0
    return QueryTrajectory(
        query=text, image_id=query_id, label=label, steps=steps,
        nonconformity={c: int(a) for c, a in zip(sets.classes, alpha)},
        p_values={sets.classes[c]: float(p[c]) for c in order}, prediction=sets.classes[order[0]],
        credibility=float(p[order[0]]), confidence=float(1.0 - second), calibration_scores=len(scores))


def query_name(text: str) -> str:
    """A query as the table and plot show it: a file by its name."""
    return text if text.startswith(("id:", OPTIMIZED_PREFIX)) else Path(text).name
