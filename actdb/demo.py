"""`actdb demo`: the main job end to end, offline, on real photos and a real ImageNet model.

The story is a sequence of `Step`s: `actdb` command lines, run by the CLI exactly as a user
would type them, and a few computed tables. It uses the store only through the `Database`
it is given, so it sits beside the other features.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from .models import KERAS_APPLICATIONS, keras_cache_dir
from .resolve import resolve

# Layers worth storing per demo model (one per stage, so that the trajectory has a depth axis; the
# pooled features), and the one queried. One forward pass computes them all: more layers cost little.
DEMO_LAYERS = {
    "efficientnet_lite0": ("block2b_add,block3b_add,block4c_add,block5c_add,block6a_project_bn,block7a_project_bn,"
                           "top_activation,avg_pool", "avg_pool"),
    "vgg19": ("block3_conv4,block4_conv4,block5_conv4,fc2", "block5_conv4"),
}
REPORT_LAYERS = {"efficientnet_lite0": "top_activation,avg_pool", "vgg19": "block5_conv4,fc2"}  # the report's arrays
TRAJECTORY_K = 5  # the paper's 75 is more than a demo class holds

# The circuits part, on the offline model: a circuit (expanded weights into block 3 from block 2's
# output), block 2's feature maps on the cat, and differentiation at every block's output.
CIRCUIT = {"layer": "block3a_project_conv", "unit": 3, "from_layer": "block2b_add"}
FEATUREMAP_LAYER = "block2b_add"
BLOCK_OUTPUTS = ("stem_activation,block1a_project_bn,block2a_project_bn,block2b_add,block3a_project_bn,block3b_add,"
                 "block4a_project_bn,block4b_add,block4c_add,block5a_project_bn,block5b_add,block5c_add,"
                 "block6a_project_bn,block6b_add,block6c_add,block6d_add,block7a_project_bn,top_activation,"
                 "avg_pool,predictions")


def default_model() -> str:
    """VGG19 (the blog posts' model) when its ImageNet weights are on this machine, else the offline model."""
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


# The blog posts' story in miniature: optimize units of a late layer and one class logit, ask three
# classifiers what the images are, and where they lie among the demo store's classes.
# Units are chosen in the stored top_activation array and optimized at top_bn, the same channels before
# ReLU6 (lucid optimizes pre-ReLU layers too): a unit at 0 on the grey start image has no gradient.
OPTIMIZE_MODEL, UNITS_LAYER, OPTIMIZE_LAYER = "efficientnet_lite0", "top_activation", "top_bn"
UNIT_CLASSES = ("espresso", "tabby", "missile")  # the unit most specific to each of these stored classes
FALLBACK_UNITS = (1213, 112, 801)  # what that gives on the efficientnet_lite0 demo store
OPTIMIZE_CLASS = "sea_cucumber"
OPTIMIZE_STEPS, OPTIMIZE_SIZE = 48, 128
PREDICT_MODELS = ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")


def optimized_story(db, query_model: str, query_layer: str, progress: bool = False) -> str:
    """Optimized images made and kept in the demo store, what three classifiers call each and its
    nearest class here; a contact sheet of them in STORE/plots/optimized.png. Returns the table."""
    common = {"model": OPTIMIZE_MODEL, "steps": OPTIMIZE_STEPS, "size": OPTIMIZE_SIZE, "batch": 4,
              "progress": progress}
    picked = class_units(db)
    made = pd.concat([db.optimize(layer=OPTIMIZE_LAYER, units=picked, **common),
                      db.optimize(objective="logit", class_name=OPTIMIZE_CLASS, **common)], ignore_index=True)
    sheet = db.path / "plots" / "optimized.png"
    db.optimized(list(made.name), sheet=sheet,
                 title=f"{OPTIMIZE_MODEL} (ImageNet weights): {OPTIMIZE_LAYER} units and the "
                       f"{OPTIMIZE_CLASS} logit, fft method, {OPTIMIZE_STEPS} steps")
    units = dict(zip(picked, UNIT_CLASSES))
    queries = [f"optimized:{name}" for name in made.name]
    top1 = db.predict(queries, models=list(PREDICT_MODELS), top=1).pivot(index="query", columns="model",
                                                                         values="name")
    nearest = db.classes(queries, model=query_model, layer=query_layer, top=1).set_index("query")
    table = pd.DataFrame({
        "image": queries,
        "target": [f"class {u}" if o == "logit" else f"unit {u} ({units.get(u, '?')})"
                   for o, u in zip(made.objective, made.unit)],
        "final": made.final_activation.round(3),
        **{model.replace("efficientnet_", ""): [top1.loc[q, model] for q in queries] for model in PREDICT_MODELS},
        f"nearest class ({query_layer})": [nearest.loc[q, "class"] for q in queries],
    })
    return f"{table.to_string(index=False)}\ncontact sheet: {sheet}\n"


def class_units(db) -> list[int]:
    """Per class of UNIT_CLASSES, the top_activation unit whose class mean most exceeds the store's mean."""
    if not any(a.model == OPTIMIZE_MODEL and a.layer == UNITS_LAYER for a in db.arrays()):
        return list(FALLBACK_UNITS)
    overall = db.activations(OPTIMIZE_MODEL, UNITS_LAYER).mean(axis=0)
    return [int((db.activations(OPTIMIZE_MODEL, UNITS_LAYER, classes=[c]).mean(axis=0) - overall).argmax())
            for c in UNIT_CLASSES]


def saved_query_vectors(db, model: str, layer: str, paths: list[str], folder: Path) -> list[str]:
    """Each query image through the model once, saved as `folder/<name>.npy`: the analytics
    that follow then query by vector instead of loading the model again for each command."""
    folder.mkdir(parents=True, exist_ok=True)
    resolved = resolve(db, db.array(model, layer), paths)
    saved = []
    for path, vector in zip(paths, resolved.vectors):
        saved.append(str(folder / f"{Path(path).stem}.npy"))
        np.save(saved[-1], vector)
    return saved


@dataclass(frozen=True)
class Step:
    """One step of the story: a title, then an `actdb` command line (run as typed, on the
    demo's store) or a text to show (computed when the step is reached)."""

    title: str
    command: tuple[str, ...] = ()
    show: Callable[[], str] | None = None


def story(db, model: str | None = None, views: int = 8, progress: bool = False) -> Iterator[Step]:
    """The main job end to end on real photos: ingest, classify, index, nearest images and
    classes; optimized images, classified and placed among the stored classes; the analytics
    with their plots (STORE/plots/), a trajectory across the stored layers among them; `info`;
    the report of the store last. Each step runs before the next is made."""
    model = model or default_model()
    stored_layers, query_layer = DEMO_LAYERS[model]
    folder, originals = build_image_set(db.path, views)
    yield Step(f"== {len(originals)} real photos x {views} views in {folder}; ingesting with {model}",
               ("ingest", str(folder), "--model", model, "--layers", stored_layers, "--predictions"))
    yield Step("\n== actdb predict (view 0 of each photo)", ("predict", *map(str, originals), "--models", model))
    array = ("--model", model, "--layer", query_layer)
    yield Step(f"== actdb index --model {model} --layer {query_layer}", ("index", *array))
    queries = [str(p) for p in held_out_views(db.path)]
    yield Step("\n== actdb neighbors (a new view, never stored) -k 5", ("neighbors", queries[0], *array, "-k", "5"))
    yield Step("== actdb classes --by centroid (new views of each photo: is the photo's class nearest?)",
               ("classes", *queries, *array, "--top", "2"))
    yield Step("\n== actdb optimize: the blog posts' story in miniature (units of a late layer, one class logit);\n"
               "   what EfficientNet-Lite0/1/2 call each image, and its nearest class in this store",
               show=lambda: optimized_story(db, model, query_layer, progress))
    yield from _analytics(db, model, query_layer, queries)
    yield _trajectory_step(db, model, queries)
    yield from _circuits_maps_differentiation(db, folder, originals, views)
    yield Step("\n== actdb info", ("info",))
    yield Step(f"\n== actdb report --layers {REPORT_LAYERS[model]}: this store as a Microscope (open the page below)",
               ("report", "--model", model, "--layers", REPORT_LAYERS[model]))


def _analytics(db, model: str, layer: str, queries: list[str]) -> Iterator[Step]:
    """Distances, map, profile and a unit's dataset examples, with one held-out photo view as the query."""
    plots = db.path / "plots"
    vectors = saved_query_vectors(db, model, layer, queries, plots / "queries")
    query = next(q for q in vectors if "coffee" in Path(q).name)
    array = ("--model", model, "--layer", layer)
    yield Step(f"== actdb distances --classes espresso --random-classes 5 --query {Path(query).name} --pairs all",
               ("distances", *array, "--query", query, "--classes", "espresso", "--random-classes", "5",
                "--pairs", "all", "--plot", str(plots / "distances.png")))
    yield Step("\n== actdb map --method tsne --highlight (a new view of each photo, as vectors in plots/queries/)",
               ("map", *array, "--method", "tsne", *(a for v in vectors for a in ("--highlight", v)),
                "--plot", str(plots / "map-tsne.png")))
    yield Step(f"\n== actdb profile {Path(query).name} --vs-class espresso --top 5",
               ("profile", query, *array, "--top", "5", "--vs-class", "espresso", "--plot", str(plots / "profile.png")))
    excited = db.profile([query], model=model, layer=layer).query("rank <= 20")
    unit = str(int(excited.unit[excited.value.idxmax()]))
    yield Step(f"\n== actdb top-images --unit {unit} (of the new coffee view's top 20 units by z, its strongest) -k 8",
               ("top-images", *array, "--unit", unit, "-k", "8", "--montage", str(plots / "top-images.png")))
    yield Step(f"\n== actdb top-classes --unit {unit} --by mean",
               ("top-classes", *array, "--unit", unit, "--top", "6", "--plot", str(plots / "top-classes.png")))


def _trajectory_step(db, model: str, queries: list[str]) -> Step:
    """The sea_cucumber logit image and a new view of the coffee photo, every stored layer deep."""
    logit = db.sql("SELECT name FROM optimized_images WHERE objective = 'logit' ORDER BY created LIMIT 1").name[0]
    coffee = next(q for q in queries if "coffee" in Path(q).name)
    return Step(f"\n== actdb trajectory optimized:{logit} {Path(coffee).name} -k {TRAJECTORY_K}: where each becomes "
                "its class, layer by layer,\n   and how sure that is (Deep k-NN credibility; each follows its "
                "predicted class)",
                ("trajectory", f"optimized:{logit}", coffee, "--model", model, "-k", str(TRAJECTORY_K),
                 "--plot", str(db.path / "plots" / "trajectory.png")))


def _circuits_maps_differentiation(db, folder: Path, originals: list[Path], views: int) -> Iterator[Step]:
    """weights, featuremaps and differentiation on efficientnet_lite0, pictures in STORE/plots."""
    plots = db.path / "plots"
    lite = "efficientnet_lite0"
    circuit = ("--layer", CIRCUIT["layer"], "--unit", str(CIRCUIT["unit"]), "--expanded", "--from",
               CIRCUIT["from_layer"])
    yield Step(f"\n== actdb weights --model {lite} {' '.join(circuit)}",
               ("weights", "--model", lite, *circuit, "--plot", str(plots / "weights.png")))
    cat = next((p for p in originals if p.stem.startswith("chelsea")), originals[0])
    yield Step(f"\n== actdb featuremaps {cat.name} --model {lite} --layer {FEATUREMAP_LAYER}",
               ("featuremaps", str(cat), "--model", lite, "--layer", FEATUREMAP_LAYER,
                "--plot", str(plots / "featuremaps.png")))
    noise = f"noise:{len(originals) * views}"
    yield Step(f"\n== actdb differentiation {noise} {folder.name} --model {lite} --layers <every block's output>",
               ("differentiation", noise, str(folder), "--model", lite, "--layers", BLOCK_OUTPUTS,
                "--plot", str(plots / "differentiation.png")))
    yield Step("", show=lambda: f"plots: {', '.join(sorted(p.name for p in plots.glob('*.png')))} in {plots}")
