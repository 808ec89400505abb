"""Circuits: which input channels feed a unit, by the weights alone (notebook 003).

`incoming`: for each input channel c of a conv layer, the Frobenius norm of the kernel
slice `kernel[:, :, c, unit]`, ranked. `expanded`: Distill's expanded weights, the gradient
of the unit's centre position with respect to every channel of an earlier layer, with
ReLU/ReLU6 made the identity and max-pooling made average-pooling, so that the gradient
is the linear map between the two layers (for adjacent convolutions: the kernel itself).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from ..errors import ActdbError
from ..results import Result
from ..units import check_unit

LINEARIZED_ACTIVATIONS = ("relu", "relu6")


@dataclass
class IncomingWeights(Result):
    """What feeds one unit: per input channel (of the conv's input, or of --from), a spatial
    weight map and its Frobenius norm, ranked."""

    model: str
    layer: str
    unit: int
    source: str  # the layer whose channels are ranked: the conv's input, or --from
    kind: str  # "kernel" | "expanded"
    maps: np.ndarray  # (h, w, input channels)
    ranking: pd.DataFrame  # rank, channel, norm (all channels, strongest first)
    weights: str = "imagenet"  # the weights' identity: imagenet | random:seed=N | file:sha256=...

    def top(self, n: int) -> pd.DataFrame:
        return self.ranking.head(n)


def rank_channels(maps: np.ndarray) -> pd.DataFrame:
    """Frobenius norm of each channel's (h, w) map, strongest first (ties by channel)."""
    norms = np.sqrt(np.sum(np.square(maps.astype(np.float64)), axis=(0, 1)))
    order = np.lexsort((np.arange(len(norms)), -norms))
    return pd.DataFrame({"rank": np.arange(1, len(norms) + 1), "channel": order, "norm": norms[order]})


def incoming(loaded, layer: str, unit: int) -> IncomingWeights:
    """The kernel slices feeding output channel `unit` of a conv layer, ranked by norm."""
    import keras

    target = _layer(loaded.keras_model, layer)
    if isinstance(target, keras.layers.DepthwiseConv2D):
        return _depthwise(loaded, target, unit)
    if not isinstance(target, keras.layers.Conv2D) or target.groups != 1:
        raise ActdbError(f"{layer} is a {type(target).__name__}, not a Conv2D or DepthwiseConv2D layer: "
                         "`actdb weights` ranks conv kernels (use --expanded --from LAYER for other layers)")
    kernel = np.asarray(target.kernel.numpy())  # (h, w, in, out)
    unit = check_unit(unit, kernel.shape[3], layer)
    maps = kernel[:, :, :, unit]
    notes = []
    if kernel.shape[:2] == (1, 1):
        notes.append("pointwise (1x1) conv: each channel's norm is the absolute value of its single weight")
    return IncomingWeights(loaded.name, layer, unit, _input_layer_name(target), "kernel", maps, rank_channels(maps),
                           weights=loaded.weights_id, warnings=notes)


def _depthwise(loaded, target, unit: int) -> IncomingWeights:
    """A depthwise conv's output channel reads one input channel only: no ranking to make."""
    kernel = np.asarray(target.kernel.numpy())  # (h, w, in, depth_multiplier)
    channels, multiplier = kernel.shape[2], kernel.shape[3]
    unit = check_unit(unit, channels * multiplier, target.name)
    source_channel, k = divmod(unit, multiplier)
    maps = np.zeros(kernel.shape[:2] + (channels,), kernel.dtype)
    maps[:, :, source_channel] = kernel[:, :, source_channel, k]
    ranking = rank_channels(maps).head(1)
    note = (f"depthwise conv: output channel {unit} reads only input channel {source_channel}; its norm is "
            "that one kernel's, every other channel's weight is 0 (rank the pointwise conv after it, "
            "or use --expanded)")
    return IncomingWeights(loaded.name, target.name, unit, _input_layer_name(target), "kernel", maps, ranking,
                           weights=loaded.weights_id, warnings=[note])


def expanded(loaded, layer: str, unit: int, from_layer: str) -> IncomingWeights:
    """Expanded weights from `from_layer` to `unit` of `layer`, computed as a TF gradient.

    The model is cloned with ReLU/ReLU6 as identity and max-pooling as average-pooling; a
    zero offset added to `from_layer`'s output is the variable the gradient is taken for.
    The result is cropped to the window the unit sees (the non-zero rows and columns)."""
    import keras
    import tensorflow as tf

    model = loaded.keras_model
    names = [item.name for item in model.layers]
    target, source = _layer(model, layer), _layer(model, from_layer)
    if names.index(from_layer) >= names.index(layer):
        raise ActdbError(f"--from {from_layer} is not before --layer {layer} in {loaded.name}: "
                         "name an earlier layer (see `actdb layers`)")
    for item in (target, source):
        if len(item.output.shape) != 4:
            raise ActdbError(f"{item.name} has output shape {tuple(item.output.shape)}; expanded weights need "
                             "spatial (H x W x C) layers at both ends")
    unit = check_unit(unit, int(target.output.shape[-1]), layer)
    probe = _zero_offset(tuple(source.output.shape[1:]))
    outputs = {}
    clone = keras.models.clone_model(model, clone_function=_linearized,
                                     call_function=_probe_after(from_layer, probe, layer, outputs))
    cut = keras.Model(clone.inputs, outputs[layer])
    size = loaded.input_size
    height, width = cut.output.shape[1:3]
    with tf.GradientTape() as tape:
        out = cut(tf.zeros((1, size, size, 3)), training=False)
        centre = out[0, (height - 1) // 2, (width - 1) // 2, unit]
    gradient = tape.gradient(centre, probe.offset.value)
    if gradient is None:
        raise ActdbError(f"{layer} does not depend on {from_layer}: pick a --from layer on its input path")
    maps = _crop_to_support(gradient.numpy()[0])
    note = (f"expanded weights: gradient of {layer}[{(height - 1) // 2}, {(width - 1) // 2}, {unit}] "
            f"with respect to {from_layer}, ReLU/ReLU6 as identity and max-pool as average-pool")
    return IncomingWeights(loaded.name, layer, unit, from_layer, "expanded", maps, rank_channels(maps),
                           weights=loaded.weights_id,
                           warnings=[note, *_nonlinear_left(model, names.index(from_layer), names.index(layer))])


def _probe_after(name: str, probe, wanted: str, outputs: dict):
    """clone_model's call_function: the probe after `name`; records `wanted`'s new output
    (layers that stay shared keep their first output in the original model)."""
    def call(layer, *args, **kwargs):
        out = layer(*args, **kwargs)
        out = probe(out) if layer.name == name else out
        if layer.name == wanted:
            outputs[wanted] = out
        return out

    return call


def _zero_offset(shape):
    """A layer adding a zero variable: its gradient is the gradient with respect to the layer it follows."""
    import keras

    class ZeroOffset(keras.layers.Layer):
        def __init__(self):
            super().__init__(name="expanded_weights_probe")
            self.offset = self.add_weight(shape=(1, *shape), initializer="zeros", trainable=True, name="offset")

        def call(self, x):
            return x + self.offset

    return ZeroOffset()


def _linearized(layer):
    """The closest linear layer: ReLU/ReLU6 -> identity, max-pool -> average-pool; others shared."""
    import keras

    config = layer.get_config()
    if isinstance(layer, keras.layers.MaxPooling2D):
        return keras.layers.AveragePooling2D.from_config(config)
    if isinstance(layer, keras.layers.ReLU) or (
        isinstance(layer, keras.layers.Activation) and config.get("activation") in LINEARIZED_ACTIVATIONS
    ):
        return keras.layers.Activation("linear", name=config["name"])
    if config.get("activation") in LINEARIZED_ACTIVATIONS:  # a conv or dense with a fused ReLU
        copy = type(layer).from_config({**config, "activation": "linear"})
        copy.build(layer.input.shape)
        copy.set_weights(layer.get_weights())
        return copy
    return layer


def _nonlinear_left(model, start: int, stop: int) -> list[str]:
    """Layers between the two ends whose nonlinearity stays (the gradient then depends on the input)."""
    import keras

    left = []
    for layer in model.layers[start + 1 : stop + 1]:
        activation = layer.get_config().get("activation")
        if isinstance(layer, keras.layers.ReLU) or activation in (None, "linear", *LINEARIZED_ACTIVATIONS):
            continue
        left.append(f"{layer.name} ({activation if isinstance(activation, str) else type(layer).__name__})")
    if left:
        return [f"nonlinear layers kept as they are, evaluated at a zero input: {', '.join(left)}"]
    return []


def _crop_to_support(gradient: np.ndarray) -> np.ndarray:
    """The rows and columns where any channel's weight is non-zero: the unit's window."""
    support = np.abs(gradient).sum(axis=2) > 0
    if not support.any():
        return gradient[:1, :1]
    rows, cols = np.flatnonzero(support.any(axis=1)), np.flatnonzero(support.any(axis=0))
    return gradient[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]


def _layer(model, name: str):
    try:
        return model.get_layer(name)
    except ValueError:
        shown = ", ".join(layer.name for layer in model.layers[1:41])
        raise ActdbError(f"unknown layer {name!r} in {model.name}; valid layers: {shown} (see `actdb layers`)") from None


def _input_layer_name(layer) -> str:
    history = getattr(layer.input, "_keras_history", None)
    return history.operation.name if history is not None else "input"


def incoming_weights(*, model: str, layer: str, unit: int, from_layer: str | None = None,
                     weights: str = "imagenet", preprocess: str | None = None) -> IncomingWeights:
    """`actdb weights`: load the model, then `incoming` or, with `from_layer`, `expanded`."""
    from ..models import load_model

    loaded = load_model(model, weights, preprocess=preprocess)
    return expanded(loaded, layer, unit, from_layer) if from_layer else incoming(loaded, layer, unit)
