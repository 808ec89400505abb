"""The 1000 ImageNet-1k classes, offline: index (sorted-wnid order), wnid, Keras-style name.

Keras' `decode_predictions` downloads its class file; this vendored copy (see
dev/vendor_imagenet_classes.py) works on air-gapped machines.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources

from .errors import ActdbError

WNID_PATTERN = re.compile(r"^n\d{8}$")


@dataclass(frozen=True)
class ImagenetClass:
    index: int
    wnid: str
    name: str


@lru_cache(maxsize=1)
def classes() -> tuple[ImagenetClass, ...]:
    rows = json.loads(resources.files("actdb.data").joinpath("imagenet_classes.json").read_text())
    return tuple(ImagenetClass(r["index"], r["wnid"], r["name"]) for r in rows)


@lru_cache(maxsize=1)
def _by_wnid() -> dict[str, ImagenetClass]:
    return {c.wnid: c for c in classes()}


@lru_cache(maxsize=1)
def _by_name() -> dict[str, list[ImagenetClass]]:
    out: dict[str, list[ImagenetClass]] = {}
    for c in classes():
        for key in {c.name.lower(), c.name.lower().replace("_", " ")}:
            out.setdefault(key, []).append(c)
    return out


def by_wnid(wnid: str) -> ImagenetClass | None:
    return _by_wnid().get(wnid)


def by_index(index: int) -> ImagenetClass:
    return classes()[index]


def resolve(name_or_wnid: str) -> ImagenetClass:
    """A wnid or a human name (`sea_cucumber`, `sea cucumber`) to its class."""
    key = name_or_wnid.strip()
    if WNID_PATTERN.match(key):
        found = by_wnid(key)
        if found is None:
            raise ActdbError(f"{key} is not one of the 1000 ImageNet-1k wnids")
        return found
    matches = _by_name().get(key.lower(), [])
    if len(matches) == 1:
        return matches[0]
    if len(matches) > 1:
        options = ", ".join(f"{c.wnid} ({c.name}, index {c.index})" for c in matches)
        raise ActdbError(f"class name {key!r} is ambiguous in ImageNet: use a wnid, one of {options}")
    raise ActdbError(f"unknown ImageNet class {key!r}: give a wnid such as n02321529 or a name such as sea_cucumber")
