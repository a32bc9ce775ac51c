"""The engine's CLI: `stats` (also under torchrun), `rewrite` from a spec, `sample --rule`, `apply`, `push` of rules.

Every command is compared with the library doing the same thing in-process: the CLI is a thin layer, so its
outputs must be *equal* to the library's (bit for bit), not merely similar.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from masks import box
from PIL import Image

from gan_rewrite.cli import main, parse_rule
from gan_rewrite.hub.loading import load_folder
from gan_rewrite.imaging import image_grid, save_image
from gan_rewrite.models import DCGANConfig, DCGANGenerator
from gan_rewrite.rewrite import KeyStats, Rewriter, RuleDelta, compute_stats, solve_spec

LAYER = "layer2"
SEEDS = [0, 1, 2, 3]


def cli(argv: list[str]) -> int:
    """The command on the CPU, where the in-process comparisons run (bit-exactness across devices is not a thing)."""
    return main([*argv, "--device", "cpu"])



@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh statistics cache for the test (the tiny models here never need the converted known models)."""
    monkeypatch.setenv("GAN_REWRITE_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


@pytest.fixture
def tiny_folder(tiny_dcgan: DCGANGenerator, tmp_path: Path) -> Path:
    return tiny_dcgan.save_pretrained(tmp_path / "tiny")


@pytest.fixture
def spec(tiny_folder: Path, home: Path) -> dict:
    """A full copy-paste request on the tiny model (with statistics, rank, method), as `solve()` records it."""
    G = load_folder(tiny_folder)
    rw = Rewriter(G, LAYER)
    rw.compute_stats(n=12, progress=False)
    rw.set_copy(0, box(16, 2, 2, 8, 8))
    rw.set_paste(1, box(16, 8, 8, 14, 14))
    rw.add_context(1, box(16, 8, 8, 14, 14))
    return rw.solve(rank=1, method="closed_form").spec


@pytest.fixture
def rule_path(spec: dict, tiny_folder: Path, tmp_path: Path) -> Path:
    return solve_spec(load_folder(tiny_folder), spec, progress=False).save(tmp_path / "paste.safetensors")


def write_spec(path: Path, spec: dict) -> Path:
    path.write_text(json.dumps(spec), encoding="utf-8")
    return path


def grid_pixels(images: torch.Tensor, tmp_path: Path) -> np.ndarray:
    """The PNG the CLI would write for these images."""
    save_image(image_grid(images), tmp_path / "expected.png")
    return np.asarray(Image.open(tmp_path / "expected.png"))


# ----- stats -------------------------------------------------------------------------------------------
def test_stats_saves_what_compute_stats_computes(tiny_folder: Path, home: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "s.safetensors"
    argv = [
        "stats",
        str(tiny_folder),
        "--layer",
        LAYER,
        "--n",
        "12",
        "--seed",
        "3",
        "--truncation",
        "0.8",
        "--batch-size",
        "5",
        "--out",
        str(out),
    ]
    assert cli(argv) == 0
    printed = capsys.readouterr().out
    assert f"at {LAYER}: n=12 samples, count=192 keys" in printed and "samples/s" in printed
    saved = KeyStats.load(out)
    expected = compute_stats(
        load_folder(tiny_folder), LAYER, 12, batch_size=5, truncation=0.8, seed=3, use_cache=False, progress=False
    )
    assert (saved.layer, saved.n, saved.seed, saved.truncation, saved.count) == (LAYER, 12, 3, 0.8, 192)
    assert saved.model_sha256 == expected.model_sha256
    assert torch.equal(saved.second_moment, expected.second_moment) and torch.equal(saved.mean, expected.mean)
    # The run filled the cache; the same request is now read back from it.
    assert cli(argv[:-2]) == 0
    assert "read from the cache" in capsys.readouterr().out


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_stats_under_torchrun_equals_one_process(tiny_folder: Path, home: Path, tmp_path: Path) -> None:
    """2 Gloo ranks, 5 seeds each, all-reduced in float64.

    With batches aligned to the ranks' shares (batch size 5) the sums are added in the same order as a
    one-process run, so the result is bit-identical; with another batch size only the float64 summation
    order differs (~1e-16 relative).
    """
    out = tmp_path / "ddp.safetensors"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        "--master_addr=127.0.0.1",
        f"--master_port={_free_port()}",
        "-m",
        "gan_rewrite.cli",
        "stats",
        str(tiny_folder),
        "--layer",
        LAYER,
        "-n",
        "10",
        "--batch-size",
        "5",
        "--out",
        str(out),
        "--device",
        "cpu",
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("key statistics of") == 1  # only rank 0 prints
    assert "on 2 processes" in result.stdout
    ddp = KeyStats.load(out)
    G = load_folder(tiny_folder)
    aligned = compute_stats(G, LAYER, 10, batch_size=5, use_cache=False, progress=False)
    assert ddp.count == aligned.count == 10 * 4 * 4
    assert torch.equal(ddp.second_moment, aligned.second_moment) and torch.equal(ddp.mean, aligned.mean)
    one_batch = compute_stats(G, LAYER, 10, batch_size=64, use_cache=False, progress=False)
    torch.testing.assert_close(ddp.second_moment, one_batch.second_moment, rtol=1e-12, atol=1e-15)


# ----- rewrite -----------------------------------------------------------------------------------------
def test_rewrite_from_a_spec_equals_solve_spec(spec: dict, tiny_folder: Path, tmp_path: Path, capsys) -> None:
    spec_file = write_spec(tmp_path / "rule.json", spec)
    out = tmp_path / "rule.safetensors"
    assert cli(["rewrite", str(tiny_folder), "--spec", str(spec_file), "--out", str(out), "--revision", "abc123"]) == 0
    printed = capsys.readouterr().out
    assert str(out) in printed and " s " in printed
    rule = RuleDelta.load(out)
    expected = solve_spec(load_folder(tiny_folder), spec, progress=False)
    assert (rule.base_model, rule.base_revision, rule.method) == (str(tiny_folder), "abc123", "closed_form")
    assert rule.spec == expected.spec == spec
    assert torch.equal(rule.layers[LAYER].direction, expected.layers[LAYER].direction)
    assert torch.equal(rule.layers[LAYER].lam, expected.layers[LAYER].lam)
    assert rule.layers[LAYER].base_layer_sha256 == expected.layers[LAYER].base_layer_sha256


def test_rewrite_with_a_stats_file(spec: dict, tiny_folder: Path, tmp_path: Path) -> None:
    G = load_folder(tiny_folder)
    stats = compute_stats(G, LAYER, 20, seed=7, use_cache=False, progress=False)
    stats_file = stats.save(tmp_path / "s.safetensors")
    out = tmp_path / "rule.safetensors"
    assert (
        cli(
            [
                "rewrite",
                str(tiny_folder),
                "--spec",
                str(write_spec(tmp_path / "r.json", spec)),
                "--out",
                str(out),
                "--stats",
                str(stats_file),
            ]
        )
        == 0
    )
    expected = solve_spec(G, spec, stats=stats, progress=False)
    assert torch.equal(RuleDelta.load(out).layers[LAYER].lam, expected.layers[LAYER].lam)


# ----- sample --rule / apply ---------------------------------------------------------------------------
def test_sample_with_a_scaled_rule_equals_load_rule(rule_path: Path, tiny_folder: Path, tmp_path: Path, capsys) -> None:
    plain, ruled = tmp_path / "plain.png", tmp_path / "ruled.png"
    assert cli(["sample", str(tiny_folder), "--seeds", "0-3", "--out", str(plain)]) == 0
    assert cli(["sample", str(tiny_folder), "--seeds", "0-3", "--out", str(ruled), "--rule", f"{rule_path}:0.5"]) == 0
    assert "rule paste × 0.5" in capsys.readouterr().out
    G = load_folder(tiny_folder)
    G.load_rule(rule_path, scale=0.5)
    expected = grid_pixels(G.sample(SEEDS), tmp_path)
    assert np.array_equal(np.asarray(Image.open(ruled)), expected)
    assert not np.array_equal(np.asarray(Image.open(plain)), expected)


def test_sample_loads_several_rules_with_the_same_file_name(rule_path: Path, tiny_folder: Path, tmp_path: Path) -> None:
    folder = tmp_path / "second"
    folder.mkdir()
    RuleDelta.load(rule_path).save(folder / "rule.safetensors")  # a folder holding rule.safetensors
    out = tmp_path / "two.png"
    assert (
        cli(
            [
                "sample",
                str(tiny_folder),
                "--seeds",
                "0-3",
                "--out",
                str(out),
                "--rule",
                f"{rule_path}:0.25",
                "--rule",
                f"{folder}:0.25",
            ]
        )
        == 0
    )
    G = load_folder(tiny_folder)
    G.load_rule(rule_path, scale=0.5)
    torch.testing.assert_close(  # 0.25 + 0.25 of one rule ≈ 0.5 of it (rounding in the weight sum)
        torch.from_numpy(np.asarray(Image.open(out)).astype(np.float32)),
        torch.from_numpy(grid_pixels(G.sample(SEEDS), tmp_path).astype(np.float32)),
        atol=1.0,
        rtol=0,
    )


def test_apply_writes_a_model_with_the_rule_fused(rule_path: Path, tiny_folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "applied"
    assert cli(["apply", str(tiny_folder), f"{rule_path}:0.5", "--out", str(out)]) == 0
    G = load_folder(tiny_folder)
    G.load_rule(rule_path, scale=0.5)
    G.fuse_rules()
    applied = load_folder(out)
    assert torch.equal(applied.sample(SEEDS), G.sample(SEEDS))
    assert not torch.equal(applied.sample(SEEDS), load_folder(tiny_folder).sample(SEEDS))
    record = applied.config.extra["applied_rules"]
    assert record == [
        {
            "name": "paste",
            "source": str(rule_path),
            "scale": 0.5,
            "rule_scale": 1.0,
            "layers": [LAYER],
            "sha256": hashlib.sha256(rule_path.read_bytes()).hexdigest(),
            "base_model": "",
            "method": "closed_form",
        }
    ]
    assert applied.config.extra["derived_from"] == str(tiny_folder)
    assert "rules applied" in (out / "README.md").read_text(encoding="utf-8")


# ----- argument parsing and errors ---------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "parsed"),
    [
        ("rule.safetensors", ("rule.safetensors", 1.0)),
        ("rule.safetensors:0.5", ("rule.safetensors", 0.5)),
        ("owner/smile", ("owner/smile", 1.0)),
        ("owner/smile:-1", ("owner/smile", -1.0)),
        ("C:\\rules\\smile.safetensors", ("C:\\rules\\smile.safetensors", 1.0)),
        ("C:\\rules\\smile.safetensors:2e-1", ("C:\\rules\\smile.safetensors", 0.2)),
        ("a:b:1.5", ("a:b", 1.5)),
        ("hf://owner/smile", ("hf://owner/smile", 1.0)),
    ],
)
def test_parse_rule(text: str, parsed: tuple[str, float]) -> None:
    assert parse_rule(text) == parsed


def test_parse_rule_takes_an_existing_path_whole(tmp_path: Path) -> None:
    odd = tmp_path / "v1:2"
    odd.mkdir()
    assert parse_rule(str(odd)) == (str(odd), 1.0)


@pytest.mark.parametrize("text", [":0.5", "rule:nan", "rule:inf", ""])
def test_parse_rule_rejects(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError):
        parse_rule(text)


def _edit(spec: dict, path: str, value: object) -> dict:
    """A copy of ``spec`` with ``path`` ("copy.seed") set to ``value`` (or deleted when value is ...)."""
    spec = json.loads(json.dumps(spec))
    *parents, last = path.split(".")
    target = spec
    for key in parents:
        target = target[key]
    if value is ...:
        del target[last]
    else:
        target[last] = value
    return spec


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (("layer", "layer9"), "unknown layer 'layer9' for DCGANGenerator; valid layers are ['layer1', 'layer2',"),
        (("layer", ...), "`layer`"),
        (("contxt", []), "unknown field(s) ['contxt']"),
        (("version", 2), "`version`"),
        (("copy.seed", "one"), "`copy.seed`"),
        (("paste.mask", "rle:bad"), "`paste.mask`"),
        (("copy", None), "no goal"),
        (("truncation", 3), "`truncation`"),
        (("stats.n", 0), "`stats.n`"),
        (("method", "magic"), "`method`"),
        (("solver", {"stepz": 3}), "['stepz']"),
        (("rank", 0), "`rank`"),
        (("paste.mask", "rle:8x8:0,64"), "field `paste.mask` is 8×8 but the model makes 16×16 images"),
        (("solver", {"ridge": "small"}), "`solver.ridge`"),
        (("solver", {"loss_fn": "l2"}), "['loss_fn']"),
    ],
)
def test_rewrite_rejects_a_bad_spec_naming_the_field(
    spec: dict, tiny_folder: Path, tmp_path: Path, capsys, edit: tuple, message: str
) -> None:
    spec_file = write_spec(tmp_path / "bad.json", _edit(spec, *edit))
    out = tmp_path / "r.safetensors"
    assert cli(["rewrite", str(tiny_folder), "--spec", str(spec_file), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err, err
    assert not out.exists()


def test_rewrite_rejects_missing_or_broken_files(spec: dict, tiny_folder: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "r.safetensors"
    assert cli(["rewrite", str(tiny_folder), "--spec", str(tmp_path / "none.json"), "--out", str(out)]) == 2
    assert "no spec file" in capsys.readouterr().err
    broken = tmp_path / "broken.json"
    broken.write_text('{"version": 1,', encoding="utf-8")
    assert cli(["rewrite", str(tiny_folder), "--spec", str(broken), "--out", str(out)]) == 2
    assert "not valid JSON" in capsys.readouterr().err
    spec_file = write_spec(tmp_path / "ok.json", spec)
    other_layer = compute_stats(load_folder(tiny_folder), "layer1", 4, use_cache=False, progress=False)
    stats_file = other_layer.save(tmp_path / "layer1.safetensors")
    assert (
        cli(["rewrite", str(tiny_folder), "--spec", str(spec_file), "--out", str(out), "--stats", str(stats_file)]) == 2
    )
    assert "statistics are for layer 'layer1'" in capsys.readouterr().err
    assert not out.exists()


@pytest.fixture
def other_folder(tmp_path: Path) -> Path:
    """A model of the same shape as the tiny one but other weights: rules for one are not for the other."""
    torch.manual_seed(1)
    return DCGANGenerator(DCGANConfig(resolution=16, ngf=8, z_dim=8)).eval().save_pretrained(tmp_path / "other")


def test_rules_for_another_model_need_force(rule_path: Path, other_folder: Path, tmp_path: Path, capsys) -> None:
    grid, out = tmp_path / "g.png", tmp_path / "applied"
    assert cli(["sample", str(other_folder), "--out", str(grid), "--rule", str(rule_path)]) == 2
    err = capsys.readouterr().err
    assert "made for another model" in err and "--rule-force" in err and LAYER in err
    assert cli(["apply", str(other_folder), str(rule_path), "--out", str(out)]) == 2
    assert "--force" in capsys.readouterr().err
    assert not grid.exists() and not out.exists()
    assert cli(["sample", str(other_folder), "--out", str(grid), "--rule", str(rule_path), "--rule-force"]) == 0
    assert cli(["apply", str(other_folder), str(rule_path), "--out", str(out), "--force"]) == 0
    assert grid.is_file() and (out / "model.safetensors").is_file()


def test_missing_rule_and_apply_onto_itself_are_errors(
    rule_path: Path, tiny_folder: Path, tmp_path: Path, capsys
) -> None:
    assert (
        cli(
            ["sample", str(tiny_folder), "--out", str(tmp_path / "g.png"), "--rule", str(tmp_path / "none.safetensors")]
        )
        == 2
    )
    assert "none.safetensors" in capsys.readouterr().err
    assert cli(["apply", str(tiny_folder), str(rule_path), "--out", str(tiny_folder)]) == 2
    assert "model folder itself" in capsys.readouterr().err


# ----- push --------------------------------------------------------------------------------------------
def test_push_a_rule_file_or_folder(hub, rule_path: Path, tiny_folder: Path, tmp_path: Path, capsys) -> None:
    repo = hub.repo_id("paste-rule")
    assert cli(["push", str(rule_path), repo, "--model", str(tiny_folder), "--message", "a rule from the cli"]) == 0
    assert f"pushed rule {rule_path} ({LAYER}) to {repo}" in capsys.readouterr().out
    assert {"rule.safetensors", "rule.json", "preview.png", "README.md"} <= set(hub.api().list_repo_files(repo))
    pulled = RuleDelta.load(repo)
    assert torch.equal(pulled.layers[LAYER].lam, RuleDelta.load(rule_path).layers[LAYER].lam)
    # A folder holding rule.safetensors is a rule too (not a model folder); without a preview here.
    folder = tmp_path / "rule-folder"
    folder.mkdir()
    RuleDelta.load(rule_path).save(folder)
    repo2 = hub.repo_id("paste-rule-2")
    assert cli(["push", str(folder), repo2, "--no-preview"]) == 0
    files = set(hub.api().list_repo_files(repo2))
    assert "rule.safetensors" in files and "preview.png" not in files
    assert cli(["push", str(tmp_path / "nothing"), repo2]) == 2
    assert "neither a model folder nor a rule" in capsys.readouterr().err
