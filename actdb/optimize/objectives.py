"""Objectives: what an optimized image maximizes, one score per image of a batch.

Each objective maps (the layer's output for a batch, each image's unit) to an (N,) score;
they compose with `+`, `-` and scalar `*` as in lucid, e.g. `channel() - 100 * diversity(4)`.
Scores are per image and summed for the gradient, so one image's gradient never depends
on another's (the diversity penalty couples only the K images of one unit, on purpose).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from ..tfquiet import import_tensorflow

tf = import_tensorflow()

DIVERSITY_WEIGHT = 1e2  # lucid's `channel(l, n) - 1e2 * diversity(l)`


@dataclass(frozen=True)
class Objective:
    score: Callable  # (layer output (N, ...), units (N,) int32) -> (N,) float32
    name: str

    def __call__(self, output, units):
        return self.score(tf.cast(output, tf.float32), units)

    def __add__(self, other: "Objective") -> "Objective":
        return Objective(lambda out, units: self.score(out, units) + other.score(out, units),
                         f"{self.name} + {other.name}")

    def __neg__(self) -> "Objective":
        return Objective(lambda out, units: -self.score(out, units), f"-{self.name}")

    def __sub__(self, other: "Objective") -> "Objective":
        return self + (-other)

    def __rmul__(self, weight: float) -> "Objective":
        return Objective(lambda out, units: weight * self.score(out, units), f"{weight:g} * {self.name}")


def _unit_values(output, units):
    """(N, ..., C) -> (N, ...): each image's own unit."""
    moved = tf.experimental.numpy.moveaxis(output, -1, 1)
    return tf.gather(moved, units, axis=1, batch_dims=1)


def channel() -> Objective:
    """The spatial mean of the unit (the notebooks' loss); a vector layer's value itself."""
    def score(output, units):
        values = _unit_values(output, units)
        return tf.reduce_mean(values, axis=[1, 2]) if len(output.shape) == 4 else values

    return Objective(score, "channel")


def neuron() -> Objective:
    """The unit at the centre position only."""
    def score(output, units):
        if len(output.shape) == 2:
            return _unit_values(output, units)
        height, width = int(output.shape[1]), int(output.shape[2])
        return _unit_values(output[:, height // 2, width // 2, :], units)

    return Objective(score, "neuron")


def logit() -> Objective:
    """A class's pre-softmax score; the output given is the classifier's logits."""
    return Objective(_unit_values, "logit")


def diversity(images_per_unit: int) -> Objective:
    """lucid's diversity: per image, the summed similarity of its Gram matrix to those of the
    other images of its unit (consecutive groups of K), divided by K."""
    k = images_per_unit

    def score(output, units):
        n = tf.shape(output)[0]
        channels = output.shape[-1]
        flat = tf.reshape(output, [n, -1, channels])
        grams = tf.nn.l2_normalize(tf.reshape(tf.matmul(flat, flat, transpose_a=True), [n, -1]), axis=1,
                                   epsilon=1e-10)
        groups = tf.reshape(grams, [n // k, k, -1])
        similarity = tf.matmul(groups, groups, transpose_b=True)  # (groups, K, K)
        others = tf.reduce_sum(similarity, axis=2) - tf.linalg.diag_part(similarity)
        return tf.reshape(others, [n]) / k

    return Objective(score, f"diversity({k})")


OBJECTIVES = {"channel": channel, "neuron": neuron, "logit": logit}


def build(kind: str, negative: bool, images_per_unit: int) -> Objective:
    """The run's objective: the target (negated for --negative) minus lucid's diversity penalty."""
    objective = OBJECTIVES[kind]()
    if negative:
        objective = -objective
    if images_per_unit > 1:
        objective = objective - DIVERSITY_WEIGHT * diversity(images_per_unit)
    return objective
