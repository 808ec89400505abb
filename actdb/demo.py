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
