"""`actdb demo`: the main job end to end, offline, on real photos and a real ImageNet model."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .models import KERAS_APPLICATIONS, keras_cache_dir

# Layers worth storing per demo model (a late conv stage, the pooled features), and the one queried.
DEMO_LAYERS = {
    "efficientnet_lite0": ("block6a_project_bn,top_activation,avg_pool", "avg_pool"),
    "vgg19": ("block5_conv4,fc2", "block5_conv4"),
}

# Analytics II on the offline model: a circuit (expanded weights into block 3 from block 2's
# output), block 2's feature maps on the cat, and differentiation at every block's output.
CIRCUIT = {"layer": "block3a_project_conv", "unit": 3, "from_layer": "block2b_add"}
FEATUREMAP_LAYER = "block2b_add"
BLOCK_OUTPUTS = ("stem_activation,block1a_project_bn,block2a_project_bn,block2b_add,block3a_project_bn,block3b_add,"
                 "block4a_project_bn,block4b_add,block4c_add,block5a_project_bn,block5b_add,block5c_add,"
                 "block6a_project_bn,block6b_add,block6c_add,block6d_add,block7a_project_bn,top_activation,"
                 "avg_pool,predictions")


def default_model() -> str:
    """VGG19 (the seeds' model) when its ImageNet weights are on this machine, else the offline model."""
    vgg19 = KERAS_APPLICATIONS["vgg19"]
    return "vgg19" if (keras_cache_dir() / vgg19.weights_file).is_file() else "efficientnet_lite0"


def build_image_set(store: Path, views_per_photo: int, seed: int = 0) -> tuple[Path, list[Path]]:
    """Augmented views of each real photo in ImageNet train layout, labelled with its class.

    Returns the folder and the unaugmented view of each photo (view 0)."""
    from .photos import write_augmented_views

    folder = Path(store) / "demo-images"
    paths = write_augmented_views(folder, views_per_photo, seed=seed)
    originals = sorted(p for p in paths if p.stem.endswith("_000"))
    return folder, originals


def held_out_views(store: Path, seed: int = 1) -> list[Path]:
    """One new augmented view per photo, never stored: honest queries for nearest classes."""
    from .photos import write_augmented_views

    paths = write_augmented_views(Path(store) / "demo-queries", 2, seed=seed)
    return sorted(p for p in paths if p.stem.endswith("_001"))


# The seeds' story in miniature: optimize units of a late layer and one class logit, ask three
# classifiers what the images are, and where they lie among the demo store's classes.
# Units are chosen in the stored top_activation array and optimized at top_bn, the same channels before
# ReLU6 (lucid optimizes pre-ReLU layers too): a unit at 0 on the grey start image has no gradient.
OPTIMIZE_MODEL, UNITS_LAYER, OPTIMIZE_LAYER = "efficientnet_lite0", "top_activation", "top_bn"
UNIT_CLASSES = ("espresso", "tabby", "missile")  # the unit most specific to each of these stored classes
FALLBACK_UNITS = (1213, 112, 801)  # what that gives on the efficientnet_lite0 demo store
OPTIMIZE_CLASS = "sea_cucumber"
OPTIMIZE_STEPS, OPTIMIZE_SIZE = 48, 128
PREDICT_MODELS = ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")


def optimized_story(db, query_model: str, query_layer: str, progress: bool = True):
    """Optimized images made and kept in the demo store; returns (one row per image, contact sheet path)."""
    import pandas as pd

    from .optimize.sheet import contact_sheet
    from .predict import predict

    common = {"model": OPTIMIZE_MODEL, "steps": OPTIMIZE_STEPS, "size": OPTIMIZE_SIZE, "batch": 4,
              "progress": progress}
    picked = class_units(db)
    made = pd.concat([db.optimize(OPTIMIZE_LAYER, picked, **common),
                      db.optimize(objective="logit", class_name=OPTIMIZE_CLASS, **common)], ignore_index=True)
    sheet = contact_sheet(made, db.path, db.path / "plots" / "optimized.png",
                          title=f"{OPTIMIZE_MODEL} (ImageNet weights): {OPTIMIZE_LAYER} units and the "
                                f"{OPTIMIZE_CLASS} logit, fft method, {OPTIMIZE_STEPS} steps")
    units = dict(zip(picked, UNIT_CLASSES))
    queries = [f"optimized:{name}" for name in made.name]
    predictions, _ = predict(queries, list(PREDICT_MODELS), top=1, db=db)
    top1 = pd.DataFrame([p.__dict__ for p in predictions]).pivot(index="query", columns="model", values="name")
    nearest = db.classes(queries, query_model, query_layer, top=1).set_index("query")
    table = pd.DataFrame({
        "image": [f"optimized:{name.replace(OPTIMIZE_MODEL + '.', '')}" for name in made.name],
        "target": [f"class {u}" if o == "logit" else f"unit {u} ({units.get(u, '?')})"
                   for o, u in zip(made.objective, made.unit)],
        "final": made.final_activation.round(3),
        **{model.replace("efficientnet_", ""): [top1.loc[q, model] for q in queries] for model in PREDICT_MODELS},
        f"nearest class ({query_layer})": [nearest.loc[q, "class"] for q in queries],
    })
    return table, sheet


def class_units(db) -> list[int]:
    """Per class of UNIT_CLASSES, the top_activation unit whose class mean most exceeds the store's mean."""
    stored = db.arrays()
    if not ((stored.model == OPTIMIZE_MODEL) & (stored.layer == UNITS_LAYER)).any():
        return list(FALLBACK_UNITS)
    overall = db.activations(OPTIMIZE_MODEL, UNITS_LAYER).mean(axis=0)
    return [int((db.activations(OPTIMIZE_MODEL, UNITS_LAYER, classes=[c]).mean(axis=0) - overall).argmax())
            for c in UNIT_CLASSES]


def saved_query_vectors(db, model: str, layer: str, paths: list[str], folder: Path) -> list[str]:
    """Each query image through the model once, saved as `folder/<name>.npy`: the analytics
    that follow then query by vector instead of loading the model again for each command."""
    from .resolve import resolve

    folder.mkdir(parents=True, exist_ok=True)
    resolved = resolve(db, db.find_array(model, layer), paths)
    saved = []
    for path, vector in zip(paths, resolved.vectors):
        saved.append(str(folder / f"{Path(path).stem}.npy"))
        np.save(saved[-1], vector)
    return saved
