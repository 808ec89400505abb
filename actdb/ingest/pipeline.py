"""Decode, resize, batch: the tf.data reader that feeds the forward pass (models.forward).

Decoding and resizing are `actdb.images`', so a file queried later maps to exactly
the pixels stored here.
"""
from __future__ import annotations

import numpy as np

from ..images import decode, resize, tf


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
