"""Property-based tests: every loader either succeeds or raises one of *our* errors, whatever it is fed.

Random JSON values and mutations of valid inputs go to the rule-spec checker and ``Rewriter.from_spec``, the
``RuleDelta`` loader, ``KeyStats.load`` and ``load_folder``. "Our errors" are the documented subclasses of
``GanRewriteError``; a bare ``KeyError`` / ``ValueError`` / ``SafetensorError`` / ``RuntimeError`` is a bug.

Budgets are small and the runs derandomised, so CI sees the same examples every time (a few seconds in all).
"""

from __future__ import annotations

import atexit
import copy
import functools
import json
import shutil
import struct
import tempfile
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from masks import tiny_copy_paste_spec

from gan_rewrite.errors import GanRewriteError
from gan_rewrite.hashing import tensor_sha256
from gan_rewrite.hub.loading import load_folder
from gan_rewrite.models import DCGANConfig, DCGANGenerator
from gan_rewrite.rewrite.delta import LayerDelta, RuleDelta
from gan_rewrite.rewrite.rewriter import Rewriter
from gan_rewrite.rewrite.spec import check_spec
from gan_rewrite.rewrite.stats import KeyStats

FUZZ = settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much],
)
LAYER = "layer2"


# ----- what the fuzzers start from -------------------------------------------------------------------
@functools.cache
def tiny() -> DCGANGenerator:
    torch.manual_seed(0)
    return DCGANGenerator(DCGANConfig(resolution=16, ngf=8, z_dim=8)).eval()


@functools.cache
def workdir() -> Path:
    """One scratch folder for the whole module (hypothesis runs many examples per test), removed at exit."""
    path = Path(tempfile.mkdtemp(prefix="gan-rewrite-fuzz-"))
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


def valid_spec() -> dict[str, Any]:
    return tiny_copy_paste_spec(stats_n=12, layer=LAYER)


@functools.cache
def valid_rule_bytes() -> bytes:
    G = tiny()
    kind_shape = G.layer_module(LAYER).weight.shape  # (I, O, 4, 4): a ConvTranspose2d
    in_ch, out_ch = kind_shape[0], kind_shape[1]
    g = torch.Generator().manual_seed(0)
    direction, _ = torch.linalg.qr(torch.randn(in_ch, 2, generator=g))
    rule = RuleDelta(
        layers={
            LAYER: LayerDelta(
                direction,
                torch.randn(out_ch, 2, 4, 4, generator=g),
                "conv_transpose2d",
                tensor_sha256(G.layer_module(LAYER).weight),
            )
        },
        base_model="tiny",
        spec=valid_spec(),
    )
    return rule.save(workdir() / "valid-rule.safetensors").read_bytes()


@functools.cache
def valid_stats_bytes() -> bytes:
    g = torch.Generator().manual_seed(1)
    keys = torch.randn(64, 8, generator=g, dtype=torch.float64)
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
    return stats.save(workdir() / "valid-stats.safetensors").read_bytes()


@functools.cache
def tiny_folder() -> Path:
    return tiny().save_pretrained(workdir() / "tiny")


def split_safetensors(blob: bytes) -> tuple[dict[str, Any], bytes]:
    (length,) = struct.unpack("<Q", blob[:8])
    return json.loads(blob[8 : 8 + length]), blob[8 + length :]


def join_safetensors(header: Any, data: bytes) -> bytes:
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + data


def write(name: str, blob: bytes) -> Path:
    path = workdir() / name
    path.write_bytes(blob)
    return path


# ----- strategies --------------------------------------------------------------------------------------
json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
type_confusions = st.sampled_from(
    [
        None,
        True,
        False,
        0,
        -1,
        1,
        2**31,
        2**64,
        -(2**64),
        0.5,
        -0.0,
        1e308,
        float("nan"),
        float("inf"),
        "",
        "x",
        "layer1",
        "closed_form",
        "optimize",
        "box",
        [],
        [0],
        [0, 0],
        [1, 2, 3],
        [[]],
        {},
        {"a": 1},
        {"seed": 0},
        {"seed": 0, "mask": "rle:16x16:256"},
    ]
)
mask_codes = (
    st.builds(
        lambda h, w, runs: f"rle:{h}x{w}:{','.join(map(str, runs))}",
        st.integers(0, 40),
        st.integers(0, 40),
        st.lists(st.integers(0, 300), max_size=6),
    )
    | st.builds(lambda h, w, body: f"u8z:{h}x{w}:{body}", st.integers(0, 40), st.integers(0, 40), st.text(max_size=20))
    | st.sampled_from(
        [
            "rle:16x16:256",
            "rle:16x16:0,256",
            "rle:99999999x99999999:1",
            "u8z:16x16:eJwDAAAAAAE=",
            "rle:16x16:-1,257",
            "rle:0x0:",
            "rle:16x16:" + ",".join(["1"] * 256),
        ]
    )
    | st.text(max_size=30)
)


def paths(value: Any, prefix: tuple = ()) -> list[tuple]:
    """Every key path into a JSON value (dict keys and list indices), the root excluded."""
    out = []
    if isinstance(value, dict):
        for key, item in value.items():
            out += [(*prefix, key), *paths(item, (*prefix, key))]
    elif isinstance(value, list):
        for i, item in enumerate(value):
            out += [(*prefix, i), *paths(item, (*prefix, i))]
    return out


@st.composite
def mutated_specs(draw: st.DrawFn) -> Any:
    spec = valid_spec()
    for _ in range(draw(st.integers(1, 2))):
        where = paths(spec)
        if not where or not isinstance(spec, dict):
            break
        top = [(key,) for key in spec]  # half the time a top-level field: most of the checks are there
        path = draw(st.sampled_from(top if top and draw(st.booleans()) else where))
        parent = functools.reduce(lambda obj, key: obj[key], path[:-1], spec)
        action = draw(st.sampled_from(["replace", "replace", "confuse", "confuse", "mask", "mask", "delete", "add"]))
        if action == "delete":
            del parent[path[-1]]
        elif action == "replace":
            parent[path[-1]] = draw(json_values)
        elif action == "confuse":  # a value of another JSON type, or an edge of the right one
            parent[path[-1]] = draw(type_confusions)
        elif action == "mask":
            parent[path[-1]] = draw(mask_codes)
        elif isinstance(parent, dict):
            parent[draw(st.text(max_size=8))] = draw(json_values)
    return spec


def ours_or_success(call) -> None:
    """Run ``call``; anything but success or a GanRewriteError fails the property."""
    try:
        call()
    except GanRewriteError:
        pass


# ----- (a) rule specs ------------------------------------------------------------------------------------
@FUZZ
@given(json_values)
def test_check_spec_on_random_json(value: Any) -> None:
    ours_or_success(lambda: check_spec(value))
    ours_or_success(lambda: check_spec(value, resolution=16))


@settings(FUZZ, max_examples=300)
@given(mutated_specs())
def test_spec_mutations_refuse_or_rebuild(spec: Any) -> None:
    ours_or_success(lambda: check_spec(copy.deepcopy(spec), resolution=16))
    ours_or_success(lambda: Rewriter.from_spec(tiny(), copy.deepcopy(spec)))
    text = json.dumps(spec)  # NaN / Infinity included, as Python writes them
    ours_or_success(lambda: Rewriter.from_spec(tiny(), text))


@FUZZ
@given(st.text(max_size=60) | st.binary(max_size=60).map(lambda b: b.decode("latin-1")))
def test_from_spec_on_random_text(text: str) -> None:
    ours_or_success(lambda: Rewriter.from_spec(tiny(), text))


def test_valid_spec_is_accepted() -> None:
    """The fuzzers start from a spec that is valid, so their mutations test something."""
    check_spec(valid_spec(), resolution=16)
    assert Rewriter.from_spec(tiny(), valid_spec()).layer == LAYER


# ----- (b) rule files --------------------------------------------------------------------------------------
HOSTILE_STRINGS = [
    "",
    "nan",
    "inf",
    "-1",
    "0",
    "2",
    "layer2,layer2",
    "1e999",
    "conv2d",
    "[]",
    "{",
    "gan-rewrite.rule/1",
]


@st.composite
def mutated_rule_files(draw: st.DrawFn) -> bytes:
    blob = valid_rule_bytes()
    kind = draw(st.sampled_from(["flip", "truncate", "header", "splice"]))
    if kind == "flip":
        data = bytearray(blob)
        for _ in range(draw(st.integers(1, 8))):
            i = draw(st.integers(0, len(data) - 1))
            data[i] ^= 1 << draw(st.integers(0, 7))
        return bytes(data)
    if kind == "truncate":
        return blob[: draw(st.integers(0, len(blob) - 1))]
    if kind == "splice":
        i = draw(st.integers(0, len(blob)))
        return blob[:i] + draw(st.binary(max_size=32)) + blob[i:]
    header, data = split_safetensors(blob)
    for _ in range(draw(st.integers(1, 3))):
        where = paths(header)
        if not where:
            break
        path = draw(st.sampled_from(where))
        parent = functools.reduce(lambda obj, key: obj[key], path[:-1], header)
        choice = draw(st.sampled_from(["delete", "replace", "string", "number", "dtype"]))
        if choice == "delete":
            del parent[path[-1]]
        elif choice == "replace":
            parent[path[-1]] = draw(json_values)
        elif choice == "string":
            parent[path[-1]] = draw(st.sampled_from(HOSTILE_STRINGS))
        elif choice == "number":
            parent[path[-1]] = draw(st.integers(-5, 2**64))
        else:
            parent[path[-1]] = draw(st.sampled_from(["F16", "F64", "I64", "BOOL", "U8", "BF16", "F8_E4M3"]))
    if draw(st.booleans()):
        data = data + draw(st.binary(max_size=16))
    return join_safetensors(header, data)


@FUZZ
@given(st.binary(max_size=200))
def test_rule_loader_on_random_bytes(blob: bytes) -> None:
    path = write("random-rule.safetensors", blob)
    ours_or_success(lambda: RuleDelta.load(path))


@FUZZ
@given(mutated_rule_files())
def test_rule_loader_on_mutated_files(blob: bytes) -> None:
    path = write("mutated-rule.safetensors", blob)
    try:
        rule = RuleDelta.load(path)
    except GanRewriteError:
        return
    # Whatever loads is finite and applies (or is refused) cleanly on the model it claims to fit.
    for part in rule.layers.values():
        assert torch.isfinite(part.direction).all() and torch.isfinite(part.lam).all()
    G = tiny()
    try:
        G.load_rule(rule, name="fuzz")
    except GanRewriteError:
        return
    G.unload_rules()


def test_valid_rule_loads_and_applies() -> None:
    """The file the rule fuzzers start from loads, moves the weight by exactly its ΔW, and unloads."""
    rule = RuleDelta.load(write("valid.safetensors", valid_rule_bytes()))
    G = tiny()
    before, image = G.layer_module(LAYER).weight.detach().clone(), G.sample([0])
    assert rule.spec == valid_spec() and rule.layers[LAYER].base_layer_sha256 == tensor_sha256(before)
    G.load_rule(rule, name="valid")
    try:
        delta = G.layer_module(LAYER).weight.detach() - before
        assert delta.abs().max() > 0.1
        torch.testing.assert_close(delta, rule.delta_weight(LAYER), rtol=1e-5, atol=1e-5)
        assert not torch.allclose(G.sample([0]), image)
    finally:
        G.unload_rules()
    assert torch.equal(G.layer_module(LAYER).weight, before)


# ----- (c) statistics files ----------------------------------------------------------------------------------
@st.composite
def mutated_stats_files(draw: st.DrawFn) -> bytes:
    blob = valid_stats_bytes()
    header, data = split_safetensors(blob)
    kind = draw(st.sampled_from(["flip", "truncate", "header", "values"]))
    if kind == "flip":
        raw = bytearray(blob)
        for _ in range(draw(st.integers(1, 8))):
            raw[draw(st.integers(0, len(raw) - 1))] ^= 1 << draw(st.integers(0, 7))
        return bytes(raw)
    if kind == "truncate":
        return blob[: draw(st.integers(0, len(blob) - 1))]
    if kind == "values":  # a well-formed file whose numbers are hostile
        raw = bytearray(data)
        for _ in range(draw(st.integers(1, 4))):
            i = draw(st.integers(0, len(raw) // 8 - 1)) * 8
            value = draw(st.sampled_from([float("nan"), float("inf"), -1e300, -1.0, 0.0, 1e300]))
            raw[i : i + 8] = struct.pack("<d", value)
        return join_safetensors(header, bytes(raw))
    path = draw(st.sampled_from(paths(header)))
    parent = functools.reduce(lambda obj, key: obj[key], path[:-1], header)
    parent[path[-1]] = draw(
        json_values | st.sampled_from(["", "nan", "-1", "2.5", "F32", "I64", "BOOL", "9" * 5000]) | st.integers(-3, 300)
    )
    return join_safetensors(header, data)


@FUZZ
@given(st.binary(max_size=200) | mutated_stats_files())
def test_stats_loader_only_raises_stats_errors(blob: bytes) -> None:
    path = write("fuzz-stats.safetensors", blob)
    try:
        stats = KeyStats.load(path)
    except GanRewriteError:
        return
    try:  # what loads must also solve, or refuse to with our error
        stats.solve(torch.ones(stats.dim, dtype=torch.float64))
        stats.inv_sqrt()
    except GanRewriteError:
        pass


def test_valid_stats_load() -> None:
    assert KeyStats.load(write("valid-stats.safetensors", valid_stats_bytes())).dim == 8


# ----- (d) config.json of a model folder ---------------------------------------------------------------------
@st.composite
def mutated_configs(draw: st.DrawFn) -> str:
    config = json.loads((tiny_folder() / "config.json").read_text())
    for _ in range(draw(st.integers(1, 3))):
        key = draw(st.sampled_from(sorted(config) + ["unknown_field"]))
        if draw(st.booleans()) and key in config:
            del config[key]
        else:
            config[key] = draw(
                json_values
                | st.integers(-(2**64), 2**64)
                | st.sampled_from([0, 1, 4, 8, 2**40, 2**63, 1e308])
                | st.sampled_from(["dcgan", "progan", "stylegan2", "layer1", "layer9"])
            )
    return json.dumps(config)


@pytest.fixture(scope="module")
def fuzz_folder() -> Path:
    folder = workdir() / "fuzz-folder"
    folder.mkdir(exist_ok=True)
    (folder / "model.safetensors").write_bytes((tiny_folder() / "model.safetensors").read_bytes())
    return folder


@FUZZ
@given(text=mutated_configs() | json_values.map(json.dumps) | st.text(max_size=40))
def test_load_folder_on_hostile_configs(fuzz_folder: Path, text: str) -> None:
    (fuzz_folder / "config.json").write_text(text, encoding="utf-8")
    ours_or_success(lambda: load_folder(fuzz_folder))


def test_tiny_folder_loads() -> None:
    assert load_folder(tiny_folder()).layer_names == tiny().layer_names
