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

Tiny files must not hang or exhaust the reader either. It is Python's pure-Python unpickler with three
opcodes replaced: BUILD only ever sets state on an instance made during this load (never on a class or
function from the allow-list, which would outlive the load); every re-use (memo GET) of a tuple or
frozenset is charged its expanded size against a budget, so a DAG of tuples (2**40 elements from 1 KB,
hashed as a dict key) is refused instead of hashed; and :func:`check_tree` then bounds the depth and the
tree-expanded size of what was read (cycles and DAGs of lists, dicts and modules), before anything walks it.
Error messages show attacker data only through :func:`short_repr`.
"""

from __future__ import annotations

import collections
import hashlib
import io
import math
import pickle
import struct
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..errors import CheckpointError, UnsafeCheckpointError, short_repr

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
MAX_DEPTH = 64  # containers inside containers: NVIDIA's pickles nest about 12 deep
MAX_NODES = 250_000  # containers and items as a tree (shared parts once per use); NVIDIA's 1024px ffhq.pkl ~40k
_MAX_REUSE = 1_000_000  # total expanded size of re-used tuples / frozensets (what hashing them would cost)

def check_tree(obj: Any, what: str = "the checkpoint") -> None:
    """Refuse objects nested deeper than :data:`MAX_DEPTH` or larger than :data:`MAX_NODES` as a tree.

    Counting shared containers once per use makes a cycle (a module that holds itself) hit the depth limit
    and a DAG (a list holding the previous list twice, 40 levels) hit the size limit, quickly, with an
    explicit stack: nothing that walks the result afterwards (conversion, messages) can recurse or blow up.

    Raises:
        CheckpointError: naming the limit.
    """
    stack: list[tuple[Any, int]] = [(obj, 0)]
    nodes = 0
    while stack:
        item, depth = stack.pop()
        nodes += 1
        if nodes > MAX_NODES:
            raise CheckpointError(
                f"{what} holds more than {MAX_NODES} objects when read as a tree (shared or repeated structure); "
                "a network checkpoint is a tree of modules and tensors."
            )
        if isinstance(item, PersistentStandIn):
            children: Any = (item.state,)
        elif isinstance(item, dict):
            children = (*item.keys(), *item.values())
        elif isinstance(item, list | tuple | set | frozenset):
            children = item
        else:
            continue
        if depth >= MAX_DEPTH and children:
            raise CheckpointError(
                f"{what} nests containers more than {MAX_DEPTH} deep, or a module holds itself; a network "
                "checkpoint is a shallow tree of modules and tensors."
            )
        stack.extend((child, depth + 1) for child in children)


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

    def flat(self) -> Tensor:
        """The storage as a 1-D tensor over the bytes, without copying them (shared by every view)."""
        cached = self.__dict__.get("_flat")
        if cached is None:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # "non-writable buffer": it is only read, then cloned
                cached = torch.frombuffer(self.data, dtype=self.dtype)
            self.__dict__["_flat"] = cached
        return cached


@dataclass
class TensorRecord:
    """What ``_rebuild_tensor_v2`` would build: a strided view of a storage, not yet a tensor."""

    storage: StorageRecord
    offset: int
    size: tuple[int, ...]
    stride: tuple[int, ...]

    def __setstate__(self, state: Any) -> None:  # BUILD on a tensor is never needed: refuse it
        raise CheckpointError("the pickle sets state on a tensor, which torch never writes.")

    def check(self) -> None:
        """Raise :class:`CheckpointError` if the view runs outside its storage or overlaps itself (no allocation)."""
        if len(self.size) != len(self.stride) or any(s < 0 for s in (*self.size, *self.stride, self.offset)):
            raise CheckpointError(
                f"malformed tensor: size {short_repr(self.size)}, stride {short_repr(self.stride)}, "
                f"offset {self.offset}."
            )
        extent = self.offset + sum((n - 1) * s for n, s in zip(self.size, self.stride, strict=True)) + 1
        if 0 in self.size:
            extent = 0
        if extent > self.storage.numel:
            raise CheckpointError(
                f"a tensor of size {short_repr(self.size)} runs past the end of its storage "
                f"({self.storage.numel} elements)."
            )
        if self.numel > max(self.storage.numel, 1):  # only overlapping (e.g. zero) strides can do that
            raise CheckpointError(
                f"a tensor of size {short_repr(self.size)} has more elements than its storage "
                f"({self.storage.numel}); weights are never saved as overlapping views."
            )

    def to_tensor(self) -> Tensor:
        """A fresh tensor of the view (checked first); only the view's elements are copied."""
        self.check()
        if not self.storage.data:
            return torch.empty(self.size, dtype=self.storage.dtype)
        # Only the view is copied: every view of a storage shares one zero-copy tensor over its bytes.
        return self.storage.flat().as_strided(self.size, self.stride, self.offset).clone()

    @property
    def numel(self) -> int:
        return math.prod(self.size)

    @property
    def dtype(self) -> torch.dtype:
        return self.storage.dtype


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
        if not isinstance(modules, dict) or not all(isinstance(name, str) for name in modules):
            raise CheckpointError(f"the submodules of a {self.class_name} are not a dict keyed by names.")
        return {name: m for name, m in modules.items() if isinstance(m, PersistentStandIn)}

    def tensors(self, prefix: str = "", *, _seen: set[int] | None = None) -> dict[str, TensorRecord]:
        """Every parameter and buffer, by dotted name (as ``state_dict()`` would name them).

        Raises:
            CheckpointError: a module appears twice in the tree (shared or cyclic modules).
        """
        _seen = set() if _seen is None else _seen
        if id(self) in _seen:
            raise CheckpointError(
                f"the module `{prefix.rstrip('.')}` appears twice in the network; modules form a tree."
            )
        _seen.add(id(self))
        found: dict[str, TensorRecord] = {}
        for group in ("_parameters", "_buffers"):
            entries = self.state.get(group) or {}
            if not isinstance(entries, dict) or not all(isinstance(name, str) for name in entries):
                raise CheckpointError(f"the {group} of a {self.class_name} are not a dict keyed by names.")
            for name, value in entries.items():
                if isinstance(value, TensorRecord):
                    found[prefix + name] = value
                elif value is not None:
                    raise CheckpointError(
                        f"`{prefix}{short_repr(name)}` in {self.class_name} is {type(value).__name__}, not a tensor."
                    )
        for name, module in self.submodules().items():
            found.update(module.tensors(f"{prefix}{name}.", _seen=_seen))
        return found


class EasyDictStandIn(dict):
    """``dnnlib.util.EasyDict`` (a dict with attribute access) as a plain dict."""


class _NumpyDType:
    """Enough of ``numpy.dtype`` to decode a pickled scalar: the type code and byte order."""

    def __init__(self, code: Any, align: Any = False, copy: Any = False) -> None:
        if not isinstance(code, str):
            raise CheckpointError(f"a numpy dtype in the pickle has the code {short_repr(code)}, not a string.")
        self.code, self.byteorder = code, "<"

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) > 1 and state[1] in ("<", ">", "|", "="):
            self.byteorder = "<" if state[1] in ("|", "=") else state[1]


def _numpy_scalar(dtype: Any, data: Any = b"") -> float | int | bool:
    if not isinstance(dtype, _NumpyDType) or dtype.code not in _NUMPY_FORMATS or not isinstance(data, bytes):
        raise CheckpointError(f"unsupported numpy scalar in the pickle ({short_repr(getattr(dtype, 'code', dtype))}).")
    fmt = dtype.byteorder + _NUMPY_FORMATS[dtype.code]
    if struct.calcsize(fmt) != len(data):
        raise CheckpointError(f"a numpy {dtype.code} scalar has {len(data)} bytes.")
    return struct.unpack(fmt, data)[0]


def _reconstruct_persistent_obj(meta: Any) -> PersistentStandIn:
    if not isinstance(meta, dict) or meta.get("type") != "class" or not isinstance(meta.get("state"), dict):
        raise CheckpointError("a `torch_utils.persistence` object in the pickle has malformed metadata.")
    if not isinstance(meta.get("class_name"), str) or len(meta["class_name"]) > 200:
        raise CheckpointError("a `torch_utils.persistence` object in the pickle has no class name (a short string).")
    source = meta.get("module_src")
    source_bytes = source.encode("utf-8", "replace") if isinstance(source, str) else b""
    return PersistentStandIn(
        class_name=meta["class_name"],
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
def _reuse_charged(load: Any) -> Any:
    """Wrap a memo-GET opcode: re-using a tuple or frozenset is charged its expanded size."""

    def get(self: RestrictedUnpickler) -> None:
        load(self)
        item = self.stack[-1]
        if isinstance(item, tuple | frozenset) and item:
            self._reused += self._weights.get(id(item), len(item) + 1)
            if self._reused > _MAX_REUSE:
                raise CheckpointError(
                    "the pickle re-uses nested tuples so often that hashing them would take hours (a DAG of "
                    "tuples); a network checkpoint never does."
                )

    return get


def _weighed(load: Any) -> Any:
    """Wrap a tuple-building opcode: remember the new tuple's expanded size (what hashing it costs)."""

    def build(self: RestrictedUnpickler) -> None:
        load(self)
        self._weigh(self.stack[-1])

    return build


class RestrictedUnpickler(pickle._Unpickler):
    """An unpickler whose globals are inert stand-ins from an allow-list (see the module doc).

    Python's pure-Python unpickler (its opcodes can be replaced; the C one's cannot), with BUILD limited
    to fresh instances and re-used tuples charged against a budget.
    """

    dispatch = dict(pickle._Unpickler.dispatch)
    for _code in (pickle.BINGET, pickle.LONG_BINGET, pickle.GET):
        dispatch[_code[0]] = _reuse_charged(pickle._Unpickler.dispatch[_code[0]])
    for _code in (pickle.TUPLE, pickle.TUPLE1, pickle.TUPLE2, pickle.TUPLE3):
        dispatch[_code[0]] = _weighed(pickle._Unpickler.dispatch[_code[0]])
    del _code

    def __init__(self, file: Any) -> None:
        super().__init__(file)
        self._weights: dict[int, int] = {}  # id(tuple or frozenset) -> its size counted as a tree
        self._keep: list[Any] = []  # keeps weighed objects alive, so their ids are never reused
        self._reused = 0

    def _weigh(self, item: Any) -> None:
        self._weights[id(item)] = 1 + sum(
            self._weights.get(id(c), 1) if isinstance(c, tuple | frozenset) else 1 for c in item
        )
        self._keep.append(item)

    def _frozenset(self, items: Any = ()) -> frozenset:
        result = frozenset(items)
        self._weigh(result)
        return result

    def load_build(self) -> None:
        """BUILD, but only on an object made during this load: never on a class or function of ours."""
        inst = self.stack[-2] if len(self.stack) >= 2 else None
        if isinstance(inst, type) or callable(inst):
            raise UnsafeCheckpointError(
                f"the pickle sets attributes on `{getattr(inst, '__qualname__', type(inst).__name__)}` itself "
                "(a BUILD aimed at a class or function, which would change it for the rest of the process)."
            )
        pickle._Unpickler.load_build(self)

    dispatch[pickle.BUILD[0]] = load_build

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
        if (module, name) == ("builtins", "frozenset"):
            return self._frozenset
        if (module, name) in self.ALLOWED:
            return self.ALLOWED[(module, name)]
        raise UnsafeCheckpointError(
            f"refused the global `{str(module)[:100]}.{str(name)[:100]}`: a pickle of network weights never needs it. "
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
        raise UnsafeCheckpointError(
            f"refused the global `{str(module)[:100]}.{str(name)[:100]}` inside a pickled storage."
        )

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
            obj = RestrictedUnpickler(handle).load()
            check_tree(obj, repr(str(path)))
            return obj
        except CheckpointError:
            raise
        except RecursionError as exc:
            raise CheckpointError(f"{str(path)!r} nests its objects too deeply to be a network pickle.") from exc
        except Exception as exc:  # EOFError, UnpicklingError, TypeError from a bad REDUCE, MemoryError, ...
            raise CheckpointError(
                f"{str(path)!r} is not a readable network pickle ({type(exc).__name__}: {str(exc)[:200]})."
            ) from exc
