"""Atomic writes everywhere: a write that fails half-way leaves the previous file whole and no temporary behind.

Each writer (model folders, statistics and their cache, rules, the converted-model cache, the CLI's grids and
``apply`` folders) is made to fail in two ways: the serialiser writes half a file then raises, or the final
rename raises. Afterwards the old bytes must be intact and the folder must hold no ``.*.tmp`` leftovers.
"""

from __future__ import annotations

import ast
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import safetensors.torch
import torch
from PIL import Image

import gan_rewrite
from gan_rewrite import atomic
from gan_rewrite.cli import main
from gan_rewrite.hashing import tensor_sha256
from gan_rewrite.hub.convert import ensure_known_model
from gan_rewrite.hub.known import KnownModel
from gan_rewrite.hub.loading import load_folder
from gan_rewrite.models import DCGANConfig, DCGANGenerator
from gan_rewrite.rewrite.delta import LayerDelta, RuleDelta
from gan_rewrite.rewrite.stats import KeyStats, cache_path, compute_stats, model_sha256


class Crash(RuntimeError):
    """The injected failure."""


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` (relative path → bytes)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def leftovers(folder: Path) -> list[str]:
    """Temporary files or staging folders that an interrupted write left behind."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob(".*"))


@pytest.fixture
def half_written_safetensors(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """``safetensors.torch.save_file`` writes half its bytes, then the process "crashes"."""
    real = safetensors.torch.save_file

    def save_half(tensors, filename, metadata=None):
        real(tensors, filename, metadata=metadata)
        data = Path(filename).read_bytes()
        Path(filename).write_bytes(data[: len(data) // 2])
        raise Crash("disk full half-way")

    monkeypatch.setattr(safetensors.torch, "save_file", save_half)
    yield


@pytest.fixture
def failing_rename(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The final ``os.replace`` (or folder swap) of every atomic write fails (e.g. on a read-only mount)."""

    def refuse(src, dst):
        raise Crash(f"cannot rename {src} over {dst}")

    monkeypatch.setattr(atomic.os, "replace", refuse)
    monkeypatch.setattr(atomic, "_swap_in", refuse)  # the swap of a whole model folder
    yield


FAILURES = ["half_written_safetensors", "failing_rename"]


@pytest.fixture(params=FAILURES)
def failure(request: pytest.FixtureRequest) -> str:
    return request.param


def inject(request: pytest.FixtureRequest, failure: str) -> None:
    request.getfixturevalue(failure)


def tiny(ngf: int = 8, seed: int = 0) -> DCGANGenerator:
    torch.manual_seed(seed)
    return DCGANGenerator(DCGANConfig(resolution=16, ngf=ngf, z_dim=8)).eval()


# ----- models -----------------------------------------------------------------------------------------------
def test_save_pretrained_is_all_or_nothing(tmp_path: Path, request, failure: str) -> None:
    folder = tiny(seed=0).save_pretrained(tmp_path / "model")
    before = snapshot(folder)
    inject(request, failure)
    with pytest.raises(Crash):
        tiny(ngf=4, seed=1).save_pretrained(folder)  # a different model: config and weights would both change
    assert snapshot(folder) == before
    assert leftovers(folder) == []
    load_folder(folder)


def test_save_pretrained_renames_only_after_every_file_is_written(tmp_path: Path, monkeypatch) -> None:
    """A failure while writing the card must not leave new weights beside an old config."""
    folder = tiny(seed=0).save_pretrained(tmp_path / "model")
    before = snapshot(folder)

    def broken_card(*args, **kwargs):
        raise Crash("card template broke")

    monkeypatch.setattr("gan_rewrite.hub.cards.model_card", broken_card)
    with pytest.raises(Crash):
        tiny(ngf=4, seed=1).save_pretrained(folder)
    assert snapshot(folder) == before and leftovers(folder) == []


def test_new_folder_gets_no_partial_model(tmp_path: Path, half_written_safetensors: None) -> None:
    with pytest.raises(Crash):
        tiny().save_pretrained(tmp_path / "fresh")
    assert snapshot(tmp_path / "fresh") == {}
    assert leftovers(tmp_path / "fresh") == []


# ----- statistics and their cache ----------------------------------------------------------------------------
def make_stats(dim: int = 8, seed: int = 0) -> KeyStats:
    g = torch.Generator().manual_seed(seed)
    keys = torch.randn(32, dim, generator=g, dtype=torch.float64)
    return KeyStats(keys.T @ keys / 32, keys.mean(0), 32, "layer2", "a" * 64, 4, None, seed)


def test_stats_save_keeps_the_old_file(tmp_path: Path, request, failure: str) -> None:
    path = make_stats(seed=0).save(tmp_path / "stats.safetensors")
    before = path.read_bytes()
    inject(request, failure)
    with pytest.raises(Crash):
        make_stats(seed=1).save(path)
    assert path.read_bytes() == before and leftovers(tmp_path) == []
    assert KeyStats.load(path).seed == 0


def test_stats_cache_is_never_half_written(tmp_path: Path, request, failure: str) -> None:
    G = tiny()
    cache = tmp_path / "cache"
    inject(request, failure)
    with pytest.raises(Crash):
        compute_stats(G, "layer2", n=4, cache_dir=cache, progress=False)
    entry = cache_path(cache, model_sha256(G), "layer2", 4, None, 0)
    assert not entry.exists() and leftovers(cache) == []


def test_stats_cache_survives_a_failed_rewrite(tmp_path: Path, monkeypatch) -> None:
    """A good cache entry stays readable when a later save over it fails; the next call reads it."""
    G = tiny()
    cache = tmp_path / "cache"
    first = compute_stats(G, "layer2", n=4, cache_dir=cache, progress=False)
    entry = cache_path(cache, model_sha256(G), "layer2", 4, None, 0)
    before = entry.read_bytes()
    monkeypatch.setattr(atomic.os, "replace", lambda src, dst: (_ for _ in ()).throw(Crash("rename")))
    with pytest.raises(Crash):
        first.save(entry)
    monkeypatch.undo()
    assert entry.read_bytes() == before and leftovers(cache) == []
    again = compute_stats(G, "layer2", n=4, cache_dir=cache, progress=False)
    assert torch.equal(again.second_moment, first.second_moment)


# ----- rules --------------------------------------------------------------------------------------------------
def make_rule(G: DCGANGenerator, seed: int) -> RuleDelta:
    g = torch.Generator().manual_seed(seed)
    direction, _ = torch.linalg.qr(torch.randn(16, 1, generator=g))
    lam = torch.randn(8, 1, 4, 4, generator=g) * 0.1
    digest = tensor_sha256(G.layer_module("layer2").weight)
    return RuleDelta(layers={"layer2": LayerDelta(direction, lam, "conv_transpose2d", digest)}, base_model="tiny")


def test_rule_save_keeps_the_old_file(tmp_path: Path, request, failure: str) -> None:
    G = tiny()
    path = make_rule(G, 0).save(tmp_path / "rule.safetensors")
    before = path.read_bytes()
    inject(request, failure)
    with pytest.raises(Crash):
        make_rule(G, 1).save(path)
    assert path.read_bytes() == before and leftovers(tmp_path) == []
    RuleDelta.load(path)


# ----- the converted-model cache ------------------------------------------------------------------------------
@pytest.fixture
def known_tiny(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> KnownModel:
    """A known model whose "source" is a tiny DCGAN checkpoint, cached under a fresh home."""
    monkeypatch.setenv("GAN_REWRITE_HOME", str(tmp_path / "home"))
    checkpoint = tmp_path / "tiny.pt"
    torch.save({"netG_state_dict": tiny().state_dict()}, checkpoint)
    monkeypatch.setattr("gan_rewrite.hub.convert._known_source_file", lambda model, token=None: checkpoint)
    source = {"kind": "package", "package": "tiny", "file": "tiny.pt"}
    return KnownModel(
        name="tiny-known",
        architecture="dcgan",
        format="dcgan",
        resolution=16,
        source=source,
        license="mit",
        default_layer="layer2",
    )


@pytest.mark.parametrize("where", ["weights", "rename"])
def test_known_model_conversion_is_staged(known_tiny: KnownModel, tmp_path: Path, monkeypatch, where: str) -> None:
    models = tmp_path / "home" / "models"
    with monkeypatch.context() as patch:
        if where == "weights":
            request_half = safetensors.torch.save_file

            def save_half(tensors, filename, metadata=None):
                request_half(tensors, filename, metadata=metadata)
                Path(filename).write_bytes(Path(filename).read_bytes()[:100])
                raise Crash("killed while writing")

            patch.setattr(safetensors.torch, "save_file", save_half)
        else:
            real_rename = Path.rename

            def refuse_folder(self, target):
                if Path(target).name == "tiny-known":
                    raise Crash("rename into the cache failed")
                return real_rename(self, target)

            patch.setattr(Path, "rename", refuse_folder)
        with pytest.raises(Crash):
            ensure_known_model(known_tiny)
    assert not (models / "tiny-known").exists()
    assert leftovers(models) == []
    folder = ensure_known_model(known_tiny)  # the next use converts cleanly
    assert load_folder(folder).config.default_layer == "layer2"


def test_known_model_cache_is_reused_not_rewritten(known_tiny: KnownModel) -> None:
    folder = ensure_known_model(known_tiny)
    stamp = (folder / "model.safetensors").stat().st_mtime_ns
    assert ensure_known_model(known_tiny) == folder
    assert (folder / "model.safetensors").stat().st_mtime_ns == stamp


# ----- CLI outputs ---------------------------------------------------------------------------------------------
@pytest.fixture
def model_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("GAN_REWRITE_HOME", str(tmp_path / "home"))
    return tiny().save_pretrained(tmp_path / "tiny")


def test_cli_grid_keeps_the_old_picture(model_folder: Path, tmp_path: Path, monkeypatch) -> None:
    out = tmp_path / "grids"
    out.mkdir()
    grid = out / "grid.png"
    assert main(["sample", str(model_folder), "--seeds", "0-1", "--out", str(grid), "--device", "cpu"]) == 0
    before = grid.read_bytes()
    real_save = Image.Image.save

    def save_half(self, fp, format=None, **params):
        real_save(self, fp, format=format, **params)
        Path(fp).write_bytes(Path(fp).read_bytes()[:50])
        raise Crash("killed while encoding")

    monkeypatch.setattr(Image.Image, "save", save_half)
    with pytest.raises(Crash):
        main(["sample", str(model_folder), "--seeds", "2-5", "--out", str(grid), "--device", "cpu"])
    assert grid.read_bytes() == before and leftovers(out) == []


def test_cli_apply_keeps_the_old_folder(model_folder: Path, tmp_path: Path, request, failure: str) -> None:
    rule = make_rule(load_folder(model_folder), 0).save(tmp_path / "rule.safetensors")
    out = tmp_path / "applied"
    assert main(["apply", str(model_folder), str(rule), "--out", str(out), "--device", "cpu"]) == 0
    before = snapshot(out)
    inject(request, failure)
    with pytest.raises(Crash):
        main(["apply", str(model_folder), f"{rule}:0.5", "--out", str(out), "--device", "cpu"])
    assert snapshot(out) == before and leftovers(out) == []


def test_cli_rule_and_stats_outputs_keep_the_old_file(model_folder: Path, tmp_path: Path, request, failure) -> None:
    stats_out = tmp_path / "stats.safetensors"
    argv = ["stats", str(model_folder), "--layer", "layer2", "-n", "4", "--no-cache", "--device", "cpu"]
    assert main([*argv, "--out", str(stats_out)]) == 0
    before = stats_out.read_bytes()
    inject(request, failure)
    with pytest.raises(Crash):
        main([*argv, "--out", str(stats_out), "--seed", "3"])
    assert stats_out.read_bytes() == before and leftovers(tmp_path) == []


# ----- and nothing in the library writes any other way ----------------------------------------------------------
WRITERS = {
    "write_text",
    "write_bytes",
    "save_file",
    "torch.save",
    "open",
    "rename",
    "os.replace",
    "os.rename",
    "shutil.move",
    "shutil.copy",
    "shutil.copyfile",
    "shutil.copy2",
    "save",
}
ALLOWED = {  # (file, call): why it is fine
    ("atomic.py", "write_text"): "the temporary file of write_text_atomic",
    ("atomic.py", "os.replace"): "the atomic rename itself",
    ("atomic.py", "write_bytes"): "the temporary file of write_bytes_atomic",
    ("hub/mixin.py", "save_file"): "inside atomic_path",
    ("hub/mixin.py", "write_text"): "inside atomic_path (config.json, README.md)",
    ("atomic.py", "rename"): "the staging folder swapped in for the model folder (write_folder_atomic)",
    ("atomic.py", "shutil.copy2"): "copying a model folder's other files into its staging folder",
    ("hub/convert.py", "open"): "reading",
    ("hub/safe_pickle.py", "open"): "reading",
    ("hub/nvidia.py", "open"): "reading",
    ("hashing.py", "open"): "reading",
    ("hub/sniff.py", "open"): "reading the first bytes",
    ("space.py", "open"): "reading an uploaded picture's header",
    ("imaging.py", "save"): "inside atomic_path",
    ("rewrite/delta.py", "save_file"): "inside atomic_path",
    ("rewrite/stats.py", "save_file"): "inside atomic_path",
    ("rewrite/stats.py", "save"): "KeyStats.save (atomic)",
    ("hub/stats.py", "save"): "KeyStats.save into a private temporary folder for upload",
    ("hub/rules.py", "save"): "RuleDelta.save / preview PNG into a private temporary folder for upload",
    ("hub/rules.py", "write_text"): "rule.json / README.md into a private temporary folder for upload",
    ("cli.py", "save"): "KeyStats.save / RuleDelta.save (atomic)",
    ("space.py", "save"): "RuleDelta.save (atomic) into a private temporary folder (the rules kept in the browser)",
    ("toyworld/segment.py", "save_file"): "inside atomic_path",
    ("toyworld/train.py", "save_file"): "inside atomic_path (G, G_ema, D)",
    ("toyworld/train.py", "torch.save"): "inside atomic_path (optimizers.pt: tensors only, read with weights_only)",
    ("toyworld/train.py", "save"): "Trainer.save (atomic files)",
    ("dissect/cli.py", "save"): "RuleDelta.save (atomic)",
    ("dissect/quantiles.py", "save_file"): "inside atomic_path",
    ("dissect/quantiles.py", "save"): "UnitQuantiles.save (atomic)",
    ("dissect/report.py", "write_text"): "inside atomic_path (index.html, dissection.json)",
}


def test_every_write_in_the_library_is_atomic_or_private() -> None:
    """A new writer must go through gan_rewrite.atomic (or be listed above with the reason it is safe)."""
    root = Path(gan_rewrite.__file__).parent
    found = set()
    for path in root.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call):
                func = node.func
                name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
                module = func.value.id if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) else ""
                if module in {"torch", "os", "shutil"}:
                    name = f"{module}.{name}"
                if name in WRITERS:
                    found.add((str(path.relative_to(root)).replace(os.sep, "/"), name))
    unexplained = sorted(found - set(ALLOWED))
    assert unexplained == [], f"writes that bypass gan_rewrite.atomic: {unexplained}"
