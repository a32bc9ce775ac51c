"""Model folders switch as a whole: killed saves leave nothing behind for long, readers never see a mix."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch

from gan_rewrite import atomic
from gan_rewrite.errors import CheckpointError
from gan_rewrite.hub.loading import load_folder
from gan_rewrite.models import DCGANConfig, DCGANGenerator


def tiny(ngf: int) -> DCGANGenerator:
    torch.manual_seed(ngf)
    return DCGANGenerator(DCGANConfig(resolution=16, ngf=ngf, z_dim=8)).eval()


KILLED_SAVE = """
import os, sys
import torch
from gan_rewrite import atomic
from gan_rewrite.models import DCGANConfig, DCGANGenerator
where = sys.argv[2]
if where == "writing":
    import safetensors.torch as st
    real = st.save_file
    def dying(tensors, filename, metadata=None):
        real(tensors, filename, metadata=metadata)
        os._exit(9)  # like kill -9: no cleanup, no finally
    st.save_file = dying
else:  # between the two renames of the portable swap
    atomic._exchange = lambda a, b: False
    real_rename = type(atomic.Path()).rename
    def dying_rename(self, target):
        result = real_rename(self, target)
        if ".old-" in str(target):
            os._exit(9)
        return result
    type(atomic.Path()).rename = dying_rename
torch.manual_seed(1)
DCGANGenerator(DCGANConfig(resolution=16, ngf=4, z_dim=8)).save_pretrained(sys.argv[1])
"""


@pytest.mark.parametrize("where", ["writing", "between-renames"])
def test_a_killed_save_leaves_the_old_model_and_the_next_save_cleans_up(tmp_path: Path, where: str) -> None:
    folder = tiny(8).save_pretrained(tmp_path / "model")
    (folder / "notes.txt").write_text("kept")  # a file of the user's in the folder
    done = subprocess.run([sys.executable, "-c", KILLED_SAVE, str(folder), where], capture_output=True, text=True)
    assert done.returncode == 9, done.stderr
    leftovers = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("."))
    assert leftovers, "the killed save should have left its staging (or the old folder) behind"
    if where == "writing":
        assert load_folder(folder).config.ngf == 8  # untouched
    tiny(16).save_pretrained(folder)  # the next save removes or restores what the killed one left
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
    assert load_folder(folder).config.ngf == 16
    assert (folder / "notes.txt").read_text() == "kept"
    assert not [p for p in folder.iterdir() if p.name.endswith(".tmp")]


def test_stale_temporaries_of_the_old_per_file_writer_are_removed(tmp_path: Path) -> None:
    folder = tiny(8).save_pretrained(tmp_path / "model")
    for name in (".model.safetensors.abc123.tmp", ".config.json.x.tmp", ".README.md.y.tmp"):
        (folder / name).write_bytes(b"\0" * 1000)
    (tmp_path / ".model.saving-zz").mkdir()
    tiny(8).save_pretrained(folder)
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


def test_readers_never_see_a_config_of_one_save_beside_weights_of_another(tmp_path: Path) -> None:
    """Saves of two differently shaped models alternate while another thread loads the folder."""
    models = [tiny(4), tiny(8)]
    folder = models[0].save_pretrained(tmp_path / "model")
    stop, errors, seen = threading.Event(), [], set()

    def read() -> None:
        while not stop.is_set():
            try:
                seen.add(load_folder(folder).config.ngf)
            except Exception as exc:  # noqa: BLE001 - any failure to load is what this test looks for
                errors.append(repr(exc)[:200])

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for i in range(30):
            models[i % 2].save_pretrained(folder)
    finally:
        stop.set()
        reader.join()
    assert errors == []
    assert seen <= {4, 8}


def test_mixed_files_are_detected_by_their_save_ids(tmp_path: Path) -> None:
    a = tiny(8).save_pretrained(tmp_path / "a")
    b = tiny(8).save_pretrained(tmp_path / "b")  # same shapes: only the save ids tell them apart
    (a / "config.json").write_bytes((b / "config.json").read_bytes())
    with pytest.raises(CheckpointError, match="different saves"):
        load_folder(a)


def test_racing_first_use_conversions_all_succeed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from gan_rewrite.hub import convert
    from gan_rewrite.hub.known import KnownModel

    monkeypatch.setenv("GAN_REWRITE_HOME", str(tmp_path / "home"))
    checkpoint = tmp_path / "netG.pt"
    torch.save(tiny(8).state_dict(), checkpoint)
    monkeypatch.setattr(convert, "_known_source_file", lambda model, token=None: checkpoint)
    model = KnownModel(name="raced", architecture="dcgan", format="dcgan", resolution=16,
                       source={"kind": "url", "url": "x"}, license="mit", default_layer="layer2")
    results, errors = [], []

    def first_use() -> None:
        try:
            results.append(convert.ensure_known_model(model))
        except Exception as exc:  # noqa: BLE001
            errors.append(repr(exc))

    threads = [threading.Thread(target=first_use) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == [] and len(set(results)) == 1
    models = tmp_path / "home" / "models"
    assert sorted(p.name for p in models.iterdir()) == ["raced"]
    assert load_folder(results[0]).config.ngf == 8


def test_folder_lock_serialises_savers(tmp_path: Path) -> None:
    order = []

    def hold(tag: str) -> None:
        with atomic.folder_lock(tmp_path / "model"):
            order.append(f"{tag}-in")
            order.append(f"{tag}-out")

    threads = [threading.Thread(target=hold, args=(str(i),)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(order) == 8
    assert all(order[i].split("-")[0] == order[i + 1].split("-")[0] for i in range(0, len(order), 2))
