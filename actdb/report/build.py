"""`actdb report`: a static site of the store, a Microscope for your own model and data.

Pages at stable paths: `index.html`; per stored array `MODEL/LAYER/index.html` (every unit
in one sortable table) and `MODEL/LAYER/UNIT.html`; `class/NAME.html`; `image/ID.html`;
`optimized/NAME.html`. Every number comes from the analytics (the all-units pass, unit
statistics) and the queries (nearest images and classes) the commands use; this module only
lays them out. Each page records the key of its inputs (array data versions, optimized
images of the array's model, layer and weights, the chosen units and images, options) and
is rewritten only when that changed (site.py adds the store, the navigation and a check of
the files kept). A page links only to pages this report makes.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path, PurePath

import numpy as np
import pandas as pd

from ..analytics import unit_summary, unitstats
from ..errors import ActdbError
from ..resolve import optimized_png, resolve
from ..store.stored_array import StoredArray
from . import charts
from .site import Site, key_of, slug, store_identity
from .thumbs import Thumbnails

STRIP_IMAGES = 5
CLASS_MEMBERS = 24
NEIGHBOURS = 8
PANEL_ROWS = 10


@dataclass
class Queries:
    """What the image pages ask of the store, handed in by the notebook API (the report does
    not import the query feature): `neighbors(queries, array)` and `classes(queries, array)`
    return the frames of `db.neighbors` and `db.classes`."""

    neighbors: object
    classes: object


@dataclass
class Layer:
    array: StoredArray
    units: list[int]
    folder: str  # MODEL/LAYER in the report
    name: str  # in titles and the navigation: unique among the store's arrays
    key: str
    summary: unit_summary.UnitSummary | None = None
    stats: unitstats.UnitStats | None = None
    shown: set = field(default_factory=set)  # image ids its pages show

    @property
    def href(self) -> str:
        return f"{self.folder}/index.html"


def array_places(arrays: list[StoredArray]) -> dict[int, tuple[str, str]]:
    """(folder, name) per array id: MODEL/LAYER, with -REDUCE when not mean, and "model layer
    (reduce)"; the weights are added to both where two stored arrays differ by weights alone."""
    groups: dict[tuple, list[StoredArray]] = {}
    for a in arrays:
        groups.setdefault((a.model, a.layer, a.reduce), []).append(a)
    places = {}
    for (model, layer, reduce), members in groups.items():
        base = f"{slug(model)}/{slug(layer)}" + ("" if reduce == "mean" else f"-{reduce}")
        for a in members:
            if len(members) == 1:
                places[a.id] = base, a.describe()
            else:
                places[a.id] = (f"{base}-{slug(a.weights)[:32]}",
                                f"{a.model} {a.layer} ({a.reduce}, weights {_short_weights(a.weights)})")
    return places


def _short_weights(weights: str) -> str:
    """A weights file's digest cut to 12 hex digits in names (folders and the index table keep more)."""
    prefix, _, digest = weights.partition("sha256=")
    return f"{prefix}sha256={digest[:12]}" if digest else weights


def build(db, layers: list[tuple[StoredArray, list[int]]], out: Path, queries: Queries, *, top: int = 16,
          absolute_paths: bool = False, progress=None) -> dict:
    """Write the report of `layers` (arrays with their chosen units) into `out` (checked and
    locked by the caller); a summary. `absolute_paths`: pages name the store and the images by
    their full paths (for a site kept beside the store) instead of by folder names."""
    places = array_places(db.arrays())
    optimized = _optimized(db)
    chosen = [Layer(array, units, *places[array.id],
                    key_of("layer", array.id, array.data_version, units, top, _optimized_key(optimized, array)))
              for array, units in layers]
    site = Site(out, store_identity(db.path), page_salt=[_nav(chosen), absolute_paths])
    site.claim()
    site.static()
    images = _ImageIndex(db, optimized, site.notes, absolute_paths)
    thumbs = Thumbnails(site, images.sources)
    for layer in _progress(chosen, progress, "arrays"):
        _layer_pages(db, site, layer, chosen, images, thumbs, optimized, top)
    labels = db.labels()
    counts = db.sql("SELECT label, count(*) AS n FROM images WHERE label IS NOT NULL GROUP BY label ORDER BY label")
    members = {label: db.sql("SELECT id FROM images WHERE label = ? ORDER BY id LIMIT ?",
                             [label, CLASS_MEMBERS]).id.tolist() for label in labels}
    shown = sorted(set().union(*(layer.shown for layer in chosen), *members.values()))
    store_key = key_of("store", [(a.id, a.data_version) for a in db.arrays()], _optimized_key(optimized, None),
                       [(layer.array.id, layer.units) for layer in chosen], counts.values.tolist(),
                       hashlib.sha256(np.asarray(shown, np.int64).tobytes()).hexdigest())
    for label in _progress(labels, progress, "classes"):
        _class_page(db, site, label, members[label], chosen, images, thumbs, optimized, store_key)
    pages = set(shown)  # the images with a page: only these are linked
    _image_pages(db, site, shown, chosen, images, thumbs, queries, store_key, pages, progress)
    _optimized_pages(db, site, optimized, chosen, images, thumbs, queries, store_key, pages)
    _index_page(db, site, chosen, counts, optimized, thumbs, absolute_paths)
    removed = site.finish()
    return {"report": str(Path(out).resolve() / "index.html"), "pages_written": len(site.written),
            "files_kept": site.kept, "files_removed": len(removed), "arrays": [layer.name for layer in chosen],
            "units": sum(len(layer.units) for layer in chosen), "images": len(shown),
            "optimized": len(optimized), "classes": len(labels), "notes": site.all_notes()}


# ---- the store's images -------------------------------------------------------------------------

class _ImageIndex:
    """Label, path and content digest of the images pages show (fetched by id, not all at once)."""

    def __init__(self, db, optimized: pd.DataFrame, notes: list[str], absolute_paths: bool):
        self.db = db
        self.absolute_paths = absolute_paths
        self.rows: dict[int, dict] = {}
        self.sources = _Sources(self)
        self.recorded = {row.name: (row.png, row.png_sha256) for row in optimized.itertuples()}
        self.optimized: dict[str, tuple[Path | None, str]] = {}
        self.notes = notes

    def optimized_source(self, name: str) -> tuple[Path | None, str]:
        """An optimized image's PNG (verified where pixels are read: `resolve.optimized_png`) and
        digest; no file where it is damaged, with a note: its pages show no picture."""
        if name not in self.optimized:
            try:
                file = optimized_png(self.db, name, self.recorded[name])
            except ActdbError as exc:
                file = None
                self.notes.append(str(exc))
            self.optimized[name] = (file, self.recorded[name][1])
        return self.optimized[name]

    def fetch(self, ids) -> None:
        missing = sorted({int(i) for i in ids} - set(self.rows))
        if missing:
            frame = self.db.sql("SELECT id, label, path, source, content_hash FROM images WHERE id IN "
                                "(SELECT unnest(?::BIGINT[]))", [missing])
            for row in frame.itertuples():
                self.rows[int(row.id)] = {"label": row.label, "path": row.path, "hash": row.content_hash,
                                          "shown_path": shown_path(row.path, row.source, self.absolute_paths)}

    def label(self, image_id: int):
        self.fetch([image_id])
        label = self.rows[int(image_id)]["label"]
        return None if pd.isna(label) else label


class _Sources(dict):
    """`id:N` / `optimized:NAME` -> (file, digest), looked up on first use."""

    def __init__(self, index: _ImageIndex):
        super().__init__()
        self.index = index

    def __missing__(self, key: str):
        kind, _, value = key.partition(":")
        if kind == "optimized":
            return self.index.optimized_source(value)
        self.index.fetch([int(value)])
        row = self.index.rows[int(value)]
        return Path(row["path"]), row["hash"] or f"id{value}-{slug(row['path'])}"


def _optimized(db) -> pd.DataFrame:
    if not db.has_table("optimized_images"):
        return pd.DataFrame(columns=["name", "model", "weights", "layer", "unit", "objective", "sign", "method",
                                     "seed", "final_activation", "top1_class", "png", "png_sha256", "params"])
    return db.sql("SELECT name, model, weights, layer, unit, objective, sign, method, seed, start_activation, "
                  "final_activation, top1_class, png, png_sha256, params FROM optimized_images ORDER BY name")


def shown_path(path: str, source: str | None, absolute: bool) -> str:
    """How a page names an image file: in full with `absolute`, else from the folder it was
    ingested from (SOURCE's name and the path below it), or its folder and file name: the
    site is zipped and sent, and says nothing of the folders it was made in."""
    if absolute:
        return path
    file = PurePath(path)
    root = PurePath(os.path.expanduser(source)) if isinstance(source, str) and source else None
    if root is not None and root.is_absolute():
        try:
            return str(PurePath(root.name) / file.relative_to(root))
        except ValueError:
            pass
    return str(PurePath(*file.parts[-2:])) if len(file.parts) > 1 else str(file)


def _of_array(optimized: pd.DataFrame, array: StoredArray) -> pd.DataFrame:
    """The optimized rows made with the array's model, layer and weights: one made with other
    weights is another network's picture."""
    return optimized[(optimized.model == array.model) & (optimized.layer == array.layer)
                     & (optimized.weights == array.weights)]


def _optimized_key(optimized: pd.DataFrame, array: StoredArray | None):
    rows = optimized if array is None else _of_array(optimized, array)
    return sorted(zip(rows.name, rows.png_sha256))


def _optimized_by_unit(optimized: pd.DataFrame, array: StoredArray) -> dict[int, list]:
    """unit -> the optimized rows (feature visualizations) of that unit of the array's layer and weights."""
    rows = _of_array(optimized, array)
    rows = rows[rows.objective != "logit"]
    by_unit: dict[int, list] = {}
    for row in rows.itertuples():
        by_unit.setdefault(int(row.unit), []).append(row)
    return by_unit


# ---- layer and unit pages -----------------------------------------------------------------------

def _layer_pages(db, site, layer: Layer, chosen, images, thumbs, optimized, top: int) -> None:
    array = layer.array
    record = f"data/{layer.folder}.json"
    if (site.fresh(layer.href, layer.key) and site.fresh(record, layer.key)
            and all(site.fresh(f"{layer.folder}/{unit}.html", layer.key) for unit in layer.units)):
        layer.shown = set(json.loads((site.out / record).read_text())["shown"])
        return  # its pages, and the strips, thumbnails and picture they load, as recorded
    summary = layer.summary = unit_summary.summarize(db, array, k=top)
    stats = layer.stats = unitstats.unit_stats(db, array)
    sample_labels = _labels_of(db, summary.sample_ids)
    images.fetch(np.unique(np.concatenate([summary.top_ids[layer.units].ravel(),
                                           summary.bottom_ids[layer.units].ravel()])))
    rows = []
    optimized_units = _optimized_by_unit(optimized, array)
    for unit in layer.units:
        unit_row, shown = _unit_page(site, layer, unit, chosen, images, thumbs, optimized_units.get(unit, []),
                                     sample_labels)
        rows.append(unit_row)
        layer.shown.update(shown)
    folder = layer.folder
    heatmap = None
    if len(stats.classes):
        heatmap = f"{folder}/classes.png"
        site.file(heatmap, charts.class_unit_png(stats, layer.units, layer.name), layer.key)
    site.page(layer.href, "layer.html", layer.key, title=layer.name, array=_array_info(array, layer.name),
              rows=rows, heatmap=heatmap and "classes.png", exact=summary.exact, sample=len(summary.sample_ids),
              top=top, layers=_nav(chosen))
    site.file(record, json.dumps({"shown": sorted(int(i) for i in layer.shown)}).encode(), layer.key)


def _unit_page(site, layer: Layer, unit: int, chosen, images, thumbs, mine: list, sample_labels):
    array, summary, stats = layer.array, layer.summary, layer.stats
    folder = layer.folder
    top_ids, top_values = summary.top_ids[unit], summary.top_values[unit]
    strip = thumbs.strip(f"strips/{folder}/{unit}.jpg", [f"id:{i}" for i in top_ids[:STRIP_IMAGES]])
    # An image at the unit's minimum is among the top k only by id order (a dead ReLU unit's
    # top k are its first k images): its class says nothing about the unit.
    above = top_values > summary.minimum[unit]
    counts = _class_counts([images.label(i) for i in top_ids[above]])
    best_class = counts.index[0] if len(counts) else None
    vis = thumbs.of(f"optimized:{mine[0].name}") if mine else None
    row = {"unit": unit, "href": f"{unit}.html", "strip": strip and f"../../{strip}", "vis": vis and f"../../{vis}",
           "density": float(summary.density[unit]), "mean": float(summary.mean[unit]),
           "max": float(summary.maximum[unit]), "top_class": best_class,
           "top_share": float(counts.iloc[0] / len(top_ids)) if len(counts) else None}

    def examples(ids, values):
        return [_example(images, thumbs, i, v) for i, v in zip(ids, values)]

    quantiles = summary.quantile_examples(unit)
    by_mean = _classes_by_mean(stats, unit)
    overlay = [c["class"] for c in by_mean[:3]]
    histogram = charts.histogram_svg(summary, unit, sample_labels, overlay)
    units = layer.units
    position = units.index(unit)
    similar = [{"unit": u, "r": r, "href": f"{u}.html" if u in units else None}
               for u, r in summary.similar_units(unit)]
    site.page(f"{folder}/{unit}.html", "unit.html", layer.key, title=f"{layer.name} unit {unit}",
              array=_array_info(array, layer.name), unit=unit, row=row, at_minimum=int((~above).sum()),
              previous=f"{units[position - 1]}.html" if position else None,
              next=f"{units[position + 1]}.html" if position + 1 < len(units) else None,
              optimized=[_optimized_row(thumbs, r) for r in mine],
              top=examples(top_ids, top_values), bottom=examples(summary.bottom_ids[unit], summary.bottom_values[unit]),
              quantiles=[dict(_example(images, thumbs, i, v), quantile=q) for q, i, v in quantiles],
              histogram=histogram, exact=summary.exact, sample=len(summary.sample_ids), rows=summary.rows,
              by_mean=by_mean[:PANEL_ROWS],
              by_share=[{"class": c, "count": int(n), "share": float(n / len(top_ids)), "href": _class_href(c)}
                        for c, n in counts.head(PANEL_ROWS).items()],
              similar=similar, layers=_nav(chosen))
    return row, [*top_ids.tolist(), *summary.bottom_ids[unit].tolist(), *(i for _, i, _ in quantiles)]


def _class_counts(labels: list) -> pd.Series:
    """How many of the top images each class has, most first; a tie goes to the class of the
    higher-ranked image (so the top class is one the strip starts with)."""
    labelled = pd.Series([x for x in labels if x is not None], dtype=object)
    if labelled.empty:
        return pd.Series(dtype=np.int64)
    frame = pd.DataFrame({"n": labelled.value_counts(), "first": labelled.drop_duplicates().reset_index()
                          .set_index(0)["index"]})
    return frame.sort_values(["n", "first"], ascending=[False, True]).n


def _classes_by_mean(stats, unit: int) -> list[dict]:
    if not len(stats.classes):
        return []
    means = stats.class_mean[:, unit]
    z = (means - stats.mean[unit]) / stats.std[unit] if stats.std[unit] > 0 else np.zeros_like(means)
    order = np.lexsort((stats.classes.astype(str), -means))
    return [{"class": stats.classes[i], "mean": float(means[i]), "z": float(z[i]),
             "members": int(stats.class_members[i]), "href": _class_href(stats.classes[i])} for i in order]


def _example(images, thumbs, image_id, value, pages=None) -> dict:
    """An image shown on a page; linked to its page unless `pages` (the ids with one) lacks it."""
    image_id = int(image_id)
    label = images.label(image_id)
    return {"id": image_id, "value": float(value), "label": label,
            "href": f"image/{image_id}.html" if pages is None or image_id in pages else None,
            "class_href": _class_href(label) if label is not None else None, "thumb": thumbs.of(f"id:{image_id}")}


def _class_href(label) -> str:
    return f"class/{slug(label)}.html"


def _labels_of(db, ids: np.ndarray) -> np.ndarray:
    frame = db.sql("SELECT id, label FROM images WHERE id IN (SELECT unnest(?::BIGINT[]))",
                   [[int(i) for i in ids]]).set_index("id")
    return frame.label.reindex(ids).to_numpy(dtype=object)


def _array_info(array: StoredArray, name: str) -> dict:
    return {"name": name, "model": array.model, "layer": array.layer, "reduce": array.reduce,
            "weights": array.weights, "rows": array.rows_done, "channels": array.channels}


def _nav(chosen) -> list[dict]:
    return [{"name": layer.name, "href": layer.href} for layer in chosen]


def _optimized_row(thumbs, row) -> dict:
    params = json.loads(row.params) if isinstance(row.params, str) else {}
    return {"name": row.name, "href": f"optimized/{slug(row.name)}.html", "thumb": thumbs.of(f"optimized:{row.name}"),
            "method": row.method, "objective": row.objective, "steps": params.get("steps"),
            "final": row.final_activation, "top1": row.top1_class, "unit": int(row.unit), "layer": row.layer,
            "model": row.model}


# ---- class pages --------------------------------------------------------------------------------

def _class_page(db, site, label: str, members: list[int], chosen, images, thumbs, optimized, store_key) -> None:
    path = _class_href(label)
    if site.fresh(path, store_key):
        return
    panels = []
    for layer in chosen:
        stats = layer.stats or unitstats.unit_stats(db, layer.array)
        layer.stats = stats
        if label not in set(stats.classes):
            continue
        mean = stats.of_class(label)
        distances = np.linalg.norm(stats.class_mean - mean, axis=1)
        order = [i for i in np.lexsort((stats.classes.astype(str), distances)) if stats.classes[i] != label]
        with np.errstate(invalid="ignore", divide="ignore"):
            z = np.where(stats.std > 0, (mean - stats.mean) / stats.std, 0.0)
        specific = np.lexsort((np.arange(len(z)), -z))[:PANEL_ROWS]
        panels.append({"array": layer.name, "layer_href": layer.href,
                       "nearest": [{"class": stats.classes[i], "distance": float(distances[i]),
                                    "href": _class_href(stats.classes[i])} for i in order[:PANEL_ROWS]],
                       "units": [{"unit": int(u), "z": float(z[u]),
                                  "href": f"{layer.folder}/{u}.html" if u in layer.units else None}
                                 for u in specific]})
    class_index = db.sql("SELECT any_value(class_index) AS c FROM images WHERE label = ?", [label]).c.iloc[0]
    logits = optimized[(optimized.objective == "logit") & (optimized.unit == class_index)] \
        if pd.notna(class_index) else optimized.iloc[0:0]
    count = int(db.sql("SELECT count(*) AS n FROM images WHERE label = ?", [label]).n.iloc[0])
    site.page(path, "class.html", store_key, title=f"class {label}", label=label, count=count,
              members=[_example(images, thumbs, i, np.nan) for i in members], panels=panels,
              optimized=[_optimized_row(thumbs, r) for r in logits.itertuples()], layers=_nav(chosen))


# ---- image and optimized image pages ------------------------------------------------------------

def _image_pages(db, site, ids: list[int], chosen, images, thumbs, queries, store_key, pages, progress) -> None:
    todo = [i for i in ids if not site.fresh(f"image/{i}.html", store_key)]
    if not todo:
        return
    images.fetch(todo)
    predictions = _predictions(db, todo)
    answers = _answers(db, [f"id:{i}" for i in todo], chosen, queries)
    for image_id in _progress(todo, progress, "image pages"):
        row = images.rows[image_id]
        query = f"id:{image_id}"
        site.page(f"image/{image_id}.html", "image.html", store_key, title=f"image {image_id}",
                  image={"id": image_id, "label": images.label(image_id), "path": row["shown_path"],
                         "thumb": thumbs.of(query),
                         "class_href": _class_href(images.label(image_id)) if images.label(image_id) else None},
                  predictions=predictions.get(image_id, []),
                  panels=_panels(answers, query, images, thumbs, chosen, pages),
                  optimized=None, layers=_nav(chosen))


def _optimized_pages(db, site, optimized, chosen, images, thumbs, queries, store_key, pages) -> None:
    todo = [row for row in optimized.itertuples() if not site.fresh(f"optimized/{slug(row.name)}.html", store_key)]
    if not todo:
        return
    answers = _answers(db, [f"optimized:{row.name}" for row in todo], chosen, queries)
    for row in todo:
        query = f"optimized:{row.name}"
        info = _optimized_row(thumbs, row)
        unit_page = next((f"{layer.href.rsplit('/', 1)[0]}/{row.unit}.html" for layer in chosen
                          if (layer.array.model, layer.array.layer, layer.array.weights) == (row.model, row.layer,
                                                                                             row.weights)
                          and row.unit in layer.units), None)
        site.page(info["href"], "image.html", store_key, title=f"optimized image {row.name}",
                  image={"id": None, "label": None, "path": row.png, "thumb": info["thumb"], "class_href": None},
                  predictions=[], panels=_panels(answers, query, images, thumbs, chosen, pages),
                  optimized=dict(info, unit_href=unit_page, start=row.start_activation, seed=int(row.seed),
                                 sign=int(row.sign), weights=row.weights), layers=_nav(chosen))


def _answers(db, texts: list[str], chosen, queries: Queries) -> dict:
    """Per array: the nearest images and classes of every query the array holds (asked in one
    call each) and each query's vector; or a one-line note where the array cannot answer."""
    answers = {}
    for layer in chosen:
        array = layer.array
        layer.stats = layer.stats or unitstats.unit_stats(db, array)
        done = db.done_ids(array)
        present = [t for t in texts if not t.startswith("id:") or np.isin(int(t[3:]), done)]
        if not present:
            continue
        try:
            vectors = _vectors(db, array, present)
            answers[array.id] = (queries.neighbors(present, array), queries.classes(present, array), vectors)
        except Exception as exc:  # noqa: BLE001 - a query the store cannot answer is a note on the page
            answers[array.id] = str(exc).splitlines()[0]
    return answers


def _vectors(db, array: StoredArray, texts: list[str]) -> dict[str, np.ndarray]:
    """Each query's vector: stored rows read in one pass, optimized images through `resolve`."""
    stored = [t for t in texts if t.startswith("id:")]
    vectors = dict(zip(stored, db.rows(array, [int(t[3:]) for t in stored]))) if stored else {}
    others = [t for t in texts if not t.startswith("id:")]
    if others:
        vectors.update(zip(others, resolve(db, array, others).vectors))
    return vectors


def _panels(answers, query: str, images, thumbs, chosen, pages: set[int]) -> list[dict]:
    panels = []
    for layer in chosen:
        answer = answers.get(layer.array.id)
        panel = {"array": layer.name, "layer_href": layer.href, "note": None, "neighbors": [],
                 "classes": [], "units": []}
        if isinstance(answer, str):
            panel["note"] = answer
        elif answer is None or query not in answer[2]:
            panel["note"] = "not stored in this array"
        else:
            near, ranked, vectors = answer
            own = int(query[3:]) if query.startswith("id:") else None
            others = [r for r in near[near["query"] == query].itertuples() if r.id != own][:NEIGHBOURS]
            for rank, r in enumerate(others, 1):
                panel["neighbors"].append(dict(_example(images, thumbs, r.id, r.distance, pages), rank=rank))
            for r in ranked[ranked["query"] == query].to_dict("records"):
                panel["classes"].append({"rank": int(r["rank"]), "class": r["class"], "distance": r.get("distance"),
                                         "href": _class_href(r["class"])})
            panel["units"] = _excited_units(layer, vectors[query])
        panels.append(panel)
    return panels


def _excited_units(layer: Layer, vector: np.ndarray) -> list[dict]:
    """The units where the vector is furthest above the stored rows' mean, in standard deviations."""
    stats = layer.stats
    with np.errstate(invalid="ignore", divide="ignore"):
        z = np.where(stats.std > 0, (vector - stats.mean) / stats.std, 0.0)
    order = np.lexsort((np.arange(len(z)), -z))[:PANEL_ROWS]
    folder = layer.folder
    return [{"unit": int(u), "z": float(z[u]), "value": float(vector[u]),
             "href": f"{folder}/{u}.html" if u in layer.units else None} for u in order]


def _predictions(db, ids: list[int]) -> dict[int, list[dict]]:
    if not db.has_table("predictions"):
        return {}
    frame = db.sql("SELECT p.image_id, m.name AS model, p.rank, p.class_index, p.probability FROM predictions p "
                   "JOIN models m ON m.id = p.model_id WHERE p.image_id IN (SELECT unnest(?::BIGINT[])) "
                   "ORDER BY p.image_id, m.name, p.rank", [ids])
    from ..imagenet import by_index

    out: dict[int, list[dict]] = {}
    for r in frame.itertuples():
        out.setdefault(int(r.image_id), []).append({"model": r.model, "rank": int(r.rank),
                                                    "class": by_index(int(r.class_index)).name,
                                                    "probability": float(r.probability)})
    return out


# ---- the index ----------------------------------------------------------------------------------

def _index_page(db, site, chosen, counts, optimized, thumbs, absolute_paths: bool) -> None:
    """Cheap to lay out: its key is what it shows."""
    info = db.info()
    sources = db.sql("SELECT source, count(*) AS n FROM images GROUP BY source ORDER BY source")
    in_report = {layer.array.id: layer for layer in chosen}
    places = array_places(db.arrays())
    arrays = [dict(_array_info(a, places[a.id][1]), href=in_report[a.id].href if a.id in in_report else None)
              for a in db.arrays()]
    store = str(Path(db.path).resolve()) if absolute_paths else Path(db.path).resolve().name
    context = dict(title=f"actdb report of {Path(db.path).resolve().name}", store=store, images=int(info["images"]),
                   arrays=arrays,
                   sources=[{"source": _shown_source(r.source, absolute_paths), "images": int(r.n)}
                            for r in sources.itertuples()],
                   classes=[{"class": r.label, "count": int(r.n), "href": _class_href(r.label)}
                            for r in counts.itertuples()],
                   optimized=[_optimized_row(thumbs, r) for r in optimized.itertuples()],
                   errors=int(info["failed_images"]), layers=_nav(chosen))
    key = key_of("index", context)
    if not site.fresh("index.html", key):
        site.page("index.html", "index.html", key, **context)


def _shown_source(source, absolute: bool) -> str | None:
    """A SOURCE as the index page names it: its folder or file name unless `absolute`."""
    if absolute or not isinstance(source, str) or not PurePath(os.path.expanduser(source)).is_absolute():
        return source
    return PurePath(source).name


def _progress(items, progress: bool, what: str):
    if not progress:
        return items
    import sys

    from tqdm import tqdm

    return tqdm(items, desc=f"report: {what}", file=sys.stderr)
