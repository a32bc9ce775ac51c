"""Learn a rule from many samples: ``D`` and ``Λ`` fitted together, on the final images (``method="learn"``).

The other solvers fix the rule's directions ``D`` from a handful of painted context examples and fit only ``Λ``.
With few examples ``D`` singles out those examples rather than the kind of place they show, and the rule carries
over weakly (``examples/README.md``, issue 9). For an *aligned* model — faces, where the top of the head is at
about the same place in every image — the copy pasted at the paste place on any random sample is already a
correct example of the request, so examples cost nothing: this solver asks for the copy on ``samples`` random
samples as well as on the paste and context samples, and learns ``D`` and ``Λ`` together by Adam on the L1
distance of the final images to those goal images (the pasted object where it is pasted, the rest of each image
as it was; every pixel counted alike unless ``keep_weight`` says otherwise).

On the frozen blue-cap request (DCGAN faces, layer3, rank 4, 512 samples) it drew a blue cap on all 32 held-out
faces at full strength, where the default solve draws a faint blue tint on 22 (``examples/README.md``). It
costs minutes on a CPU for the embedded model (seconds on a GPU) and keeps every sample's layer state and goal
image in memory (lower ``samples`` for a large model on a small machine), so it is an option, not the default.

For a model whose objects move between samples (scenes), the paste place on a random sample is not where the
object belongs; use ``samples=0`` (the paste and context samples only) or another method there.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import RuleError
from .context import Goal
from .layers import LayerKind

RANK = 4
"""The rank of a learned rule unless ``Rewriter.solve(rank=...)`` says otherwise."""
SAMPLES = 512
"""Random samples the copy is pasted on by default, besides the paste and context samples."""
SAMPLE_SEED = 50_000
"""The first seed of those samples: far from the seeds one paints on or scores with."""
BATCH_SIZE = 32
"""Samples per Adam step; the steps cycle through the samples in fixed batches (deterministic)."""
KEEP_WEIGHT = 1.0
"""How much a pixel outside the goal's region counts against one inside it: every pixel alike. On the frozen
requests 3 made the cap cleaner (mean change outside the band on 32 held-out faces 0.011 instead of 0.033) but
weaker, and made the dark glasses vanish (0 of 32 faces instead of 10): ``examples/README.md``."""
PASSES = 100
"""Without ``steps``, Adam takes enough steps to see every sample this many times."""
LAMBDA_LR = 0.07
"""Adam's step size for ``Λ``, times the layer weight's standard deviation (0.003 at the DCGAN faces' layer3)."""
DIRECTION_LR = 0.05
"""Adam's step size for ``D``, divided by ``√I`` (the size of an entry of a unit vector of ``I`` channels)."""


def solve_learned(
    kind: LayerKind,
    module: nn.Module,
    goal: Sequence[Goal],
    direction: Tensor,
    *,
    renderer: Callable[[Goal], Callable[[Tensor], Tensor]] | None = None,
    samples: int = SAMPLES,
    sample_seed: int = SAMPLE_SEED,
    batch_size: int = BATCH_SIZE,
    steps: int | None = None,
    lr_factor: float = 1.0,
    keep_weight: float = KEEP_WEIGHT,
    progress: bool = True,
) -> tuple[Tensor, Tensor]:
    """Adam on ``D`` and ``Λ`` together, cycling through batches of goals, with an L1 loss on the final images.

    Args:
        kind, module: the layer, as for the other solvers.
        goal: the goals, one per batch (``Rewriter.solve`` stacks the paste, context and ``samples`` random
            samples' goals into batches of ``batch_size``).
        direction: ``D`` ``(I, r)`` to start from (the context directions).
        renderer: ``goal → render``, where ``render(output)`` runs the rest of the generator on the goal's samples
            with the layer's output replaced (``Rewriter.renderer``). Code: never recorded in a spec.
        samples, sample_seed: how many random samples (seeds from ``sample_seed``) the goals include; used by
            ``Rewriter.solve`` to build them and recorded in the spec, so ``solve_spec`` rebuilds the same goals.
        batch_size: samples per step (also used by ``Rewriter.solve``).
        steps: Adam steps; default (``None``) :data:`PASSES` times the number of batches.
        lr_factor: multiplies both step sizes (:data:`LAMBDA_LR`, :data:`DIRECTION_LR`).
        keep_weight: how much each pixel outside the goal's region counts, relative to one inside it (asked to
            stay as it was); :data:`KEEP_WEIGHT` by default.
        progress: show a tqdm bar.

    Returns:
        ``(D, Λ)``: ``D`` ``(I, r)`` with orthonormal columns (float64) and ``Λ`` ``(O, r, kh, kw)`` (float32)
        such that ``ΛDᵀ`` is the learned weight change.
    """
    from tqdm.auto import tqdm

    batches = list(goal)
    if steps is None:
        steps = PASSES * len(batches)
    check_sample_options(samples, sample_seed, batch_size)
    _check_integer("steps", steps, 1)
    if isinstance(lr_factor, bool) or not isinstance(lr_factor, (int, float)) or not 0 < lr_factor < math.inf:
        raise RuleError(f"solver option `lr_factor` must be a positive number, got {lr_factor!r}.")
    if isinstance(keep_weight, bool) or not isinstance(keep_weight, (int, float)) or not 0 < keep_weight < math.inf:
        raise RuleError(f"solver option `keep_weight` must be a positive number, got {keep_weight!r}.")
    if renderer is None:
        raise RuleError("`method='learn'` needs `renderer` (goal → render); `Rewriter.solve` supplies it.")
    if not batches:
        raise RuleError("`method='learn'` needs at least one goal.")
    weight0 = module.weight.detach()
    losses = [image_l1(batch, renderer(batch), keep_weight) for batch in batches]
    out_channels, in_channels, kh, kw = kind.shape(weight0)
    learned = direction.to(weight0.device, weight0.dtype).clone().requires_grad_(True)
    lam = torch.zeros(out_channels, learned.shape[1], kh, kw, dtype=weight0.dtype, device=weight0.device)
    lam.requires_grad_(True)
    optimizer = torch.optim.Adam([
        {"params": [lam], "lr": LAMBDA_LR * float(weight0.std()) * lr_factor},
        {"params": [learned], "lr": DIRECTION_LR / math.sqrt(in_channels) * lr_factor},
    ])
    # The step size decays to zero along a cosine: each step sees one batch, and a constant step would leave the
    # rule jittering between the batches' optima.
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
    bar = tqdm(range(steps), desc="rewrite (learn)", unit="step", disable=not progress)
    for step in bar:
        index = step % len(batches)
        output = kind.output(module, batches[index].state, weight0 + kind.delta_weight(learned, lam))
        value = losses[index](output)
        optimizer.zero_grad()
        # Only the rule's gradients: the loss runs through the rest of the generator, whose own parameters'
        # `.grad` must stay untouched.
        lam.grad, learned.grad = torch.autograd.grad(value, [lam, learned])
        optimizer.step()
        schedule.step()
        bar.set_postfix(loss=f"{float(value.detach()):.4g}", refresh=False)
    return orthonormal_rule(learned.detach(), lam.detach())


def check_sample_options(samples: int, sample_seed: int, batch_size: int) -> None:
    """Refuse sample options that are not integers in range (``RuleError`` naming the option)."""
    _check_integer("samples", samples, 0)
    _check_integer("sample_seed", sample_seed, 0)
    _check_integer("batch_size", batch_size, 1)


def _check_integer(name: str, value: object, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise RuleError(f"solver option `{name}` must be an integer >= {low}, got {value!r}.")


def image_l1(goal: Goal, render: Callable[[Tensor], Tensor], keep_weight: float) -> Callable[[Tensor], Tensor]:
    """``output → weighted mean |render(output) − render(V*)|`` over every pixel of the goal's samples: the goal
    image is the pasted object where it is pasted and the sample as it was everywhere else; pixels the goal's
    region does not touch weigh ``keep_weight``."""
    with torch.no_grad():
        wanted = render(goal.target.detach()).detach()
        region = F.interpolate(goal.weight[:, None].to(wanted), size=wanted.shape[-2:], mode="bilinear") > 0
        weight = torch.where(region, 1.0, float(keep_weight)).to(wanted)
        weight = weight / weight.mean()
    return lambda output: ((render(output) - wanted).abs() * weight).mean()


def orthonormal_rule(direction: Tensor, lam: Tensor) -> tuple[Tensor, Tensor]:
    """The same ``ΛDᵀ`` with orthonormal ``D`` (a rule file stores ``D`` so): ``D = QR`` gives ``ΛDᵀ = (ΛRᵀ)Qᵀ``.

    Returns ``(Q, ΛRᵀ)`` as float64 and float32 on the CPU."""
    q, r = torch.linalg.qr(direction.double().cpu())
    lam = torch.einsum("orab,sr->osab", lam.double().cpu(), r)
    return q, lam.float()
