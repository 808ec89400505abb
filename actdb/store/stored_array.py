"""`StoredArray`: one stored array as a typed value, what every feature is handed.

It names the model (weights, their digest, preprocessing), the layer and how its rows were
made (reduction, resize, compute precision), how they are kept (dtype, Zarr path), and the
catalog's count of done rows when it was looked up.
"""
from __future__ import annotations

from dataclasses import dataclass

from .. import weightspec
from ..units import check_unit


@dataclass(frozen=True)
class StoredArray:
    id: int
    model: str
    weights: str  # as recorded: imagenet | random:seed=N | file:sha256=...
    weights_digest: str  # SHA256 of every weight value the rows were computed with
    layer: str
    reduce: str  # mean | max over the spatial axes (vector layers are stored as they are)
    channels: int
    dtype: str  # float32 | float16 on disk
    precision: str  # compute precision: float32 | bfloat16 | float16
    resize: str  # center-crop | squash
    zarr_path: str  # inside activations.zarr
    rows_done: int
    data_version: str  # a digest of the done ids and their chunks' digests: changes with any stored value
    model_id: int
    preprocess: str
    input_size: int
    model_path: str | None = None  # the .keras file, for models loaded from a path
    weights_path: str | None = None  # the weights file, for --weights PATH

    @property
    def name(self) -> str:
        return f"{self.model}/{self.layer}"

    def describe(self) -> str:
        """model layer (reduce), for titles and messages."""
        return f"{self.model} {self.layer} ({self.reduce})"

    def check_unit(self, unit, name: str = "unit") -> int:
        return check_unit(unit, self.channels, self.describe(), name)

    def selection(self) -> dict:
        """The keyword arguments that select this array again."""
        return {"model": self.model, "layer": self.layer, "reduce": self.reduce,
                "weights": weightspec.given(self.weights)}
