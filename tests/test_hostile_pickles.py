"""Tiny checkpoints that used to hang, recurse, blow up messages or memory, or change a library class.

Every case must be refused quickly with a short :class:`CheckpointError`, through ``convert`` and the CLI.
"""

from __future__ import annotations

import pickle
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
import torch
from nvidia_pickles import Persistent, nvidia_generator, random_params, write_snapshot
from stylegan2_weights import rosinality_random_state_dict

from gan_rewrite.cli import main
from gan_rewrite.errors import CheckpointError, UnsafeCheckpointError
from gan_rewrite.hub import safe_pickle
from gan_rewrite.hub.convert import convert_checkpoint

GLOBAL_RECON = b"ctorch_utils.persistence\n_reconstruct_persistent_obj\n"


def _u(text: str) -> bytes:
    data = text.encode()
    return b"X" + len(data).to_bytes(4, "little") + data


def _self_holding_g_ema() -> bytes:
    """190 bytes: ``G_ema`` is a persistent Generator whose ``_modules`` holds G_ema itself."""
    return (
        b"\x80\x02}" + _u("G_ema") + GLOBAL_RECON + b"}(" + _u("type") + _u("class") + _u("class_name")
        + _u("Generator") + _u("state") + b"}" + _u("_modules") + b"}q\x01su\x85Rq\x02"  # modules dict is memo 1
        + b"h\x01" + _u("synthesis") + b"h\x02s0" + b"s."  # modules["synthesis"] = G_ema; top["G_ema"] = G_ema
    )


def _list_dag(levels: int = 40) -> object:
    node: list = []
    for _ in range(levels):
        node = [node, node]
    return node


def _nested(depth: int = 900) -> list:
    node: list = []
    for _ in range(depth):
        node = [node]
    return node


def _tuple_key_dag(levels: int = 40) -> bytes:
    """A dict whose key is a tuple of tuples shared 40 levels deep: hashing it takes 2**40 steps."""
    node: tuple = ()
    for _ in range(levels):
        node = (node, node)
    body = pickle.dumps(node, protocol=2)[2:-1]
    return b"\x80\x02}" + body + b"K\x01s."


def _shared_modules(tmp_path: Path) -> bytes:
    g = nvidia_generator(random_params(), "")
    child = Persistent("Extra", "")
    for _ in range(40):
        parent = Persistent("Extra", "")
        parent.add_module("a", child)
        parent._modules["b"] = child
        child = parent
    g._modules["extra"] = child
    return write_snapshot(tmp_path / "t.pkl", g).read_bytes()


def _nvidia_cases(tmp_path: Path) -> dict[str, bytes]:
    return {
        "self-holding-g-ema": _self_holding_g_ema(),
        "list-dag": pickle.dumps({"G_ema": _list_dag()}, protocol=3),
        "tuple-key-dag": _tuple_key_dag(),
        "modules-holding-next-twice": _shared_modules(tmp_path),
        "deep-nesting": b"\x80\x02}" + _u("G_ema") + b"]" * 900 + b"a" * 899 + b"s.",  # 900 nested lists
    }


@pytest.mark.parametrize("case", ["self-holding-g-ema", "list-dag", "tuple-key-dag", "modules-holding-next-twice",
                                  "deep-nesting"])
def test_tiny_nvidia_pickles_are_refused_fast_and_briefly(tmp_path: Path, case: str, capsys) -> None:
    path = tmp_path / "network.pkl"
    path.write_bytes(_nvidia_cases(tmp_path)[case])
    start = time.perf_counter()
    with pytest.raises(CheckpointError) as info:
        convert_checkpoint(path, format="nvidia-pkl")
    assert time.perf_counter() - start < 20
    assert len(str(info.value)) < 600
    assert main(["convert", str(path), str(tmp_path / "out"), "--format", "nvidia-pkl"]) == 2
    assert len(capsys.readouterr().err) < 800 and not (tmp_path / "out").exists()


@pytest.mark.parametrize("what", ["list-dag", "deep-nesting"])
def test_tiny_torch_zips_are_refused_fast(tmp_path: Path, what: str) -> None:
    path = tmp_path / "ckpt.pt"
    bomb = _list_dag() if what == "list-dag" else _nested(100)
    torch.save({"g_ema": {"style.1.weight": torch.zeros(1)}, "latent_avg": torch.zeros(1), "x": bomb}, path)
    start = time.perf_counter()
    with pytest.raises(CheckpointError) as info:
        convert_checkpoint(path, format="rosinality")
    assert time.perf_counter() - start < 20 and len(str(info.value)) < 600


def test_state_dict_with_dag_keys_gives_a_short_message(tmp_path: Path) -> None:
    path = tmp_path / "ckpt.pt"
    key: tuple = (0,)
    for _ in range(12):  # small enough to pass the tree limit; its repr is still 4096 tuples long
        key = (key, key)
    torch.save({key: torch.zeros(1)}, path)
    with pytest.raises(CheckpointError) as info:
        convert_checkpoint(path, format="dcgan")
    assert len(str(info.value)) < 600


@pytest.mark.parametrize(
    ("target", "attribute"),
    [(b"cdnnlib.util\nEasyDict\n", "__setitem__"), (b"ctorch._utils\n_rebuild_tensor_v2\n", "__defaults__")],
)
def test_build_on_a_library_class_changes_nothing(tmp_path: Path, target: bytes, attribute: str) -> None:
    """BUILD aimed at an allow-listed class or function itself: refused, and later loads are unaffected."""
    value = b"cbuiltins\nset\n" if attribute == "__setitem__" else b"(K\x01t"
    hostile = b"\x80\x02" + target + b"N}" + _u(attribute) + value + b"s\x86b."
    path = tmp_path / "hostile.pkl"
    path.write_bytes(hostile)
    originals = (dict(vars(safe_pickle.EasyDictStandIn)), safe_pickle._rebuild_tensor_v2.__defaults__)
    try:
        with pytest.raises(UnsafeCheckpointError, match="sets attributes"):
            convert_checkpoint(path, format="nvidia-pkl")
        assert dict(vars(safe_pickle.EasyDictStandIn)) == originals[0]
        assert safe_pickle._rebuild_tensor_v2.__defaults__ == originals[1]
        good = write_snapshot(tmp_path / "good.pkl", nvidia_generator(random_params(), ""))
        assert convert_checkpoint(good, format="nvidia-pkl").resolution == 32
    finally:  # never leave a poisoned class behind for other tests, whatever happened
        for key in set(vars(safe_pickle.EasyDictStandIn)) - set(originals[0]):
            delattr(safe_pickle.EasyDictStandIn, key)
        safe_pickle._rebuild_tensor_v2.__defaults__ = originals[1]


def test_int_and_bool_storages_are_not_weights(tmp_path: Path) -> None:
    for dtype in (torch.int32, torch.bool):
        params = random_params()
        params["synthesis.b4.conv1.bias"] = params["synthesis.b4.conv1.bias"].to(dtype)
        path = write_snapshot(tmp_path / "t.pkl", nvidia_generator(params, ""))
        with pytest.raises(CheckpointError, match="not as floating-point"):
            convert_checkpoint(path, format="nvidia-pkl")


def test_zero_stride_views_are_refused(tmp_path: Path) -> None:
    """A view with more elements than its storage (overlapping strides) could allocate gigabytes."""
    params = random_params()
    g = nvidia_generator(params, "")
    huge = torch.zeros(1).expand(1 << 20, 1 << 12)  # 16 GiB as a float tensor, 4 bytes as stored
    g.synthesis.b4.conv1._parameters["unknown"] = torch.nn.Parameter(huge, requires_grad=False)
    path = write_snapshot(tmp_path / "t.pkl", g)
    with pytest.raises(CheckpointError, match="more elements than its storage"):
        convert_checkpoint(path, format="nvidia-pkl")


@pytest.mark.parametrize("fmt", ["nvidia-pkl", "rosinality"])
@pytest.mark.parametrize("bad", ["nan", "1e39", "shape"])
def test_broken_average_latents_are_refused(tmp_path: Path, fmt: str, bad: str) -> None:
    if fmt == "nvidia-pkl":
        params = random_params()
        w_avg = params["mapping.w_avg"]
        params["mapping.w_avg"] = {"nan": w_avg.clone().fill_(float("nan")), "1e39": w_avg.double().fill_(1e39),
                                   "shape": w_avg[:3]}[bad]
        path = write_snapshot(tmp_path / "t.pkl", nvidia_generator(params, ""))
    else:
        state = rosinality_random_state_dict(32, 1, style_dim=16, n_mlp=2)
        latent = {"nan": torch.full((16,), float("nan")), "1e39": torch.full((16,), 1e39, dtype=torch.float64),
                  "shape": torch.zeros(3)}[bad]
        path = tmp_path / "t.pt"
        torch.save({"g_ema": state, "latent_avg": latent}, path)
    with pytest.raises(CheckpointError, match="NaN or infinite|should be|shape"):
        convert_checkpoint(path, format=fmt)


def test_deflate_bomb_in_a_torch_zip_is_refused(tmp_path: Path) -> None:
    """A record of 200 MB of zeros compresses to ~200 KB; torch would allocate and inflate all of it."""
    good = tmp_path / "good.pt"
    torch.save({"w": torch.zeros(4)}, good)
    bomb = tmp_path / "bomb.pt"
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(bomb, "w") as dst:
        for info in src.infolist():
            dst.writestr(info, src.read(info))
        record = zipfile.ZipInfo("good/data/99")
        record.compress_type = zipfile.ZIP_DEFLATED
        with dst.open(record, "w", force_zip64=True) as handle:
            block = bytes(1 << 20)
            for _ in range(200):
                handle.write(block)
    assert bomb.stat().st_size < 2 << 20
    with pytest.raises(CheckpointError, match="inflates to"):
        convert_checkpoint(bomb, format="dcgan")


class _SharedView:
    """Pickles as a view of one storage object that every instance shares (the file holds it once)."""

    storage = None

    def __init__(self, offset: int, numel: int) -> None:
        self.offset, self.numel = offset, numel

    def __reduce__(self):
        return torch._utils._rebuild_tensor_v2, (self.storage, self.offset, (self.numel,), (1,), False, {})


def test_views_of_one_storage_share_it(tmp_path: Path) -> None:
    """60 views of one 16 MB storage: converting must not copy the storage once per view (was 60 × 16 MB)."""
    import warnings

    g = nvidia_generator(random_params(), "")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "TypedStorage is deprecated"
        _SharedView.storage = torch.zeros(1 << 22).storage()
    for i in range(60):
        g.synthesis.b4.conv1._buffers[f"view{i}"] = _SharedView(i, 1 << 21)
    path = write_snapshot(tmp_path / "views.pkl", g)
    assert path.stat().st_size < 40 << 20  # the storage is in the file once
    script = (  # VmHWM: this process's peak resident memory (ru_maxrss would include the parent's, via fork)
        "import re, sys; from gan_rewrite.hub.convert import convert_checkpoint\n"
        "from gan_rewrite.errors import CheckpointError\n"
        "peak = lambda: int(re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1))\n"
        "before = peak()\n"
        "try:\n    convert_checkpoint(sys.argv[1], format='nvidia-pkl')\nexcept CheckpointError as e:\n"
        "    assert 'does not know' in str(e), e\n"
        "print((peak() - before) // 1024)\n"
    )
    out = subprocess.run([sys.executable, "-c", script, str(path)], capture_output=True, text=True, check=True)
    grown_mib = int(out.stdout.split()[-1])
    assert grown_mib < 300, f"peak memory grew by {grown_mib} MiB"
