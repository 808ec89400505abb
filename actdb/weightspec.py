"""The weights grammar, in one place: how a user names weights and how the catalog records them.

    given (--weights, weights=)        recorded (catalog)
    imagenet                           imagenet
    random | random:SEED               random:seed=SEED
    PATH to a weights file             file:sha256=DIGEST (the file's path kept beside it)

To select stored arrays a user may also write the recorded forms, or a weights file,
which is identified by its digest.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

from .choices import invalid

IMAGENET = "imagenet"
RANDOM = "random"
RANDOM_PREFIX = "random:seed="
FILE_PREFIX = "file:sha256="


def parse(weights: str) -> tuple[str, int]:
    """What to load: ('imagenet', 0), ('random', SEED), or (PATH, 0)."""
    if weights == RANDOM or weights.startswith(RANDOM + ":"):
        seed_text = weights.partition(":")[2].removeprefix("seed=") or "0"
        if not seed_text.isdigit() or int(seed_text) >= 2**32:
            raise invalid("weights", weights, "write random or random:SEED with SEED a whole number 0..4294967295")
        return RANDOM, int(seed_text)
    return weights, 0


def random_id(seed: int) -> str:
    return f"{RANDOM_PREFIX}{seed}"


def file_id(path: str | Path) -> str:
    return FILE_PREFIX + file_sha256(Path(path))


def recorded(weights: str | None) -> str | None:
    """The catalog's form of weights as a user selects a stored array by them."""
    if weights is None:
        return None
    kind, seed = parse(weights)
    if kind == RANDOM:
        return random_id(seed)
    if kind != IMAGENET and not kind.startswith(FILE_PREFIX) and Path(kind).is_file():
        return file_id(kind)
    return kind


def given(recorded_weights: str) -> str:
    """The form a user types for recorded weights (`random:1` for `random:seed=1`)."""
    return recorded_weights.replace(RANDOM_PREFIX, RANDOM + ":")


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
