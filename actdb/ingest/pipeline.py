"""Decode, resize, batch, forward, reduce: one tf.data pipeline feeding one compiled forward pass.

Spatial reductions run inside the graph, so only (batch, channels) leaves the device.
Batches are padded to a fixed size: one trace, and each image's result does not depend
on which images share its batch (a resumed run gives the same rows).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import tensorflow as tf

from ..errors import ActdbError
from ..models import LoadedModel
from ..models import preprocess as preprocessing

RESIZE_MODES = ("center-crop", "squash")
REDUCTIONS = ("mean", "max")
PRECISIONS = ("float32", "bfloat16", "float16")
TOP_K = 5


def decode(data: tf.Tensor) -> tf.Tensor:
    """Any supported file (JPEG, PNG, GIF first frame, BMP, WebP) to uint8 RGB; gray, CMYK,
    palette and alpha images become RGB."""
    return tf.io.decode_image(data, channels=3, expand_animations=False, dtype=tf.uint8)


def resize(image: tf.Tensor, size: int, mode: str) -> tf.Tensor:
    """uint8 HxWx3 to float32 size x size x 3 in [0, 255].

    center-crop: shorter side to `size`, then the centre square (the usual evaluation crop);
    squash: straight to size x size, aspect ratio lost (the seeds' `load_img(target_size=...)`).
    """
    if mode == "squash":
        return tf.image.resize(image, [size, size], antialias=True)
    shape = tf.cast(tf.shape(image)[:2], tf.float32)
    scale = size / tf.reduce_min(shape)
    new_shape = tf.maximum(tf.cast(tf.round(shape * scale), tf.int32), size)
    scaled = tf.image.resize(image, new_shape, antialias=True)
    top = (new_shape[0] - size) // 2
    left = (new_shape[1] - size) // 2
    return scaled[top : top + size, left : left + size, :]


def image_dataset(ids: np.ndarray, paths: list[str], size: int, resize_mode: str, batch_size: int,
                  parallel: int = 4) -> tf.data.Dataset:
    """Batches of {id, pixels, fingerprint, height, width}; undecodable files are dropped
    (the caller sees which ids never came out and records why)."""

    def load(image_id, path):
        data = tf.io.read_file(path)
        image = decode(data)
        return {
            "id": image_id,
            "pixels": resize(image, size, resize_mode),
            "fingerprint": tf.fingerprint(tf.expand_dims(data, 0))[0],
            "height": tf.shape(image)[0],
            "width": tf.shape(image)[1],
        }

    options = tf.data.Options()
    options.autotune.enabled = False  # AUTOTUNE's iterator teardown can stall for 20 s (TF 2.21)
    options.threading.private_threadpool_size = parallel
    dataset = tf.data.Dataset.from_tensor_slices((np.asarray(ids, np.int64), tf.constant(list(paths), tf.string)))
    dataset = dataset.map(load, num_parallel_calls=parallel, deterministic=True)
    dataset = dataset.ignore_errors()
    return dataset.batch(batch_size).prefetch(2).with_options(options)


def pixels_of_file(path: str, size: int, resize_mode: str) -> np.ndarray:
    """One file through exactly the ingest decode and resize (queries and predict use this)."""
    try:
        image = decode(tf.io.read_file(path))
    except (tf.errors.InvalidArgumentError, tf.errors.NotFoundError) as exc:
        raise ActdbError(f"cannot read image {path}: {str(exc).splitlines()[-1][:100]}") from None
    return resize(image, size, resize_mode).numpy()


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

        if reduce not in REDUCTIONS:
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
            if out.spatial:
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
    if tf.config.list_logical_devices("GPU"):
        per_device = 256 if input_size <= 240 else 128
        return per_device * strategy.num_replicas_in_sync
    return 32
