"""`actdb demo`: the main job end to end, offline, on real photos and a real ImageNet model."""
from __future__ import annotations

from pathlib import Path

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
