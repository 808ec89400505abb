"""The step loops: one compiled step function per run, reused over chunks of images.

A method is three pieces: `init` (the start state of a chunk, from each image's key and
unit), `step` (one gradient step for the whole chunk; traced once) and `pixels` (the image
a person sees). Every image's loss is its own term of a sum, so its gradient does not
depend on its batch mates.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass

import numpy as np

from ..errors import ActdbError
from ..models import LoadedModel
from ..models import preprocess as preprocessing
from ..tfquiet import import_tensorflow
from . import param, transforms
from .objectives import OBJECTIVES, Objective

tf = import_tensorflow()

ADAM_BETAS, ADAM_EPSILON = (0.9, 0.999), 1e-7  # Keras' Adam defaults
LOGITS = "logits"  # the layer name optimized images of a `logit` objective record


class Target:
    """The model cut at the optimized layer, or at the classifier's pre-softmax logits."""

    def __init__(self, loaded: LoadedModel, layer: str):
        import keras

        model = loaded.keras_model
        self.loaded = loaded
        self.input_size = loaded.input_size
        self.preprocess = preprocessing.get(loaded.preprocess)
        self.dense_head = None
        if layer == LOGITS:
            if not loaded.has_classifier:
                raise ActdbError(f"{loaded.name} has no classifier ('predictions' layer): the logit objective "
                                 "needs one; use --objective channel or neuron with --layer")
            head = model.get_layer("predictions")
            tensor = head.input
            if isinstance(head, keras.layers.Dense):  # Dense(softmax): its logits are x @ kernel + bias
                self.dense_head = head
        else:
            tensor = model.get_layer(layer).output
        if len(tensor.shape) not in (2, 4):
            raise ActdbError(f"layer {layer} has output shape {tensor.shape}; optimize needs a 2-D or 4-D output")
        self.cut = keras.Model(model.input, tensor)
        self.channels = int(self.dense_head.units if self.dense_head is not None else tensor.shape[-1])

    def __call__(self, model_input):
        output = tf.cast(self.cut(model_input, training=False), tf.float32)
        if self.dense_head is not None:
            output = output @ tf.cast(self.dense_head.kernel, tf.float32) + tf.cast(self.dense_head.bias, tf.float32)
        return output


@dataclass
class Fourier:
    """Lucid-style: Fourier parameterization, per-image transforms, Adam."""

    target: Target
    objective: Objective
    size: int
    lr: float

    def __post_init__(self):
        self.image = param.FourierImage(self.size)

    def init(self, keys, units):
        params = self.image.init(tf.constant(keys))
        return params, tf.zeros_like(params), tf.zeros_like(params)

    def step(self, state, keys, units, t):
        params, m, v = state
        with tf.GradientTape() as tape:
            tape.watch(params)
            pixels = transforms.apply(self.image.pixels(params), keys, t, self.target.input_size) * 255.0
            scores = self.objective(self.target(self.target.preprocess(pixels)), units)
            loss = -tf.reduce_sum(scores)
        grad = tape.gradient(loss, params)
        b1, b2 = ADAM_BETAS
        m = b1 * m + (1 - b1) * grad
        v = b2 * v + (1 - b2) * grad * grad
        count = tf.cast(t + 1, tf.float32)
        step = self.lr * (m / (1 - b1 ** count)) / (tf.sqrt(v / (1 - b2 ** count)) + ADAM_EPSILON)
        return (params - step, m, v), scores

    def pixels(self, state) -> np.ndarray:
        return np.round(self.image.pixels(state[0]).numpy() * 255).astype(np.uint8)

    def start_pixels(self, keys, units) -> np.ndarray:
        return self.pixels(self.init(keys, units))


@dataclass
class PixelLoop:
    """Notebooks 000/002 exactly: np.random.seed(S); randint(0, 255) uint8 start; the model's
    preprocess_input; gradient / its std; step; clip to [-1, 1]; `255 * (x + 1) / 2` as uint8."""

    target: Target
    objective: Objective
    size: int
    lr: float
    seed: int

    def init(self, keys, units):
        starts = self.start_pixels(keys, units)
        return (self.target.preprocess(tf.constant(starts.astype(np.float32))),)

    def start_pixels(self, keys, units) -> np.ndarray:
        """The start image, redrawn from the seed for every unit, as when each ran alone."""
        np.random.seed(self.seed)
        start = np.random.randint(low=0, high=255, size=(self.size, self.size, 3), dtype=np.uint8)
        return np.repeat(start[None], len(units), axis=0)

    def step(self, state, keys, units, t):
        (image,) = state
        with tf.GradientTape() as tape:
            tape.watch(image)
            scores = self.objective(self.target(image), units)
            loss = tf.reduce_sum(scores)
        grad = tape.gradient(loss, image)
        grad /= tf.math.reduce_std(grad, axis=[1, 2, 3], keepdims=True)
        return (tf.clip_by_value(image + grad * self.lr, -1, 1),), scores

    def pixels(self, state) -> np.ndarray:
        return tf.cast(255 * (state[0] + 1.0) / 2.0, tf.uint8).numpy()


@dataclass
class PatternLoop:
    """Notebook 003's `generate_pattern` (the Keras book): 128 + 20 U(0,1) fed straight to the
    model's input, gradient / (RMS + 1e-5), steps of size 1 in float64; `deprocess_image`."""

    target: Target
    objective: Objective
    size: int
    lr: float
    seed: int

    def init(self, keys, units):
        np.random.seed(self.seed)
        start = np.random.random((1, self.size, self.size, 3)) * 20 + 128.0
        return (tf.constant(np.repeat(start, len(units), axis=0)),)

    def start_pixels(self, keys, units) -> np.ndarray:
        """The grey noise the loop starts from, as a picture."""
        return self.init(keys, units)[0].numpy().astype(np.uint8)

    def step(self, state, keys, units, t):
        (image,) = state
        model_input = tf.cast(image, tf.float32)
        with tf.GradientTape() as tape:
            tape.watch(model_input)
            scores = self.objective(self.target(model_input), units)
            loss = tf.reduce_sum(scores)
        grad = tape.gradient(loss, model_input)
        grad /= tf.sqrt(tf.reduce_mean(tf.square(grad), axis=[1, 2, 3], keepdims=True)) + 1e-5
        return (image + tf.cast(grad, tf.float64) * self.lr,), scores

    def pixels(self, state) -> np.ndarray:
        return np.stack([deprocess_image(x) for x in state[0].numpy()])


def deprocess_image(x: np.ndarray) -> np.ndarray:
    """003's `deprocess_image`: centre, std 0.1 around 0.5, clip, to uint8."""
    x = x - x.mean()
    x /= x.std() + 1e-5
    x *= 0.1
    x += 0.5
    x = np.clip(x, 0, 1)
    x *= 255
    return np.clip(x, 0, 255).astype("uint8")


METHODS = {"fft": Fourier, "pixel": PixelLoop, "pattern": PatternLoop}
DEFAULTS = {"fft": (256, 0.05), "pixel": (100, 0.1), "pattern": (40, 1.0)}  # (steps, learning rate / step size)


def run(method, keys: np.ndarray, units: np.ndarray, steps: int, batch: int, group: int = 1,
        snapshots: tuple[int, ...] = (), progress: bool = True) -> tuple[np.ndarray, dict[int, np.ndarray]]:
    """Optimize every image in chunks of `batch` (whole groups of `group` images: a unit's
    diversity set); returns final pixels and {step: pixels} snapshots."""
    from tqdm import tqdm

    n = len(units)
    batch = max(group, min(batch, n) // group * group)
    step_fn = None
    finals, shots = [], {s: [] for s in snapshots}
    bar = tqdm(total=steps * -(-n // batch), unit="step", disable=not progress, file=sys.stderr,
               dynamic_ncols=True, desc="optimize")
    try:
        for start in range(0, n, batch):
            chunk = np.arange(start, min(start + batch, n))
            padded = np.concatenate([chunk, np.tile(chunk[-group:], (batch - len(chunk)) // group)])
            chunk_keys = tf.constant(keys[padded], tf.int64)
            chunk_units = tf.constant(units[padded], tf.int32)
            state = method.init(keys[padded], units[padded])
            if step_fn is None:
                signature = [tuple(tf.TensorSpec(s.shape, s.dtype) for s in state),
                             tf.TensorSpec([batch, 2], tf.int64), tf.TensorSpec([batch], tf.int32),
                             tf.TensorSpec([], tf.int64)]
                step_fn = tf.function(method.step, input_signature=signature)
            for t in range(steps):
                state, _ = step_fn(state, chunk_keys, chunk_units, tf.constant(t, tf.int64))
                if t + 1 in shots:
                    shots[t + 1].append(method.pixels(state)[: len(chunk)])
                bar.update(1)
            finals.append(method.pixels(state)[: len(chunk)])
    finally:
        bar.close()
    return np.concatenate(finals), {s: np.concatenate(v) for s, v in shots.items()}


def measure(target: Target, kind: str, pixels: np.ndarray, units: np.ndarray, batch: int = 16) -> np.ndarray:
    """The target value (no sign, no diversity) of uint8 images as a person sees them: resized
    to the model's input as a query by file is, then the model's own preprocessing."""
    from ..images import resize

    objective = OBJECTIVES[kind]()
    values = []
    for start in range(0, len(pixels), batch):
        chunk = pixels[start : start + batch]
        resized = tf.stack([resize(tf.constant(p), target.input_size, "center-crop") for p in chunk])
        output = target(target.preprocess(resized))
        values.append(objective(output, tf.constant(units[start : start + batch], tf.int32)).numpy())
    return np.concatenate(values)
