"""Legacy checkpoints → model folders, and every way a bad file is refused with a clear message."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import pytest
import torch

import gan_rewrite as gr
from gan_rewrite.cli import main
from gan_rewrite.errors import CheckpointError, ConfigError, ModelNotFoundError, UnsafeCheckpointError
from gan_rewrite.hub.convert import convert_checkpoint, read_checkpoint
from gan_rewrite.models import DCGANGenerator


def _same_samples(a: gr.GANGenerator, b: gr.GANGenerator, seeds: list[int]) -> None:
    torch.testing.assert_close(a.sample(seeds), b.sample(seeds), rtol=0, atol=0)


@pytest.mark.parametrize("wrapped", [True, False], ids=["netG_state_dict", "bare"])
def test_dcgan_checkpoint_converts_and_samples_identically(tiny_dcgan, tmp_path: Path, wrapped: bool) -> None:
    state = tiny_dcgan.state_dict()
    source = tmp_path / "weights.tar"
    torch.save({"netG_state_dict": state, "epoch": 3} if wrapped else state, source)
    assert main(["convert", str(source), str(tmp_path / "out"), "--format", "dcgan"]) == 0
    loaded = gr.load_generator(tmp_path / "out", device="cpu")
    assert isinstance(loaded, DCGANGenerator)
    _same_samples(loaded, tiny_dcgan, [0, 5, 9])
    card = (tmp_path / "out" / "README.md").read_text()
    assert "library_name: gan-rewrite" in card and "source_sha256" in card


def test_embedded_default_is_converted_once_with_provenance(dcgan_faces) -> None:
    folder = Path(os.environ["GAN_REWRITE_HOME"]) / "models" / "dcgan-faces-64"
    config = json.loads((folder / "config.json").read_text())
    assert config["extra"]["license"] == "mit"
    assert "gan-face-generate" in config["extra"]["provenance"]["source"]
    before = (folder / "model.safetensors").stat().st_mtime_ns
    again = gr.load_generator("dcgan-faces-64", device="cpu")
    assert (folder / "model.safetensors").stat().st_mtime_ns == before  # served from the cache
    _same_samples(again, dcgan_faces, [0, 1])


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


@pytest.mark.parametrize(
    ("make", "error", "message"),
    [
        (lambda d: d / "missing.pt", ModelNotFoundError, "does not exist"),
        (lambda d: _write(d / "empty.pt", b""), CheckpointError, "empty"),
        (lambda d: _write(d / "face.png", b"\x89PNG\r\n\x1a\n" + b"\0" * 64), CheckpointError, "PNG image"),
        (lambda d: _write(d / "junk.pt", b"this is not a checkpoint at all"), CheckpointError, "not a readable"),
        (lambda d: _write(d / "cut.pt", b"PK\x03\x04" + b"\0" * 40), CheckpointError, "truncated or corrupt"),
    ],
    ids=["missing", "empty", "png", "junk", "truncated-zip"],
)
def test_unreadable_files_are_refused(tmp_path: Path, make, error, message) -> None:
    with pytest.raises(error, match=message):
        read_checkpoint(make(tmp_path))


def test_truncated_real_checkpoint_is_refused(tiny_dcgan, tmp_path: Path) -> None:
    whole = tmp_path / "whole.pt"
    torch.save(tiny_dcgan.state_dict(), whole)
    cut = _write(tmp_path / "cut.pt", whole.read_bytes()[: whole.stat().st_size // 2])
    with pytest.raises(CheckpointError):
        read_checkpoint(cut)


class _RunsShell:
    def __init__(self, sentinel: Path) -> None:
        self.sentinel = sentinel

    def __reduce__(self):
        return (os.system, (f"touch {self.sentinel}",))


class _RunsExec:
    def __init__(self, sentinel: Path) -> None:
        self.sentinel = sentinel

    def __reduce__(self):
        return (exec, (f"open({str(self.sentinel)!r}, 'w').close()",))


class _ImportsModule:
    def __reduce__(self):
        return (__import__, ("antigravity",))


@pytest.mark.parametrize("payload", [_RunsShell, _RunsExec, _ImportsModule], ids=["os.system", "exec", "import"])
@pytest.mark.parametrize("container", ["pkl", "pt", "weights.tar"])
def test_malicious_pickles_are_refused_and_never_run(tmp_path: Path, payload, container: str) -> None:
    sentinel = tmp_path / "PWNED"
    evil = payload(sentinel) if payload is not _ImportsModule else payload()
    path = tmp_path / f"evil.{container}"
    if container == "pkl":
        path.write_bytes(pickle.dumps({"g_ema": evil}, protocol=2))
    else:
        torch.save({"netG_state_dict": evil}, path)
    with pytest.raises(UnsafeCheckpointError, match="Nothing from it was imported or executed"):
        convert_checkpoint(path, format="dcgan")
    assert not sentinel.exists()
    assert main(["convert", str(path), str(tmp_path / "out"), "--format", "dcgan"]) == 2
    assert not sentinel.exists() and not (tmp_path / "out").exists()


def test_wrong_format_and_bad_keys_are_named(tiny_dcgan, tmp_path: Path) -> None:
    source = tmp_path / "dcgan.pt"
    torch.save({"netG_state_dict": tiny_dcgan.state_dict()}, source)
    with pytest.raises(CheckpointError, match="does not look like a rosinality"):
        convert_checkpoint(source, format="rosinality")
    with pytest.raises(CheckpointError, match="unknown checkpoint format 'stylegan9'"):
        convert_checkpoint(source, format="stylegan9")
    state = dict(tiny_dcgan.state_dict())
    state["main.1.weight"] = torch.zeros(5)
    state.pop("main.4.bias")
    torch.save(state, source)
    with pytest.raises(CheckpointError, match=r"mis-shaped.*main\.1\.weight") as info:
        convert_checkpoint(source, format="dcgan")
    assert "main.4.bias" in str(info.value)


def test_bad_model_names_and_paths(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError, match="dcgan-faces-64"):  # the message lists the known names
        gr.load_generator("not-a-model")
    with pytest.raises(ModelNotFoundError, match="is a file"):
        gr.load_generator(_write(tmp_path / "x.pt", b"abc"))
    with pytest.raises(ModelNotFoundError, match="config.json is missing"):
        gr.load_generator(tmp_path)


@pytest.fixture
def model_folder(tiny_dcgan, tmp_path: Path) -> Path:
    return tiny_dcgan.save_pretrained(tmp_path / "model")


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda c: c.update(ngf="8"), r"`ngf` should be int, got '8'"),
        (lambda c: c.update(colour=True), r"unknown field\(s\) \['colour'\]"),
        (lambda c: c.update(default_truncation="high"), r"`default_truncation` should be float"),
        (lambda c: c.update(architecture="biggan"), "unknown architecture 'biggan'"),
        (lambda c: c.update(resolution=48), "power of two"),
    ],
    ids=["wrong-type", "unknown-field", "wrong-type-float", "unknown-architecture", "bad-value"],
)
def test_config_json_errors_name_the_field(model_folder: Path, edit, message: str) -> None:
    config = json.loads((model_folder / "config.json").read_text())
    edit(config)
    (model_folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConfigError, match=message):
        gr.load_generator(model_folder)


def test_corrupt_folder_files(model_folder: Path) -> None:
    (model_folder / "config.json").write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        gr.load_generator(model_folder)


def test_corrupt_weights_file(model_folder: Path) -> None:
    weights = model_folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="not a readable safetensors"):
        gr.load_generator(model_folder)


def test_failed_save_leaves_the_old_model_intact(tiny_dcgan, model_folder: Path, monkeypatch) -> None:
    import safetensors.torch

    before = {p.name: p.read_bytes() for p in model_folder.iterdir()}

    def crash_midway(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.torch, "save_file", crash_midway)
    with torch.no_grad():
        tiny_dcgan.layer_module("layer1").weight.add_(1.0)
    with pytest.raises(OSError, match="disk full"):
        tiny_dcgan.save_pretrained(model_folder)
    assert {p.name: p.read_bytes() for p in model_folder.iterdir()} == before  # no temp files left either


def test_saved_files_get_the_usual_permissions(tiny_dcgan, tmp_path: Path) -> None:
    from gan_rewrite.atomic import usual_mode

    folder = tiny_dcgan.save_pretrained(tmp_path / "model")
    for name in ("config.json", "model.safetensors", "README.md"):
        assert (folder / name).stat().st_mode & 0o777 == usual_mode(), name
