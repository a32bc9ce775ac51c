"""Hostile and broken files: every loader refuses them with a documented error, never a stray traceback.

One table per loader (model folder, rule, statistics, spec, legacy checkpoint). Each case is checked twice:
through the library (the exact ``GanRewriteError`` subclass) and through the CLI (exit status 2, the message on
stderr, nothing written). Safetensors files whose header lies are crafted by hand: 8-byte little-endian header
length, the JSON header, then the data.
"""

from __future__ import annotations

import base64
import json
import math
import struct
import subprocess
import sys
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from masks import box, tiny_copy_paste_spec
from safetensors.torch import save_file

from gan_rewrite.cli import main
from gan_rewrite.errors import (
    CheckpointError,
    ConfigError,
    GanRewriteError,
    LayerError,
    ModelNotFoundError,
    RuleError,
    RuleMismatchError,
    RuleNotFoundError,
    StatsError,
    UnsafeCheckpointError,
)
from gan_rewrite.hashing import tensor_sha256
from gan_rewrite.hub.convert import convert_checkpoint
from gan_rewrite.hub.loading import load_folder
from gan_rewrite.models import DCGANConfig, DCGANGenerator
from gan_rewrite.rewrite.context import encode_mask
from gan_rewrite.rewrite.delta import LayerDelta, RuleDelta
from gan_rewrite.rewrite.rewriter import Rewriter
from gan_rewrite.rewrite.spec import read_spec
from gan_rewrite.rewrite.stats import KeyStats

LAYER = "layer2"  # of the tiny 16px DCGAN: ConvTranspose2d 16 → 8, weight (I, O, kh, kw) = (16, 8, 4, 4)


# ----- crafting files ----------------------------------------------------------------------------------
def split(blob: bytes) -> tuple[dict[str, Any], bytes]:
    (length,) = struct.unpack("<Q", blob[:8])
    return json.loads(blob[8 : 8 + length]), blob[8 + length :]


def join(header: Any, data: bytes) -> bytes:
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + data


def edit_header(edit: Callable[[dict], Any]) -> Callable[[bytes], bytes]:
    """A blob transformer: apply ``edit`` to the parsed header (in place), keep the data."""

    def transform(blob: bytes) -> bytes:
        header, data = split(blob)
        edit(header)
        return join(header, data)

    return transform


def set_meta(key: str, value: Any) -> Callable[[bytes], bytes]:
    return edit_header(lambda h: h["__metadata__"].__setitem__(key, value))


def drop_meta(key: str) -> Callable[[bytes], bytes]:
    return edit_header(lambda h: h["__metadata__"].pop(key))


def retype(key: str, dtype: str, shape: list[int]) -> Callable[[bytes], bytes]:
    """Claim another dtype for a tensor, with a shape whose byte length still fits its data (the lie is the dtype)."""
    return edit_header(lambda h: h[key].update(dtype=dtype, shape=shape))


def poke(key: str, value: float, fmt: str = "<f") -> Callable[[bytes], bytes]:
    """Overwrite the first element of tensor ``key`` with ``value`` (NaN, Inf, ...)."""

    def transform(blob: bytes) -> bytes:
        header, data = split(blob)
        start = header[key]["data_offsets"][0]
        packed = struct.pack(fmt, value)
        return join(header, data[:start] + packed + data[start + len(packed) :])

    return transform


def cut(fraction: float) -> Callable[[bytes], bytes]:
    return lambda blob: blob[: int(len(blob) * fraction)]


def const(data: bytes) -> Callable[[bytes], bytes]:
    return lambda blob: data


# ----- fixtures ------------------------------------------------------------------------------------------
@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("GAN_REWRITE_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


@pytest.fixture
def folder(tiny_dcgan: DCGANGenerator, tmp_path: Path, home: Path) -> Path:
    return tiny_dcgan.save_pretrained(tmp_path / "tiny")


def rule_for(
    G: DCGANGenerator,
    *,
    in_ch: int = 16,
    out_ch: int = 8,
    taps: int = 4,
    layout: str = "conv_transpose2d",
    layer: str = LAYER,
    digest: str | None = None,
) -> RuleDelta:
    g = torch.Generator().manual_seed(0)
    direction, _ = torch.linalg.qr(torch.randn(in_ch, 1, generator=g))
    lam = torch.randn(out_ch, 1, taps, taps, generator=g) * 0.1
    digest = digest if digest is not None else tensor_sha256(G.layer_module(LAYER).weight)
    return RuleDelta(layers={layer: LayerDelta(direction, lam, layout, digest)}, base_model="tiny")


@pytest.fixture
def good_rule(tiny_dcgan: DCGANGenerator, tmp_path: Path) -> bytes:
    return rule_for(tiny_dcgan).save(tmp_path / "good.safetensors").read_bytes()


@pytest.fixture
def good_stats(tmp_path: Path) -> bytes:
    g = torch.Generator().manual_seed(1)
    keys = torch.randn(64, 16, generator=g, dtype=torch.float64)
    stats = KeyStats(
        second_moment=keys.T @ keys / 64,
        mean=keys.mean(0),
        count=64,
        layer=LAYER,
        model_sha256="a" * 64,
        n=4,
        truncation=None,
        seed=0,
    )
    return stats.save(tmp_path / "stats-good.safetensors").read_bytes()


def good_spec() -> dict[str, Any]:
    return tiny_copy_paste_spec(stats_n=8, layer=LAYER)


def refused_by_cli(argv: list[str], capsys: pytest.CaptureFixture[str], error: type[GanRewriteError]) -> str:
    """Run the command in-process: exit status 2, the error's message on stderr, no traceback."""
    capsys.readouterr()
    assert main([*argv, "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "error:" in err and "Traceback" not in err, err
    return err


# ======================================================================================================
# 1. Model folders
# ======================================================================================================
def _config(edit: Callable[[dict], Any]) -> Callable[[Path], None]:
    def change(folder: Path) -> None:
        config = json.loads((folder / "config.json").read_text())
        edit(config)
        (folder / "config.json").write_text(json.dumps(config))  # NaN / Infinity as Python writes them

    return change


def _config_text(text: str | bytes) -> Callable[[Path], None]:
    def change(folder: Path) -> None:
        path = folder / "config.json"
        path.write_bytes(text) if isinstance(text, bytes) else path.write_text(text)

    return change


def _weights(transform: Callable[[bytes], bytes]) -> Callable[[Path], None]:
    def change(folder: Path) -> None:
        path = folder / "model.safetensors"
        path.write_bytes(transform(path.read_bytes()))

    return change


def _tensors(edit: Callable[[dict], Any]) -> Callable[[Path], None]:
    def change(folder: Path) -> None:
        from safetensors.torch import load_file

        tensors = load_file(folder / "model.safetensors")
        edit(tensors)
        save_file(tensors, folder / "model.safetensors")

    return change


def _other_model(folder: Path) -> None:
    DCGANGenerator(DCGANConfig(resolution=16, ngf=4, z_dim=8)).save_pretrained(folder)
    _config(lambda c: c.update(ngf=8))(folder)  # the config of the tiny model, weights of a smaller one


MODEL_CASES = [
    ("weights-zero-bytes", _weights(const(b"")), CheckpointError),
    ("weights-truncated", _weights(cut(0.5)), CheckpointError),
    ("weights-header-only", _weights(lambda b: b[: 8 + struct.unpack("<Q", b[:8])[0]]), CheckpointError),
    ("weights-junk", _weights(const(b"\x00" * 8 + b"this is not safetensors")), CheckpointError),
    (
        "weights-offsets-past-end",
        _weights(
            edit_header(
                lambda h: h["main.0.weight"].update(data_offsets=[h["main.0.weight"]["data_offsets"][0], 10**9])
            )
        ),
        CheckpointError,
    ),
    (
        "weights-shape-lies",
        _weights(edit_header(lambda h: h["main.0.weight"]["shape"].__setitem__(0, 9))),
        CheckpointError,
    ),
    ("weights-nan", _tensors(lambda t: t["main.0.weight"].view(-1).__setitem__(0, math.nan)), CheckpointError),
    ("weights-inf-buffer", _tensors(lambda t: t["main.1.running_var"].fill_(math.inf)), CheckpointError),
    ("weights-int64", _tensors(lambda t: t.update({"main.0.weight": t["main.0.weight"].long()})), CheckpointError),
    ("weights-key-missing", _tensors(lambda t: t.pop("main.3.weight")), CheckpointError),
    ("weights-extra-key", _tensors(lambda t: t.update(extra=torch.zeros(1))), CheckpointError),
    ("weights-of-another-model", _other_model, CheckpointError),
    ("weights-missing", lambda f: (f / "model.safetensors").unlink(), ModelNotFoundError),
    ("config-missing", lambda f: (f / "config.json").unlink(), ModelNotFoundError),
    ("config-empty", _config_text(""), ConfigError),
    ("config-not-json", _config_text("{architecture: dcgan"), ConfigError),
    ("config-array", _config_text("[1, 2]"), ConfigError),
    ("config-string", _config_text('"dcgan"'), ConfigError),
    ("config-latin1", _config_text(b'{"architecture": "dcgan\xff"}'), ConfigError),
    ("config-5000-digits", _config_text('{"architecture": "dcgan", "ngf": ' + "9" * 5000 + "}"), ConfigError),
    ("config-deep-nesting", _config_text("[" * 100_000 + "]" * 100_000), ConfigError),
    ("config-no-architecture", _config(lambda c: c.pop("architecture")), ConfigError),
    ("config-architecture-list", _config(lambda c: c.update(architecture=["dcgan"])), ConfigError),
    ("config-architecture-unknown", _config(lambda c: c.update(architecture="biggan")), ConfigError),
    ("config-resolution-2**62", _config(lambda c: c.update(resolution=2**62)), ConfigError),
    ("config-resolution-2**200", _config(lambda c: c.update(resolution=2**200)), ConfigError),
    ("config-resolution-not-pow2", _config(lambda c: c.update(resolution=24)), ConfigError),
    ("config-resolution-float", _config(lambda c: c.update(resolution=16.0)), ConfigError),
    ("config-resolution-string", _config(lambda c: c.update(resolution="16")), ConfigError),
    ("config-resolution-bool", _config(lambda c: c.update(resolution=True)), ConfigError),
    ("config-ngf-10**6", _config(lambda c: c.update(ngf=10**6)), ConfigError),  # a ceiling, checked before allocating
    ("config-z_dim-10**12", _config(lambda c: c.update(z_dim=10**12)), ConfigError),  # a ceiling, before weights
    ("config-ngf-negative", _config(lambda c: c.update(ngf=-8)), ConfigError),
    ("config-ngf-null", _config(lambda c: c.update(ngf=None)), ConfigError),
    ("config-truncation-nan", _config(lambda c: c.update(default_truncation=math.nan)), ConfigError),
    ("config-truncation-inf", _config(lambda c: c.update(default_truncation=math.inf)), ConfigError),
    ("config-truncation-huge", _config(lambda c: c.update(default_truncation=1e308)), ConfigError),
    ("config-extra-list", _config(lambda c: c.update(extra=[])), ConfigError),
    ("config-unknown-field", _config(lambda c: c.update(channels=[1, 2])), ConfigError),
    ("config-default-layer-unknown", _config(lambda c: c.update(default_layer="layer9")), ConfigError),
    ("config-default-layer-int", _config(lambda c: c.update(default_layer=3)), ConfigError),
    ("config-extra-tags-int", _config(lambda c: c["extra"].update(tags=5)), ConfigError),
    ("config-extra-tags-mixed", _config(lambda c: c["extra"].update(tags=["a", 1, None])), ConfigError),
    ("config-extra-provenance-string", _config(lambda c: c["extra"].update(provenance="x")), ConfigError),
    ("config-extra-license-list", _config(lambda c: c["extra"].update(license=[1])), ConfigError),
    ("config-extra-applied-rules-int", _config(lambda c: c["extra"].update(applied_rules=3)), ConfigError),
    ("config-extra-applied-rules-empty-record", _config(lambda c: c["extra"].update(applied_rules=[{}])), ConfigError),
]


@pytest.mark.parametrize(("make", "error"), [c[1:] for c in MODEL_CASES], ids=[c[0] for c in MODEL_CASES])
def test_hostile_model_folders_are_refused(folder: Path, make, error, capsys, tmp_path: Path) -> None:
    make(folder)
    with pytest.raises(error):
        load_folder(folder)
    grid = tmp_path / "grid.png"
    refused_by_cli(["sample", str(folder), "--seeds", "0", "--out", str(grid)], capsys, error)
    refused_by_cli(["push", str(folder), "owner/model"], capsys, error)  # refused before any Hub request
    assert not grid.exists()


def test_folder_fixture_is_valid(folder: Path) -> None:
    """The cases above start from a folder that loads, so each one tests its own breakage."""
    assert load_folder(folder).layer_names == ["layer1", "layer2", "layer3"]


# ======================================================================================================
# 2. Rule files
# ======================================================================================================
def _rank_zero(header: dict) -> None:
    for key in ("direction", "lambda"):
        entry = header[f"{LAYER}.{key}"]
        entry["shape"][1] = 0
        entry["data_offsets"] = [0, 0]
    header["__metadata__"]["rank"] = "0"


RULE_CASES = [
    ("zero-bytes", const(b"")),
    ("seven-bytes", lambda b: b[:7]),
    ("truncated-header", lambda b: b[:24]),
    ("truncated-data", lambda b: b[:-10]),
    ("junk", const(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all}")),
    ("header-length-huge", lambda b: struct.pack("<Q", 2**62) + b[8:]),
    ("header-array", const(join([1, 2, 3], b""))),
    (
        "offsets-past-end",
        edit_header(
            lambda h: h[f"{LAYER}.lambda"].update(data_offsets=[h[f"{LAYER}.lambda"]["data_offsets"][0], 10**6])
        ),
    ),
    ("offsets-overlap", edit_header(lambda h: h[f"{LAYER}.lambda"].update(data_offsets=[0, 512]))),
    ("shape-times-dtype-lies", edit_header(lambda h: h[f"{LAYER}.lambda"]["shape"].__setitem__(0, 9))),
    ("dtype-F16", retype(f"{LAYER}.lambda", "F16", [16, 1, 4, 4])),
    ("dtype-BF16", retype(f"{LAYER}.lambda", "BF16", [16, 1, 4, 4])),
    ("dtype-F64", retype(f"{LAYER}.lambda", "F64", [4, 1, 4, 4])),
    ("dtype-I64", retype(f"{LAYER}.lambda", "I64", [4, 1, 4, 4])),
    ("dtype-BOOL", retype(f"{LAYER}.lambda", "BOOL", [32, 1, 4, 4])),
    ("dtype-U8-direction", retype(f"{LAYER}.direction", "U8", [16, 4])),
    ("nan-direction", poke(f"{LAYER}.direction", math.nan)),
    ("inf-lambda", poke(f"{LAYER}.lambda", math.inf)),
    ("minus-inf-lambda", poke(f"{LAYER}.lambda", -math.inf)),
    ("rank-zero", edit_header(_rank_zero)),
    ("rank-lies", set_meta("rank", "2")),
    ("rank-not-a-number", set_meta("rank", "one")),
    ("layer-lists-two", set_meta("layer", f"{LAYER},layer3")),
    ("layer-other-name", set_meta("layer", "layer3")),
    (
        "layer-twice",
        lambda b: set_meta("layer", f"{LAYER},{LAYER}")(
            set_meta("rank", "1,1")(
                set_meta("weight_layout", "conv_transpose2d,conv_transpose2d")(set_meta("base_layer_sha256", "a,a")(b))
            )
        ),
    ),
    ("layer-empty", set_meta("layer", "")),
    ("format-wrong", set_meta("format", "gan-rewrite.rule/2")),
    ("format-missing", drop_meta("format")),
    ("no-metadata", edit_header(lambda h: h.pop("__metadata__"))),
    ("metadata-not-strings", set_meta("rank", 1)),
    ("scale-missing", drop_meta("scale")),
    ("scale-nan", set_meta("scale", "nan")),
    ("scale-inf", set_meta("scale", "1e999")),
    ("scale-text", set_meta("scale", "strong")),
    ("spec-not-json", set_meta("spec", "{seeds: 1")),
    ("spec-array", set_meta("spec", "[1, 2]")),
    ("spec-deep", set_meta("spec", "[" * 100_000 + "]" * 100_000)),
    ("spec-5000-digits", set_meta("spec", '{"n": ' + "9" * 5000 + "}")),
    ("layout-unknown", set_meta("weight_layout", "dense")),
    ("weight-layout-missing", drop_meta("weight_layout")),
    ("tensor-missing", edit_header(lambda h: h.pop(f"{LAYER}.lambda"))),
    (
        "tensor-extra",
        lambda b: join(
            {
                **split(b)[0],
                "x": {"dtype": "F32", "shape": [1], "data_offsets": [len(split(b)[1]), len(split(b)[1]) + 4]},
            },
            split(b)[1] + b"\0\0\0\0",
        ),
    ),
    ("direction-3d", edit_header(lambda h: h[f"{LAYER}.direction"].update(shape=[4, 4, 1]))),
]


@pytest.mark.parametrize("transform", [c[1] for c in RULE_CASES], ids=[c[0] for c in RULE_CASES])
def test_hostile_rule_files_are_refused(folder: Path, good_rule: bytes, transform, tmp_path: Path, capsys) -> None:
    path = tmp_path / "bad.safetensors"
    path.write_bytes(transform(good_rule))
    with pytest.raises(RuleError):
        RuleDelta.load(path)
    G = load_folder(folder)
    before = G.layer_module(LAYER).weight.clone()
    with pytest.raises(RuleError):
        G.load_rule(path)
    assert torch.equal(G.layer_module(LAYER).weight, before) and not G.active_rules
    grid, out = tmp_path / "grid.png", tmp_path / "applied"
    refused_by_cli(["sample", str(folder), "--seeds", "0", "--out", str(grid), "--rule", str(path)], capsys, RuleError)
    refused_by_cli(["apply", str(folder), str(path), "--out", str(out)], capsys, RuleError)
    assert not grid.exists() and not out.exists()


def test_good_rule_fixture_applies(folder: Path, good_rule: bytes, tmp_path: Path) -> None:
    path = tmp_path / "good-again.safetensors"
    path.write_bytes(good_rule)
    G = load_folder(folder)
    G.load_rule(path)
    assert main(["apply", str(folder), str(path), "--out", str(tmp_path / "applied"), "--device", "cpu"]) == 0


RULE_MODEL_CASES = [  # well-formed rule files that do not fit the model
    ("other-base-weight", dict(digest="0" * 64), RuleMismatchError),
    ("wrong-in-channels", dict(in_ch=12), RuleMismatchError),
    ("wrong-out-channels", dict(out_ch=3), RuleMismatchError),
    ("wrong-taps", dict(taps=3), RuleMismatchError),
    ("wrong-layout", dict(layout="conv2d", in_ch=8, out_ch=16), RuleMismatchError),  # same (O,I,kh,kw) volume
    ("unknown-layer", dict(layer="layer9"), LayerError),
    # ΔW would be 100000 × 100000 × 1 × 1 floats (40 GB): refused from the shapes, nothing is allocated.
    ("absurd-shape", dict(in_ch=100_000, out_ch=100_000, taps=1), RuleMismatchError),
]


@pytest.mark.parametrize(("kwargs", "error"), [c[1:] for c in RULE_MODEL_CASES], ids=[c[0] for c in RULE_MODEL_CASES])
def test_rules_that_do_not_fit_the_model_are_refused(
    folder: Path, tiny_dcgan: DCGANGenerator, kwargs: dict, error, tmp_path: Path, capsys
) -> None:
    path = rule_for(tiny_dcgan, **kwargs).save(tmp_path / "misfit.safetensors")
    G = load_folder(folder)
    with pytest.raises(error):
        G.load_rule(path)
    assert not G.active_rules
    out = tmp_path / "applied"
    refused_by_cli(["apply", str(folder), str(path), "--out", str(out)], capsys, error)
    assert not out.exists()


def test_rule_for_another_base_loads_when_forced(folder: Path, tiny_dcgan: DCGANGenerator, tmp_path: Path) -> None:
    path = rule_for(tiny_dcgan, digest="0" * 64).save(tmp_path / "other.safetensors")
    assert main(["apply", str(folder), str(path), "--out", str(tmp_path / "forced"), "--force", "--device", "cpu"]) == 0


# ======================================================================================================
# 3. Statistics files
# ======================================================================================================
def _asymmetric(blob: bytes) -> bytes:
    header, data = split(blob)
    start = header["second_moment"]["data_offsets"][0] + 8  # entry (0, 1)
    return join(header, data[:start] + struct.pack("<d", 1e6) + data[start + 8 :])


STATS_CASES = [
    ("zero-bytes", const(b"")),
    ("truncated", cut(0.7)),
    ("junk", const(b"\x05\x00\x00\x00\x00\x00\x00\x00hello")),
    ("a-rule-file-instead", None),  # filled in by the test
    ("format-wrong", set_meta("format", "gan-rewrite.rule/1")),
    ("tensor-missing", edit_header(lambda h: h.pop("mean"))),
    ("second-moment-not-square", edit_header(lambda h: h["second_moment"].update(shape=[8, 32]))),
    ("second-moment-1d", edit_header(lambda h: h["second_moment"].update(shape=[256]))),
    ("mean-wrong-length", retype("mean", "F32", [32])),
    ("count-float", retype("count", "F64", [1])),
    ("count-two-values", retype("count", "I32", [2])),
    ("second-moment-I64", retype("second_moment", "I64", [16, 16])),
    ("second-moment-BOOL", retype("second_moment", "BOOL", [32, 64])),
    ("nan", poke("second_moment", math.nan, "<d")),
    ("inf-mean", poke("mean", math.inf, "<d")),
    ("negative-diagonal", poke("second_moment", -1.0, "<d")),
    ("asymmetric", _asymmetric),
    ("count-zero", poke("count", 0, "<q")),
    ("count-negative", poke("count", -5, "<q")),
    ("n-negative", set_meta("n", "-3")),
    ("n-not-a-number", set_meta("n", "many")),
    ("n-5000-digits", set_meta("n", "9" * 5000)),
    ("seed-negative", set_meta("seed", "-1")),
    ("truncation-nan", set_meta("truncation", "nan")),
    ("truncation-out-of-range", set_meta("truncation", "2.5")),
    ("layer-missing", drop_meta("layer")),
    ("hash-missing", drop_meta("model_sha256")),
]


@pytest.mark.parametrize("transform", [c[1] for c in STATS_CASES], ids=[c[0] for c in STATS_CASES])
def test_hostile_stats_files_are_refused(
    folder: Path, good_stats: bytes, good_rule: bytes, transform, tmp_path: Path, capsys
) -> None:
    path = tmp_path / "bad-stats.safetensors"
    path.write_bytes(transform(good_stats) if transform is not None else good_rule)
    with pytest.raises(StatsError):
        KeyStats.load(path)
    spec, out = tmp_path / "spec.json", tmp_path / "rule.safetensors"
    spec.write_text(json.dumps(good_spec()))
    refused_by_cli(
        ["rewrite", str(folder), "--spec", str(spec), "--stats", str(path), "--out", str(out)], capsys, StatsError
    )
    assert not out.exists()


def test_stats_for_another_layer_or_size_are_refused(folder: Path, tmp_path: Path, capsys) -> None:
    spec, out = tmp_path / "spec.json", tmp_path / "rule.safetensors"
    spec.write_text(json.dumps(good_spec()))
    for layer, dim in (("layer1", 16), (LAYER, 8)):
        stats = KeyStats(
            torch.eye(dim, dtype=torch.float64), torch.zeros(dim, dtype=torch.float64), 10, layer, "a" * 64, 4, None, 0
        )
        path = stats.save(tmp_path / f"{layer}-{dim}.safetensors")
        refused_by_cli(
            ["rewrite", str(folder), "--spec", str(spec), "--stats", str(path), "--out", str(out)], capsys, StatsError
        )
    assert not out.exists()


def test_good_stats_fixture_solves(folder: Path, good_stats: bytes, tmp_path: Path) -> None:
    path = tmp_path / "stats.safetensors"
    path.write_bytes(good_stats)
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps(good_spec()))
    argv = ["rewrite", str(folder), "--spec", str(spec), "--stats", str(path), "--out", str(tmp_path / "r.safetensors")]
    assert main([*argv, "--device", "cpu"]) == 0


def test_singular_statistics_are_refused_when_solving() -> None:
    stats = KeyStats(
        -torch.eye(4, dtype=torch.float64), torch.zeros(4, dtype=torch.float64), 10, LAYER, "a", 4, None, 0
    )  # built in memory: the loader would refuse it already
    with pytest.raises(StatsError, match="positive"):
        stats.solve(torch.ones(4))


# ======================================================================================================
# 4. Rule specs
# ======================================================================================================
ZIP_BOMB = "u8z:16x16:" + base64.b64encode(zlib.compress(bytes(10_000_000), 9)).decode()  # 256 px → 10 MB


def _spec(edit: Callable[[dict], Any]) -> str:
    spec = good_spec()
    edit(spec)
    return json.dumps(spec)


SPEC_CASES = [
    ("empty", "", RuleError),
    ("not-json", "{version: 1", RuleError),
    ("array", "[1, 2]", RuleError),
    ("null", "null", RuleError),
    ("latin1", b'{"version": 1, "layer": "\xff"}', RuleError),
    ("5000-digits", '{"version": ' + "1" * 5000 + "}", RuleError),
    ("deep-nesting", "[" * 100_000 + "]" * 100_000, RuleError),
    ("version-2", _spec(lambda s: s.update(version=2)), RuleError),
    ("layer-missing", _spec(lambda s: s.pop("layer")), RuleError),
    ("layer-list", _spec(lambda s: s.update(layer=["layer2"])), RuleError),
    ("unknown-field", _spec(lambda s: s.update(seeds=[1])), RuleError),
    ("method-list", _spec(lambda s: s.update(method=["closed_form"])), RuleError),
    ("method-unknown", _spec(lambda s: s.update(method="magic")), RuleError),
    ("rank-zero", _spec(lambda s: s.update(rank=0)), RuleError),
    ("rank-float", _spec(lambda s: s.update(rank=1.5)), RuleError),
    ("truncation-nan", _spec(lambda s: s.update(truncation=math.nan)), RuleError),
    ("seed-negative", _spec(lambda s: s["copy"].update(seed=-1)), RuleError),
    ("seed-2**64", _spec(lambda s: s["copy"].update(seed=2**64)), RuleError),
    ("seed-bool", _spec(lambda s: s["copy"].update(seed=True)), RuleError),
    ("mask-not-a-code", _spec(lambda s: s["copy"].update(mask="a cat")), RuleError),
    ("mask-number", _spec(lambda s: s["copy"].update(mask=7)), RuleError),
    ("mask-runs-short", _spec(lambda s: s["copy"].update(mask="rle:16x16:10,10")), RuleError),
    ("mask-runs-negative", _spec(lambda s: s["copy"].update(mask="rle:16x16:-4,260")), RuleError),
    ("mask-giant", _spec(lambda s: s["copy"].update(mask="rle:100000x100000:10000000000")), RuleError),
    ("mask-zip-bomb", _spec(lambda s: s["copy"].update(mask=ZIP_BOMB)), RuleError),
    ("mask-bad-base64", _spec(lambda s: s["copy"].update(mask="u8z:16x16:!!!")), RuleError),
    ("context-not-list", _spec(lambda s: s.update(context={"seed": 1})), RuleError),
    ("paste-offset-and-mask", _spec(lambda s: s["paste"].update(offset=[1, 2])), RuleError),
    ("paste-offset-floats", _spec(lambda s: s.update(paste={"seed": 1, "offset": [0.5, 1]})), RuleError),
    ("no-goal", _spec(lambda s: (s.pop("copy"), s.pop("paste"))), RuleError),
    ("erase-and-copy", _spec(lambda s: s.update(erase={"seed": 0, "mask": s["copy"]["mask"]})), RuleError),
    ("stats-n-zero", _spec(lambda s: s["stats"].update(n=0)), RuleError),
    ("solver-unknown-option", _spec(lambda s: s.update(solver={"exec": "rm -rf /"})), RuleError),
    ("solver-not-object", _spec(lambda s: s.update(solver=[1])), RuleError),
    ("region-unknown", _spec(lambda s: s.update(region="circle")), RuleError),
]
SPEC_ON_MODEL_CASES = [  # well-formed specs that do not fit the tiny model: refused once the model is known
    ("mask-wrong-resolution", _spec(lambda s: s["copy"].update(mask=encode_mask(box(8, 1, 1, 4, 4)))), RuleError),
    ("layer-unknown", _spec(lambda s: s.update(layer="layer9")), LayerError),
]


@pytest.mark.parametrize(("text", "error"), [c[1:] for c in SPEC_CASES], ids=[c[0] for c in SPEC_CASES])
def test_hostile_specs_are_refused(folder: Path, text: str | bytes, error, tmp_path: Path, capsys) -> None:
    path = tmp_path / "spec.json"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(error):
        read_spec(path)
    if isinstance(text, str):
        with pytest.raises(error):
            Rewriter.from_spec(load_folder(folder), text)
    out = tmp_path / "rule.safetensors"
    refused_by_cli(["rewrite", str(folder), "--spec", str(path), "--out", str(out)], capsys, error)
    assert not out.exists()


@pytest.mark.parametrize(
    ("text", "error"), [c[1:] for c in SPEC_ON_MODEL_CASES], ids=[c[0] for c in SPEC_ON_MODEL_CASES]
)
def test_specs_that_do_not_fit_the_model_are_refused(folder: Path, text: str, error, tmp_path: Path, capsys) -> None:
    path = tmp_path / "spec.json"
    path.write_text(text)
    read_spec(path)  # the form is fine
    with pytest.raises(error):
        Rewriter.from_spec(load_folder(folder), text)
    out = tmp_path / "rule.safetensors"
    refused_by_cli(["rewrite", str(folder), "--spec", str(path), "--out", str(out)], capsys, error)
    assert not out.exists()


def test_missing_spec_file(folder: Path, tmp_path: Path, capsys) -> None:
    with pytest.raises(RuleNotFoundError):
        read_spec(tmp_path / "nope.json")
    refused_by_cli(
        ["rewrite", str(folder), "--spec", str(tmp_path / "nope.json"), "--out", str(tmp_path / "r")],
        capsys,
        RuleNotFoundError,
    )


def test_good_spec_solves(folder: Path, tmp_path: Path) -> None:
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(good_spec()))
    assert (
        main(["rewrite", str(folder), "--spec", str(path), "--out", str(tmp_path / "r.safetensors"), "--device", "cpu"])
        == 0
    )


# ======================================================================================================
# 5. Legacy checkpoints (more in test_convert.py: missing, empty, images, junk, truncated zip, pickles)
# ======================================================================================================
def _save(obj: Any) -> Callable[[Path, DCGANGenerator], Path]:
    def make(path: Path, G: DCGANGenerator) -> Path:
        torch.save(obj(G) if callable(obj) else obj, path)
        return path

    return make


def _bytes(data: bytes) -> Callable[[Path, DCGANGenerator], Path]:
    def make(path: Path, G: DCGANGenerator) -> Path:
        path.write_bytes(data)
        return path

    return make


def _nan_weights(G: DCGANGenerator) -> dict:
    state = {k: v.clone() for k, v in G.state_dict().items()}
    state["main.0.weight"].view(-1)[3] = math.nan
    return state


def _safetensors_file(path: Path, G: DCGANGenerator) -> Path:
    save_file(G.state_dict(), path)
    return path


CHECKPOINT_CASES = [
    ("a-list", _save([1, 2, 3]), CheckpointError),
    ("a-tensor", _save(torch.zeros(3)), CheckpointError),
    ("empty-dict", _save({}), CheckpointError),
    ("non-tensor-values", _save({"main.0.weight": [1.0, 2.0]}), CheckpointError),
    ("netG-not-a-dict", _save({"netG_state_dict": 7}), CheckpointError),
    ("one-layer-only", _save(lambda G: {"main.0.weight": G.state_dict()["main.0.weight"]}), CheckpointError),
    ("wrong-shapes", _save(lambda G: {**G.state_dict(), "main.3.weight": torch.zeros(16, 4, 4, 4)}), CheckpointError),
    ("nan-weights", _save(_nan_weights), CheckpointError),
    ("int-weights", _save(lambda G: {k: v.long() for k, v in G.state_dict().items()}), CheckpointError),
    ("safetensors-not-pickle", _safetensors_file, CheckpointError),
    ("random-bytes", _bytes(bytes(range(256)) * 4), CheckpointError),
    (
        "pickle-calls-eval",
        _bytes(b"\x80\x02cbuiltins\neval\nq\x00X\x01\x00\x00\x001q\x01\x85q\x02Rq\x03."),
        UnsafeCheckpointError,
    ),
]


@pytest.mark.parametrize(("make", "error"), [c[1:] for c in CHECKPOINT_CASES], ids=[c[0] for c in CHECKPOINT_CASES])
def test_hostile_checkpoints_are_refused(tiny_dcgan: DCGANGenerator, make, error, tmp_path: Path, capsys) -> None:
    path = make(tmp_path / "ckpt.pt", tiny_dcgan)
    with pytest.raises(error):
        convert_checkpoint(path, format="dcgan")
    out = tmp_path / "out"
    capsys.readouterr()
    assert main(["convert", str(path), str(out), "--format", "dcgan"]) == 2
    err = capsys.readouterr().err
    assert "error:" in err and "Traceback" not in err
    assert not out.exists()


# ======================================================================================================
# 6. The real command, in its own process: exit status 2, one line on stderr, no traceback
# ======================================================================================================
def test_cli_process_refuses_without_traceback(folder: Path, good_rule: bytes, tmp_path: Path) -> None:
    bad_rule = tmp_path / "nan.safetensors"
    bad_rule.write_bytes(poke(f"{LAYER}.direction", math.nan)(good_rule))
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "model.safetensors").write_bytes((folder / "model.safetensors").read_bytes())
    (broken / "config.json").write_text('{"architecture": "dcgan", "resolution": ' + "9" * 5000 + "}")
    for argv, message in (
        (["sample", str(tmp_path / "elsewhere"), "--rule", str(bad_rule)], "no model folder"),
        (["apply", str(folder), str(bad_rule)], "NaN"),
        (["sample", str(broken)], "not valid JSON"),
    ):
        argv = [*argv, "--out", str(tmp_path / "out.png"), "--device", "cpu"]
        done = subprocess.run(
            [sys.executable, "-m", "gan_rewrite.cli", *argv], capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 2, done.stderr
        assert "Traceback" not in done.stderr and message in done.stderr, done.stderr


def test_unknown_picture_format_is_refused_before_sampling(folder: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "grid.xyz"
    err = refused_by_cli(["sample", str(folder), "--seeds", "0", "--out", str(out)], capsys, GanRewriteError)
    assert "image format" in err and not out.exists()
