"""`actdb differentiation` against a straightforward NumPy implementation, as notebook 004 did it.

3 sets x 43 images (white noise; 43 views of one photo, the tabby `chelsea`, standing in for
004's cats; 43 views spread over the six real photos, for 004's random objects), every
layer of VGG16 (seeded random weights: ImageNet weights cannot be downloaded here, and time
and memory do not depend on weight values), 200 and 10,000 units per layer.

- actdb: `analytics.differentiation.differentiation` (units gathered inside the graph,
  batch by batch), once per unit count.
- baseline: per set, one Keras model with every layer as an output, `predict` over the 43
  images so that every layer's full activations sit in memory (as 004's `cnn.activations`,
  but one set at a time, which is kinder to it than 004, which kept all sets), then
  NumPy z-scoring, scipy `pdist` and the median, with the SAME sampled units; both unit
  counts from the one set of activations.

Each run is a fresh subprocess; its peak RSS (getrusage maxrss) and wall time (model
load excluded, tracing included) are printed, and the two implementations' values are
compared (they must agree). Run:  python bench/differentiation.py [--images 43] [--batch-size 16]
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

UNIT_COUNTS = (200, 10_000)


def make_sets(root: Path, images: int) -> list[str]:
    """noise:N, N views of the tabby photo, N views spread over every photo."""
    import shutil

    from actdb.photos import write_augmented_views

    per_photo = -(-images // 6) + 1
    views = sorted(write_augmented_views(root / "views", max(images, per_photo), seed=0))
    cats = root / "one_class"
    spread = root / "random_images"
    for folder in (cats, spread):
        folder.mkdir(parents=True, exist_ok=True)
    for path in [p for p in views if p.stem.startswith("chelsea_")][:images]:
        shutil.copy(path, cats / path.name)
    by_photo: dict[str, list[Path]] = {}
    for path in views:
        by_photo.setdefault(path.stem.rsplit("_", 1)[0], []).append(path)
    picked = [paths[k] for k in range(max(map(len, by_photo.values()))) for paths in by_photo.values()
              if k < len(paths)][:images]
    for path in picked:
        shutil.copy(path, spread / path.name)
    return [f"noise:{images}", str(cats), str(spread)]


def run_actdb(sets: list[str], units: int, batch_size: int) -> dict:
    from actdb.analytics.differentiation import differentiation, resolve_set
    from actdb.models import load_model

    loaded = load_model("vgg16", "random:0")
    loaded_rss = _rss_mb()
    resolved = [resolve_set(s, max_images=1000) for s in sets]
    start = time.perf_counter()
    result = differentiation(loaded, resolved, "all", units, batch_size=batch_size)
    seconds = time.perf_counter() - start
    values = {f"{r.set}|{r.layer}": r.differentiation for r in result.frame.itertuples()}
    return {"seconds": seconds, "values": {str(units): values}, "model_loaded_rss_mb": loaded_rss}


def run_baseline(sets: list[str], batch_size: int) -> dict:
    """004's way: all of a set's activations in memory, then NumPy/SciPy per layer."""
    import keras
    from scipy.spatial.distance import pdist

    from actdb.analytics.differentiation import ImageSet, choose_layers, noise_pixels, resolve_set, sample_units
    from actdb.images import pixels_of_file
    from actdb.models import load_model
    from actdb.models.preprocess import caffe

    loaded = load_model("vgg16", "random:0")
    model = loaded.keras_model
    names = choose_layers(model, "all")
    every_layer = keras.Model(model.input, [model.get_layer(n).output for n in names])
    loaded_rss = _rss_mb()
    start = time.perf_counter()
    values: dict[str, dict] = {str(n): {} for n in UNIT_COUNTS}
    for text in sets:
        image_set: ImageSet = resolve_set(text, max_images=1000)
        if image_set.noise:
            pixels = np.stack([noise_pixels(i, 224, 0) for i in range(image_set.noise)])
        else:
            pixels = np.stack([pixels_of_file(p, 224, "center-crop") for p in image_set.paths])
        activations = every_layer.predict(caffe(pixels).numpy(), batch_size=batch_size, verbose=0)
        for units in UNIT_COUNTS:
            for name, layer_acts in zip(names, activations):
                flat = layer_acts.reshape(len(pixels), -1)[:, sample_units(layer_acts.shape[1:], units, 0, name)]
                z = (flat - flat.mean(axis=1, keepdims=True)) / flat.std(axis=1, keepdims=True)
                distances = pdist(z.astype(np.float64), "euclidean") ** 2 / (2 * z.shape[1])
                values[str(units)][f"{text}|{name}"] = float(np.median(distances))
        del activations
    return {"seconds": time.perf_counter() - start, "values": values, "model_loaded_rss_mb": loaded_rss}


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(args) -> None:
    from actdb.tfquiet import import_tensorflow

    import_tensorflow()
    sets = json.loads(args.sets)
    if args.child == "baseline":
        report = run_baseline(sets, args.batch_size)
    else:
        report = run_actdb(sets, int(args.child), args.batch_size)
    report["peak_rss_mb"] = _rss_mb()
    print(json.dumps(report))


def in_subprocess(kind: str, sets: list[str], batch_size: int) -> dict:
    command = [sys.executable, __file__, "--child", kind, "--sets", json.dumps(sets), "--batch-size", str(batch_size)]
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=43)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--sets", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    with tempfile.TemporaryDirectory(prefix="bench-diff-") as root:
        sets = make_sets(Path(root), args.images)
        print(f"VGG16 (random:0), every layer, 3 sets x {args.images} images, batch {args.batch_size}", flush=True)
        baseline = in_subprocess("baseline", sets, args.batch_size)
        print(f"baseline (all full activations of a set in memory): {baseline['seconds']:.1f} s for both unit "
              f"counts, peak RSS {baseline['peak_rss_mb']:.0f} MB (after loading the model: "
              f"{baseline['model_loaded_rss_mb']:.0f} MB)", flush=True)
        total = 0.0
        for units in UNIT_COUNTS:
            ours = in_subprocess(str(units), sets, args.batch_size)
            total += ours["seconds"]
            ours_values, theirs = ours["values"][str(units)], baseline["values"][str(units)]
            gap = max(abs(ours_values[k] - theirs[k]) for k in theirs)
            print(f"actdb {units:>6} units: {ours['seconds']:.1f} s, peak RSS {ours['peak_rss_mb']:.0f} MB "
                  f"(after loading the model: {ours['model_loaded_rss_mb']:.0f} MB) "
                  f"(baseline / actdb memory {baseline['peak_rss_mb'] / ours['peak_rss_mb']:.2f}x, time "
                  f"{baseline['seconds'] / ours['seconds']:.2f}x for the baseline's two counts vs this one); "
                  f"max |difference| from the baseline {gap:.2e} over {len(theirs)} set-layer values", flush=True)
        print(f"both unit counts: actdb {total:.1f} s (two forward passes per image) vs baseline "
              f"{baseline['seconds']:.1f} s (one): time ratio baseline / actdb {baseline['seconds'] / total:.2f}x")


if __name__ == "__main__":
    main()
