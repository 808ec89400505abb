"""`actdb distances`: distributions of distances between stored images, and from queries to
classes, as in the notebooks' sea_cucumber analysis (000/001), on the stored per-channel
reductions (512-d means for VGG19 block5_conv4, what the notebooks' text describes) or, with
`reduce="flat"`, on whole feature maps computed on the fly (what their code computed).

Pair groups over the selected images: same class, different class, and random pairs
(any two distinct images). `pairs=N` samples N pairs per group with the seed (with
replacement); `pairs="all"` takes every pair of the selection.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..choices import invalid
from ..distance import check_metric, check_query_directions, paired_distances, pairwise_distances, prepare
from ..errors import ActdbError
from ..resolve import file_vectors, image_file, resolve
from ..results import Result
from ..store.stored_array import StoredArray
from . import selection

GROUPS = ("same class", "different class", "random pairs")
RANDOM_MIX = "random mix"
STATISTICS = ("n", "mean", "median", "std", "min", "p5", "p95", "max")
PAIR_BATCH_VALUES = 1 << 22  # float64 values per pair batch (32 MB a side)


@dataclass
class DistanceReport(Result):
    pairs: pd.DataFrame  # one row per group: STATISTICS
    queries: pd.DataFrame  # per query and target class: STATISTICS, percentile, rank
    pair_samples: dict[str, np.ndarray]  # group -> distances (for plots)
    query_samples: dict[tuple[str, str], np.ndarray] = field(default_factory=dict)  # (query, target) -> distances
    title: str = ""
    drawn_targets: list[str] = field(default_factory=list)  # the named classes and the random mix (as the notebooks drew)
    selection: selection.Selection | None = None  # the images compared (finite rows only)


def prepared(vectors: np.ndarray, metric: str) -> np.ndarray:
    """float64 rows for `metric` (`distance.prepare`: a row with no direction is at distance 1)."""
    return prepare(vectors, metric, np.float64)


def paired(rows: np.ndarray, first: np.ndarray, second: np.ndarray, metric: str) -> np.ndarray:
    """Distance between rows[first[i]] and rows[second[i]] (prepared), a batch of pairs at a
    time: flat feature maps have ~100,000 values a row."""
    batch = max(1, PAIR_BATCH_VALUES // rows.shape[1])
    out = np.empty(len(first))
    for start in range(0, len(first), batch):
        a, b = rows[first[start : start + batch]], rows[second[start : start + batch]]
        out[start : start + batch] = paired_distances(a, b, metric)
    return out


def summary(values: np.ndarray) -> dict:
    values = np.asarray(values, dtype=np.float64)
    if not len(values):
        return {"n": 0, **{name: np.nan for name in STATISTICS[1:]}}
    p5, p95 = np.percentile(values, [5, 95])
    return {"n": len(values), "mean": values.mean(), "median": np.median(values), "std": values.std(),
            "min": values.min(), "p5": p5, "p95": p95, "max": values.max()}


def pair_groups(rows: np.ndarray, labels: np.ndarray, pairs: int | str, metric: str,
                rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Distances of same-class, different-class and random pairs of the prepared rows."""
    n = len(rows)
    if n < 2:
        raise ActdbError("the selection holds fewer than two images: choose more classes or a larger --per-class")
    if pairs == "all":
        first, second = np.triu_indices(n, k=1)
        distances = pairwise_distances(rows, rows, metric)[first, second]
        same = labels[first] == labels[second]
        return {"same class": distances[same], "different class": distances[~same], "random pairs": distances}
    if isinstance(pairs, bool) or not isinstance(pairs, (int, np.integer)) or pairs < 1:
        raise invalid("pairs", pairs, "give a positive number of pairs, or 'all'")
    if pairs >= n * (n - 1) // 2:  # more samples than distinct pairs: every pair, exactly, instead
        return pair_groups(rows, labels, "all", metric, rng)
    groups = {}
    for group, (first, second) in zip(GROUPS, (_same_class_pairs(labels, pairs, rng),
                                               _different_class_pairs(labels, pairs, rng),
                                               _random_pairs(n, pairs, rng))):
        groups[group] = paired(rows, first, second, metric)
    return groups


def _random_pairs(n: int, count: int, rng) -> tuple[np.ndarray, np.ndarray]:
    first = rng.integers(0, n, count)
    second = (first + rng.integers(1, n, count)) % n  # any other image
    return first, second


def _same_class_pairs(labels: np.ndarray, count: int, rng) -> tuple[np.ndarray, np.ndarray]:
    """Classes drawn in proportion to their number of pairs, then two distinct members."""
    classes, inverse, sizes = np.unique(labels, return_inverse=True, return_counts=True)
    weights = sizes * (sizes - 1) / 2.0
    if weights.sum() == 0:
        return np.empty(0, int), np.empty(0, int)
    drawn = rng.choice(len(classes), count, p=weights / weights.sum())
    members = [np.flatnonzero(inverse == c) for c in range(len(classes))]
    first, second = np.empty(count, int), np.empty(count, int)
    for c in np.unique(drawn):
        where = np.flatnonzero(drawn == c)
        i, j = _random_pairs(sizes[c], len(where), rng)
        first[where], second[where] = members[c][i], members[c][j]
    return first, second


def _different_class_pairs(labels: np.ndarray, count: int, rng) -> tuple[np.ndarray, np.ndarray]:
    if len(np.unique(labels)) < 2:
        return np.empty(0, int), np.empty(0, int)
    first, second = _random_pairs(len(labels), count, rng)
    while (clash := labels[first] == labels[second]).any():  # redraw the same-class ones
        second[clash] = rng.integers(0, len(labels), int(clash.sum()))
    return first, second


def query_table(queries: np.ndarray, texts: list[str], query_ids: list[int | None], chosen: selection.Selection,
                rows: np.ndarray, pair_rows_by_class: dict[str, np.ndarray], metric: str
                ) -> tuple[pd.DataFrame, dict]:
    """Per query: distances to each class's members and to the random mix, the query's
    percentile within each class's own same-class distances, classes ranked by median."""
    distances = pairwise_distances(queries, rows, metric)
    records, samples = [], {}
    for q, text in enumerate(texts):
        own = query_ids[q]
        keep = chosen.ids != own if own is not None else np.ones(len(chosen.ids), bool)
        targets = [(label, (chosen.labels == label) & keep) for label in chosen.named + chosen.random]
        if chosen.random:
            targets.append((RANDOM_MIX, np.isin(chosen.labels, chosen.random) & keep))
        for target, mask in targets:
            values = distances[q, mask]
            samples[(text, target)] = values
            stats = summary(values)
            within = _reference_without(pair_rows_by_class.get(target), own)
            percentile = np.nan if within is None or not len(within) or not len(values) else \
                100.0 * np.mean(within < stats["median"])
            records.append({"query": text, "target": target, **stats, "percentile": percentile, "order": q})
    frame = pd.DataFrame(records)
    is_class = frame.target != RANDOM_MIX
    frame["rank"] = pd.array([pd.NA] * len(frame), dtype="Int64")
    frame.loc[is_class, "rank"] = (frame[is_class].groupby("order")["median"]  # per query, even a repeated one
                                   .rank(method="first").astype("int64"))
    frame = frame.sort_values(["order", "rank"], na_position="last", kind="stable")
    return frame.drop(columns="order").reset_index(drop=True), samples


def _reference_without(within: tuple | None, own: int | None) -> np.ndarray | None:
    """A class's same-class distances, less the pairs of the query itself when it is a member:
    a query is not compared with a reference that contains it."""
    if within is None:
        return None
    values, first, second = within
    return values if own is None else values[(first != own) & (second != own)]


def within_class_distances(rows: np.ndarray, chosen: selection.Selection, metric: str) -> dict[str, tuple]:
    """Every same-class pair's distance, per class, with the pair's two image ids: the
    reference a query's percentile is taken in."""
    result = {}
    for label in chosen.named + chosen.random:
        mask = chosen.members(label)
        members, ids = rows[mask], np.asarray(chosen.ids)[mask]
        first, second = np.triu_indices(len(members), k=1)
        result[label] = (pairwise_distances(members, members, metric)[first, second], ids[first], ids[second])
    return result


def distances(db, array: StoredArray, *, queries: list | None = None, classes: str | list[str] | None = None,
              random_classes: int = 10, per_class: int | None = 100, pairs: int | str = 5000, metric: str = "l2",
              seed: int = 0, max_images: int = 2000, flat: bool = False, progress: bool = False) -> DistanceReport:
    """Pair distributions of a seeded selection and, with `queries`, query-to-class distances.

    `flat`: whole feature maps of the selected images, computed through `array`'s model
    and settings, instead of its stored reduced rows."""
    check_metric(metric)
    chosen = selection.sample(db, array, classes, random_classes, per_class, seed)
    resolved = _query_vectors(db, array, queries, flat) if queries else None  # a bad query fails before the work
    if flat:
        if len(chosen.ids) > max_images:
            raise ActdbError(f"the selection holds {len(chosen.ids)} images; --reduce flat computes at most "
                             f"--max-images {max_images} feature maps: lower --per-class or --random-classes")
        paths = selection.image_info(db, chosen.ids).set_index("id").path.loc[chosen.ids].tolist()
        vectors = file_vectors(db, array, paths, reduce=_full_maps(), progress=progress)
    else:
        vectors = db.rows(array, chosen.ids)
    finite = selection.finite_rows(vectors)
    chosen = selection.Selection(chosen.ids[finite], chosen.labels[finite], chosen.named, chosen.random)
    rows = prepared(vectors[finite], metric)
    rng = np.random.default_rng(seed)
    samples = pair_groups(rows, chosen.labels, pairs, metric, rng)
    pair_frame = pd.DataFrame([{"group": group, **summary(values)} for group, values in samples.items()])
    title = f"{array.model} {array.layer} ({'flat maps' if flat else array.reduce}), {metric} distance"
    report = DistanceReport(pair_frame, pd.DataFrame(), samples, title=title,
                            drawn_targets=chosen.named + ([RANDOM_MIX] if chosen.random else []), selection=chosen)
    if resolved:
        texts, vectors, ids = resolved
        queries_prepared = prepared(vectors, metric)
        check_query_directions(queries_prepared, metric)
        report.queries, report.query_samples = query_table(queries_prepared, texts, ids, chosen, rows,
                                                           within_class_distances(rows, chosen, metric), metric)
    return report


def _full_maps() -> str:
    """The forward pass's no-reduction mode; importing it loads TensorFlow (only --reduce flat gets here)."""
    from ..tfquiet import import_tensorflow

    import_tensorflow()  # without its start-up chatter, before models.forward imports it plainly
    from ..models.forward import FULL_MAPS

    return FULL_MAPS


def _stored_id(db, path: str) -> int | None:
    stored = db.sql("SELECT id FROM images WHERE path = ?", [str(Path(path).resolve())])
    return None if stored.empty else int(stored.id[0])


def _query_vectors(db, array, queries: list[str], flat: bool) -> tuple[list[str], np.ndarray, list[int | None]]:
    if not flat:
        resolved = resolve(db, array, queries)
        return resolved.texts, resolved.vectors, resolved.image_ids
    if any(not isinstance(text, str) or text.endswith(".npy") for text in queries):
        raise ActdbError("--reduce flat computes feature maps from images: query with an image file, id:N or "
                         "optimized:NAME, not a .npy vector")
    paths = [image_file(text, db) for text in queries]
    ids = [int(text[3:]) if text.startswith("id:") else _stored_id(db, path) for text, path in zip(queries, paths)]
    return list(queries), file_vectors(db, array, paths, reduce=_full_maps()), ids
