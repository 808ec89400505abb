"""Differentiation across layers (notebook 004): how different a set of images looks to each layer.

Per layer, n units (positions in the full H x W x C map) are sampled once from the seed and
the layer name, and the same units are read for every image of every set (004's bug was
new units per image). Each image's response vector is z-scored over those units; the
differentiation of a set is the median over image pairs of d^2 / (2n), which for z-scored
vectors equals 1 - Pearson r (correlation distance). Responses are gathered inside the
graph, batch by batch: memory holds one batch's maps and (images x n) per layer, never a
set's full maps.
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import ActdbError
from ..results import Result

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp"}


@dataclass
class ImageSet:
    """A SET argument: image files (a folder, or `where:SQL` on the store) or `noise:N`."""

    name: str
    paths: list[str] = field(default_factory=list)
    noise: int = 0
    listed: int = 0

    def __len__(self) -> int:
        return self.noise or len(self.paths)


@dataclass
class Differentiation(Result):
    model: str
    frame: pd.DataFrame  # set, depth, layer, units, differentiation[, normalized], images, listed, pairs, constant
    units: dict[str, np.ndarray]  # layer -> sampled flat indices into its (H, W, C) or (C,) output
    shapes: dict[str, tuple]  # layer -> output shape without the batch axis
    seed: int
    normalize_by: str | None = None

    def to_json(self) -> dict:
        return {"model": self.model, "seed": self.seed, "normalize_by": self.normalize_by,
                "rows": self.frame.to_dict("records"),
                "units": {layer: {"shape": list(self.shapes[layer]), "flat_indices": idx.tolist()}
                          for layer, idx in self.units.items()}}


def resolve_set(text: str, db=None, max_images: int = 200, seed: int = 0) -> ImageSet:
    """`noise:N`, `where:SQL` (stored images' files) or a folder of images, capped at
    `max_images` by a seeded sample."""
    if text.startswith("noise:"):
        count = text[6:]
        if not count.isdigit() or int(count) < 2:
            raise ActdbError(f"set {text!r}: write noise:N with N >= 2 white-noise images")
        return ImageSet(text, noise=min(int(count), max_images), listed=int(count))
    if text.startswith("where:"):
        if db is None:
            raise ActdbError(f"set {text!r} selects stored images: pass --store")
        paths = db.sql(f"SELECT path FROM images WHERE {text[6:]} ORDER BY id").path.tolist()
    elif Path(text).is_dir():
        paths = sorted(str(p) for p in Path(text).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    else:
        raise ActdbError(f"set {text!r} is not a folder of images, where:SQL or noise:N")
    if len(paths) < 2:
        raise ActdbError(f"set {text!r} has {len(paths)} image(s): differentiation needs at least 2 (pairs)")
    listed = len(paths)
    if listed > max_images:
        rng = np.random.default_rng([seed, zlib.crc32(text.encode())])
        paths = [paths[i] for i in np.sort(rng.choice(listed, max_images, replace=False))]
    return ImageSet(text, paths=paths, listed=listed)


def noise_pixels(index: int, size: int, seed: int) -> np.ndarray:
    """White RGB noise image `index` (uniform 0..255), the same for a seed however batched."""
    return np.random.default_rng([seed, 1, index]).integers(0, 256, (size, size, 3)).astype(np.float32)


def sample_units(shape: tuple, n: int, seed: int, layer: str) -> np.ndarray:
    """n flat positions of a layer's output, fixed by the seed and the layer's name alone
    (so a layer gets the same units whatever other layers or sets are asked for)."""
    size = int(np.prod(shape))
    rng = np.random.default_rng([seed, zlib.crc32(layer.encode())])
    return np.sort(rng.choice(size, min(n, size), replace=False)).astype(np.int64)


def pairwise_differentiation(responses: np.ndarray) -> tuple[float, int, int]:
    """(median over pairs of d^2/(2n) of z-scored rows, number of pairs, constant rows left out).

    A constant response vector (all units equal: no correlation defined) is left out."""
    values = responses.astype(np.float64)
    std = values.std(axis=1)
    kept = std > 0
    z = (values[kept] - values[kept].mean(axis=1, keepdims=True)) / std[kept, None]
    correlation = z @ z.T / values.shape[1]
    upper = np.triu_indices(len(z), 1)
    pairs = 1.0 - correlation[upper]
    return (float(np.median(pairs)) if len(pairs) else float("nan")), len(pairs), int((~kept).sum())


def choose_layers(model, spec: str) -> list[str]:
    """`all`: every layer with a spatial or vector output, the input included (004's "every
    layer"); `all-conv`; or names."""
    from ..models.forward import resolve_layers

    if spec == "all":
        return [layer.name for layer in model.layers if len(layer.output.shape) in (2, 4)]
    return resolve_layers(model, spec)


def differentiation(loaded, sets: list[ImageSet], layers: str = "all", units: int = 200,
                    normalize_by: ImageSet | None = None, seed: int = 0, batch_size: int = 16,
                    resize: str = "center-crop", progress: bool = False) -> Differentiation:
    """Differentiation of every set at every layer, optionally divided by `normalize_by`'s."""
    if units < 2:
        raise ActdbError("--units must be at least 2 (a correlation needs two values)")
    names = choose_layers(loaded.keras_model, layers)
    shapes = {name: tuple(loaded.keras_model.get_layer(name).output.shape[1:]) for name in names}
    sampled = {name: sample_units(shapes[name], units, seed, name) for name in names}
    forward = _sampled_forward(loaded, names, sampled, batch_size)
    todo = list(sets) + ([normalize_by] if normalize_by and normalize_by.name not in {s.name for s in sets} else [])
    rows = []
    bar = _progress(sum(len(s) for s in todo), progress)
    for image_set in todo:
        responses = _responses(forward, image_set, loaded.input_size, batch_size, resize, seed, bar)
        for depth, name in enumerate(names):
            value, pairs, constant = pairwise_differentiation(responses[name])
            rows.append({"set": image_set.name, "depth": depth, "layer": name, "units": len(sampled[name]),
                         "differentiation": value, "images": len(image_set), "listed": image_set.listed,
                         "pairs": pairs, "constant": constant})
    bar.close()
    frame = pd.DataFrame(rows)
    if normalize_by is not None:
        reference = frame[frame.set == normalize_by.name].set_index("layer").differentiation
        frame.insert(5, "normalized", frame.differentiation / frame.layer.map(reference))
        frame = frame[frame.set.isin([s.name for s in sets])].reset_index(drop=True)
    return Differentiation(loaded.name, frame, sampled, shapes, seed, normalize_by.name if normalize_by else None)


def _responses(forward, image_set: ImageSet, size: int, batch_size: int, resize: str, seed: int, bar) -> dict:
    from ..images import pixels_of_file

    collected: dict[str, list[np.ndarray]] = {}
    for start in range(0, len(image_set), batch_size):
        stop = min(start + batch_size, len(image_set))
        if image_set.noise:
            pixels = np.stack([noise_pixels(i, size, seed) for i in range(start, stop)])
        else:
            pixels = np.stack([pixels_of_file(p, size, resize) for p in image_set.paths[start:stop]])
        for name, values in forward(pixels).items():
            collected.setdefault(name, []).append(values)
        bar.update(stop - start)
    return {name: np.concatenate(parts) for name, parts in collected.items()}


def _sampled_forward(loaded, names: list[str], sampled: dict[str, np.ndarray], batch_size: int):
    """The Extractor's cut model (full maps) with the sampled units gathered inside the graph:
    only (batch, n) per layer leaves it, and each full map is freed as soon as it is read."""
    import tensorflow as tf

    from ..models.forward import FULL_MAPS, Extractor

    extractor = Extractor(loaded, names, FULL_MAPS, batch_size)
    indices = [tf.constant(sampled[name]) for name in names]
    size = loaded.input_size

    @tf.function(input_signature=[tf.TensorSpec([None, size, size, 3], tf.float32)])
    def forward(pixels):
        heads = extractor.cut(extractor.preprocess(pixels), training=False)
        heads = heads if isinstance(heads, (list, tuple)) else [heads]
        return {name: tf.gather(tf.reshape(tf.cast(head, tf.float32), [tf.shape(head)[0], -1]), index, axis=1)
                for name, head, index in zip(names, heads, indices)}

    def run(pixels: np.ndarray) -> dict[str, np.ndarray]:
        return {name: value.numpy() for name, value in forward(tf.constant(pixels)).items()}

    return run


def _progress(total: int, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, unit="image", desc="differentiation", disable=not enabled, leave=False)


def differentiation_of(sets: list[str], *, model: str, weights: str = "imagenet", layers: str = "all",
                       units: int = 200, normalize_by: str | None = None, max_images: int = 200, seed: int = 0,
                       batch_size: int = 16, resize: str = "center-crop", preprocess: str | None = None,
                       db=None, progress: bool = False) -> Differentiation:
    """`actdb differentiation`: resolve the SETs (before loading the model: bad sets fail fast)."""
    from ..models import load_model

    resolved = [resolve_set(text, db, max_images, seed) for text in dict.fromkeys(sets)]
    reference = resolve_set(normalize_by, db, max_images, seed) if normalize_by else None
    loaded = load_model(model, weights, preprocess=preprocess)
    return differentiation(loaded, resolved, layers, units, reference, seed, batch_size, resize, progress)
