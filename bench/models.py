"""Images/s of the Keras EfficientNet-Lite0 port against the PyTorch reference it was converted from.

Same weights, same random batch, same CPU thread count for both frameworks; the
Keras forward is a tf.function around model(x, training=False) (what ingest
pays per batch, without model.predict's per-call overhead), the PyTorch one
runs under inference_mode. Rounds alternate between the two so that machine
noise hits both alike; the median round is reported.

Needs torch (a dev-only dependency), e.g. from the venv of
dev/make_efficientnet_fixture.py:  PYTHONPATH=. .venv-torch/bin/python bench/models.py [batch] [threads] [rounds]
"""
from __future__ import annotations

import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

MODEL = "efficientnet_lite0"


def record_seconds(forward, durations: list[float]) -> None:
    start = time.perf_counter()
    forward()
    durations.append(time.perf_counter() - start)


def main(batch: int = 32, threads: int = os.cpu_count() or 1, rounds: int = 10) -> None:
    try:
        import torch
    except ImportError:
        print("bench/models.py skipped: it compares against PyTorch, which is not installed here "
              "(see dev/make_efficientnet_fixture.py for a torch venv)")
        return
    from actdb.tfquiet import import_tensorflow

    tf = import_tensorflow()
    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(threads)
    torch.set_num_threads(threads)
    torch.set_num_interop_threads(threads)

    from actdb import models
    from actdb.models import preprocess

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "dev"))
    import make_efficientnet_fixture as reference

    loaded = models.load(MODEL)
    size = loaded.input_size
    pixels = np.random.default_rng(0).integers(0, 256, (batch, size, size, 3), dtype=np.uint8)
    keras_input = preprocess.get(loaded.preprocess)(tf.constant(pixels, tf.float32))
    keras_forward = tf.function(lambda x: loaded.keras_model(x, training=False))
    torch_model = reference.reference_model(MODEL)
    torch_input = reference.preprocess(pixels)

    def run_keras():
        return keras_forward(keras_input).numpy()

    def run_torch():
        with torch.inference_mode():
            return torch.softmax(torch_model(torch_input), dim=1).numpy()

    for _ in range(2):  # warm-up: tracing, oneDNN primitive caches
        agreement = np.abs(run_keras() - run_torch()).max()
    keras_s, torch_s = [], []
    for _ in range(rounds):
        record_seconds(run_keras, keras_s)
        record_seconds(run_torch, torch_s)
    keras_ips = batch / statistics.median(keras_s)
    torch_ips = batch / statistics.median(torch_s)
    print(f"{MODEL}, batch {batch}, {threads} CPU threads each, median of {rounds} alternating rounds")
    print(f"Keras (tf.function):        {keras_ips:7.1f} images/s")
    print(f"PyTorch (inference_mode):   {torch_ips:7.1f} images/s")
    print(f"Keras / PyTorch:            {keras_ips / torch_ips:7.2f}")
    print(f"max |softmax difference|:   {agreement:.1e}")


if __name__ == "__main__":
    main(*map(int, sys.argv[1:4]))
