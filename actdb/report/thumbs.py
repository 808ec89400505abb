"""Every image a page shows, decoded and shrunk once into the report (JPEG), and the
pre-tiled strip of a unit's top images (one request per unit on its layer page). Names
are content-addressed, so a thumbnail is made once however many pages show it and the
report never points into the user's dataset folders."""
from __future__ import annotations

import hashlib
import io
from pathlib import Path

from PIL import Image

THUMB_PX = 96
STRIP_PX = 48
QUALITY = 85


class Thumbnails:
    def __init__(self, site, sources: dict[str, tuple[Path, str]]):
        """`sources`: image key (`id:N` or `optimized:NAME`) -> (file, content digest)."""
        self.site = site
        self.sources = sources
        self.made: dict[str, str | None] = {}
        self.tiles: dict[str, Image.Image] = {}  # decoded once, tiled into every strip that shows the image
        self.readable: dict[str, bool] = {}
        site.available = self.available

    def of(self, key: str) -> str | None:
        """The report path of the image's thumbnail; None where its file cannot be read (the
        file written next is then recorded as lacking it)."""
        if key not in self.made:
            self.made[key] = self._make(key)
        if self.made[key] is None:
            self.site.picture_missing(key)
        return self.made[key]

    def available(self, key: str) -> bool:
        """Whether the picture of `key`, missing when a page was made, can be read now."""
        if key not in self.readable:
            try:
                file, _ = self.sources[key]
            except (KeyError, ValueError):  # no longer stored
                self.readable[key] = False
            else:
                self.readable[key] = file is not None and _open(file) is not None
        return self.readable[key]

    def _make(self, key: str) -> str | None:
        file, digest = self.sources[key]
        if file is None:  # damaged: refused where it is read, and noted
            return None
        path = f"thumbs/{digest[:24]}.jpg"
        if self.site.fresh(path, digest):
            return path
        image = _open(file)
        if image is None:
            self.site.unreadable.append(str(file))
            return None
        image.thumbnail((THUMB_PX, THUMB_PX))
        self.site.file(path, _jpeg(image), digest)
        return path

    def strip(self, path: str, keys: list[str]) -> str | None:
        """One JPEG of the images' thumbnails side by side, STRIP_PX tall."""
        key = hashlib.sha256(" ".join(self.sources[k][1] for k in keys).encode()).hexdigest()[:20]
        if self.site.fresh(path, key):
            return path
        tiles = [tile for tile in map(self._tile, keys) if tile is not None]
        if not tiles:
            return None
        strip = Image.new("RGB", (STRIP_PX * len(tiles), STRIP_PX), "white")
        for i, tile in enumerate(tiles):
            strip.paste(tile, (i * STRIP_PX, 0))
        self.site.file(path, _jpeg(strip), key)
        return path

    def _tile(self, key: str):
        if key not in self.tiles:
            thumb = self.of(key)
            if thumb is None:
                return None
            with Image.open(self.site.out / thumb) as image:
                self.tiles[key] = image.convert("RGB").resize((STRIP_PX, STRIP_PX))
        return self.tiles[key]


def _open(file: Path):
    try:
        with Image.open(file) as image:
            image.load()
            return image.convert("RGB")
    except (OSError, ValueError):
        return None


def _jpeg(image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=QUALITY)
    return buffer.getvalue()
