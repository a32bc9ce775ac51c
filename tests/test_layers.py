"""Layer kinds: keys, outputs for a given weight, design columns, and ΔW leaving D⊥ keys alone."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from gan_rewrite.errors import LayerError
from gan_rewrite.models import (
    DCGANConfig,
    DCGANGenerator,
    GANGenerator,
    ProGANConfig,
    ProGANGenerator,
    StyleGAN2Config,
    StyleGAN2Generator,
)
from gan_rewrite.models.base import LayerState
from gan_rewrite.rewrite.layers import (
    Conv2dKind,
    ConvTranspose2dKind,
    ModulatedConv2dKind,
    keys_matrix,
    layer_kind,
)


def tiny_generators() -> dict[str, GANGenerator]:
    """One tiny random generator per architecture (8–16 channels, 16×16 images)."""
    torch.manual_seed(0)
    return {
        "dcgan": DCGANGenerator(DCGANConfig(resolution=16, ngf=8, z_dim=8)),
        "progan": ProGANGenerator(
            ProGANConfig(resolution=16, z_dim=8, channels=[16, 16, 12, 12, 8, 8], default_layer="layer4")
        ),
        "stylegan2": StyleGAN2Generator(
            StyleGAN2Config(resolution=16, z_dim=16, n_mlp=2, channels={"4": 16, "8": 16, "16": 8})
        ),
    }


GENERATORS = tiny_generators()
LAYERS = [(arch, layer) for arch, G in GENERATORS.items() for layer in G.layer_names]


@pytest.mark.parametrize(("arch", "layer"), LAYERS, ids=[f"{a}-{lay}" for a, lay in LAYERS])
def test_kind_reads_the_keys_and_output_the_layer_really_uses(arch: str, layer: str) -> None:
    """``kind.output(module, forward_to(layer))`` is exactly what the module outputs inside ``forward_from``."""
    G = GENERATORS[arch].eval()
    module = G.layer_module(layer)
    kind = layer_kind(module)
    seeds = [0, 1]
    state = G.forward_to(layer, G.make_latents(seeds), noise=G.make_noise(seeds))
    seen: list[torch.Tensor] = []
    handle = module.register_forward_hook(lambda _m, _i, out: seen.append(out))
    try:
        with torch.no_grad():
            G.forward_from(layer, state)
    finally:
        handle.remove()
    with torch.no_grad():
        torch.testing.assert_close(kind.output(module, state), seen[0], atol=1e-5, rtol=1e-5)
    assert kind.keys(module, state).shape[1] == kind.shape(module.weight)[1]
    # ΔW = ΛDᵀ leaves the linear response to keys in D⊥ at exactly zero, for every kind (for StyleGAN2 the
    # demodulation, recomputed from the edited weight, still rescales whole output channels).
    out_ch, in_ch, kh, kw = kind.shape(module.weight)
    g = torch.Generator().manual_seed(3)
    direction, _ = torch.linalg.qr(torch.randn(in_ch, 2, generator=g))
    dw = kind.delta_weight(direction, torch.randn(out_ch, 2, kh, kw, generator=g))
    assert dw.shape == module.weight.shape
    keys = kind.keys(module, state).detach()
    null = keys - torch.einsum("nihw,ir,jr->njhw", keys, direction, direction)
    with torch.no_grad():
        assert kind.linear(module, null, dw).abs().max() < 1e-5
        assert kind.linear(module, keys, dw).abs().max() > 1e-3
    if isinstance(kind, ModulatedConv2dKind):
        with torch.no_grad():
            gain = kind.gain(module, state, module.weight)
            torch.testing.assert_close(gain[:, :, 0, 0], module.demodulation(state.style))


def conv_modules() -> list[tuple[str, nn.Module, int]]:
    """(id, module, input resolution) — one per kind of plain convolution the engine supports."""
    torch.manual_seed(0)
    return [
        ("dcgan-first", nn.ConvTranspose2d(8, 6, 4, 1, 0, bias=False), 1),
        ("dcgan-up", nn.ConvTranspose2d(8, 6, 4, 2, 1, bias=False), 4),
        ("progan-3x3", nn.Conv2d(8, 6, 3, 1, 1, bias=False), 6),
        ("progan-first", nn.Conv2d(8, 6, 4, 1, 3, bias=True), 1),
    ]


CASES = conv_modules()


@pytest.mark.parametrize(("name", "module", "res"), CASES, ids=[c[0] for c in CASES])
def test_output_matches_module_and_null_keys_are_untouched(name: str, module: nn.Module, res: int) -> None:
    kind = layer_kind(module)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(3, 8, res, res, generator=g)
    state = LayerState(features=x)
    with torch.no_grad():
        torch.testing.assert_close(kind.output(module, state), module(x))
    out_ch, in_ch, kh, kw = kind.shape(module.weight)
    direction, _ = torch.linalg.qr(torch.randn(in_ch, 2, generator=g))
    lam = torch.randn(out_ch, 2, kh, kw, generator=g)
    dw = kind.delta_weight(direction, lam)
    assert dw.shape == module.weight.shape
    # Keys with Dᵀk = 0 everywhere: the edited layer writes exactly what the original wrote.
    keys = x - torch.einsum("nihw,ir,jr->njhw", x, direction, direction)
    null_state = LayerState(features=keys)
    with torch.no_grad():
        before = kind.output(module, null_state)
        after = kind.output(module, null_state, module.weight + dw)
    torch.testing.assert_close(after, before, atol=1e-5, rtol=0)
    with torch.no_grad():
        moved = kind.output(module, state, module.weight + dw) - kind.output(module, state)
    assert moved.abs().max() > 1e-2


DESIGN_CASES = [
    *CASES,
    ("stylegan2-up", GENERATORS["stylegan2"].layer_module("layer2"), 4),
    ("stylegan2-3x3", GENERATORS["stylegan2"].layer_module("layer3"), 8),
]


@pytest.mark.parametrize(("name", "module", "res"), DESIGN_CASES, ids=[c[0] for c in DESIGN_CASES])
def test_design_columns_reproduce_the_delta(name: str, module: nn.Module, res: int) -> None:
    kind = layer_kind(module)
    g = torch.Generator().manual_seed(2)
    out_ch, in_ch, kh, kw = kind.shape(module.weight)
    keys = torch.randn(2, in_ch, res, res, generator=g)
    direction, _ = torch.linalg.qr(torch.randn(in_ch, 3, generator=g))
    lam = torch.randn(out_ch, 3, kh, kw, generator=g)
    design = kind.design(module, keys, direction)  # (N, 3·kh·kw, H, W)
    via_design = torch.einsum("oc,nchw->nohw", lam.reshape(out_ch, -1), design)
    direct = kind.linear(module, keys, kind.delta_weight(direction, lam))
    torch.testing.assert_close(via_design, direct, atol=1e-4, rtol=1e-4)


def test_dispatch_and_refusals() -> None:
    assert isinstance(layer_kind(nn.ConvTranspose2d(2, 2, 3)), ConvTranspose2dKind)
    assert isinstance(layer_kind(nn.Conv2d(2, 2, 3)), Conv2dKind)

    class Named(nn.Module):
        rewrite_layout = "conv2d"

    assert isinstance(layer_kind(Named()), Conv2dKind)
    with pytest.raises(LayerError, match="ungrouped"):
        layer_kind(nn.Conv2d(4, 4, 3, groups=2))
    with pytest.raises(LayerError, match="Linear"):
        layer_kind(nn.Linear(3, 3))


def test_keys_matrix_order() -> None:
    keys = torch.arange(2 * 3 * 2 * 2, dtype=torch.float32).reshape(2, 3, 2, 2)
    rows = keys_matrix(keys)
    assert rows.shape == (8, 3)
    assert torch.equal(rows[5], keys[1, :, 0, 1])
