"""Hostile command lines, names and counts: each refused in one line, before any work, never a traceback."""

from __future__ import annotations

import errno
import json
import time
from pathlib import Path

import pytest
from masks import tiny_copy_paste_spec

import gan_rewrite as gr
from gan_rewrite.cli import main
from gan_rewrite.errors import ConfigError, ModelNotFoundError, RuleError, RuleNotFoundError
from gan_rewrite.hub.loading import hub_errors
from gan_rewrite.rewrite.delta import RuleDelta
from gan_rewrite.rewrite.spec import check_spec


@pytest.fixture
def folder(tiny_dcgan, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("GAN_REWRITE_HOME", str(tmp_path / "home"))
    return tiny_dcgan.save_pretrained(tmp_path / "tiny")


def one_line_error(argv: list[str], capsys, status: int = 2) -> str:
    """Run the CLI in-process: the exit status, and exactly one short error line (progress bars aside)."""
    start = time.perf_counter()
    code = main(argv)
    err = capsys.readouterr().err
    assert time.perf_counter() - start < 20
    assert code == status, err
    lines = [line for line in err.splitlines() if "error:" in line]
    assert "Traceback" not in err and len(lines) == 1 and len(lines[0]) < 1000, err
    return lines[0]


@pytest.mark.parametrize(
    "extra",
    [["--seeds", "0-10000000000"], ["--seeds", str(2**64)], ["--seeds", "18446744073709551615-18446744073709551616"],
     ["--nrow", "-1"], ["--nrow", str(10**9)]],
)
def test_counts_on_the_command_line_are_refused(folder: Path, tmp_path: Path, extra: list[str], capsys) -> None:
    with pytest.raises(SystemExit) as info:
        main(["sample", str(folder), "--out", str(tmp_path / "g.png"), *extra])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err) < 1500
    assert not (tmp_path / "g.png").exists()


def test_out_that_is_a_folder_or_under_a_file(folder: Path, tmp_path: Path, capsys) -> None:
    (tmp_path / "dir.png").mkdir()
    assert "is a folder" in one_line_error(["sample", str(folder), "--out", str(tmp_path / "dir.png")], capsys)
    (tmp_path / "file").write_text("x")
    err = one_line_error(["sample", str(folder), "--out", str(tmp_path / "file" / "g.png")], capsys)
    assert "is a file" in err
    err = one_line_error(["apply", str(folder), "x", "--out", str(tmp_path / "file" / "new")], capsys)
    assert "is a file" in err


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS, errno.ENAMETOOLONG, errno.EACCES])
def test_filesystem_errors_are_one_line(folder: Path, tmp_path: Path, monkeypatch, code: int, capsys) -> None:
    import os

    def fail(*args, **kwargs):
        raise OSError(code, os.strerror(code), str(tmp_path / "g.png"))

    monkeypatch.setattr("gan_rewrite.imaging.save_image", fail)
    err = one_line_error(["sample", str(folder), "--out", str(tmp_path / "g.png"), "--seeds", "0"], capsys, status=1)
    assert os.strerror(code) in err


@pytest.mark.parametrize("name", ["zz/..", "zz/.a", "a--b/c", "a/b.", "x" * 100_000, "a/" + "b" * 97])
def test_bad_repo_ids_never_reach_the_hub_client(name: str, capsys) -> None:
    with pytest.raises(ModelNotFoundError) as info:
        gr.load_generator(name, device="cpu")
    assert len(str(info.value)) < 1000
    one_line_error(["sample", name, "--out", "g.png"], capsys)


def test_hub_validation_errors_become_ours() -> None:
    from huggingface_hub.errors import HFValidationError

    with pytest.raises(ModelNotFoundError, match="not a valid Hub repo id"), hub_errors("zz/..", None):
        raise HFValidationError("Repo id must use alphanumeric chars")


def test_very_long_rule_ids_are_not_paths() -> None:
    with pytest.raises(RuleNotFoundError) as info:
        RuleDelta.load("o/" + "r" * 100_000)
    assert len(str(info.value)) < 1000


def _edit_config(folder: Path, **changes) -> None:
    config = json.loads((folder / "config.json").read_text())
    config.update(changes)
    (folder / "config.json").write_text(json.dumps(config))


def test_deeply_nested_config_is_refused(folder: Path, capsys) -> None:
    deep: object = {}
    for _ in range(900):
        deep = {"x": deep}
    _edit_config(folder, extra={"notes": deep})
    with pytest.raises(ConfigError, match="nested more than"):
        gr.load_generator(folder, device="cpu")
    one_line_error(["sample", str(folder), "--out", "g.png"], capsys)


def test_huge_counts_in_a_config_are_refused_fast(tmp_path: Path) -> None:
    from gan_rewrite.models import StyleGAN2Config, StyleGAN2Generator

    G = StyleGAN2Generator(StyleGAN2Config(resolution=8, z_dim=16, n_mlp=2, channels={"4": 4, "8": 4}))
    folder = G.save_pretrained(tmp_path / "sg")
    for field, value in (("n_mlp", 300_000), ("channel_multiplier", 10**6), ("resolution", 2**40), ("z_dim", 10**9)):
        config = json.loads((folder / "config.json").read_text())
        (folder / "config.json").write_text(json.dumps({**config, field: value}))
        start = time.perf_counter()
        with pytest.raises(ConfigError, match=field):
            gr.load_generator(folder, device="cpu")
        assert time.perf_counter() - start < 5
        (folder / "config.json").write_text(json.dumps(config))


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda s: s.update(stats={"n": 10**12}), "stats.n"),
        (lambda s: s.update(method="optimize", solver={"steps": 10**12}), "solver.steps"),
        (lambda s: s.update(rank=10**9), "rank"),
        (lambda s: s.update(context=[s["copy"]] * 1000), "context"),
        (lambda s: s["paste"].update(mask="rle:16x16:" + "1," * (4 << 20)), "character code"),
        (lambda s: s.update(copy=None, paste=None, erase={"seed": 0, "mask": s["copy"]["mask"],
                                                          "units": list(range(10**6))}), "erase.units"),
    ],
)
def test_spec_counts_have_ceilings_checked_first(edit, message: str) -> None:
    spec = tiny_copy_paste_spec(stats_n=8)
    edit(spec)
    start = time.perf_counter()
    with pytest.raises(RuleError, match=message) as info:
        check_spec(spec)
    assert time.perf_counter() - start < 2
    assert len(str(info.value)) < 600
