"""Image files to pixels: one decode and one resize, shared by the ingest pipeline and by
every command that runs a model on a single file (queries, predict, optimize).

TensorFlow ops, so a file queried later maps to exactly the pixels ingest stored.
"""
from __future__ import annotations

import numpy as np

from .errors import ActdbError
from .tfquiet import import_tensorflow

tf = import_tensorflow()


def decode(data: tf.Tensor) -> tf.Tensor:
    """Any supported file (JPEG, PNG, GIF first frame, BMP, WebP) to uint8 RGB; gray, CMYK,
    palette and alpha images become RGB."""
    return tf.io.decode_image(data, channels=3, expand_animations=False, dtype=tf.uint8)


def resize(image: tf.Tensor, size: int, mode: str) -> tf.Tensor:
    """uint8 HxWx3 to float32 size x size x 3 in [0, 255].

    center-crop: shorter side to `size`, then the centre square (the usual evaluation crop);
    squash: straight to size x size, aspect ratio lost (the notebooks' `load_img(target_size=...)`).
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


def pixels_of_file(path: str, size: int, resize_mode: str) -> np.ndarray:
    """One file through exactly the ingest decode and resize."""
    try:
        image = decode(tf.io.read_file(path))
    except tf.errors.NotFoundError:
        raise ActdbError(f"cannot read image {path}: no such file") from None
    except tf.errors.InvalidArgumentError:
        raise ActdbError(f"cannot read image {path}: not a JPEG, PNG, GIF, BMP or WebP image, or the file is corrupt "
                         "or truncated") from None
    return resize(image, size, resize_mode).numpy()
