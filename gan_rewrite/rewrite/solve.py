"""Solvers for ``W₁ = W₀ + Λ Dᵀ`` (per tap) with the direction ``D`` fixed: only ``Λ`` is unknown.

* :func:`solve_closed_form` — weighted linear least squares for ``Λ``. The output change is linear in
  ``Λ`` with one small design matrix shared by every output channel, so the normal equations have only
  ``r·kh·kw`` unknowns per channel: milliseconds. For StyleGAN2 the demodulation gain is held at its
  value for ``W₀`` (the residual is divided by it), which is exact for the original weight and a
  first-order approximation after the edit.
* :func:`solve_projected` — the paper's procedure: Adam on the full weight, with an L1 loss on the
  layer output (``loss="layer"``, evaluated exactly on the goal's bounding box only, :mod:`.crop`), on
  the final image (``loss="image"``: the edited layer's output is run through the rest of the generator
  by a ``render`` callable), or any ``loss_fn`` you pass, projecting
  ``W − W₀`` onto span ``D`` every few steps. Slower; exact for demodulation, allows non-quadratic losses
  and losses measured further down the network.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import RuleError
from .context import Goal
from .crop import goal_window, layer_crop, weight_box
from .layers import LayerKind

logger = logging.getLogger(__name__)


def solve_closed_form(
    kind: LayerKind,
    module: nn.Module,
    goal: Goal,
    direction: Tensor,
    *,
    ridge: float = 1e-6,
    refine: int = 2,
) -> Tensor:
    """Least-squares ``Λ`` minimising ``Σ weight · ‖output(W₀ + ΛDᵀ) − V*‖²`` over the goal's locations.

    Args:
        kind: the layer kind of ``module``.
        module: the layer (its current weight is ``W₀``).
        goal: samples, target ``V*`` and location weights.
        direction: ``D`` ``(I, r)``, orthonormal columns.
        ridge: relative diagonal loading ``ridge · tr(AᵀA)/q``; taps that never reach a weighted location
            get ``Λ = 0`` through it.
        refine: for layers with a weight-dependent gain (StyleGAN2's demodulation), this many extra
            Gauss-Newton steps re-evaluate the gain at the edited weight and solve for the remaining
            residual (same normal matrix, so each costs one forward of the layer). Ignored otherwise.

    Returns:
        ``Λ`` ``(O, r, kh, kw)`` float32 on the CPU.
    """
    with torch.no_grad():
        weight0 = module.weight.detach()
        keys = kind.keys(module, goal.state).to(torch.float64)
        rows, cols, evaluate = goal_window(kind, module, goal)  # the goal's box only (rewrite/crop.py)
        design = kind.design(module, keys, direction)[..., rows, cols]  # (N, q, H, W) on the box
        w = goal.weight[..., rows, cols].to(design.device, torch.float64).reshape(-1)  # (N·H·W,)
        keep = w > 0
        a = design.permute(0, 2, 3, 1).reshape(-1, design.shape[1])[keep]  # (M, q)
        w = w[keep]
        normal = a.T @ (w[:, None] * a)  # (q, q), shared by every output channel
        q = normal.shape[0]
        loading = ridge * float(torch.trace(normal)) / q or ridge
        eye = torch.eye(q, dtype=torch.float64, device=normal.device)
        factor, info = torch.linalg.cholesky_ex(normal + loading * eye)
        if int(info) != 0:
            raise RuleError(
                "the goal does not determine Λ (singular normal equations); use `ridge` > 0 or a goal "
                "region that the context keys reach."
            )
        target = goal.target[..., rows, cols].to(design.device, torch.float64)
        out_ch, _, kh, kw = kind.shape(weight0)
        lam = torch.zeros(out_ch, direction.shape[1], kh, kw, dtype=torch.float64, device=design.device)
        for step in range(1 + max(0, refine)):
            weight = weight0 + kind.delta_weight(direction.to(lam), lam).to(weight0)
            gain = kind.gain(module, goal.state, weight)
            if step > 0 and not isinstance(gain, Tensor):
                break  # a layer without gain is solved exactly by the first step
            residual = target - evaluate(weight).to(torch.float64)
            residual = residual / (gain.to(torch.float64) if isinstance(gain, Tensor) else gain)  # (N, O, H, W)
            b = residual.permute(0, 2, 3, 1).reshape(-1, residual.shape[1])[keep]  # (M, O)
            update = torch.cholesky_solve(a.T @ (w[:, None] * b), factor)  # (q, O)
            lam = lam + update.T.reshape(lam.shape)
        return lam.float().cpu()


def goal_l1(kind: LayerKind, module: nn.Module, goal: Goal, *, crop: bool = True) -> Callable[[Tensor], Tensor]:
    """The default loss of :func:`solve_projected`: weighted mean L1 distance of the layer output to V*.

    Args:
        crop: evaluate the layer only on the bounding box of the goal's positive weights, from the keys
            that reach it (:mod:`~gan_rewrite.rewrite.crop`): the same loss and gradient (to float
            rounding), at a fraction of the cost for a small goal. ``False``: the whole map.
    """
    target = goal.target.detach()
    weight = goal.weight.to(target.device, target.dtype)[:, None]  # (N, 1, H, W)
    total = weight.sum() * target.shape[1]
    box = weight_box(goal.weight) if crop else None
    cropped = layer_crop(kind, module, goal.state, box) if box is not None else None
    if cropped is not None:
        top, left, bottom, right = box
        target = target[..., top:bottom, left:right]
        weight = weight[..., top:bottom, left:right]

        def loss_cropped(w: Tensor) -> Tensor:
            return ((cropped.output(w) - target).abs() * weight).sum() / total

        return loss_cropped

    def loss(w: Tensor) -> Tensor:
        return ((kind.output(module, goal.state, w) - target).abs() * weight).sum() / total

    return loss


def goal_image_l1(
    kind: LayerKind, module: nn.Module, goal: Goal, render: Callable[[Tensor], Tensor]
) -> Callable[[Tensor], Tensor]:
    """The ``loss="image"`` loss of :func:`solve_projected`: weighted mean L1 distance on the final image.

    Args:
        render: maps a layer output ``(N, O, H, W)`` for the goal's samples to their images
            ``(N, 3, H', W')`` (the rest of the generator; see ``Rewriter.renderer``).

    The target is ``render(V*)``, the images the goal's target output produces; the goal's location
    weights are brought to the image resolution by bilinear interpolation.

    Not cropped (unlike :func:`goal_l1`): the weighted image pixels depend on the edited layer's output
    through every later layer, so an exact crop would have to run the rest of the generator on a window
    (with each later layer's reach, noise and skip inputs cut to match), which ``render`` — the
    generator's own ``forward_from`` — does not offer. Evaluating only this layer on a window and the rest
    on the whole map would save little: at StyleGAN2's ``layer8`` the later layers cost several times
    more than the layer itself.
    """
    with torch.no_grad():
        target = render(goal.target.detach()).detach()
    weight = goal.weight[:, None].to(target.device, target.dtype)
    weight = F.interpolate(weight, size=target.shape[-2:], mode="bilinear", align_corners=False)  # (N, 1, H', W')
    total = weight.sum() * target.shape[1]

    def loss(w: Tensor) -> Tensor:
        return ((render(kind.output(module, goal.state, w)) - target).abs() * weight).sum() / total

    return loss


LOSSES = ("layer", "image")
"""The values of :func:`solve_projected`'s ``loss`` option (recorded in rule specs)."""

CHOICES: dict[str, tuple[str, ...]] = {"loss": LOSSES}
"""String solver options and their allowed values (``check_spec`` validates specs against them)."""

CODE_OPTIONS = frozenset({"loss_fn", "render"})
"""Solver options that are code, not data: never recorded in a spec (``Rewriter.solve`` supplies ``render``)."""


def solve_projected(
    kind: LayerKind,
    module: nn.Module,
    goal: Goal,
    direction: Tensor,
    *,
    loss: str = "layer",
    render: Callable[[Tensor], Tensor] | None = None,
    loss_fn: Callable[[Tensor], Tensor] | None = None,
    steps: int = 1000,
    lr: float | None = None,
    project_every: int = 10,
    patience: int = 100,
    tol: float = 1e-4,
    progress: bool = True,
) -> Tensor:
    """Adam on the layer weight, projecting ``W − W₀`` onto span ``D`` every ``project_every`` steps.

    Args:
        kind, module, goal, direction: as for :func:`solve_closed_form`.
        loss: ``"layer"`` (default): :func:`goal_l1`, L1 on the layer output; ``"image"``:
            :func:`goal_image_l1`, L1 on the final image (needs ``render``; slower per step, and on the
            DCGAN faces it gave the cleanest edits, see ``examples/README.md``).
        render: for ``loss="image"``: layer output → images, the rest of the generator.
            ``Rewriter.solve`` supplies it; it is code and is not recorded in specs.
        loss_fn: ``weight → scalar``, replacing ``loss``: the code-level escape hatch (not recorded in
            specs, so a rule solved with it cannot be re-solved from its spec).
        steps: maximum Adam steps.
        lr: Adam step size; default ``0.01 ×`` the weight's standard deviation.
        project_every: steps between projections.
        patience: stop when the best loss has not improved by a relative ``tol`` for this many steps.
        progress: show a tqdm bar.

    Returns:
        ``Λ`` ``(O, r, kh, kw)`` float32: the coordinates of the final ``W − W₀`` in span ``D``.

    Threads: the thread count is left as it is. For small layers (the DCGAN faces' layer3) two threads were
    1.5× faster than one on an idle 2-core machine but 2× slower with one other busy process; on a busy
    machine, call it under ``torch.set_num_threads(1)`` (``examples/make_examples.py``: ``one_thread``).
    """
    from tqdm.auto import tqdm

    if steps < 1 or project_every < 1:
        raise ValueError(f"`steps` and `project_every` must be >= 1, got {steps} and {project_every}.")
    if loss not in LOSSES:
        raise RuleError(f"solver option `loss` must be one of {list(LOSSES)}, got {loss!r}.")
    if loss_fn is not None and loss != "layer":
        raise RuleError(f"give either `loss_fn` or `loss`={loss!r}, not both.")
    if loss == "image" and render is None:
        raise RuleError("`loss='image'` needs `render` (layer output → images); `Rewriter.solve` supplies it.")
    weight0 = module.weight.detach().clone()
    direction = direction.to(weight0.device, weight0.dtype)
    if loss_fn is None:
        loss_fn = goal_image_l1(kind, module, goal, render) if loss == "image" else goal_l1(kind, module, goal)
    weight = weight0.clone().requires_grad_(True)
    step_size = lr if lr is not None else 0.01 * float(weight0.std())
    optimizer = torch.optim.Adam([weight], lr=step_size, **_adam_kernel(weight))

    def project() -> None:
        with torch.no_grad():
            lam = kind.lambda_from_delta(weight - weight0, direction)
            weight.copy_(weight0 + kind.delta_weight(direction, lam))

    best, since = float("inf"), 0
    bar = tqdm(range(steps), desc="rewrite (projected)", unit="step", disable=not progress)
    for step in bar:
        value_t = loss_fn(weight)
        # Only the edited weight's gradient: a loss through the rest of the generator must not fill the
        # `.grad` of the model's own parameters.
        (grad,) = torch.autograd.grad(value_t, [weight])
        # Fused Adam reads the gradient as laid out like the weight: a transposed one (a cropped
        # ConvTranspose2d's) would be silently misread.
        weight.grad = grad if grad.stride() == weight.stride() else grad.contiguous()
        optimizer.step()
        if (step + 1) % project_every == 0:
            project()
        value = float(value_t.detach())
        bar.set_postfix(loss=f"{value:.4g}", refresh=False)
        if value < best * (1 - tol):
            best, since = value, 0
        else:
            since += 1
            if since >= patience:
                logger.info("projected solve stopped early at step %d (loss %.4g)", step + 1, value)
                break
    project()
    with torch.no_grad():
        return kind.lambda_from_delta(weight - weight0, direction).float().cpu()


def _adam_kernel(weight: Tensor) -> dict[str, bool]:
    """``fused=True`` where torch has a fused Adam for this device and dtype (one pass over the weight per step
    instead of about seven; the same update up to float rounding), else torch's default."""
    if weight.dtype in (torch.float32, torch.float64) and weight.device.type in ("cpu", "cuda"):
        return {"fused": True}
    return {}


SOLVERS: dict[str, Callable[..., Tensor]] = {"closed_form": solve_closed_form, "optimize": solve_projected}
"""Method names accepted by ``Rewriter.solve(method=...)`` and written into rule files."""
