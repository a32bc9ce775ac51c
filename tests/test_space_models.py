"""The Space's shared models: only known names and Hub repo ids, one message for every refusal, LRU by bytes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from gan_rewrite.errors import ModelNotFoundError
from gan_rewrite.models import DCGANConfig, DCGANGenerator
from gan_rewrite.space import REFUSED_MODEL, SharedModels


def tiny(ngf: int = 8) -> DCGANGenerator:
    torch.manual_seed(ngf)
    return DCGANGenerator(DCGANConfig(resolution=16, ngf=ngf, z_dim=8)).eval()


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    return tiny().save_pretrained(tmp_path / "model")


def test_server_paths_are_refused_with_one_message(folder: Path, tmp_path: Path) -> None:
    (tmp_path / "file.txt").write_text("x")
    names = ["/etc", "/etc/passwd", str(tmp_path / "missing"), str(folder), f"{folder}/", f"{folder}//",
             str(tmp_path / "file.txt"), "../..", "~", "x" * 100_000, "", "a\0b", "zz/.."]
    models = SharedModels()
    messages = set()
    for name in names:
        with pytest.raises(ModelNotFoundError) as info:
            models.get(name)
        messages.add(str(info.value))
    assert messages == {REFUSED_MODEL}
    assert models.loaded() == []


def test_local_folders_when_allowed_are_loaded_once_however_spelled(folder: Path, monkeypatch) -> None:
    monkeypatch.chdir(folder.parent)
    models = SharedModels(allow_local=True)
    first, _ = models.get(str(folder))
    for spelling in (f"{folder}/", f"{folder}//", "model", "./model", f"{folder}/../model"):
        assert models.get(spelling)[0] is first
    assert models.loaded() == [str(folder.resolve())]


def test_loaded_models_are_bounded_by_bytes_least_recently_used_first(tmp_path: Path) -> None:
    sizes = {}
    models = SharedModels(allow_local=True)
    for ngf in (4, 8, 16):
        path = tiny(ngf).save_pretrained(tmp_path / f"m{ngf}")
        G, _ = models.get(str(path))
        sizes[str(path.resolve())] = sum(t.numel() * t.element_size() for t in (*G.parameters(), *G.buffers()))
    keys = list(sizes)
    models.max_bytes = sizes[keys[1]] + sizes[keys[2]]  # room for two of the three
    models.get(keys[0])  # now m4 is the most recently used...
    models.get(str(tmp_path / "m16"))  # ...so adding nothing new keeps all until the bound is checked
    models.add("extra", tiny(4))
    held = models.loaded()
    assert "extra" in held and sum(sizes.get(k, sizes[keys[0]]) for k in held) <= models.max_bytes
    assert keys[1] not in held  # m8, the least recently used, went first


def test_a_single_model_larger_than_the_bound_is_still_served(folder: Path) -> None:
    models = SharedModels(allow_local=True, max_bytes=1)
    G, lock = models.get(str(folder))
    assert models.loaded() == [str(folder.resolve())] and G.resolution == 16
