"""Real photos that ship inside installed packages, each with its ImageNet class.

Tests and the demo need natural images with a known class, on machines without a
network or an ImageNet copy. Classes were chosen by eye against ImageNet-1k:

- chelsea (scikit-image): a tabby cat -> tabby n02123045
- coffee (scikit-image): an espresso cup on a saucer -> espresso n07920052 (cup n07930864 is
  the runner-up)
- rocket (scikit-image): a Falcon 9 on its launch pad -> missile n03773504 (ImageNet's
  missile images include launch-pad rockets; projectile n04008634 is the runner-up)
- china (scikit-learn): the Tower of Buddhist Incense, Summer Palace -> palace n03877845
- flower (scikit-learn): a pompon dahlia -> daisy n11939491, the nearest ImageNet flower
  (no dahlia class); the weakest label here
- grace_hopper (matplotlib): Grace Hopper in naval uniform -> military_uniform n03763968

scikit-image's astronaut is left out: its subject, a person in a pressure suit, has no
ImageNet-1k class. scikit-image is optional; its photos appear only when it is installed.
"""
from __future__ import annotations

import importlib.util
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance

from .errors import ActdbError

CROP_AREA = (0.6, 1.0)  # fraction of the photo a random crop keeps
JITTER = (0.75, 1.25)  # brightness, contrast and saturation factors
JPEG_QUALITY = 90


@dataclass(frozen=True)
class Photo:
    name: str
    wnid: str
    load: Callable[[], np.ndarray]  # HxWx3 uint8 RGB


def _skimage(name: str) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        import skimage.data

        return getattr(skimage.data, name)()

    return load


def _sklearn(file_name: str) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        from sklearn.datasets import load_sample_image

        return load_sample_image(file_name)

    return load


def _matplotlib(file_name: str) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        from matplotlib.cbook import get_sample_data

        with get_sample_data(file_name) as f:
            return np.asarray(Image.open(f).convert("RGB"))

    return load


# (package that must be installed, photo)
CATALOG = (
    ("skimage", Photo("chelsea", "n02123045", _skimage("chelsea"))),
    ("skimage", Photo("coffee", "n07920052", _skimage("coffee"))),
    ("skimage", Photo("rocket", "n03773504", _skimage("rocket"))),
    ("sklearn", Photo("china", "n03877845", _sklearn("china.jpg"))),
    ("sklearn", Photo("flower", "n11939491", _sklearn("flower.jpg"))),
    ("matplotlib", Photo("grace_hopper", "n03763968", _matplotlib("grace_hopper.jpg"))),
)


def available_photos() -> list[Photo]:
    """The catalogue's photos whose package is installed, without importing it."""
    return [photo for package, photo in CATALOG if importlib.util.find_spec(package) is not None]


def write_augmented_views(out_dir: Path, views_per_photo: int, seed: int = 0, size: int = 256) -> list[Path]:
    """An ImageNet train-layout folder `out_dir/<wnid>/<photo>_<k>.JPEG` of views per photo.

    View 0 is the photo itself; the others are random crops, flips and colour jitter, so a
    few photos give a dataset whose activations vary like real ones. Each photo draws from
    its own generator, so its views depend only on the seed, not on which other photos
    are installed. Every view is resized to `size` on its shorter side.
    """
    if views_per_photo < 1:
        raise ActdbError(f"views_per_photo must be at least 1, got {views_per_photo}")
    written = []
    for photo in available_photos():
        image = Image.fromarray(photo.load())
        rng = np.random.default_rng([seed, zlib.crc32(photo.name.encode())])
        folder = Path(out_dir) / photo.wnid
        folder.mkdir(parents=True, exist_ok=True)
        for k in range(views_per_photo):
            view = image if k == 0 else _augment(image, rng)
            path = folder / f"{photo.name}_{k:03d}.JPEG"
            _resize_shorter_side(view, size).save(path, quality=JPEG_QUALITY)
            written.append(path)
    return written


def _augment(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    view = _random_crop(image, rng)
    if rng.random() < 0.5:
        view = view.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    for enhance in (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color):
        view = enhance(view).enhance(rng.uniform(*JITTER))
    return view


def _random_crop(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """Keeps a fraction f of the area: f**u of the width and f**(1-u) of the height."""
    width, height = image.size
    kept, u = rng.uniform(*CROP_AREA), rng.random()
    crop_w = max(1, round(width * kept**u))
    crop_h = max(1, round(height * kept ** (1 - u)))
    left = int(rng.integers(0, width - crop_w + 1))
    top = int(rng.integers(0, height - crop_h + 1))
    return image.crop((left, top, left + crop_w, top + crop_h))


def _resize_shorter_side(image: Image.Image, size: int) -> Image.Image:
    scale = size / min(image.size)
    new_size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return image.resize(new_size, Image.Resampling.BICUBIC)
