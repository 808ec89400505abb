"""The words a user may choose from, each list defined once: the library checks against
them and the CLI offers them, so the two cannot drift apart.

Kept free of imports (no TensorFlow, no FAISS) so that the command line can build its
options without loading anything heavy.
"""
from __future__ import annotations

from .errors import ActdbError

METRICS = ("l2", "cosine", "correlation")
REDUCTIONS = ("mean", "max")  # what a store keeps per layer
FLAT = "flat"  # distances only: whole feature maps computed from the images, not stored
RESIZE_MODES = ("center-crop", "squash")
PRECISIONS = ("float32", "bfloat16", "float16")  # compute precision of a forward pass
DTYPES = ("float32", "float16")  # storage type of stored rows
PREPROCESS_MODES = ("caffe", "tf", "torch", "lite", "none")
ENGINES = ("local", "ray")
INDEX_KINDS = ("flat", "ivf", "hnsw", "ivfpq")
CLASS_RANKINGS = ("centroid", "knn", "mean", "median", "min")
TOP_CLASSES_BY = ("mean", "median", "topk-share")
MAP_METHODS = ("pca", "tsne", "umap")
COMPARE_METHODS = ("cka", "cka-debiased", "rsa")
OPTIMIZE_METHODS = ("fft", "pixel", "pattern")
OBJECTIVES = ("channel", "neuron", "logit")


# Keywords whose command-line flag is not their name with dashes (`class` is a Python word).
FLAGS = {"class_name": "--class", "from_layer": "--from"}


def flag(name: str) -> str:
    """The command line's flag for a keyword: `-k` for `k`, `--class` for `class_name`, `--per-class`
    for `per_class`."""
    return FLAGS.get(name) or (f"-{name}" if len(name) == 1 else f"--{name.replace('_', '-')}")


def option(name: str) -> tuple[str, str]:
    """An argument as a notebook writes it (`pairs=`) and as the command line does (`--pairs`)."""
    return f"{name}=", f"{flag(name)} "


def invalid(name: str, value, problem: str) -> ActdbError:
    """A one-line error about one argument, naming it the way the caller wrote it (on the command
    line an empty text as it was typed, '')."""
    api, cli = option(name)
    shown = "''" if value == "" else value
    return ActdbError(f"{api}{value!r}: {problem}", f"{cli}{shown}: {problem}")


def check_choice(name: str, value, choices, what: str | None = None) -> str:
    """`value` if it is one of `choices`; `what` names the kind of thing in the message."""
    if value not in choices:
        kind = f"unknown {what}; " if what else ""
        raise invalid(name, value, f"{kind}use one of {', '.join(choices)}")
    return value


SEED_MAX = 2**32 - 1  # NumPy's seeds


def check_integer(name: str, value, minimum: int, maximum: int | None = None) -> int:
    """An integer (not 3.7, not True) within bounds, checked before any work."""
    import numbers

    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise invalid(name, value, "give a whole number")
    if value < minimum or (maximum is not None and value > maximum):
        bounds = f"{minimum}..{maximum}" if maximum is not None else f"at least {minimum}"
        raise invalid(name, value, f"give a whole number {bounds}")
    return int(value)


def check_seed(seed) -> int:
    return check_integer("seed", seed, 0, SEED_MAX)
