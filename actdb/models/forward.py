"""The batched forward pass: a model cut at chosen layers, spatial reduction inside the graph.

Only (batch, channels) leaves the device. Batches are padded to a fixed size: one trace,
and each image's result does not depend on which images share its batch (a resumed run
gives the same rows). Ingest, queries by file, optimize and analytics all run this.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..choices import REDUCTIONS
from ..errors import ActdbError
from ..tfquiet import import_tensorflow
from . import LoadedModel
from . import preprocess as preprocessing

tf = import_tensorflow()

FULL_MAPS = "none"  # not stored: whole H x W x C maps, for analyses that need positions
TOP_K = 5


@dataclass(frozen=True)
class LayerOutput:
    layer: str
    channels: int
    spatial: bool  # True: reduced over H, W; False: a vector layer stored as it is


def conv_layer_names(model) -> list[str]:
    import keras

    return [layer.name for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]


def resolve_layers(model, spec: str) -> list[str]:
    names = [layer.name for layer in model.layers]
    if spec == "all-conv":
        return conv_layer_names(model)
    wanted = [name.strip() for name in spec.split(",") if name.strip()]
    unknown = [name for name in wanted if name not in names]
    if unknown:
        shown = ", ".join(names[1:41]) + (" ..." if len(names) > 41 else "")
        raise ActdbError(f"unknown layer {unknown[0]!r} in {model.name}; valid layers: {shown} (see `actdb layers`)")
    if not wanted:
        raise ActdbError("--layers is empty: name layers (see `actdb layers MODEL`) or use all-conv")
    return list(dict.fromkeys(wanted))


class Extractor:
    """One forward pass per batch: every requested layer, reduced, plus top-k predictions."""

    def __init__(self, loaded: LoadedModel, layers: list[str], reduce: str, batch_size: int,
                 predictions: bool = False, strategy=None):
        import keras

        if reduce not in (*REDUCTIONS, FULL_MAPS):
            raise ActdbError(f"unknown reduction {reduce!r}: use one of {', '.join(REDUCTIONS)}")
        model = loaded.keras_model
        if predictions and not loaded.has_classifier:
            raise ActdbError(f"{loaded.name} has no 'predictions' layer: drop --predictions")
        self.strategy = strategy or tf.distribute.get_strategy()
        self.batch_size = batch_size
        self.input_size = loaded.input_size
        self.reduce = reduce
        self.predictions = predictions
        self.preprocess = preprocessing.get(loaded.preprocess)
        heads = [model.get_layer(name).output for name in layers]
        if predictions:
            heads.append(model.get_layer("predictions").output)
        self.outputs = [LayerOutput(name, int(t.shape[-1]), len(t.shape) == 4) for name, t in zip(layers, heads)]
        for out, tensor in zip(self.outputs, heads):
            if len(tensor.shape) not in (2, 4):
                raise ActdbError(f"layer {out.layer} has output shape {tensor.shape}; actdb stores 2-D or 4-D outputs")
        with self.strategy.scope():
            self.cut = keras.Model(model.inputs, heads)
        size = loaded.input_size
        if self.strategy.num_replicas_in_sync == 1:
            signature = [tf.TensorSpec([None, size, size, 3], tf.float32)]
            self._forward = tf.function(self._replica_forward, input_signature=signature)
        else:
            self._forward = tf.function(self._mirrored_forward)

    def _replica_forward(self, pixels):
        heads = self.cut(self.preprocess(pixels), training=False)
        heads = heads if isinstance(heads, (list, tuple)) else [heads]
        results = {}
        for out, tensor in zip(self.outputs, heads):
            tensor = tf.cast(tensor, tf.float32)
            if out.spatial and self.reduce != FULL_MAPS:
                reduce_fn = tf.reduce_mean if self.reduce == "mean" else tf.reduce_max
                tensor = reduce_fn(tensor, axis=[1, 2])
            results[out.layer] = tensor
        if self.predictions:
            probs = tf.cast(heads[-1], tf.float32)
            top = tf.math.top_k(probs, TOP_K)
            results["top_index"], results["top_prob"] = top.indices, top.values
        return results

    def warm_up(self) -> None:
        """Trace and compile the forward pass once (1-2 s), off the timed, critical path."""
        self(np.zeros((1, self.input_size, self.input_size, 3), np.float32))

    def _mirrored_forward(self, per_replica_pixels):
        results = self.strategy.run(self._replica_forward, args=(per_replica_pixels,))
        return {k: self.strategy.gather(v, axis=0) for k, v in results.items()}

    def __call__(self, pixels: np.ndarray | tf.Tensor) -> dict[str, np.ndarray]:
        """Forward a batch of n <= batch_size images; pads to the fixed batch size."""
        n = int(pixels.shape[0])
        pad = self.batch_size - n
        if pad > 0:
            pixels = tf.pad(pixels, [[0, pad], [0, 0], [0, 0], [0, 0]])
        replicas = self.strategy.num_replicas_in_sync
        if replicas == 1:
            results = self._forward(pixels)
        else:
            shards = tf.split(pixels, replicas)
            results = self._forward(self.strategy.experimental_distribute_values_from_function(
                lambda ctx: shards[ctx.replica_id_in_sync_group]
            ))
        return {k: v.numpy()[:n] for k, v in results.items()}


def default_strategy():
    """All GPUs of this machine as one mirrored model, or the default (one device) strategy."""
    gpus = tf.config.list_logical_devices("GPU")
    if len(gpus) > 1:
        return tf.distribute.MirroredStrategy([d.name for d in gpus])
    return tf.distribute.get_strategy()


def default_batch_size(input_size: int, strategy) -> int:
    """CPU: 32 keeps memory small at no speed cost; GPU: large enough to fill the device."""
    gpus = strategy.num_replicas_in_sync if tf.config.list_logical_devices("GPU") else 0
    return batch_size_for(input_size, gpus)


def batch_size_for(input_size: int, gpus: int) -> int:
    """The rule for a process that drives `gpus` GPUs (0: the CPU), here or on a Ray worker."""
    if gpus:
        return (256 if input_size <= 240 else 128) * gpus
    return 32


def classify(loaded: LoadedModel, pixels: np.ndarray, top: int) -> tuple[np.ndarray, np.ndarray]:
    """(indices, probabilities) of the top classes for a batch of [0, 255] RGB pixels."""
    if not loaded.has_classifier:
        raise ActdbError(f"{loaded.name} has no 'predictions' layer to classify with")
    preprocess = preprocessing.get(loaded.preprocess)
    probs = loaded.keras_model(preprocess(tf.constant(pixels, tf.float32)), training=False)
    found = tf.math.top_k(tf.cast(probs, tf.float32), top)
    return found.indices.numpy(), found.values.numpy()
