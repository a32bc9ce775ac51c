"""Cropped layer evaluation is exact: the same output in the box, the same loss and gradient as the full map."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from gan_rewrite.models.base import LayerState
from gan_rewrite.models.stylegan2 import ModulatedConv2d
from gan_rewrite.rewrite.context import Goal
from gan_rewrite.rewrite.crop import goal_window, layer_crop, weight_box
from gan_rewrite.rewrite.layers import layer_kind
from gan_rewrite.rewrite.lowrank import low_rank_layer
from gan_rewrite.rewrite.solve import goal_l1, solve_projected


def _modconv(upsample: bool) -> nn.Module:
    torch.manual_seed(3)
    module = ModulatedConv2d(6, 5, 3, 4, upsample=upsample)
    return module


def _state(module: nn.Module, n: int, size: int) -> LayerState:
    features = torch.randn(n, 6, size, size)
    if isinstance(module, ModulatedConv2d):
        return LayerState(features=features, style=module.modulation(torch.randn(n, 4)).detach())
    return LayerState(features=features)


LAYERS = {
    # name: (module factory, key map side giving a 12×12 output)
    # DCGAN's upsampling transposed conv (kernel 4, stride 2, padding 1) and its first layer (padding 0).
    "dcgan-convT": (lambda: nn.ConvTranspose2d(6, 5, 4, 2, 1, bias=False), 6),
    "dcgan-convT-first": (lambda: nn.ConvTranspose2d(6, 5, 4, 1, 0, bias=False), 9),
    "convT-output-padding": (lambda: nn.ConvTranspose2d(6, 5, 3, 2, 1, output_padding=1, bias=True), 6),
    # ProGAN's 3×3 conv (padding 1), its 4×4 first conv (padding 3), and a strided, dilated one.
    "progan-conv": (lambda: nn.Conv2d(6, 5, 3, 1, 1, bias=True), 12),
    "progan-conv-first": (lambda: nn.Conv2d(6, 5, 4, 1, 3, bias=True), 9),
    "conv-stride-dilation": (lambda: nn.Conv2d(6, 5, 3, 2, 2, dilation=2, bias=True), 24),
    # StyleGAN2's modulated conv, and its upsampling variant (transposed conv + blur).
    "stylegan2-modconv": (lambda: _modconv(False), 12),
    "stylegan2-modconv-up": (lambda: _modconv(True), 6),
}

# Boxes at the output resolution: interior, touching each border, the whole map, a single location.
BOXES = [(3, 4, 7, 9), (0, 0, 3, 5), (6, 2, 12, 12), (0, 0, 12, 12), (11, 0, 12, 1), (5, 5, 6, 6)]


@pytest.mark.parametrize("factored", [False, True], ids=["design", "factored"])
@pytest.mark.parametrize("name", list(LAYERS))
def test_cropped_output_loss_and_gradient_equal_the_full_ones(name: str, factored: bool) -> None:
    torch.manual_seed(0)
    factory, side = LAYERS[name]
    module = factory()
    kind = layer_kind(module)
    state = _state(module, 2, side)
    full = kind.output(module, state).detach()
    assert full.shape[-2:] == (12, 12), full.shape
    for box in BOXES:
        top, left, bottom, right = box
        crop = layer_crop(kind, module, state, box, factored=factored)
        assert crop is not None and crop.factored == factored
        # Output: equal to the full map's box.
        torch.testing.assert_close(crop.output(module.weight).detach(), full[..., top:bottom, left:right],
                                   rtol=1e-5, atol=1e-5)
        # Loss and gradient, through the same product.
        weight = torch.zeros(2, 12, 12)
        weight[:, top:bottom, left:right] = torch.rand(2, bottom - top, right - left) + 0.1
        target = full + torch.randn_like(full)
        w = (module.weight.detach() + 0.05 * torch.randn_like(module.weight)).requires_grad_(True)
        value_full = ((kind.output(module, state, w) - target).abs() * weight[:, None]).sum()
        (grad_full,) = torch.autograd.grad(value_full, [w])
        value_crop = ((crop.output(w) - target[..., top:bottom, left:right]).abs()
                      * weight[:, None, top:bottom, left:right]).sum()
        (grad_crop,) = torch.autograd.grad(value_crop, [w])
        torch.testing.assert_close(value_crop, value_full, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(grad_crop, grad_full, rtol=1e-4, atol=1e-6 * float(grad_full.abs().max()))
        if factored:
            continue
        # Loss and gradient of the goal L1 (its automatic choice of product), soft weights in the box only.
        goal = Goal(state=state, target=target, weight=weight)
        value_full = goal_l1(kind, module, goal, crop=False)(w)
        (grad_full,) = torch.autograd.grad(value_full, [w])
        value_crop = goal_l1(kind, module, goal)(w)
        (grad_crop,) = torch.autograd.grad(value_crop, [w])
        torch.testing.assert_close(value_crop, value_full, rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(grad_crop, grad_full, rtol=1e-4, atol=1e-6 * float(grad_full.abs().max()))
        assert grad_full.abs().max() > 0


def test_the_crop_reads_fewer_keys_and_no_key_outside_the_reach() -> None:
    """A key outside the reported key window changes nothing in the box; one inside does."""
    module = _modconv(True)
    kind = layer_kind(module)
    state = _state(module, 1, 16)  # output 32×32
    box = (10, 12, 14, 18)
    crop = layer_crop(kind, module, state, box)
    top, left, bottom, right = crop.key_box
    assert (bottom - top) * (right - left) < 16 * 16 / 4
    base = kind.output(module, state).detach()[..., 10:14, 12:18]
    for row, col, inside in ((top - 1, left, False), (top, left, True), (bottom - 1, right - 1, True),
                             (bottom, right - 1, False)):
        poked = state.features.clone()
        poked[:, :, row, col] += 10.0
        out = kind.output(module, LayerState(poked, state.style)).detach()[..., 10:14, 12:18]
        assert (not torch.allclose(out, base)) == inside, (row, col)


def test_weight_box_covers_all_samples() -> None:
    weight = torch.zeros(2, 8, 8)
    weight[0, 1, 2] = 0.5
    weight[1, 5, 6] = 1.0
    assert weight_box(weight) == (1, 2, 6, 7)
    assert weight_box(torch.zeros(1, 4, 4)) is None


@pytest.mark.parametrize("name", list(LAYERS))
def test_low_rank_layer_gives_the_layer_output_and_gradient_at_w0_plus_lambda_d(name: str) -> None:
    """What the optimiser's default (``variable="lambda"``) evaluates: the layer at ``W₀ + ΛDᵀ`` from
    precomputed pieces, on a box or the whole map — the same output and the same gradient in ``Λ``."""
    torch.manual_seed(0)
    factory, side = LAYERS[name]
    module = factory()
    kind = layer_kind(module)
    state = _state(module, 2, side)
    direction, _ = torch.linalg.qr(torch.randn(6, 2, dtype=torch.float64))
    out_ch, _, kh, kw = kind.shape(module.weight)
    lam = (0.3 * torch.randn(out_ch, 2, kh, kw)).requires_grad_(True)
    for box in [*BOXES, None]:
        fast = low_rank_layer(kind, module, state, direction, box)
        full = kind.output(module, state, module.weight.detach() + kind.delta_weight(direction.float(), lam))
        if box is not None:
            top, left, bottom, right = box
            full = full[..., top:bottom, left:right]
        mine = fast.output(lam)
        torch.testing.assert_close(mine, full, rtol=1e-5, atol=1e-5)
        target = torch.randn_like(full)
        (grad_full,) = torch.autograd.grad((full - target).abs().sum(), [lam])
        (grad_fast,) = torch.autograd.grad((mine - target).abs().sum(), [lam])
        assert grad_full.abs().max() > 0
        torch.testing.assert_close(grad_fast, grad_full, rtol=1e-4, atol=1e-5 * float(grad_full.abs().max()))


@pytest.mark.parametrize("variable", ["lambda", "weight"])
@pytest.mark.parametrize("name", ["dcgan-convT", "progan-conv", "stylegan2-modconv-up"])
def test_projected_solver_with_the_crop_follows_the_whole_map_path(name: str, variable: str) -> None:
    """The whole optimiser (fused Adam, projection) takes the same steps on its own fast loss (the low-rank
    layer for ``Λ``, the cropped layer for the weight) as on a whole-map loss handed over as code."""
    factory, side = LAYERS[name]
    module = factory()
    kind = layer_kind(module)
    state = _state(module, 1, side)
    full = kind.output(module, state).detach()
    weight = torch.zeros(1, 12, 12)
    weight[:, 3:8, 2:9] = 1.0
    goal = Goal(state=state, target=full + torch.randn_like(full), weight=weight)
    direction, _ = torch.linalg.qr(torch.randn(6, 2, dtype=torch.float64))
    options = dict(steps=25, project_every=5, patience=100, progress=False, variable=variable)
    lam_crop = solve_projected(kind, module, goal, direction, **options)
    whole_map = goal_l1(kind, module, goal, crop=False)
    lam_full = solve_projected(kind, module, goal, direction, loss_fn=whole_map, **options)
    assert lam_full.abs().max() > 0
    torch.testing.assert_close(lam_crop, lam_full, rtol=1e-3, atol=1e-4 * float(lam_full.abs().max()))


@pytest.mark.parametrize("name", list(LAYERS))
def test_goal_window_holds_every_goal_location_and_its_exact_output(name: str) -> None:
    """What solve_closed_form reads: the output on the goal's box, which holds every weighted location."""
    factory, side = LAYERS[name]
    module = factory()
    kind = layer_kind(module)
    state = _state(module, 2, side)
    weight = torch.zeros(2, 12, 12)
    weight[0, 2:5, 3:7] = 0.5
    weight[1, 8:11, 1:3] = 1.0
    goal = Goal(state=state, target=torch.zeros(2, 5, 12, 12), weight=weight)
    rows, cols, evaluate = goal_window(kind, module, goal)
    assert (rows, cols) == (slice(2, 11), slice(1, 7))
    assert weight[..., rows, cols].sum() == weight.sum()
    edited = module.weight.detach() + 0.1 * torch.randn_like(module.weight)
    full = kind.output(module, state, edited).detach()
    torch.testing.assert_close(evaluate(edited).detach(), full[..., rows, cols], rtol=1e-5, atol=1e-5)
