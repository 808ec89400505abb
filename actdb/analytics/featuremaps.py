"""A layer's feature maps for one image (seed 003's `show_layer`), as data.

The maps come from the same forward pass as ingest (`models.forward.Extractor` with full
maps); drawing them is `plots.featuremap_grid` / `plots.unit_overlay`.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from ..errors import ActdbError
from ..resolve import image_file


@dataclass
class FeatureMaps:
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


def parse_channels(text: str | None, count: int) -> list[int]:
    """`0-63,70` -> [0..63, 70]; None -> every channel. Out-of-range channels are an error."""
    if not text:
        return list(range(count))
    channels: list[int] = []
    for part in text.split(","):
        first, _, last = part.strip().partition("-")
        try:
            span = range(int(first), int(last or first) + 1)
        except ValueError:
            raise ActdbError(f"--channels {text!r}: write channel numbers and ranges, e.g. 0-63 or 3,7,10-12") from None
        channels.extend(span)
    bad = [c for c in channels if not 0 <= c < count]
    if bad or not channels:
        raise ActdbError(f"--channels {text!r}: this layer has channels 0..{count - 1}")
    return list(dict.fromkeys(channels))


def feature_maps(loaded, layer: str, path: str, channels: str | None = None, unit: int | None = None,
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
        if not 0 <= unit < count:
            raise ActdbError(f"--unit {unit} is out of range: {layer} has channels 0..{count - 1}")
        wanted = [unit]
    else:
        wanted = parse_channels(channels, count)
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


def featuremaps_of(query: str, model: str, layer: str, channels: str | None = None, unit: int | None = None,
                   weights: str = "imagenet", preprocess: str | None = None, resize: str = "center-crop",
                   db=None) -> FeatureMaps:
    """`actdb featuremaps`: resolve the QUERY, load the model, compute the maps."""
    from ..models import load_model

    path = image_file(query, db)
    return feature_maps(load_model(model, weights, preprocess=preprocess), layer, path, channels, unit, resize)
