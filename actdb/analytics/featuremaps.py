"""A layer's feature maps for one image (Notebook 003's `show_layer`), as data.

The maps come from the same forward pass as ingest (`models.forward.Extractor` with full
maps); drawing them is `plots.featuremap_grid` / `plots.unit_overlay`.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from ..errors import ActdbError
from ..resolve import image_file
from ..results import Result
from ..units import check_unit, expand_units, parse_units


@dataclass
class FeatureMaps(Result):
    model: str
    layer: str
    query: str
    image: np.ndarray  # (size, size, 3) RGB pixels in [0, 255], as the model saw them
    maps: np.ndarray  # (H, W, len(channels)) raw activations
    channels: list[int]

    def table(self) -> pd.DataFrame:
        """Per channel: mean, max and where the maximum is."""
        flat = self.maps.reshape(-1, self.maps.shape[2]).astype(np.float64)
        peak = np.argmax(flat, axis=0)
        rows, cols = np.unravel_index(peak, self.maps.shape[:2])
        return pd.DataFrame({"channel": self.channels, "mean": flat.mean(axis=0), "std": flat.std(axis=0),
                             "max": flat.max(axis=0), "max_row": rows, "max_col": cols})


def feature_maps(loaded, layer: str, path: str, channels=None, unit: int | None = None,
                 resize: str = "center-crop") -> FeatureMaps:
    """One image through the model; the layer's full H x W x C maps (or the one map `unit`)."""
    from ..images import pixels_of_file
    from ..models.forward import FULL_MAPS, Extractor, resolve_layers

    resolve_layers(loaded.keras_model, layer)
    output = loaded.keras_model.get_layer(layer).output
    if len(output.shape) != 4:
        raise ActdbError(f"{layer} has output shape {tuple(output.shape)}: feature maps need a spatial layer")
    count = int(output.shape[-1])
    if unit is not None:
        wanted = [check_unit(unit, count, layer)]
    elif channels is None:
        wanted = list(range(count))
    else:
        wanted = expand_units(parse_units(channels, "channels"), count, layer, "channels")
    pixels = pixels_of_file(path, loaded.input_size, resize)
    maps = Extractor(loaded, [layer], FULL_MAPS, batch_size=1)(pixels[None])[layer][0]
    return FeatureMaps(loaded.name, layer, path, pixels, maps[:, :, wanted], wanted)


def display_values(maps: np.ndarray) -> np.ndarray:
    """003's `show_layer` scaling: each map standardized, times 64 plus 128, clipped to 0..255.

    A constant map (std 0, e.g. a dead ReLU) shows as flat 128 instead of 003's NaN."""
    mean = maps.mean(axis=(0, 1), keepdims=True)
    std = maps.std(axis=(0, 1), keepdims=True)
    scaled = np.where(std > 0, (maps - mean) / np.where(std > 0, std, 1), 0.0)
    return np.clip(scaled * 64 + 128, 0, 255).astype(np.uint8)


def featuremaps(query: str, *, model: str, layer: str, channels=None, unit: int | None = None,
                weights: str = "imagenet", preprocess: str | None = None, resize: str = "center-crop",
                db=None) -> FeatureMaps:
    """`actdb featuremaps`: resolve the QUERY (`db` for id:N and optimized:NAME), load the model, compute."""
    from ..models import load_model

    path = image_file(query, db)
    return feature_maps(load_model(model, weights, preprocess=preprocess), layer, path, channels, unit, resize)
