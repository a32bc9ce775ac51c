"""Solvers: the closed form hits the goal exactly where it can and is optimal; the projected one stays in span D."""

from __future__ import annotations

import time

import pytest
import torch
from torch import nn

from gan_rewrite.errors import RuleError
from gan_rewrite.models.base import LayerState
from gan_rewrite.rewrite import solve
from gan_rewrite.rewrite.context import Goal
from gan_rewrite.rewrite.layers import layer_kind
from gan_rewrite.rewrite.solve import SOLVERS, goal_l1, solve_closed_form, solve_projected


def test_rank_one_closed_form_hits_the_goal_at_the_key() -> None:
    torch.manual_seed(0)
    module = nn.Conv2d(8, 6, 1, bias=False)
    kind = layer_kind(module)
    keys = torch.randn(1, 8, 5, 5)  # (N, I, h, w)
    k_star = keys[0, :, 2, 3]
    goal_value = torch.randn(6)
    state = LayerState(features=keys)
    target = kind.output(module, state).detach().clone()
    target[0, :, 2, 3] = goal_value
    weight = torch.zeros(1, 5, 5)
    weight[0, 2, 3] = 1.0
    direction = (k_star / k_star.norm())[:, None]  # any d with dᵀk* ≠ 0 reaches the goal
    lam = solve_closed_form(kind, module, Goal(state, target, weight), direction, ridge=0.0)
    with torch.no_grad():
        edited = kind.output(module, state, module.weight + kind.delta_weight(direction, lam))
    torch.testing.assert_close(edited[0, :, 2, 3], goal_value, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(edited, kind.output(module, state).detach())


CASES = [
    ("convT-up", nn.ConvTranspose2d(8, 6, 4, 2, 1, bias=False), 4),
    ("conv3x3", nn.Conv2d(8, 6, 3, 1, 1, bias=True), 6),
]


@pytest.mark.parametrize(("name", "module", "res"), CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("rank", [1, 3])
def test_closed_form_is_the_least_squares_optimum(name: str, module: nn.Module, res: int, rank: int) -> None:
    torch.manual_seed(1)
    kind = layer_kind(module)
    state = LayerState(features=torch.randn(2, 8, res, res))
    out = kind.output(module, state).detach()
    target = out + torch.randn_like(out)
    weight = torch.rand(out.shape[0], *out.shape[2:]) * (torch.rand(out.shape[0], *out.shape[2:]) > 0.5)
    direction, _ = torch.linalg.qr(torch.randn(8, rank, dtype=torch.float64))
    goal = Goal(state, target, weight)
    lam = solve_closed_form(kind, module, goal, direction, ridge=0.0).double().requires_grad_(True)

    def loss(lam_: torch.Tensor) -> torch.Tensor:
        edited = kind.output(
            module.double(),
            LayerState(state.features.double()),
            module.weight.double() + kind.delta_weight(direction, lam_),
        )
        return ((edited - target.double()).pow(2) * weight.double()[:, None]).sum()

    value = loss(lam)
    (grad,) = torch.autograd.grad(value, lam)
    module.float()
    assert grad.abs().max() < 1e-6 * max(1.0, float(value.detach()))
    with torch.no_grad():
        assert value < loss(torch.zeros_like(lam))  # and it does improve on doing nothing
        assert value < loss(lam.detach() * 1.05) and value < loss(lam.detach() * 0.95)


@pytest.mark.parametrize("variable", ["lambda", "weight"])
def test_projected_solver_reduces_the_loss_and_stays_in_span(variable: str) -> None:
    torch.manual_seed(2)
    module = nn.ConvTranspose2d(8, 6, 4, 2, 1, bias=False)
    kind = layer_kind(module)
    state = LayerState(features=torch.randn(1, 8, 4, 4))
    out = kind.output(module, state).detach()
    target = out.clone()
    target[:, :, 2:6, 2:6] += 1.0
    weight = torch.zeros(1, 8, 8)
    weight[0, 2:6, 2:6] = 1.0
    goal = Goal(state, target, weight)
    direction, _ = torch.linalg.qr(torch.randn(8, 2))
    loss = goal_l1(kind, module, goal)
    weight0 = module.weight.detach().clone()
    before = float(loss(weight0))
    lam = solve_projected(kind, module, goal, direction, steps=300, lr=0.02, progress=False, variable=variable)
    dw = kind.delta_weight(direction, lam)
    assert float(loss(weight0 + dw)) < 0.6 * before
    # The update lies in span D: keys orthogonal to D are untouched.
    null = torch.randn(8, 3)
    null = null - direction @ (direction.T @ null)
    assert torch.einsum("oiab,in->oabn", kind.to_oihw(dw), null).abs().max() < 1e-5
    assert torch.equal(module.weight, weight0)  # the module itself is not modified
    assert set(SOLVERS) == {"closed_form", "optimize", "bounded", "learn"}


def test_solvers_leave_the_module_untouched() -> None:
    torch.manual_seed(3)
    module = nn.Conv2d(4, 3, 3, padding=1, bias=False)
    before = module.weight.detach().clone()
    kind = layer_kind(module)
    state = LayerState(features=torch.randn(1, 4, 5, 5))
    goal = Goal(state, torch.zeros(1, 3, 5, 5), torch.ones(1, 5, 5))
    direction = torch.eye(4)[:, :1]
    start = time.perf_counter()
    solve_closed_form(kind, module, goal, direction)
    assert time.perf_counter() - start < 1.0
    solve_projected(kind, module, goal, direction, steps=20, progress=False)
    assert torch.equal(module.weight, before)


def test_projected_solver_image_loss_measures_through_render() -> None:
    """``loss="image"`` fits ``render(output(W)) ≈ render(V*)``: a render that hides part of the output
    leaves the hidden part free, while ``loss="layer"`` fits it too."""
    torch.manual_seed(4)
    module = nn.Conv2d(6, 4, 3, padding=1, bias=False)
    kind = layer_kind(module)
    state = LayerState(features=torch.randn(1, 6, 6, 6))
    out = kind.output(module, state).detach()
    target = out + torch.randn_like(out)
    goal = Goal(state, target, torch.ones(1, 6, 6))
    direction, _ = torch.linalg.qr(torch.randn(6, 2))
    seen = torch.zeros(1, 4, 1, 1)
    seen[0, :2] = 1.0  # the "rest of the network" only looks at channels 0-1, upsampled 2×

    def render(output: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.interpolate(torch.tanh(output) * seen, scale_factor=2)

    image_loss = solve.goal_image_l1(kind, module, goal, render)
    weight0 = module.weight.detach().clone()
    lam = solve_projected(kind, module, goal, direction, loss="image", render=render, steps=200, progress=False)
    assert float(image_loss(weight0 + kind.delta_weight(direction, lam))) < 0.9 * float(image_loss(weight0))
    # Only the edited weight is optimised: nothing else gets a gradient, and the module is untouched.
    assert module.weight.grad is None and torch.equal(module.weight, weight0)
    # The default is the layer loss; both are deterministic.
    again = solve_projected(kind, module, goal, direction, loss="image", render=render, steps=200, progress=False)
    assert torch.equal(lam, again)
    layer = solve_projected(kind, module, goal, direction, steps=200, progress=False)
    assert not torch.equal(layer, lam)


def test_projected_solver_rejects_bad_loss_options() -> None:
    module = nn.Conv2d(4, 3, 1, bias=False)
    kind = layer_kind(module)
    goal = Goal(LayerState(features=torch.randn(1, 4, 3, 3)), torch.zeros(1, 3, 3, 3), torch.ones(1, 3, 3))
    direction = torch.eye(4)[:, :1]
    with pytest.raises(RuleError, match="`loss` must be one of"):
        solve_projected(kind, module, goal, direction, loss="pixel", steps=2, progress=False)
    with pytest.raises(RuleError, match="needs `render`"):
        solve_projected(kind, module, goal, direction, loss="image", steps=2, progress=False)
    with pytest.raises(RuleError, match="`variable` must be one of"):
        solve_projected(kind, module, goal, direction, variable="w", steps=2, progress=False)
    with pytest.raises(RuleError, match="not both"):
        solve_projected(kind, module, goal, direction, loss="image", loss_fn=lambda w: w.sum(), steps=2, progress=False)
    assert solve.LOSSES == ("layer", "image") and solve.CHOICES["loss"] == solve.LOSSES


def test_the_two_optimiser_variables_take_different_paths_to_the_same_kind_of_rule() -> None:
    """``variable="lambda"`` (Adam on Λ) and ``"weight"`` (Adam on W, projected) both fit the goal, by
    different steps (the option reaches the solver)."""
    torch.manual_seed(5)
    module = nn.Conv2d(6, 4, 3, padding=1, bias=False)
    kind = layer_kind(module)
    state = LayerState(features=torch.randn(1, 6, 6, 6))
    out = kind.output(module, state).detach()
    goal = Goal(state, out + torch.randn_like(out), torch.ones(1, 6, 6))
    direction, _ = torch.linalg.qr(torch.randn(6, 1))
    by_lambda = solve_projected(kind, module, goal, direction, steps=60, progress=False)
    by_weight = solve_projected(kind, module, goal, direction, steps=60, progress=False, variable="weight")
    assert not torch.equal(by_lambda, by_weight)
    loss = goal_l1(kind, module, goal)
    w0 = module.weight.detach()
    for lam in (by_lambda, by_weight):
        assert float(loss(w0 + kind.delta_weight(direction, lam))) < float(loss(w0))
