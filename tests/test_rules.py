"""Rules on a generator: load / scale / stack / fuse / unfuse / unload, hash checks, bit-exact restore."""

from __future__ import annotations

import itertools

import pytest
import torch
from common_fixtures import TINY_ARCHITECTURES

from gan_rewrite.errors import LayerError, RuleError, RuleMismatchError
from gan_rewrite.models import (
    DCGANConfig,
    DCGANGenerator,
    GANGenerator,
)
from gan_rewrite.rewrite.delta import LayerDelta, RuleDelta
from gan_rewrite.rewrite.layers import layer_kind
from gan_rewrite.rewrite.stats import model_sha256


@pytest.fixture
def tiny() -> DCGANGenerator:
    torch.manual_seed(0)
    return DCGANGenerator(DCGANConfig(resolution=16, ngf=8, z_dim=8)).eval()


def make_rule(G: DCGANGenerator, layer: str, seed: int, rank: int = 2, scale: float = 1.0) -> RuleDelta:
    """A rule far from identity (so every test below tests something)."""
    weight = G.layer_module(layer).weight
    out_ch, in_ch, kh, kw = layer_kind(G.layer_module(layer)).shape(weight)
    g = torch.Generator().manual_seed(seed)
    direction, _ = torch.linalg.qr(torch.randn(in_ch, rank, generator=g))
    lam = torch.randn(out_ch, rank, kh, kw, generator=g) * weight.abs().mean()
    part = LayerDelta(direction, lam, layer_kind(G.layer_module(layer)).layout, G.layer_weight_sha256(layer))
    return RuleDelta(layers={layer: part}, scale=scale, base_model="tiny")


def weights(G: DCGANGenerator) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in G.state_dict().items()}


def assert_bit_exact(G: DCGANGenerator, before: dict[str, torch.Tensor]) -> None:
    after = G.state_dict()
    for key, value in before.items():
        assert torch.equal(after[key], value), key


def test_load_then_unload_restores_bit_exactly(tiny: DCGANGenerator) -> None:
    before = weights(tiny)
    image = tiny.sample([1, 2])
    rule = make_rule(tiny, "layer2", seed=1, scale=0.7)
    tiny.load_rule(rule, name="a", scale=1.3)
    w = tiny.layer_module("layer2").weight
    torch.testing.assert_close(w, before["main.3.weight"] + 1.3 * rule.delta_weight("layer2"))
    assert not torch.equal(w, before["main.3.weight"])
    assert not torch.allclose(tiny.sample([1, 2]), image)
    assert [(r.name, r.scale, r.fused) for r in tiny.active_rules] == [("a", 1.3, False)]
    tiny.unload_rules()
    assert_bit_exact(tiny, before)
    assert torch.equal(tiny.sample([1, 2]), image)
    assert tiny.active_rules == []


def test_scales_are_recomputed_from_the_original(tiny: DCGANGenerator) -> None:
    before = weights(tiny)
    rule = make_rule(tiny, "layer2", seed=2)
    tiny.load_rule(rule, name="a")
    for s in (0.3, -2.0, 0.77, 1e-3):
        tiny.set_rule_scales({"a": s})
    torch.testing.assert_close(
        tiny.layer_module("layer2").weight, before["main.3.weight"] + 1e-3 * rule.delta_weight("layer2")
    )
    tiny.set_rule_scales({"a": 0.0})
    assert torch.equal(tiny.layer_module("layer2").weight, before["main.3.weight"])
    tiny.unload_rules(["a"])
    assert_bit_exact(tiny, before)
    with pytest.raises(RuleError, match="no rule named 'zz'"):
        tiny.set_rule_scales({"zz": 1.0})
    with pytest.raises(RuleError, match="finite"):
        tiny.load_rule(rule, name="b", scale=float("inf"))


def test_stacked_rules_sum_and_order_does_not_matter(tiny: DCGANGenerator) -> None:
    before = weights(tiny)
    r1, r2 = make_rule(tiny, "layer2", seed=3), make_rule(tiny, "layer2", seed=4, rank=1, scale=0.5)
    r3 = make_rule(tiny, "layer3", seed=5)
    tiny.load_rule(r1, name="one", scale=0.6)
    tiny.load_rule(r2, name="two", scale=-1.5)
    tiny.load_rule(r3, name="three")
    expected = before["main.3.weight"] + 0.6 * r1.delta_weight() - 1.5 * r2.delta_weight()
    torch.testing.assert_close(tiny.layer_module("layer2").weight, expected)
    torch.testing.assert_close(tiny.layer_module("layer3").weight, before["main.6.weight"] + r3.delta_weight())
    stacked = tiny.layer_module("layer2").weight.clone()
    tiny.unload_rules()
    tiny.load_rule(r2, name="two", scale=-1.5)
    tiny.load_rule(r1, name="one", scale=0.6)
    assert torch.equal(tiny.layer_module("layer2").weight, stacked)
    tiny.unload_rules(["one"])  # removing one rule leaves exactly the other
    torch.testing.assert_close(tiny.layer_module("layer2").weight, before["main.3.weight"] - 1.5 * r2.delta_weight())
    tiny.unload_rules()
    assert_bit_exact(tiny, before)


def test_every_load_order_gives_the_same_weight_bit_for_bit(tiny: DCGANGenerator) -> None:
    """Four rules on one layer, loaded in all 24 orders: the weight is identical to the last bit.

    Two float additions commute, so two rules cannot tell name order from load order; with four rules of
    very different sizes, summing in load order rounds differently for different orders.
    """
    rules = {
        f"r{i}": (make_rule(tiny, "layer2", seed=20 + i, rank=1 + i % 2), scale)
        for i, scale in enumerate((1e3, 0.37, -1e-3, 3.1))
    }
    weights_seen = {}
    for order in itertools.permutations(rules):
        for name in order:
            rule, scale = rules[name]
            tiny.load_rule(rule, name=name, scale=scale)
        weights_seen[order] = tiny.layer_module("layer2").weight.detach().clone()
        assert [r.name for r in tiny.active_rules] == sorted(rules)
        tiny.unload_rules()
    first = next(iter(weights_seen.values()))
    for order, weight in weights_seen.items():
        assert torch.equal(weight, first), f"load order {order} gives another weight"
    # ...and that weight is the sum of the four (so the comparison above is not of something trivial).
    expected = tiny.layer_module("layer2").weight + sum(s * r.delta_weight() for r, s in rules.values())
    torch.testing.assert_close(first, expected, rtol=1e-5, atol=1e-4)


def multi_layer_rule(G: GANGenerator, layers: list[str], seed: int) -> RuleDelta:
    parts = {layer: make_rule(G, layer, seed=seed + i).layers[layer] for i, layer in enumerate(layers)}
    return RuleDelta(layers=parts, base_model="tiny")


ARCHITECTURES = TINY_ARCHITECTURES


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_rules_over_every_layer_unload_to_the_same_model(arch: str) -> None:
    """Another angle on unloading: rules that each edit several layers, mixed with scaling, fusing and
    unloading by name, on every architecture; afterwards the model hashes, saves and draws as before."""
    torch.manual_seed(0)
    G = ARCHITECTURES[arch]().eval()
    before, digest, image = weights(G), model_sha256(G), G.sample([0, 1])
    layers = G.layer_names
    everywhere = multi_layer_rule(G, layers, seed=30)
    odd = multi_layer_rule(G, layers[1::2], seed=40)
    last_two = multi_layer_rule(G, layers[-2:], seed=50)
    G.load_rule(everywhere, name="everywhere", scale=0.8)
    G.load_rule(odd, name="odd", scale=-1.2)
    G.fuse_rules(["everywhere"])
    G.load_rule(last_two, name="last_two", force=True)  # solved on the unfused weights: forced
    G.set_rule_scales({"odd": 0.5})
    changed = [layer for layer in layers if not torch.equal(G.layer_module(layer).weight, before[G._weight_key(layer)])]
    assert changed == layers
    G.unload_rules(["odd"])
    G.unfuse_rules()
    G.unload_rules(["everywhere"])
    for layer in layers[:-2]:  # only `last_two` is left; every other layer is its original again
        assert torch.equal(G.layer_module(layer).weight, before[G._weight_key(layer)]), layer
    G.unload_rules()
    assert_bit_exact(G, before)
    assert model_sha256(G) == digest
    assert torch.equal(G.sample([0, 1]), image)
    assert all(torch.equal(G.original_layer_weight(layer), G.layer_module(layer).weight) for layer in layers)


def test_fuse_and_unfuse(tiny: DCGANGenerator) -> None:
    before = weights(tiny)
    r1 = make_rule(tiny, "layer2", seed=6)
    tiny.load_rule(r1, name="one", scale=0.5)
    fused_weight = tiny.layer_module("layer2").weight.clone()
    tiny.fuse_rules()
    assert [r.fused for r in tiny.active_rules] == [True]
    assert torch.equal(tiny.layer_module("layer2").weight, fused_weight)
    with pytest.raises(RuleError, match="fused"):
        tiny.set_rule_scales({"one": 1.0})
    # A rule solved on the fused model is checked against the fused base, so it loads without force...
    r2 = make_rule(tiny, "layer2", seed=7)
    tiny.load_rule(r2, name="two")
    # ...while a rule made on the original weight no longer matches it.
    with pytest.raises(RuleMismatchError, match="different 'layer2' weight"):
        tiny.load_rule(r1, name="again")
    tiny.unfuse_rules()
    tiny.set_rule_scales({"one": 1.0})
    torch.testing.assert_close(
        tiny.layer_module("layer2").weight, before["main.3.weight"] + r1.delta_weight() + r2.delta_weight()
    )
    tiny.fuse_rules(["one"])
    tiny.unload_rules()  # fused rules go too
    assert_bit_exact(tiny, before)
    assert torch.equal(tiny.original_layer_weight("layer2"), before["main.3.weight"])


def test_hash_mismatch_refused_unless_forced(tiny: DCGANGenerator, caplog) -> None:
    before = weights(tiny)
    rule = make_rule(tiny, "layer2", seed=8)
    rule.layers["layer2"].base_layer_sha256 = "0" * 64
    with pytest.raises(RuleMismatchError, match="force=True"):
        tiny.load_rule(rule, name="x")
    assert tiny.active_rules == [] and torch.equal(tiny.layer_module("layer2").weight, before["main.3.weight"])
    with caplog.at_level("WARNING"):
        tiny.load_rule(rule, name="x", force=True)
    assert "force=True" in caplog.text
    tiny.unload_rules()
    assert_bit_exact(tiny, before)


def test_refusals(tiny: DCGANGenerator, tmp_path) -> None:
    rule = make_rule(tiny, "layer2", seed=9)
    tiny.load_rule(rule, name="x")
    with pytest.raises(RuleError, match="already loaded"):
        tiny.load_rule(rule, name="x")
    wrong_layer = RuleDelta(layers={"layer9": rule.layers["layer2"]})
    with pytest.raises(LayerError, match="unknown layer 'layer9'"):
        tiny.load_rule(wrong_layer)
    wrong_shape = RuleDelta(layers={"layer3": rule.layers["layer2"]})
    with pytest.raises(RuleMismatchError, match="does not fit layer 'layer3'"):
        tiny.load_rule(wrong_shape, force=True)
    with pytest.raises(RuleError, match="unfuse|no rule named"):
        tiny.unfuse_rules(["nope"])


def test_load_from_path_names_rule_after_file(tiny: DCGANGenerator, tmp_path) -> None:
    path = make_rule(tiny, "layer3", seed=10).save(tmp_path / "smile.safetensors")
    assert tiny.load_rule(path) == "smile"
    assert tiny.load_rule(str(path), name="again", scale=0.0) == "again"
    assert [r.name for r in tiny.active_rules] == ["again", "smile"]


def test_save_pretrained_keeps_unfused_rules_out_and_fused_rules_in(tiny_dcgan, tmp_path) -> None:
    import gan_rewrite as gr

    layer = tiny_dcgan.layer_names[1]
    original = tiny_dcgan.layer_module(layer).weight.detach().clone()
    kind = tiny_dcgan.layer_module(layer)
    weight_shape = kind.weight.shape  # (I, O, kh, kw) for a ConvTranspose2d
    direction = torch.linalg.qr(torch.randn(weight_shape[0], 1))[0]
    lam = torch.randn(weight_shape[1], 1, *weight_shape[2:])
    from gan_rewrite.rewrite.delta import LayerDelta, RuleDelta

    rule = RuleDelta(layers={layer: LayerDelta(direction=direction, lam=lam, weight_layout="conv_transpose2d",
                                               base_layer_sha256=tiny_dcgan.layer_weight_sha256(layer))})
    tiny_dcgan.load_rule(rule, name="r")
    edited = tiny_dcgan.layer_module(layer).weight.detach().clone()
    assert not torch.equal(edited, original)
    plain = gr.load_generator(tiny_dcgan.save_pretrained(tmp_path / "plain"), device="cpu")
    assert torch.equal(plain.layer_module(layer).weight, original)
    tiny_dcgan.fuse_rules()
    fused = gr.load_generator(tiny_dcgan.save_pretrained(tmp_path / "fused"), device="cpu")
    assert torch.equal(fused.layer_module(layer).weight, edited)
