"""Pixel preprocessing per model family, as graph ops on float32 RGB in [0, 255].

Each Keras application has its own `preprocess_input` mode; applying one
normalisation to every model silently changes what the activations mean.
"""
from __future__ import annotations

from ..errors import ActdbError
from ..tfquiet import import_tensorflow

tf = import_tensorflow()

CAFFE_MEAN_RGB = (123.68, 116.779, 103.939)
TORCH_MEAN_RGB = (0.485, 0.456, 0.406)
TORCH_STD_RGB = (0.229, 0.224, 0.225)


def caffe(x):
    """VGG / ResNet50: RGB -> BGR, subtract the ImageNet mean, no scaling."""
    return x[..., ::-1] - tf.constant(CAFFE_MEAN_RGB[::-1], dtype=x.dtype)


def tf_mode(x):
    """Inception / MobileNet: scale to [-1, 1]."""
    return x / 127.5 - 1.0


def torch(x):
    """DenseNet: scale to [0, 1], then ImageNet mean and std per channel."""
    mean = tf.constant(TORCH_MEAN_RGB, dtype=x.dtype)
    return (x / 255.0 - mean) / tf.constant(TORCH_STD_RGB, dtype=x.dtype)


def lite(x):
    """EfficientNet-Lite: (x - 127) / 128, the inception-style range Google's edge models use for quantization."""
    return (x - 127.0) / 128.0


def none(x):
    return x


MODES = {"caffe": caffe, "tf": tf_mode, "torch": torch, "lite": lite, "none": none}


def get(mode: str):
    try:
        return MODES[mode]
    except KeyError:
        raise ActdbError(f"unknown preprocessing {mode!r}: use one of {', '.join(sorted(MODES))}") from None
