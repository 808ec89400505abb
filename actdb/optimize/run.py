"""`actdb optimize`: validate everything, optimize in batches, then save PNGs, catalog rows and
the PNGs' vectors in every stored array (or, without a store, PNGs and JSON in a folder).

Nothing is written before the input is known to be good and the images are made.
"""
from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from .. import imagenet
from ..choices import OBJECTIVES, OPTIMIZE_METHODS, check_choice, check_seed
from ..errors import ActdbError
from ..files import atomic_write, checked_output
from ..units import expand_units, parse_units
from ..store import derived
from ..store.catalog import OPTIMIZED_SCHEMA, Catalog
from ..store.locks import writer_lock
from ..store.reader import Store

OPTIMIZED_DIR = "optimized"
SNAPSHOT_DIR = f"{OPTIMIZED_DIR}/snapshots"  # progress pictures: not images of the catalog
MAX_SIZE = 1024
MIN_FFT_SIZE = 8


@dataclass
class OptimizeOptions:
    model: str = "efficientnet_lite0"
    layer: str | None = None
    units: str | None = None
    objective: str = "channel"
    class_name: str | None = None
    negative: bool = False
    method: str = "fft"
    steps: int | None = None
    lr: float | None = None
    size: int | None = None
    seed: int = 0
    diversity: int = 1
    snapshots: str | None = None
    batch: int = 16
    name: str | None = None
    overwrite: bool = False
    weights: str = "imagenet"
    preprocess: str | None = None


@dataclass
class Plan:
    """One image to make: its name, unit, diversity index and every parameter that defines it."""

    name: str
    unit: int
    diversity_index: int
    params: dict


def _check_options(o: OptimizeOptions) -> tuple[int, float, list[int]]:
    from .loops import DEFAULTS

    check_choice("method", o.method, OPTIMIZE_METHODS)
    check_choice("objective", o.objective, OBJECTIVES)
    check_seed(o.seed)
    steps, lr = DEFAULTS[o.method]
    steps = steps if o.steps is None else o.steps
    lr = lr if o.lr is None else o.lr
    if steps < 1:
        raise ActdbError(f"--steps {steps}: take at least 1 step")
    if not (lr > 0 and math.isfinite(lr)):
        raise ActdbError(f"--lr {lr}: the step size must be a finite positive number")
    if o.diversity < 1:
        raise ActdbError(f"--diversity {o.diversity}: give 1 (no diversity) or more images per unit")
    if o.diversity > 1 and o.method != "fft":
        raise ActdbError(f"--diversity needs --method fft (the {o.method} method makes one image per unit, as the "
                         "original loop did)")
    if o.batch < 1:
        raise ActdbError(f"--batch {o.batch}: give at least 1 image per chunk")
    snapshots = []
    if o.snapshots:
        try:
            snapshots = sorted({int(s) for s in o.snapshots.split(",") if s.strip()})
        except ValueError:
            raise ActdbError(f"--snapshots {o.snapshots!r}: give steps as integers, e.g. 32,128") from None
        if snapshots and not 1 <= snapshots[0] <= snapshots[-1] <= steps:
            raise ActdbError(f"--snapshots {o.snapshots}: steps must lie in 1..{steps}")
    if o.objective == "logit":
        if o.layer not in (None, "logits"):
            raise ActdbError("--objective logit optimizes the classifier's logits: leave out --layer")
    elif not o.layer:
        raise ActdbError("--layer is required for the channel and neuron objectives (see `actdb layers MODEL`)")
    elif o.class_name:
        raise ActdbError("--class is for --objective logit; channel and neuron objectives take --units")
    return steps, lr, snapshots


def _units(o: OptimizeOptions, channels: int, what: str) -> list[int]:
    if o.objective == "logit" and o.class_name:
        if o.units:
            raise ActdbError("give the logit's class either with --class or with --units, not both")
        return list(dict.fromkeys(_class_index(c.strip(), channels) for c in o.class_name.split(",") if c.strip()))
    if not o.units and o.objective == "logit":
        raise ActdbError("--objective logit needs --class NAME (or --units with class indices)")
    return expand_units(parse_units(o.units), channels, what)


def _class_index(text: str, classes: int) -> int:
    if text.isdigit():
        if int(text) >= classes:
            raise ActdbError(f"--class {text}: the classifier has {classes} classes, 0-{classes - 1}")
        return int(text)
    return imagenet.resolve(text).index


def _check_size(o: OptimizeOptions, input_size: int) -> int:
    size = input_size if o.size is None else o.size
    if o.method == "fft":
        if not MIN_FFT_SIZE <= size <= MAX_SIZE:
            raise ActdbError(f"--size {size}: the fft method makes images of {MIN_FFT_SIZE} to {MAX_SIZE} pixels")
    elif size != input_size:
        raise ActdbError(f"--size {size}: the {o.method} method feeds the image straight to the model, which takes "
                         f"{input_size} x {input_size} only; use --size {input_size} or --method fft")
    return size


def _named_weights(loaded) -> str:
    """The weights a default name spells out: none for the model's own (ImageNet's, or a .keras
    file's), else random:N or the weights file."""
    chosen = loaded.weights_path is not None or loaded.weights_id.startswith("random")
    return loaded.weights_id if chosen else "imagenet"


def default_name(model: str, layer: str, objective: str, unit: int, method: str, seed: int, negative: bool,
                 diversity: int, index: int, weights: str = "imagenet") -> str:
    """Readable and unique per parameter set, e.g. efficientnet_lite0.top_activation.u4.fft.s0;
    other weights than ImageNet's are part of the name (efficientnet_lite0-random-1.top...)."""
    slug = "" if weights == "imagenet" else "-" + re.sub(r"[^A-Za-z0-9]+", "-", weights.replace("seed=", ""))[:24]
    parts = [model + slug, layer, f"u{unit}"]
    if objective == "neuron":
        parts.append("neuron")
    if negative:
        parts.append("neg")
    parts += [method, f"s{seed}"]
    if diversity > 1:
        parts.append(f"d{index}of{diversity}")
    return ".".join(parts)


def _plans(o: OptimizeOptions, loaded, layer: str, units: list[int], steps: int, lr: float, size: int,
           snapshots: list[int]) -> list[Plan]:
    from .loops import LOGITS

    plans = []
    for unit in units:
        for index in range(o.diversity):
            params = {"model": loaded.name, "weights": loaded.weights_id, "preprocess": loaded.preprocess,
                      "layer": layer, "unit": unit, "objective": o.objective, "negative": o.negative,
                      "method": o.method, "steps": steps, "lr": lr, "size": size, "seed": o.seed,
                      "diversity": o.diversity, "diversity_index": index, "snapshots": snapshots}
            if o.objective == "logit":
                params["class"] = imagenet.by_index(unit).name
            if o.name:
                name = o.name if len(units) * o.diversity == 1 else f"{o.name}.u{unit}" + (
                    f".d{index}" if o.diversity > 1 else "")
            else:
                name = default_name(loaded.name, "logits" if layer == LOGITS else layer, o.objective, unit, o.method,
                                    o.seed, o.negative, o.diversity, index, _named_weights(loaded))
            if not re.fullmatch(r"[A-Za-z0-9_.+-]+", name):
                raise ActdbError(f"image name {name!r}: use letters, digits and _ . + - only (it becomes a file name)")
            plans.append(Plan(name, unit, index, params))
    return plans


def image_key(seed: int, unit: int, diversity_index: int) -> tuple[int, int]:
    """The stateless random key of one image: its own parameters, nothing about its batch."""
    digest = hashlib.sha256(f"actdb-optimize:{seed}:{unit}:{diversity_index}".encode()).digest()
    return int.from_bytes(digest[:4], "little") >> 1, int.from_bytes(digest[4:8], "little") >> 1


def optimize(store: str | Path | None, options: OptimizeOptions, out: str | Path | None = None,
             sheet: str | Path | None = None, progress: bool = True) -> pd.DataFrame:
    """Make the optimized images; returns one row per image (name, unit, start/final activation, top-1).

    `out`: a folder of PNGs and JSON instead of a store; `sheet`: a contact sheet PNG of the run."""
    from ..models import load_model, weights_digest
    from . import loops

    o = options
    if store is None and out is None:
        raise ActdbError("give --store PATH (or ACTDB_STORE) to keep the images in a store, or --out DIR")
    if sheet is not None:
        sheet = checked_output(sheet, (".png",), "sheet")
    steps, lr, snapshots = _check_options(o)
    loaded = load_model(o.model, o.weights, "float32", o.preprocess)
    layer = loops.LOGITS if o.objective == "logit" else o.layer
    if layer != loops.LOGITS:
        from ..models.forward import resolve_layers

        resolve_layers(loaded.keras_model, layer)
    target = loops.Target(loaded, layer)
    units = _units(o, target.channels, "the classifier" if layer == loops.LOGITS else f"{loaded.name}/{layer}")
    size = _check_size(o, loaded.input_size)
    plans = _plans(o, loaded, layer, units, steps, lr, size, snapshots)
    digest = weights_digest(loaded.keras_model)
    kept = _kept(Path(store), plans, o.overwrite, digest) if store is not None else {}
    todo = [p for p in plans if p.name not in kept]

    made = _make(o, target, todo, steps, lr, size, snapshots, progress) if todo else None
    if store is None:
        _write_folder(Path(out), todo, made)
        results, root = _result(todo, made, Path(out)), Path(out)
    else:
        names = _write_store(Path(store), todo, made, loaded, digest, o.overwrite)
        from ..resolve import optimized_vectors_in_every_array

        optimized_vectors_in_every_array(Store(Path(store)), names)
        results, root = _rows_of(Store(Path(store)), [p.name for p in plans]), Path(store)
    if sheet is not None:
        from .. import figures
        from .sheet import contact_sheet

        figures.save(contact_sheet(results, root), sheet, "sheet", dpi=100)
    return results


def _make(o: OptimizeOptions, target, todo: list[Plan], steps: int, lr: float, size: int, snapshots, progress):
    from . import loops, objectives

    objective = objectives.build(o.objective, o.negative, o.diversity)
    method_class = loops.METHODS[o.method]
    extra = {} if o.method == "fft" else {"seed": o.seed}
    method = method_class(target, objective, size, lr, **extra)
    keys = np.array([image_key(o.seed, p.unit, p.diversity_index) for p in todo], np.int64)
    units = np.array([p.unit for p in todo], np.int32)
    start_pixels = method.start_pixels(keys, units)
    pixels, shots = loops.run(method, keys, units, steps, o.batch, o.diversity, tuple(snapshots), progress)
    start = loops.measure(target, o.objective, start_pixels, units)
    final = loops.measure(target, o.objective, pixels, units)
    top1 = _top1(target.loaded, pixels)
    return {"pixels": pixels, "snapshots": shots, "start": start, "final": final, "top1": top1}


def _top1(loaded, pixels: np.ndarray) -> list[str | None]:
    if not loaded.has_classifier:
        return [None] * len(pixels)
    from ..images import resize
    from ..models.forward import classify
    from ..tfquiet import import_tensorflow

    tf = import_tensorflow()
    resized = np.stack([resize(tf.constant(p), loaded.input_size, "center-crop").numpy() for p in pixels])
    indices, _ = classify(loaded, resized, 1)
    return [imagenet.by_index(int(i)).name for i in indices[:, 0]]


def _kept(store: Path, plans: list[Plan], overwrite: bool, digest: str) -> dict[str, dict]:
    """Images already in the store with these very parameters, their PNG intact, are reused;
    the same name with other parameters is refused unless --overwrite. Asked again under the
    writer lock before anything is written, so two runs with one name cannot both succeed."""
    db = Store(store)
    if not db.catalog.exists() or not db.has_table("optimized_images"):
        return {}
    names = [p.name for p in plans]
    rows = db.sql("SELECT name, params, weights_digest, png, png_sha256 FROM optimized_images WHERE name IN "
                  "(SELECT unnest(?::VARCHAR[]))", [names])
    stored = {r.name: r for r in rows.itertuples()}
    kept = {}
    for plan in plans:
        row = stored.get(plan.name)
        if row is None:
            continue
        if json.loads(row.params) == plan.params and row.weights_digest == digest:
            if png_intact(store / row.png, row.png_sha256):
                kept[plan.name] = row  # else the PNG was lost or damaged: it is made again
        elif not overwrite:
            raise ActdbError(f"optimized image {plan.name!r} exists with other parameters: pass --overwrite to "
                             "replace it, or --name to keep both")
    return kept


def png_intact(path: Path, sha256: str) -> bool:
    return derived.png_damage(path, sha256) is None


def _png_bytes(pixels: np.ndarray) -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def _snapshot_name(name: str, step: int) -> str:
    return f"{name}.step{step}.png"


def _stored_png(name: str, data: bytes, folder: str = OPTIMIZED_DIR) -> str:
    """Content-addressed: a new image never overwrites the file a committed row points to, so
    a kill anywhere leaves the catalog's row and its PNG in agreement."""
    return f"{folder}/{name}.{hashlib.sha256(data).hexdigest()[:16]}.png"


def _write_folder(out: Path, todo: list[Plan], made) -> None:
    for i, plan in enumerate(todo):
        atomic_write(out / f"{plan.name}.png", _png_bytes(made["pixels"][i]))
        for step, shots in made["snapshots"].items():
            atomic_write(out / _snapshot_name(plan.name, step), _png_bytes(shots[i]))
        record = {"name": plan.name, **plan.params, "start_activation": float(made["start"][i]),
                  "final_activation": float(made["final"][i]), "top1_class": made["top1"][i]}
        atomic_write(out / f"{plan.name}.json", json.dumps(record, indent=2).encode())


def _write_store(store: Path, todo: list[Plan], made, loaded, digest: str, overwrite: bool) -> list[str]:
    """New PNGs under new names (fsynced), then one catalog commit, then the replaced files go.
    Returns the names whose query vectors must be recomputed."""
    store.mkdir(parents=True, exist_ok=True)
    with writer_lock(store, "actdb optimize"):
        catalog = Catalog(store)
        if not catalog.exists():
            catalog.create()
        with catalog.write() as con:
            con.execute(OPTIMIZED_SCHEMA)
        if not todo:
            return []
        _kept(store, todo, overwrite, digest)  # again, now that no other writer can slip in
        replaced = Store(store).sql("SELECT png FROM optimized_images WHERE name IN (SELECT unnest(?::VARCHAR[]))",
                                    [[p.name for p in todo]]).png.tolist()
        rows = []
        for i, plan in enumerate(todo):
            data = _png_bytes(made["pixels"][i])
            png = _stored_png(plan.name, data)
            atomic_write(store / png, data)
            for step, shots in made["snapshots"].items():  # their own folder: never another image's file
                atomic_write(store / SNAPSHOT_DIR / _snapshot_name(plan.name, step), _png_bytes(shots[i]))
            p = plan.params
            rows.append((plan.name, p["model"], p["weights"], digest, p["layer"], plan.unit, p["objective"],
                         -1 if p["negative"] else 1, p["method"], p["seed"], plan.diversity_index, json.dumps(p),
                         float(made["start"][i]), float(made["final"][i]), made["top1"][i], png,
                         hashlib.sha256(data).hexdigest()))
        names = [r[0] for r in rows]
        with catalog.write() as con:
            derived.forget_optimized_vectors(con, names)
            con.execute("DELETE FROM optimized_images WHERE name IN (SELECT unnest(?::VARCHAR[]))", [names])
            con.executemany("INSERT INTO optimized_images VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, "
                            "current_timestamp)", rows)
        for old in set(replaced) - {r[15] for r in rows}:
            (store / old).unlink(missing_ok=True)
    return names


def _rows_of(db: Store, names: list[str]) -> pd.DataFrame:
    frame = db.sql("SELECT name, model, layer, unit, objective, sign, method, diversity_index, start_activation, "
                   "final_activation, top1_class, png FROM optimized_images WHERE name IN "
                   "(SELECT unnest(?::VARCHAR[]))", [names])
    order = {n: i for i, n in enumerate(names)}
    return frame.sort_values("name", key=lambda s: s.map(order)).reset_index(drop=True)


def _result(todo: list[Plan], made, out: Path) -> pd.DataFrame:
    return pd.DataFrame({
        "name": [p.name for p in todo], "model": [p.params["model"] for p in todo],
        "layer": [p.params["layer"] for p in todo], "unit": [p.unit for p in todo],
        "objective": [p.params["objective"] for p in todo], "sign": [-1 if p.params["negative"] else 1 for p in todo],
        "method": [p.params["method"] for p in todo], "diversity_index": [p.diversity_index for p in todo],
        "start_activation": made["start"] if made else [], "final_activation": made["final"] if made else [],
        "top1_class": made["top1"] if made else [], "png": [str(out / f"{p.name}.png") for p in todo],
    })


def listing(db: Store) -> pd.DataFrame:
    """Every optimized image of a store (none in a store that never ran optimize)."""
    if not db.has_table("optimized_images"):
        return pd.DataFrame(columns=["name", "model", "layer", "unit", "objective", "sign", "method",
                                     "final_activation", "top1_class", "created"])
    return db.sql("SELECT name, model, weights, layer, unit, objective, sign, method, seed, diversity_index, "
                  "start_activation, final_activation, top1_class, png, created FROM optimized_images ORDER BY created, name")
