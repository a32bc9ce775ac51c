"""Rules under hostile or unlucky use: digests after fuse/unload cycles, infinite results, odd names."""

from __future__ import annotations

import pytest
import torch

from gan_rewrite.errors import RuleError, RuleMismatchError
from gan_rewrite.hashing import cached_digest, tensor_sha256
from gan_rewrite.models import DCGANConfig, DCGANGenerator
from gan_rewrite.rewrite.delta import LayerDelta, RuleDelta
from gan_rewrite.rewrite.layers import layer_kind

LAYER = "layer2"


@pytest.fixture
def tiny() -> DCGANGenerator:
    torch.manual_seed(0)
    return DCGANGenerator(DCGANConfig(resolution=16, ngf=8, z_dim=8)).eval()


def rule_on(G: DCGANGenerator, seed: int, base: torch.Tensor | None = None, scale: float = 1.0) -> RuleDelta:
    """A random rank-1 rule at LAYER, recorded as made on ``base`` (default: the layer's current weight)."""
    module = G.layer_module(LAYER)
    kind = layer_kind(module)
    out_ch, in_ch, kh, kw = kind.shape(module.weight)
    g = torch.Generator().manual_seed(seed)
    direction = torch.nn.functional.normalize(torch.randn(in_ch, 1, generator=g), dim=0)
    lam = torch.randn(out_ch, 1, kh, kw, generator=g) * module.weight.abs().mean()
    digest = tensor_sha256(module.weight if base is None else base)
    return RuleDelta(layers={LAYER: LayerDelta(direction, lam, kind.layout, digest)}, scale=scale)


def test_base_digest_is_right_after_many_fuse_unload_cycles(tiny: DCGANGenerator) -> None:
    """Fuse A, load X (made on W+A), unload, fuse B, load X: refused every time; a rule made on W+B loads.

    Keyed on (pointer, version), a freshly composed base reused the address of the last one and got its digest.
    """
    wrongly_accepted = wrongly_refused = 0
    for i in range(40):
        a, b = rule_on(tiny, 2 * i), rule_on(tiny, 2 * i + 1)
        tiny.load_rule(a, name="a")
        tiny.fuse_rules()
        x = rule_on(tiny, 1000 + i)  # made on W + A
        tiny.load_rule(x, name="x")
        tiny.unload_rules()
        tiny.load_rule(b, name="b")
        tiny.fuse_rules()
        try:
            tiny.load_rule(x, name="x")
            wrongly_accepted += 1
        except RuleMismatchError:
            pass
        y = rule_on(tiny, 2000 + i)  # made on W + B
        try:
            tiny.load_rule(y, name="y")
        except RuleMismatchError:
            wrongly_refused += 1
        tiny.unload_rules()
    assert (wrongly_accepted, wrongly_refused) == (0, 0)


def test_cached_digest_never_reuses_a_dead_tensors_entry() -> None:
    owner = torch.nn.Module()
    wrong = 0
    for i in range(200):
        t = torch.full((64,), float(i))
        if cached_digest(owner, "k", [t], lambda t=t: tensor_sha256(t)) != tensor_sha256(t):
            wrong += 1
        del t  # the next tensor may well land at the same address, with the same version (0)
    assert wrong == 0


def test_scales_that_make_weights_infinite_are_refused(tiny: DCGANGenerator) -> None:
    before = tiny.layer_module(LAYER).weight.clone()
    with pytest.raises(RuleError, match="infinite"):
        tiny.load_rule(rule_on(tiny, 1), name="huge", scale=1e300)
    assert tiny.active_rules == [] and torch.equal(tiny.layer_module(LAYER).weight, before)
    tiny.load_rule(rule_on(tiny, 1), name="ok", scale=2.0)
    changed = tiny.layer_module(LAYER).weight.clone()
    with pytest.raises(RuleError, match="infinite"):
        tiny.set_rule_scales({"ok": 1e300})
    assert tiny.active_rules[0].scale == 2.0 and torch.equal(tiny.layer_module(LAYER).weight, changed)
    tiny.unload_rules()
    assert torch.equal(tiny.layer_module(LAYER).weight, before)


def test_rule_file_whose_own_scale_overflows_is_refused(tiny: DCGANGenerator, tmp_path) -> None:
    path = rule_on(tiny, 3).save(tmp_path / "r.safetensors")
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(path), "pt") as handle:
        tensors = {k: handle.get_tensor(k) for k in handle.keys()}  # noqa: SIM118
        metadata = dict(handle.metadata())
    metadata["scale"] = "1e39"  # finite as a Python float, infinite in float32
    save_file(tensors, str(path), metadata=metadata)
    before = tiny.layer_module(LAYER).weight.clone()
    with pytest.raises(RuleError, match="infinite or NaN"):
        tiny.load_rule(path)
    assert tiny.active_rules == [] and torch.equal(tiny.layer_module(LAYER).weight, before)
    assert torch.isfinite(tiny.sample([0])).all()


@pytest.mark.parametrize("name", [5, "", "a\nb", "x" * 201, ("t",), None.__class__])
def test_rule_names_are_checked(tiny: DCGANGenerator, name: object) -> None:
    with pytest.raises(RuleError, match="rule name"):
        tiny.load_rule(rule_on(tiny, 4), name=name)
    assert tiny.active_rules == []
    with pytest.raises(RuleError, match="no rule named"):
        tiny.set_rule_scales({name: 1.0} if not isinstance(name, type) else {"nope": 1.0})


def test_unload_then_load_reuses_nothing_stale_after_outside_writes(tiny: DCGANGenerator) -> None:
    """The original kept after an unload is dropped when someone else writes the weight."""
    rule = rule_on(tiny, 5)
    tiny.load_rule(rule, name="r")
    tiny.unload_rules()
    with torch.no_grad():
        tiny.layer_module(LAYER).weight.mul_(2)
    doubled = tiny.layer_module(LAYER).weight.clone()
    tiny.load_rule(rule, name="r", force=True)
    tiny.unload_rules()
    assert torch.equal(tiny.layer_module(LAYER).weight, doubled)
    assert tiny.original_layer_weight(LAYER).equal(doubled)


def test_name_lists_must_be_lists(tiny: DCGANGenerator) -> None:
    tiny.load_rule(rule_on(tiny, 6), name="smile")
    for verb in (tiny.unload_rules, tiny.fuse_rules, tiny.unfuse_rules):
        with pytest.raises(RuleError, match="list of rule names"):
            verb("smile")  # a string is not a list of names (it used to be read letter by letter)
    assert [r.name for r in tiny.active_rules] == ["smile"]
