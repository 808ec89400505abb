"""Everything about a model: building or loading it by name, path and weights option, its
input size and preprocessing, and its identity (the weights digest the catalog records).
The batched forward pass is `models.forward`.

TensorFlow is imported lazily so that catalog-only commands start fast.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import os
from dataclasses import dataclass
from pathlib import Path

from .. import weightspec
from ..choices import PRECISIONS, check_choice
from ..errors import ActdbError
from ..tfquiet import import_tensorflow


@dataclass(frozen=True)
class ModelSpec:
    """What a model name means: how to build it and how to feed it."""

    name: str
    input_size: int
    preprocess: str
    weights_file: str | None = None  # the ImageNet weights file: Keras' cache name, or the shipped .pth


KERAS_APPLICATIONS = {
    "vgg16": ModelSpec("vgg16", 224, "caffe", "vgg16_weights_tf_dim_ordering_tf_kernels.h5"),
    "vgg19": ModelSpec("vgg19", 224, "caffe", "vgg19_weights_tf_dim_ordering_tf_kernels.h5"),
    "resnet50": ModelSpec("resnet50", 224, "caffe", "resnet50_weights_tf_dim_ordering_tf_kernels.h5"),
    "inception_v3": ModelSpec("inception_v3", 299, "tf", "inception_v3_weights_tf_dim_ordering_tf_kernels.h5"),
    "mobilenet_v2": ModelSpec(
        "mobilenet_v2", 224, "tf", "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224.h5"
    ),
    "densenet121": ModelSpec("densenet121", 224, "torch", "densenet121_weights_tf_dim_ordering_tf_kernels.h5"),
}
_CONSTRUCTORS = {
    "vgg16": "VGG16",
    "vgg19": "VGG19",
    "resnet50": "ResNet50",
    "inception_v3": "InceptionV3",
    "mobilenet_v2": "MobileNetV2",
    "densenet121": "DenseNet121",
}


def _efficientnet_lite_specs() -> dict[str, ModelSpec]:
    from . import efficientnet_lite

    return dict(efficientnet_lite.SPECS)


def known_models() -> dict[str, ModelSpec]:
    return {**KERAS_APPLICATIONS, **_efficientnet_lite_specs()}


def spec_for(name: str) -> ModelSpec:
    specs = known_models()
    if name not in specs:
        raise ActdbError(
            f"unknown model {name!r}: use one of {', '.join(sorted(specs))}, or a saved model file PATH.keras"
        )
    return specs[name]


@dataclass
class LoadedModel:
    """A built Keras model plus everything the catalog must record about it."""

    keras_model: object
    name: str
    weights_id: str
    preprocess: str
    input_size: int
    model_path: str | None = None
    weights_path: str | None = None

    @property
    def has_classifier(self) -> bool:
        return any(layer.name == "predictions" for layer in self.keras_model.layers)


def keras_cache_dir() -> Path:
    return Path(os.environ.get("KERAS_HOME", Path.home() / ".keras")) / "models"


def is_saved_model_path(name: str) -> bool:
    return name.endswith(".keras")


def load_model(name: str, weights: str = "imagenet", precision: str = "float32",
               preprocess: str | None = None) -> LoadedModel:
    """A model as the user names it (`--model`, `--weights random:3`), built under the
    requested compute precision (Keras dtype policy)."""
    import_tensorflow()
    import keras

    check_choice("precision", precision, PRECISIONS)
    policy = {"float32": "float32", "bfloat16": "mixed_bfloat16", "float16": "mixed_float16"}[precision]
    kind, seed = weightspec.parse(weights)
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(policy)
    try:
        return load(name, weights=kind, seed=seed, preprocess=preprocess)
    finally:
        keras.config.set_dtype_policy(previous)


def weights_digest(model) -> str:
    """SHA256 of every weight value: the identity the catalog checks before mixing rows."""
    import numpy as np

    digest = hashlib.sha256()
    for weight in model.weights:
        digest.update(np.ascontiguousarray(weight.numpy()).tobytes())
    return digest.hexdigest()


def load(name: str, weights: str = "imagenet", seed: int = 0, preprocess: str | None = None) -> LoadedModel:
    """Build a model. `weights`: imagenet | random | PATH to a weights file.

    Random weights are seeded, so a resumed ingest rebuilds the very same model.
    """
    import_tensorflow()
    import keras

    if is_saved_model_path(name):
        return _load_saved_model(name, preprocess or "none")
    spec = spec_for(name)
    if preprocess is not None and preprocess != spec.preprocess:
        raise ActdbError(f"{name} is trained with {spec.preprocess!r} preprocessing; --preprocess is for PATH.keras models")
    if weights == "random":
        keras.utils.set_random_seed(seed)
        model = _build(spec, weights=None)
        return LoadedModel(model, name, weightspec.random_id(seed), spec.preprocess, spec.input_size)
    if weights == "imagenet":
        model = _build(spec, weights="imagenet")
        return LoadedModel(model, name, "imagenet", spec.preprocess, spec.input_size)
    path = Path(weights)
    if not path.is_file():
        raise ActdbError(f"--weights {weights!r}: not 'imagenet', 'random' or an existing weights file")
    model = _build(spec, weights=None)
    try:
        model.load_weights(str(path))
    except Exception as exc:  # noqa: BLE001 - Keras raises many types for a bad file
        raise ActdbError(f"could not load weights {path} into {name}: {str(exc).splitlines()[0]}") from None
    return LoadedModel(model, name, weightspec.file_id(path), spec.preprocess, spec.input_size,
                       weights_path=str(path.resolve()))


def _build(spec: ModelSpec, weights: str | None):
    if spec.name not in KERAS_APPLICATIONS:
        from . import efficientnet_lite

        model = efficientnet_lite.build(spec.name)
        if weights == "imagenet":
            model.load_weights(str(efficientnet_lite.pretrained_weights_path(spec.name)))
        return model
    import keras

    constructor = getattr(keras.applications, _CONSTRUCTORS[spec.name])
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # Keras prints its download URL: keep stdout for results
            return constructor(weights=weights, include_top=True)
    except Exception as exc:  # noqa: BLE001 - download failures surface as several types
        if weights != "imagenet":
            raise
        expected = keras_cache_dir() / spec.weights_file
        raise ActdbError(
            f"ImageNet weights for {spec.name} are not cached and could not be downloaded "
            f"({str(exc).splitlines()[0][:80]}): put {spec.weights_file} in {expected.parent}, "
            f"or pass --weights PATH (a weights file) or --weights random"
        ) from None


def _load_saved_model(path: str, preprocess: str) -> LoadedModel:
    import keras

    from . import preprocess as preprocessing

    preprocessing.get(preprocess)
    if not Path(path).is_file():
        raise ActdbError(f"model file {path} does not exist")
    try:
        model = keras.models.load_model(path, compile=False)
    except Exception as exc:  # noqa: BLE001
        raise ActdbError(f"could not load Keras model {path}: {str(exc).splitlines()[0]}") from None
    height, width = model.input_shape[1:3]
    if height is None or height != width:
        raise ActdbError(f"{path}: actdb needs a fixed square input shape, the model has {model.input_shape}")
    return LoadedModel(model, Path(path).stem, weightspec.file_id(path), preprocess, height,
                       model_path=str(Path(path).resolve()))


def layer_table(model) -> list[tuple[str, str, tuple]]:
    """(name, class, output shape) for every layer, for `actdb layers`."""
    rows = []
    for layer in model.layers:
        shape = getattr(layer, "output", None)
        rows.append((layer.name, type(layer).__name__, tuple(shape.shape) if shape is not None else ()))
    return rows
