"""Units per second and final activation of three ways to make 16 optimized images.

On one model, layer, image size and number of steps, measured in this one run:
  actdb     `fft` method, all 16 units in one batch (actdb.optimize.loops, as `actdb optimize` runs it)
  notebooks 000's compiled one-unit `gradient_ascent`, verbatim, run 16 times (one per unit)
  tf-keras-vis 0.8.7 `ActivationMaximization`, 16 units batched through `seed_input` (its defaults:
            RMSprop 1.0, Jitter + Rotate2D, TotalVariation + Norm), on the model behind its own
            preprocessing so that it optimizes pixels in 0..255 as it expects
Each contender first runs one step on the same shapes (tracing, excluded from the timing).
The final activation is the unit's spatial mean on the image each returns, fed as pixels through the
model's preprocessing (actdb: its PNG; notebooks: the loop's tensor, and its PNG `255 * (x + 1) / 2`;
tf-keras-vis: its 0..255 result), averaged over the 16 units.

    PYTHONPATH=. python bench/optimize.py [lite_steps=32] [vgg_steps=8] [lite_layer=top_bn]

top_bn is top_activation before its ReLU6: on the grey start of the fft method most top_activation
units are 0 and get no gradient, and the notebooks' loop divides a zero gradient by its zero std (NaN).
"""
from __future__ import annotations

import sys
import time

import numpy as np

UNITS = list(range(16))


def seeds_contender(loaded, layer, steps, size):
    """000's code with its model, layer and unit swapped in; returns (seconds, tensors, PNGs)."""
    import keras
    import tensorflow as tf

    from actdb.models import preprocess as preprocessing

    base_model = loaded.keras_model
    part_model = keras.Model(inputs=base_model.input, outputs=[base_model.get_layer(layer).output])
    target_index = tf.Variable(0)

    @tf.function(input_signature=(tf.TensorSpec(shape=[None, None, 3], dtype=tf.float32),
                                  tf.TensorSpec(shape=[], dtype=tf.int32), tf.TensorSpec(shape=[], dtype=tf.float32)))
    def gradient_ascent(img, steps, step_size):
        loss = tf.constant(0.0)
        for n in tf.range(steps):
            with tf.GradientTape() as tape:
                tape.watch(img)
                activation = part_model(tf.expand_dims(img, axis=0))
                loss = tf.math.reduce_mean(tf.gather(activation, target_index, axis=3))
            gradients = tape.gradient(loss, img)
            gradients /= tf.math.reduce_std(gradients)
            img = img + gradients * step_size
            img = tf.clip_by_value(img, -1, 1)
        return loss, img

    preprocess = preprocessing.get(loaded.preprocess)

    def one(unit, n_steps):
        target_index.assign(unit)
        np.random.seed(0)
        starting_img = np.random.randint(low=0, high=255, size=(size, size, 3), dtype=np.uint8)
        img = preprocess(tf.constant(starting_img.astype(np.float32)))
        _, img = gradient_ascent(img, tf.constant(n_steps), tf.constant(0.1))
        return img

    one(0, 1)
    with Timer() as timer:
        tensors = [one(unit, steps) for unit in UNITS]
    pngs = [tf.cast(255 * (t + 1.0) / 2.0, tf.uint8).numpy() for t in tensors]
    return timer, np.stack([t.numpy() for t in tensors]), np.stack(pngs)


def actdb_contender(loaded, layer, steps, size):
    from actdb.optimize import loops, objectives
    from actdb.optimize.run import image_key

    target = loops.Target(loaded, layer)
    method = loops.Fourier(target, objectives.channel(), size, 0.05)
    keys = np.array([image_key(0, u, 0) for u in UNITS], np.int64)
    units = np.array(UNITS, np.int32)
    loops.run(method, keys, units, 1, 16, progress=False)
    with Timer() as timer:
        pixels, _ = loops.run(method, keys, units, steps, 16, progress=False)
    return timer, pixels


def tf_keras_vis_contender(loaded, layer, steps, size):
    import keras
    import tensorflow as tf
    from tf_keras_vis.activation_maximization import ActivationMaximization

    from actdb.models import preprocess as preprocessing

    cut = keras.Model(loaded.keras_model.input, loaded.keras_model.get_layer(layer).output)
    pixels = keras.Input((size, size, 3))
    wrapped = keras.Model(pixels, cut(keras.layers.Lambda(preprocessing.get(loaded.preprocess))(pixels)))

    def score(output):
        return tf.stack([tf.reduce_mean(output[i, ..., unit]) for i, unit in enumerate(UNITS)])

    visualize = ActivationMaximization(wrapped, clone=False)
    seed_input = np.random.RandomState(0).randint(0, 255, (len(UNITS), size, size, 3)).astype(np.float32)
    visualize(score, seed_input=seed_input, steps=1)
    with Timer() as timer:
        result = visualize(score, seed_input=seed_input, steps=steps)
    return timer, np.asarray(result)


def unit_means(loaded, layer, images: np.ndarray, preprocessed: bool = False) -> float:
    import tensorflow as tf

    from actdb.optimize import loops, objectives

    target = loops.Target(loaded, layer)
    x = tf.constant(images, tf.float32)
    output = target(x if preprocessed else target.preprocess(x))
    values = objectives.channel()(output, tf.constant(UNITS, tf.int32)).numpy()
    return float(np.nanmean(values)), int(np.isnan(values).sum())


def bench(label, loaded, layer, steps, size):
    rows = []
    timer, pixels = actdb_contender(loaded, layer, steps, size)
    rows.append(("actdb fft, 16 units batched", timer, *unit_means(loaded, layer, pixels)))
    timer, tensors, pngs = seeds_contender(loaded, layer, steps, size)
    rows.append(("notebooks' loop (000), 16 runs", timer, *unit_means(loaded, layer, tensors, preprocessed=True)))
    seeds_png, _ = unit_means(loaded, layer, pngs)
    try:
        timer, result = tf_keras_vis_contender(loaded, layer, steps, size)
        rows.append(("tf-keras-vis 0.8.7, 16 batched", timer, *unit_means(loaded, layer, result)))
    except Exception as exc:  # noqa: BLE001 - report why it cannot run, and go on
        print(f"tf-keras-vis could not run: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}")
    n = len(UNITS)
    print(f"\n{label}: layer {layer}, {size} px, {steps} steps, {n} units, float32, CPU")
    print(f"{'contender':<32} {'wall s':>7} {'CPU s':>7} {'units/s':>8} {'units/CPU-s':>11} {'final activation':>17}")
    for name, timer, final, nans in rows:
        note = f"  ({nans} units NaN: gradient std 0)" if nans else ""
        print(f"{name:<32} {timer.wall:7.1f} {timer.cpu:7.1f} {n / timer.wall:8.3f} {n / timer.cpu:11.3f} "
              f"{final:17.4g}{note}")
    actdb = rows[0][1]
    for name, timer, _, _ in rows[1:]:
        print(f"actdb / {name.split(',')[0]}: {timer.wall / actdb.wall:.2f}x units/s wall, "
              f"{timer.cpu / actdb.cpu:.2f}x units per CPU-second")
    print(f"(notebooks' loop, its saved PNG 255*(x+1)/2 instead of its tensor: final activation {seeds_png:.4g})")
    sys.stdout.flush()


class Timer:
    """Wall and process CPU seconds: on a shared machine CPU seconds are the steadier measure."""

    def __enter__(self):
        self._wall, self._cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        self.wall = time.perf_counter() - self._wall
        self.cpu = time.process_time() - self._cpu


def main(lite_steps: int = 32, vgg_steps: int = 8, lite_layer: str = "top_bn") -> None:
    """A step count of 0 leaves that model out."""
    from actdb.models import load_model
    from actdb.tfquiet import import_tensorflow

    import_tensorflow()
    if lite_steps:
        bench("EfficientNet-Lite0 (ImageNet weights)", load_model("efficientnet_lite0"), lite_layer, lite_steps, 224)
    if vgg_steps:
        bench("VGG19 (random weights, seed 0)", load_model("vgg19", "random:0"), "block5_conv4", vgg_steps, 224)


if __name__ == "__main__":
    arguments = sys.argv[1:]
    main(*(int(a) for a in arguments[:2]), *arguments[2:3])
