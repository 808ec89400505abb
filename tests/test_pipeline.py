"""Decode and resize against PIL, and batch-independence of the forward pass."""
from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from actdb import images
from actdb.models import forward


def encode(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def photo() -> Image.Image:
    rng = np.random.default_rng(0)
    return Image.fromarray((rng.random((30, 40, 3)) * 255).astype(np.uint8))


@pytest.mark.parametrize(
    "mode, fmt",
    [("RGB", "PNG"), ("L", "PNG"), ("P", "PNG"), ("RGBA", "PNG"), ("LA", "PNG"), ("P", "GIF"), ("RGB", "BMP"),
     ("RGB", "WEBP")],
)
def test_lossless_formats_decode_to_the_same_rgb_as_pil(photo, mode, fmt):
    data = encode(photo.convert(mode), fmt)
    if fmt == "WEBP":
        data = io.BytesIO()
        photo.convert(mode).save(data, format="WEBP", lossless=True)
        data = data.getvalue()
    expected = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
    np.testing.assert_array_equal(images.decode(data).numpy(), expected)


@pytest.mark.parametrize("mode", ["RGB", "CMYK", "L"])
def test_jpeg_decodes_close_to_pil(photo, mode):
    data = encode(photo.convert(mode), "JPEG")
    expected = np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).astype(int)
    decoded = images.decode(data).numpy().astype(int)
    assert decoded.shape == expected.shape and np.abs(decoded - expected).mean() < 1.5


def test_center_crop_keeps_the_centre_of_the_shorter_side():
    """A wide image with a bright centre band: the crop must be all band."""
    image = np.zeros((40, 100, 3), np.uint8)
    image[:, 30:70] = 255
    out = images.resize(image, 20, "center-crop").numpy()
    assert out.shape == (20, 20, 3)
    assert out[:, 1:-1].min() > 250  # 40 columns of band scale to 20: the whole crop


def test_center_crop_matches_pil_resize_and_crop():
    rng = np.random.default_rng(1)
    smooth = np.kron(rng.random((12, 16, 3)), np.ones((8, 8, 1)))  # 96 x 128, smooth enough for bilinear
    image = (smooth * 255).astype(np.uint8)
    ours = images.resize(image, 48, "center-crop").numpy()
    reference = Image.fromarray(image).resize((64, 48), Image.BILINEAR)  # shorter side 96 -> 48
    reference = np.asarray(reference, np.float32)[:, 8:56]
    assert np.abs(ours - reference).mean() < 3.0


def test_squash_ignores_aspect_ratio():
    image = np.zeros((40, 100, 3), np.uint8)
    image[:, :50] = 255
    out = images.resize(image, 20, "squash").numpy()
    assert out.shape == (20, 20, 3)
    assert out[:, :9].min() > 250 and out[:, 11:].max() < 5


def test_an_image_gives_the_same_row_whatever_shares_its_batch(tiny_model_path):
    from actdb.models import load

    loaded = load(str(tiny_model_path), preprocess="tf")
    extractor = forward.Extractor(loaded, ["conv2"], "mean", batch_size=8)
    rng = np.random.default_rng(2)
    batch = rng.uniform(0, 255, (8, 32, 32, 3)).astype(np.float32)
    full = extractor(batch)["conv2"]
    alone = extractor(batch[3:4])["conv2"]
    np.testing.assert_array_equal(alone[0], full[3])


def test_full_maps_equal_a_direct_keras_forward_pass(tiny_model_path):
    import keras

    from actdb.models import load

    loaded = load(str(tiny_model_path), preprocess="tf")
    batch = np.random.default_rng(4).uniform(0, 255, (3, 32, 32, 3)).astype(np.float32)
    maps = forward.Extractor(loaded, ["conv2", "fc"], forward.FULL_MAPS, batch_size=4)(batch)
    model = loaded.keras_model
    cut = keras.Model(model.inputs, [model.get_layer("conv2").output, model.get_layer("fc").output])
    conv2, fc = (t.numpy() for t in cut(batch / 127.5 - 1.0))
    assert maps["conv2"].shape == (3, 13, 13, 16)
    np.testing.assert_allclose(maps["conv2"], conv2, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(maps["fc"], fc, rtol=1e-5, atol=1e-5)


MIRRORED_SCRIPT = """
import sys
import numpy as np
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
from actdb.models import forward, load
loaded = load(sys.argv[1], preprocess="tf")
batch = np.random.default_rng(3).uniform(0, 255, (6, 32, 32, 3)).astype(np.float32)
mirrored = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
one = forward.Extractor(loaded, ["conv2", "fc"], "mean", batch_size=8)(batch)
two = forward.Extractor(loaded, ["conv2", "fc"], "mean", batch_size=8, strategy=mirrored)(batch)
for key in one:
    np.testing.assert_allclose(two[key], one[key], rtol=1e-6, atol=1e-6)
    assert two[key].shape[0] == 6
print("ok", mirrored.num_replicas_in_sync)
"""


@pytest.mark.slow
def test_several_devices_give_the_rows_of_one(tiny_model_path):
    """The multi-GPU path (MirroredStrategy), exercised on two logical CPU devices."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", MIRRORED_SCRIPT, str(tiny_model_path)], capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().endswith("ok 2")
