"""RuleDelta: the algebra of ΔW = Λ Dᵀ per layout, the file format, and its refusals."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from gan_rewrite.errors import LayerError, RuleError, RuleNotFoundError
from gan_rewrite.rewrite.delta import RULE_FORMAT, LayerDelta, RuleDelta
from gan_rewrite.rewrite.layers import LAYER_KINDS, kind_for_layout

# (layout, weight shape) for each layer kind: (I, O, kh, kw), (O, I, kh, kw), (1, O, I, k, k).
LAYOUTS = [
    ("conv_transpose2d", (12, 10, 4, 4)),
    ("conv2d", (10, 12, 3, 3)),
    ("modulated_conv2d", (1, 10, 12, 3, 3)),
]


def random_delta(in_ch: int, out_ch: int, taps: tuple[int, int], rank: int, seed: int) -> tuple:
    g = torch.Generator().manual_seed(seed)
    direction, _ = torch.linalg.qr(torch.randn(in_ch, rank, generator=g))  # (I, r)
    lam = torch.randn(out_ch, rank, *taps, generator=g)  # (O, r, kh, kw)
    return direction, lam


@pytest.mark.parametrize(("layout", "shape"), LAYOUTS)
@pytest.mark.parametrize("rank", [1, 3])
def test_delta_weight_shape_and_null_keys(layout: str, shape: tuple, rank: int) -> None:
    kind = kind_for_layout(layout)
    out_ch, in_ch, kh, kw = kind.shape(torch.zeros(shape))
    direction, lam = random_delta(in_ch, out_ch, (kh, kw), rank, seed=rank)
    dw = kind.delta_weight(direction, lam)
    assert tuple(dw.shape) == shape
    # Any key orthogonal to span D is left exactly alone, at every tap.
    g = torch.Generator().manual_seed(7)
    k = torch.randn(in_ch, 5, generator=g)
    k = k - direction @ (direction.T @ k)  # Dᵀk = 0
    per_tap = kind.to_oihw(dw)  # (O, I, kh, kw)
    response = torch.einsum("oiab,in->oabn", per_tap, k)
    assert response.abs().max() < 1e-5
    # ...while the keys in span D do move.
    assert torch.einsum("oiab,in->oabn", per_tap, direction).abs().max() > 1e-2
    # And Λ is recovered from ΔW by projection onto the orthonormal D.
    torch.testing.assert_close(kind.lambda_from_delta(dw, direction), lam, atol=1e-5, rtol=1e-5)


def make_rule(rank: int = 2, scale: float = 0.75) -> RuleDelta:
    d1, l1 = random_delta(12, 10, (4, 4), rank, seed=1)
    d2, l2 = random_delta(10, 6, (3, 3), 1, seed=2)
    return RuleDelta(
        layers={
            "layer2": LayerDelta(d1, l1, "conv_transpose2d", "a" * 64),
            "layer3": LayerDelta(d2, l2, "conv2d", "b" * 64),
        },
        scale=scale,
        base_model="owner/model",
        base_revision="abc123",
        method="closed_form",
        spec={"layer": "layer2", "context": [{"seed": 3, "mask": "rle:16x16:0,4,12"}]},
    )


def test_save_load_is_bit_exact_with_metadata(tmp_path) -> None:
    rule = make_rule(scale=0.1 + 0.2)  # a float whose repr must round-trip exactly
    path = rule.save(tmp_path / "rule.safetensors")
    loaded = RuleDelta.load(path)
    assert loaded.layer_names == ["layer2", "layer3"]
    for name in rule.layers:
        assert torch.equal(loaded.layers[name].direction, rule.layers[name].direction)
        assert torch.equal(loaded.layers[name].lam, rule.layers[name].lam)
        assert loaded.layers[name].weight_layout == rule.layers[name].weight_layout
        assert loaded.layers[name].base_layer_sha256 == rule.layers[name].base_layer_sha256
        assert torch.equal(loaded.delta_weight(name), rule.delta_weight(name))
    for attr in ("scale", "base_model", "base_revision", "method", "spec", "created", "library_version"):
        assert getattr(loaded, attr) == getattr(rule, attr), attr
    # A folder works too, and the header is what docs/method.md (section 9) documents.
    assert RuleDelta.load(tmp_path).spec == rule.spec
    meta = rule.metadata()
    assert meta["format"] == RULE_FORMAT
    assert meta["layer"] == "layer2,layer3" and meta["rank"] == "2,1"
    assert json.loads(meta["spec"]) == rule.spec
    assert set(meta) == {
        "format",
        "base_model",
        "base_revision",
        "base_layer_sha256",
        "layer",
        "weight_layout",
        "rank",
        "scale",
        "method",
        "created",
        "library_version",
        "spec",
    }


def test_delta_weight_applies_scale() -> None:
    rule = make_rule(scale=0.5)
    part = rule.layers["layer3"]
    expected = kind_for_layout("conv2d").delta_weight(part.direction, part.lam) * 0.5
    torch.testing.assert_close(rule.delta_weight("layer3"), expected)
    with pytest.raises(RuleError, match="pass `layer`"):
        rule.delta_weight()
    with pytest.raises(RuleError, match="does not edit layer 'layer9'"):
        rule.delta_weight("layer9")


def test_resolver_is_used_for_non_local_sources(tmp_path) -> None:
    path = make_rule().save(tmp_path / "r.safetensors")
    calls = []

    def resolver(source: str, revision: str | None):
        calls.append((source, revision))
        return path

    assert RuleDelta.load("owner/rule", revision="v1", resolver=resolver).base_model == "owner/model"
    assert calls == [("owner/rule", "v1")]
    with pytest.raises(RuleNotFoundError, match="owner/rule"):
        RuleDelta.load("owner/rule", resolver=lambda source, revision: tmp_path / "missing.safetensors")


def test_malformed_files_are_refused(tmp_path) -> None:
    d, lam = random_delta(4, 3, (1, 1), 1, seed=0)
    bad = tmp_path / "bad.safetensors"
    save_file({"layer1.direction": d, "layer1.lambda": lam}, str(bad), metadata={"format": "other/9"})
    with pytest.raises(RuleError, match="not a gan-rewrite rule"):
        RuleDelta.load(bad)
    meta = make_rule().metadata() | {
        "layer": "layer1",
        "rank": "2",
        "weight_layout": "conv2d",
        "base_layer_sha256": "c" * 64,
    }
    save_file({"layer1.direction": d, "layer1.lambda": lam}, str(bad), metadata=meta)
    with pytest.raises(RuleError, match="rank 1 but metadata says '2'"):
        RuleDelta.load(bad)
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(RuleError, match="cannot read"):
        RuleDelta.load(tmp_path / "junk.safetensors")


def test_invalid_construction() -> None:
    d, lam = random_delta(4, 3, (1, 1), 2, seed=0)
    with pytest.raises(RuleError, match="rank mismatch"):
        LayerDelta(d[:, :1], lam, "conv2d", "")
    with pytest.raises(LayerError, match="unknown weight layout"):
        LayerDelta(d, lam, "dense", "")
    with pytest.raises(RuleError, match="at least one layer"):
        RuleDelta(layers={})
    with pytest.raises(RuleError, match="finite"):
        RuleDelta(layers={"l": LayerDelta(d, lam, "conv2d", "")}, scale=float("nan"))


def test_every_layout_is_known() -> None:
    assert set(LAYER_KINDS) == {layout for layout, _ in LAYOUTS}
