"""Read NVIDIA network pickles (``network-snapshot-*.pkl``, ``ffhq.pkl``) without running any of their code.

NVIDIA's stylegan2-ada-pytorch pickles its networks through ``torch_utils.persistence``: each network
pickles as a call ``_reconstruct_persistent_obj(meta)`` whose ``meta`` carries the *source code* of the
module that defined it (``module_src``), which the original loader ``exec``-s. ``pickle.load`` on such a
file therefore runs whatever source the file contains; ``torch.load(weights_only=True)`` refuses it.

:class:`RestrictedUnpickler` reads the file anyway, safely: its ``find_class`` resolves only a short
allow-list of names, each to a function or class *of this module* that builds an inert record:

* ``_reconstruct_persistent_obj(meta)`` → :class:`PersistentStandIn` (class name, state, a hash of
  ``module_src``). The source is never compiled, the class it names never looked up.
* ``torch._utils._rebuild_tensor_v2`` / ``_rebuild_parameter`` → :class:`TensorRecord`; storages
  (``torch.storage._load_from_bytes``, whose original calls ``torch.load`` with ``weights_only=False``)
  are parsed here from the bytes of torch's legacy format by another restricted unpickler.
* ``collections.OrderedDict``, ``builtins.set``/``frozenset``, ``dnnlib.util.EasyDict`` (a dict) and numpy
  scalars (``weight_gain`` attributes are ``np.float64``), decoded with :mod:`struct`.

Anything else raises :class:`UnsafeCheckpointError` naming the global, before anything is imported.
Tensors become real ``torch.Tensor`` only afterwards (:meth:`TensorRecord.to_tensor`), with bounds checks.
"""

from __future__ import annotations

import collections
import hashlib
import io
import pickle
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..errors import CheckpointError, UnsafeCheckpointError

# torch's legacy storage classes → (dtype, bytes per element).
_STORAGE_DTYPES: dict[str, tuple[torch.dtype, int]] = {
    "FloatStorage": (torch.float32, 4),
    "DoubleStorage": (torch.float64, 8),
    "HalfStorage": (torch.float16, 2),
    "BFloat16Storage": (torch.bfloat16, 2),
    "LongStorage": (torch.int64, 8),
    "IntStorage": (torch.int32, 4),
    "ShortStorage": (torch.int16, 2),
    "CharStorage": (torch.int8, 1),
    "ByteStorage": (torch.uint8, 1),
    "BoolStorage": (torch.bool, 1),
}
# numpy scalar type codes → struct format (little-endian unless the dtype says otherwise).
_NUMPY_FORMATS = {
    "f2": "e",
    "f4": "f",
    "f8": "d",
    "i1": "b",
    "i2": "h",
    "i4": "i",
    "i8": "q",
    "u1": "B",
    "u2": "H",
    "u4": "I",
    "u8": "Q",
    "b1": "?",
}
_MAX_STORAGE_BYTES = 1 << 34  # 16 GiB: far above any generator, far below a hostile "numel" of 2**62


# ----- inert records the unpickler builds ---------------------------------------------------------------
@dataclass
class StorageRecord:
    """One tensor storage, as raw little-endian bytes."""

    dtype: torch.dtype
    data: bytes

    def __setstate__(self, state: Any) -> None:
        raise CheckpointError("the pickle sets state on a storage, which torch never writes.")

    @property
    def numel(self) -> int:
        return len(self.data) // torch.empty((), dtype=self.dtype).element_size()


@dataclass
class TensorRecord:
    """What ``_rebuild_tensor_v2`` would build: a strided view of a storage, not yet a tensor."""

    storage: StorageRecord
    offset: int
    size: tuple[int, ...]
    stride: tuple[int, ...]

    def __setstate__(self, state: Any) -> None:  # BUILD on a tensor is never needed: refuse it
        raise CheckpointError("the pickle sets state on a tensor, which torch never writes.")

    def to_tensor(self) -> Tensor:
        """A fresh float tensor; raises :class:`CheckpointError` if the view runs outside its storage."""
        if len(self.size) != len(self.stride) or any(s < 0 for s in (*self.size, *self.stride, self.offset)):
            raise CheckpointError(f"malformed tensor: size {self.size}, stride {self.stride}, offset {self.offset}.")
        extent = self.offset + sum((n - 1) * s for n, s in zip(self.size, self.stride, strict=True)) + 1
        if 0 in self.size:
            extent = 0
        if extent > self.storage.numel:
            raise CheckpointError(
                f"a tensor of size {self.size} runs past the end of its storage ({self.storage.numel} elements)."
            )
        if not self.storage.data:
            return torch.empty(self.size, dtype=self.storage.dtype)
        flat = torch.frombuffer(bytearray(self.storage.data), dtype=self.storage.dtype)
        return flat.as_strided(self.size, self.stride, self.offset).clone()


@dataclass
class PersistentStandIn:
    """What ``torch_utils.persistence`` would have rebuilt by executing ``module_src``: only its data.

    ``state`` is the object's ``__dict__`` (``_parameters``, ``_buffers``, ``_modules`` and plain attributes);
    ``source_sha256`` identifies the never-executed source.
    """

    class_name: str
    state: dict[str, Any]
    source_sha256: str
    version: Any = None

    def __setstate__(self, state: Any) -> None:
        raise CheckpointError("the pickle sets state on a persistent object, which NVIDIA's pickles never do.")

    def submodules(self) -> dict[str, PersistentStandIn]:
        modules = self.state.get("_modules") or {}
        return {name: m for name, m in modules.items() if isinstance(m, PersistentStandIn)}

    def tensors(self, prefix: str = "") -> dict[str, TensorRecord]:
        """Every parameter and buffer, by dotted name (as ``state_dict()`` would name them)."""
        found: dict[str, TensorRecord] = {}
        for group in ("_parameters", "_buffers"):
            for name, value in (self.state.get(group) or {}).items():
                if isinstance(value, TensorRecord):
                    found[prefix + name] = value
                elif value is not None:
                    raise CheckpointError(
                        f"`{prefix}{name}` in {self.class_name} is {type(value).__name__}, not a tensor."
                    )
        for name, module in self.submodules().items():
            found.update(module.tensors(f"{prefix}{name}."))
        return found


class EasyDictStandIn(dict):
    """``dnnlib.util.EasyDict`` (a dict with attribute access) as a plain dict."""


class _NumpyDType:
    """Enough of ``numpy.dtype`` to decode a pickled scalar: the type code and byte order."""

    def __init__(self, code: Any, align: Any = False, copy: Any = False) -> None:
        if not isinstance(code, str):
            raise CheckpointError(f"a numpy dtype in the pickle has the code {code!r}, not a string.")
        self.code, self.byteorder = code, "<"

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) > 1 and state[1] in ("<", ">", "|", "="):
            self.byteorder = "<" if state[1] in ("|", "=") else state[1]


def _numpy_scalar(dtype: Any, data: Any = b"") -> float | int | bool:
    if not isinstance(dtype, _NumpyDType) or dtype.code not in _NUMPY_FORMATS or not isinstance(data, bytes):
        raise CheckpointError(f"unsupported numpy scalar in the pickle ({getattr(dtype, 'code', dtype)!r}).")
    fmt = dtype.byteorder + _NUMPY_FORMATS[dtype.code]
    if struct.calcsize(fmt) != len(data):
        raise CheckpointError(f"a numpy {dtype.code} scalar has {len(data)} bytes.")
    return struct.unpack(fmt, data)[0]


def _reconstruct_persistent_obj(meta: Any) -> PersistentStandIn:
    if not isinstance(meta, dict) or meta.get("type") != "class" or not isinstance(meta.get("state"), dict):
        raise CheckpointError("a `torch_utils.persistence` object in the pickle has malformed metadata.")
    source = meta.get("module_src")
    source_bytes = source.encode("utf-8", "replace") if isinstance(source, str) else b""
    return PersistentStandIn(
        class_name=str(meta.get("class_name")),
        state=dict(meta["state"]),
        source_sha256=hashlib.sha256(source_bytes).hexdigest(),
        version=meta.get("version"),
    )


def _rebuild_tensor_v2(storage: Any, offset: Any, size: Any, stride: Any, *_ignored: Any) -> TensorRecord:
    ints = (offset, *size, *stride) if isinstance(size, tuple) and isinstance(stride, tuple) else (None,)
    if not isinstance(storage, StorageRecord) or not all(type(n) is int for n in ints):
        raise CheckpointError("a tensor in the pickle is not a storage view with integer size and stride.")
    return TensorRecord(storage, offset, size, stride)


def _rebuild_parameter(data: Any, *_ignored: Any) -> TensorRecord:
    if not isinstance(data, TensorRecord):
        raise CheckpointError("a parameter in the pickle does not wrap a tensor.")
    return data


class _StorageType:
    """A legacy storage class named in a persistent id (``torch.FloatStorage``): only its dtype."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.dtype, self.itemsize = _STORAGE_DTYPES[name]

    def __call__(self, *args: Any) -> Any:
        raise UnsafeCheckpointError(f"the pickle calls `torch.{self.name}`, which tensors never need.")


# ----- the unpicklers ---------------------------------------------------------------------------------
class RestrictedUnpickler(pickle.Unpickler):
    """A ``pickle.Unpickler`` whose globals are inert stand-ins from an allow-list (see the module doc)."""

    ALLOWED: dict[tuple[str, str], Any] = {
        ("collections", "OrderedDict"): collections.OrderedDict,
        ("builtins", "set"): set,
        ("builtins", "frozenset"): frozenset,
        ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
        ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
        ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
        ("torch_utils.persistence", "_reconstruct_persistent_obj"): _reconstruct_persistent_obj,
        ("dnnlib.util", "EasyDict"): EasyDictStandIn,
        ("numpy", "dtype"): _NumpyDType,
        ("numpy.core.multiarray", "scalar"): _numpy_scalar,
        ("numpy._core.multiarray", "scalar"): _numpy_scalar,
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("torch.storage", "_load_from_bytes"):
            return load_storage_bytes
        if (module, name) in self.ALLOWED:
            return self.ALLOWED[(module, name)]
        raise UnsafeCheckpointError(
            f"refused the global `{module}.{name}`: a pickle of network weights never needs it. "
            "Nothing from the file was imported or executed."
        )

    def persistent_load(self, pid: Any) -> Any:
        raise CheckpointError(f"unexpected persistent id {str(pid)[:80]!r} in a plain network pickle.")


class _StorageUnpickler(RestrictedUnpickler):
    """The inner pickles of torch's legacy format: storage classes by name, storages by persistent id."""

    def __init__(self, file: io.BytesIO, storages: dict[str, tuple[_StorageType, int]]) -> None:
        super().__init__(file)
        self.storages = storages

    def find_class(self, module: str, name: str) -> Any:
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name)
        raise UnsafeCheckpointError(f"refused the global `{module}.{name}` inside a pickled storage.")

    def persistent_load(self, pid: Any) -> Any:
        if not (
            isinstance(pid, tuple)
            and len(pid) >= 5
            and pid[0] == "storage"
            and isinstance(pid[1], _StorageType)
            and isinstance(pid[2], str)
            and type(pid[4]) is int
        ):
            raise CheckpointError(f"malformed storage id {str(pid)[:80]!r} in a pickled storage.")
        if len(pid) > 5 and pid[5] is not None:
            raise CheckpointError("storage views in a pickled storage are not supported.")
        self.storages[pid[2]] = (pid[1], pid[4])
        return pid[2]


def load_storage_bytes(blob: Any) -> StorageRecord:
    """Parse one storage in torch's legacy ``torch.save`` format (what ``Storage.__reduce__`` writes).

    Layout: pickles of the magic number, the protocol version, ``sys_info``, the storage (as a persistent
    id), the list of storage keys; then per key an int64 element count and the raw bytes.
    """
    if not isinstance(blob, bytes):
        raise CheckpointError("a pickled storage is not bytes.")
    stream = io.BytesIO(blob)
    storages: dict[str, tuple[_StorageType, int]] = {}
    unpickle = _StorageUnpickler(stream, storages).load  # one unpickler, reused for each pickle
    magic, _protocol, sys_info = unpickle(), unpickle(), unpickle()
    if magic != 0x1950A86A20F9469CFC6C or not isinstance(sys_info, dict):
        raise CheckpointError("a pickled storage is not in torch's legacy format.")
    if sys_info.get("little_endian") is False:
        raise CheckpointError("big-endian storages are not supported.")
    key, keys = unpickle(), unpickle()
    if key not in storages or keys != [key]:
        raise CheckpointError("a pickled storage should hold exactly one storage.")
    storage_type, numel = storages[key]
    counted = stream.read(8)
    if len(counted) != 8 or struct.unpack("<q", counted)[0] != numel:
        raise CheckpointError("a pickled storage's element count does not match its header.")
    size = numel * storage_type.itemsize
    if not 0 <= size <= _MAX_STORAGE_BYTES:
        raise CheckpointError(f"a pickled storage claims {numel} elements.")
    data = stream.read(size)
    if len(data) != size:
        raise CheckpointError(f"a pickled storage is truncated ({len(data)} of {size} bytes).")
    return StorageRecord(storage_type.dtype, data)


def safe_load(path: str | Path) -> Any:
    """Unpickle ``path`` with :class:`RestrictedUnpickler`; every failure is a :class:`CheckpointError`.

    Raises:
        UnsafeCheckpointError: the pickle names a global outside the allow-list.
        CheckpointError: truncated, not a pickle, or malformed records.
    """
    with Path(path).open("rb") as handle:
        try:
            return RestrictedUnpickler(handle).load()
        except CheckpointError:
            raise
        except RecursionError as exc:
            raise CheckpointError(f"{str(path)!r} nests its objects too deeply to be a network pickle.") from exc
        except Exception as exc:  # EOFError, UnpicklingError, TypeError from a bad REDUCE, MemoryError, ...
            raise CheckpointError(
                f"{str(path)!r} is not a readable network pickle ({type(exc).__name__}: {str(exc)[:200]})."
            ) from exc
