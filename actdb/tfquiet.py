"""Import TensorFlow without its start-up chatter.

TF 2.21 prints oneDNN and CUDA-probe notices through C++ logging before Python can
configure it (TF_CPP_MIN_LOG_LEVEL does not reach them), so stderr is muted for the
import and the first device probe only. Python exceptions still propagate.
"""
from __future__ import annotations

import os
import sys


def import_tensorflow():
    if "tensorflow" in sys.modules:
        return sys.modules["tensorflow"]
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        import tensorflow as tf

        tf.config.list_physical_devices("GPU")
        # Python-side warnings too: each model load builds its own compiled forward pass, which
        # TensorFlow reports as "retracing" although nothing is traced twice per model.
        tf.get_logger().setLevel("ERROR")
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)
    return tf
