"""Random transforms that make optimized images robust (lucid's standard stack): pad 12,
jitter 8, scale 0.90..1.10, rotate -10..10 degrees, jitter 4; then resample to the model's
input size.

Unlike lucid, lucent, Xplique and tf-keras-vis, which draw one transform per step for the
whole batch, each image draws its own from (its key, step) with stateless random ops, so an
image depends only on its own seed, unit and diversity index, not on its batch mates.
The five transforms compose into one affine map per image, so the batch is resampled by
one projective-transform op with a fixed output size, whatever each image's scale.
"""
from __future__ import annotations

import math

from ..tfquiet import import_tensorflow

tf = import_tensorflow()

PAD = 12
FIRST_JITTER = 8
SCALES = tuple(1 + (i - 5) / 50 for i in range(11))  # 0.90, 0.92, ..., 1.10
ANGLES = tuple(range(-10, 11)) + (0,) * 5  # degrees; 0 weighted extra, as in lucid
LAST_JITTER = 4
FILL = 0.5  # lucid pads with constant 0.5 (mid grey in [0, 1])


def _translation(dx, dy):
    one, zero = tf.ones_like(dx), tf.zeros_like(dx)
    return tf.stack([tf.stack([one, zero, dx], -1), tf.stack([zero, one, dy], -1),
                     tf.stack([zero, zero, one], -1)], -2)


def _scaling(s):
    one, zero = tf.ones_like(s), tf.zeros_like(s)
    return tf.stack([tf.stack([s, zero, zero], -1), tf.stack([zero, s, zero], -1),
                     tf.stack([zero, zero, one], -1)], -2)


def _rotation(theta):
    one, zero = tf.ones_like(theta), tf.zeros_like(theta)
    c, s = tf.cos(theta), tf.sin(theta)
    return tf.stack([tf.stack([c, -s, zero], -1), tf.stack([s, c, zero], -1),
                     tf.stack([zero, zero, one], -1)], -2)


def draw(keys: tf.Tensor, step: tf.Tensor) -> tf.Tensor:
    """Per image (N, 5) uniform draws in [0, 1) from (its key, step): jitter x/y, scale, angle, jitter x/y."""
    def one(key):
        return tf.random.stateless_uniform([6], tf.random.experimental.stateless_fold_in(key, step))

    return tf.map_fn(one, keys, fn_output_signature=tf.float32)


def output_to_input(draws: tf.Tensor, size: int, out_size: int) -> tf.Tensor:
    """(N, 3, 3) affine maps from output pixel coordinates to parameterized-image coordinates."""
    def pick(u, choices):
        table = tf.constant(choices, tf.float32)
        return tf.gather(table, tf.minimum(tf.cast(u * len(choices), tf.int32), len(choices) - 1))

    jitter1 = tf.floor(draws[:, 0:2] * (FIRST_JITTER + 1))
    scale = pick(draws[:, 2], SCALES)
    theta = pick(draws[:, 3], ANGLES) * (math.pi / 180)
    jitter2 = tf.floor(draws[:, 4:6] * (LAST_JITTER + 1))
    cropped = size + 2 * PAD - FIRST_JITTER  # side after pad and the first jitter
    scaled = cropped * scale
    final = scaled - LAST_JITTER
    half = scaled / 2
    steps = [
        _scaling(final / out_size),  # output pixels -> last-jitter canvas
        _translation(jitter2[:, 0], jitter2[:, 1]),  # -> rotated canvas
        _translation(half, half) @ _rotation(-theta) @ _translation(-half, -half),  # undo the rotation
        _scaling(1.0 / scale),  # -> unscaled canvas
        _translation(jitter1[:, 0] - PAD, jitter1[:, 1] - PAD),  # -> parameterized image
    ]
    matrix = steps[-1]
    for step in reversed(steps[:-1]):
        matrix = matrix @ step
    return matrix


def apply(images: tf.Tensor, keys: tf.Tensor, step: tf.Tensor, out_size: int) -> tf.Tensor:
    """Each [0, 1] image through its own random transform, resampled to out_size x out_size."""
    size = int(images.shape[1])
    matrix = output_to_input(draw(keys, step), size, out_size)
    flat = tf.reshape(matrix, [-1, 9])[:, :8] / matrix[:, 2:3, 2]
    return tf.raw_ops.ImageProjectiveTransformV3(
        images=images, transforms=flat, output_shape=tf.constant([out_size, out_size], tf.int32),
        fill_value=tf.constant(FILL, tf.float32), interpolation="BILINEAR", fill_mode="CONSTANT")
