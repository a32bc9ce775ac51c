"""NVIDIA stylegan2-ada-pytorch network pickles: converted exactly, read without executing anything.

Pickles come from ``nvidia_pickles.py`` (NVIDIA's structure, no NVIDIA code); their ``module_src`` creates a
sentinel file if it is ever executed. The converted model is compared with ``nvidia_reference``, a direct
implementation of NVIDIA's math. Then every hostile or broken file we could think of must be refused with
a clear :class:`CheckpointError` (``UnsafeCheckpointError`` when it names a global), and nothing must run.
"""

from __future__ import annotations

import io
import os
import pickle
import re
import sys
import warnings
from pathlib import Path

import pytest
import torch
from nvidia_pickles import (
    CHANNELS,
    CLAMP,
    LR,
    W_DIM,
    Persistent,
    nvidia_generator,
    nvidia_reference,
    random_params,
    sentinel_source,
    write_snapshot,
)

import gan_rewrite as gr
from gan_rewrite.cli import main
from gan_rewrite.errors import CheckpointError, UnsafeCheckpointError
from gan_rewrite.hub.convert import convert_checkpoint


# ----- tests ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def snapshot(tmp_path_factory) -> tuple[Path, Path, dict[str, torch.Tensor]]:
    folder = tmp_path_factory.mktemp("nvidia")
    params = random_params()
    sentinel = folder / "EXECUTED"
    path = write_snapshot(folder / "network-snapshot-000100.pkl", nvidia_generator(params, sentinel_source(sentinel)))
    return path, sentinel, params


def test_converted_model_matches_nvidia_math(snapshot, tmp_path: Path) -> None:
    path, sentinel, params = snapshot
    assert main(["convert", str(path), str(tmp_path / "out"), "--format", "nvidia-pkl"]) == 0
    G = gr.load_generator(tmp_path / "out", device="cpu")
    assert (G.config.resolution, G.config.z_dim, G.config.n_mlp, G.config.lr_mlp) == (32, W_DIM, 2, LR)
    assert G.config.channels == {str(r): c for r, c in CHANNELS.items()}
    assert G.config.extra["provenance"]["nvidia"]["conv_clamp"] == CLAMP
    z = torch.randn(3, W_DIM, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        for psi in (1.0, 0.7):
            expected = nvidia_reference(params, z, psi)
            diff = (G(z, psi) - expected).abs().max().item()
            print(f"psi={psi}: max |ours - NVIDIA math| = {diff:.2e} (image range ±{expected.abs().max():.2f})")
            assert diff < 1e-4 and expected.std() > 0.1
    assert not sentinel.exists()


def test_nothing_from_the_pickle_is_imported_or_run(snapshot) -> None:
    path, sentinel, _ = snapshot
    convert_checkpoint(path, format="nvidia-pkl")
    assert not sentinel.exists()
    assert not {"torch_utils", "torch_utils.persistence", "dnnlib", "dnnlib.util"} & set(sys.modules)


class _System:
    """The classic pickle exploit: unpickling calls ``os.system(cmd)`` (pickled as ``posix.system``)."""

    def __init__(self, cmd: str) -> None:
        self.cmd = cmd

    def __reduce__(self):
        return os.system, (self.cmd,)


def _raw_call(module: str, name: str, arg: str) -> bytes:
    """Protocol-0 bytes for ``module.name(arg)``: no real object needed to write the exploit."""
    return f"c{module}\n{name}\n(V{arg}\ntR.".encode()


HOSTILE_GLOBALS = [
    ("os", "system"),
    ("posix", "system"),
    ("builtins", "exec"),
    ("builtins", "eval"),
    ("builtins", "__import__"),
    ("builtins", "getattr"),
    ("importlib", "import_module"),
    ("subprocess", "Popen"),
    ("subprocess", "check_output"),
    ("torch", "load"),
    ("pickle", "loads"),
    ("torch_utils.persistence", "persistent_class"),
    ("torch_utils.persistence", "_src_to_module"),
    ("training.networks", "Generator"),
    ("dnnlib.util", "call_func_by_name"),
    ("numpy", "load"),
    ("torch.storage", "TypedStorage"),
]


@pytest.mark.parametrize(("module", "name"), HOSTILE_GLOBALS, ids=[f"{m}.{n}" for m, n in HOSTILE_GLOBALS])
def test_hostile_globals_are_refused(tmp_path: Path, module: str, name: str) -> None:
    sentinel = tmp_path / "EXECUTED"
    cmd = f"touch {sentinel}"
    path = tmp_path / "evil.pkl"
    path.write_bytes(_raw_call(module, name, cmd))
    with pytest.raises(UnsafeCheckpointError, match=re.escape(f"`{module}.{name}`")):
        convert_checkpoint(path, format="nvidia-pkl")
    assert not sentinel.exists()


def _evil_storage(sentinel: Path) -> object:
    """A tensor storage whose inner legacy-format pickle calls ``os.system``."""
    blob = pickle.dumps(0x1950A86A20F9469CFC6C, 2) + pickle.dumps(1001, 2) + pickle.dumps({}, 2)
    blob += _raw_call("os", "system", f"touch {sentinel}")

    class Storage:
        def __reduce__(self):
            return torch.storage._load_from_bytes, (blob,)

    return Storage()


HIDDEN = ["top-level", "augment_pipe", "G_ema-state", "inside-a-storage"]


@pytest.mark.parametrize("where", HIDDEN)
def test_exploits_hidden_in_a_real_snapshot_are_refused(tmp_path: Path, where: str) -> None:
    sentinel = tmp_path / "EXECUTED"
    g = nvidia_generator(random_params(), sentinel_source(sentinel))
    system = _raw_call("os", "system", f"touch {sentinel}")
    evil = _evil_storage(sentinel) if where == "inside-a-storage" else _System(f"touch {sentinel}")
    if where == "G_ema-state":
        g.mapping.fc0.note = evil
    path = write_snapshot(tmp_path / "evil.pkl", g, **({"augment_pipe": evil} if where == "augment_pipe" else {}))
    if where == "top-level":
        path.write_bytes(system)
    if where == "inside-a-storage":
        path.write_bytes(pickle.dumps({"G_ema": {"w": evil}}, protocol=3))
    with pytest.raises(UnsafeCheckpointError, match="system"):
        convert_checkpoint(path, format="nvidia-pkl")
    assert not sentinel.exists()


def _snapshot_bytes(tmp_path: Path, **kwargs) -> bytes:
    return write_snapshot(tmp_path / "tmp.pkl", nvidia_generator(random_params(), "", **kwargs)).read_bytes()


def _without(key: str, shape_of: str | None = None):
    def make(tmp_path: Path) -> bytes:
        params = random_params()
        if shape_of:
            params[key] = params[key][..., :1]
        else:
            del params[key]
        return write_snapshot(tmp_path / "tmp.pkl", nvidia_generator(params, "")).read_bytes()

    return make


class _BadView:
    """Pickles as ``_rebuild_tensor_v2`` of a real 6-element storage with any size, stride and offset."""

    def __init__(self, size: tuple[int, ...], stride: tuple[int, ...], offset: int = 0) -> None:
        self.size, self.stride, self.offset = size, stride, offset

    def __reduce__(self):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "TypedStorage is deprecated"
            storage = torch.arange(6.0).storage()  # a TypedStorage: pickles through _load_from_bytes
        return torch._utils._rebuild_tensor_v2, (storage, self.offset, self.size, self.stride, False, {})


def _tensor_view(size: tuple[int, ...], stride: tuple[int, ...], offset: int = 0):
    """A snapshot whose ``b4.conv1.bias`` is a view outside (or around) its storage."""

    def make(tmp_path: Path) -> bytes:
        g = nvidia_generator(random_params(), "")
        g.synthesis.b4.conv1._parameters["bias"] = _BadView(size, stride, offset)
        return write_snapshot(tmp_path / "t.pkl", g).read_bytes()

    return make


def _stylegan3(tmp_path: Path) -> bytes:
    extra = {"input": Persistent("SynthesisInput", "")}
    return write_snapshot(tmp_path / "t.pkl", nvidia_generator(random_params(), "", extra=extra)).read_bytes()


BROKEN = {  # name: (bytes of the file, expected message)
    "zero-bytes": (lambda d: b"", "empty"),
    "png-renamed": (lambda d: b"\x89PNG\r\n\x1a\n" + b"\0" * 64, "PNG image"),
    "junk": (lambda d: b"this is not a pickle at all", "not a readable network pickle"),
    "truncated": (lambda d: _snapshot_bytes(d)[:5000], "not a readable network pickle"),
    "truncated-storage": (lambda d: _snapshot_bytes(d)[:-300], "not a readable network pickle|truncated"),
    "torch-save-zip": (
        lambda d: (torch.save({"a": torch.ones(1)}, d / "z.pt"), (d / "z.pt").read_bytes())[1],
        "torch.save` zip",
    ),
    "no-G_ema": (lambda d: pickle.dumps({"G": None, "D": None}), "with `G_ema`; found \\['D', 'G'\\]"),
    "a-list": (lambda d: pickle.dumps([1, 2, 3]), "with `G_ema`; found list"),
    "G_ema-not-persistent": (lambda d: pickle.dumps({"G_ema": {"w": 1}}), "persistent `Generator`, got dict"),
    "resnet": (lambda d: _snapshot_bytes(d, architecture="resnet"), "architecture 'resnet'"),
    "orig": (lambda d: _snapshot_bytes(d, architecture="orig"), "architecture 'orig'"),
    "conditional": (lambda d: _snapshot_bytes(d, c_dim=4), "conditional"),
    "stylegan3": (_stylegan3, "StyleGAN3"),
    "missing-tensor": (_without("synthesis.b16.conv0.weight"), "has no `synthesis.b16.conv0.weight`"),
    "wrong-shape": (_without("synthesis.b8.conv1.bias", shape_of="x"), "should be \\(16,\\), got \\(1,\\)"),
    "view-out-of-bounds": (_tensor_view((16,), (1,)), "runs past the end of its storage"),
    "view-huge-stride": (_tensor_view((16,), (2**40,)), "runs past the end of its storage"),
    "view-negative-stride": (_tensor_view((3,), (-1,), 5), "malformed tensor"),
    "view-float-size": (_tensor_view((16.0,), (1,)), "integer size and stride"),
    "outer-persistent-id": (lambda d: b"\x80\x02X\x01\x00\x00\x00xQ.", "unexpected persistent id"),
    "build-on-tensor": (lambda d: pickle.dumps(torch.ones(2), 3)[:-1] + b"}b.", "sets state on a tensor"),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_broken_files_are_refused_clearly(tmp_path: Path, case: str) -> None:
    make, message = BROKEN[case]
    path = tmp_path / "network.pkl"
    path.write_bytes(make(tmp_path))
    with pytest.raises(CheckpointError, match=message):
        convert_checkpoint(path, format="nvidia-pkl")


def _legacy_storage_pickles(values: torch.Tensor) -> list[bytes]:
    """The separate pickles (and the raw data) of torch's legacy storage blob for ``values``, as a real
    tensor storage pickles itself: magic, protocol, sys_info, storage, keys, then count + bytes."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "TypedStorage is deprecated"
        _, (blob,) = values.storage().__reduce__()

    class Splitter(pickle.Unpickler):  # our own bytes, written just above: safe to read with pickle
        def persistent_load(self, pid):
            return pid

    stream, parts, start = io.BytesIO(blob), [], 0
    for _ in range(5):
        Splitter(stream).load()
        parts.append(blob[start : stream.tell()])
        start = stream.tell()
    return [*parts, blob[start:]]


class _Storage:
    """Pickles as ``torch.storage._load_from_bytes(blob)``, like a real tensor storage."""

    def __init__(self, blob: bytes) -> None:
        self.blob = blob

    def __reduce__(self):
        return torch.storage._load_from_bytes, (self.blob,)


class _TensorOn:
    """Pickles as a 1-d float tensor view of ``storage`` (``_rebuild_tensor_v2``), like a real parameter."""

    def __init__(self, storage: _Storage, size: int) -> None:
        self.storage, self.size = storage, size

    def __reduce__(self):
        return torch._utils._rebuild_tensor_v2, (self.storage, 0, (self.size,), (1,), False, {})


# Globals the OUTER unpickler allows (or that build tensors), placed inside a storage's own pickles, where
# only storage classes belong: (which of the five pickles is replaced, module, name).
INSIDE_A_STORAGE = [
    (2, "collections", "OrderedDict"),  # sys_info
    (3, "torch.storage", "_load_from_bytes"),  # a storage inside a storage
    (3, "torch", "Tensor"),
    (4, "torch._utils", "_rebuild_tensor_v2"),  # the list of keys
    (0, "torch_utils.persistence", "_reconstruct_persistent_obj"),  # the magic number
]


@pytest.mark.parametrize(
    ("part", "module", "name"), INSIDE_A_STORAGE, ids=[f"{p}-{m}.{n}" for p, m, n in INSIDE_A_STORAGE]
)
def test_a_parameter_storage_allows_only_storage_classes(tmp_path: Path, part: int, module: str, name: str) -> None:
    """A second angle on the storage unpickler: a real parameter of a real snapshot whose storage pickles
    name a global that is harmless *outside* a storage. The storage's own allow-list refuses it."""
    bias = torch.linspace(-1, 1, CHANNELS[4])
    pieces = _legacy_storage_pickles(bias)

    def snapshot_with(blob: bytes) -> Path:
        g = nvidia_generator(random_params(), "")
        g.synthesis.b4.conv1._parameters["bias"] = _TensorOn(_Storage(blob), bias.numel())
        return write_snapshot(tmp_path / "network.pkl", g)

    # Control: the blob, re-assembled untouched, converts, and the parameter has its values.
    G = convert_checkpoint(snapshot_with(b"".join(pieces)), format="nvidia-pkl")
    assert torch.equal(G.state_dict()["conv1.activate.bias"], bias)
    pieces[part] = _raw_call(module, name, "x")
    with pytest.raises(UnsafeCheckpointError, match=re.escape(f"`{module}.{name}` inside a pickled storage")):
        convert_checkpoint(snapshot_with(b"".join(pieces)), format="nvidia-pkl")
