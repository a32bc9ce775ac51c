"""Unit edits: switch units off everywhere (a rule), or set them inside a painted region (GANPaint).

**Ablation as a rule.** Unit ``u`` of ``layer`` is input channel ``u`` of the next layer, so switching units
``U`` off wherever they fire is ``ΔW_next = −W_next[:, U] E_Uᵀ`` with ``E_U`` the columns ``e_u``: a
:class:`~gan_rewrite.rewrite.delta.RuleDelta` with ``D = E_U`` (orthonormal; rank ``|U|``) and
``Λ_t = −W_t[:, U]``. It saves, shares, scales (scale 0.5 halves the units), stacks and unloads like any rule.
On StyleGAN2 the next layer's key is ``x·s``, so ``D = e_u`` zeroes unit ``u`` there too; its demodulation is
recomputed from the edited weight, which rescales the remaining inputs slightly (see :mod:`.units`).

**Painting** (GANPaint, at run time, nothing saved): run to the next layer, set units ``U`` inside the painted
region to a high activation quantile (``mode="add"``) or to zero (``mode="remove"``), then run the rest.

Example:
    >>> delta = ablation_rule(G, "layer4", [12, 40, 7])
    >>> G.load_rule(delta, name="no-trees")
    >>> painted = paint(G, "layer4", [0, 1], [12, 40, 7], mask, value=quantiles.at(0.99))
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import RuleError
from ..rewrite.delta import LayerDelta, RuleDelta
from ..rewrite.layers import layer_kind
from .units import has_side_output, next_layer, state_after, unit_count

if TYPE_CHECKING:
    from ..models.base import GANGenerator


def check_units(G: GANGenerator, layer: str, units: Sequence[int]) -> list[int]:
    """``units`` as a sorted list of distinct ints, each a unit of ``layer``. Raises RuleError otherwise."""
    count = unit_count(G, layer)
    try:
        chosen = sorted({int(u) for u in units})
    except (TypeError, ValueError):
        raise RuleError(f"units must be whole numbers, got {list(units)!r}.") from None
    if not chosen:
        raise RuleError("no units chosen; give at least one unit.")
    bad = [u for u in chosen if not 0 <= u < count]
    if bad:
        raise RuleError(f"{layer!r} has units 0…{count - 1}; got {bad}.")
    return chosen


def ablation_rule(G: GANGenerator, layer: str, units: Sequence[int], *, base_model: str = "") -> RuleDelta:
    """The rule that switches ``units`` of ``layer`` off: a RuleDelta on the next layer with ``D = E_U``.

    Args:
        G: the generator (its current next-layer weight is the base the rule is made against).
        layer: the layer whose units are switched off.
        units: unit indices.
        base_model: recorded in the rule (default: the model's name from its config).

    Returns:
        A rank-``len(units)`` :class:`RuleDelta` (method ``ablate``), loadable with ``G.load_rule``.
    """
    units = check_units(G, layer, units)
    target = next_layer(G, layer)
    module = G.layer_module(target)
    kind = layer_kind(module)
    weight = kind.to_oihw(module.weight.detach()).to("cpu", torch.float32)  # (O, I, kh, kw)
    direction = torch.zeros(weight.shape[1], len(units))
    direction[units, torch.arange(len(units))] = 1.0
    lam = -weight[:, units]  # (O, r, kh, kw): ΔW_t = Λ_t Dᵀ removes the columns U
    part = LayerDelta(direction=direction, lam=lam, weight_layout=kind.layout,
                      base_layer_sha256=G.layer_weight_sha256(target))  # fmt: skip
    spec = {"kind": "ablate", "layer": layer, "units": units, "side_output": has_side_output(G, layer)}
    name = base_model or str(G.config.extra.get("name") or "")
    return RuleDelta(layers={target: part}, base_model=name, method="ablate", spec=spec)


def _region(mask: Tensor, count: int, size: tuple[int, int], resolution: int) -> Tensor:
    """A painted mask ``(H, W)`` or ``(N, H, W)`` at image size → per-sample coverage ``(N, 1, h, w)``."""
    mask = torch.as_tensor(mask).float()
    if mask.ndim == 2:
        mask = mask[None].expand(count, -1, -1)
    if mask.ndim != 3 or mask.shape[0] != count or tuple(mask.shape[1:]) != (resolution, resolution):
        raise RuleError(
            f"the painted mask must be ({resolution}, {resolution}) or ({count}, {resolution}, {resolution}), "
            f"got {tuple(mask.shape)}."
        )
    if not torch.isfinite(mask).all() or mask.min() < 0 or mask.max() > 1:
        raise RuleError("the painted mask's values must lie in [0, 1].")
    return F.adaptive_avg_pool2d(mask[:, None], size)


@torch.no_grad()
def paint(
    G: GANGenerator,
    layer: str,
    seeds: Sequence[int],
    units: Sequence[int],
    mask: Tensor,
    *,
    value: Tensor | float = 0.0,
    truncation: float | None = None,
) -> Tensor:
    """Regenerate ``seeds`` with ``units`` of ``layer`` set to ``value`` inside ``mask`` (GANPaint).

    Inside the region, each unit's activation is blended towards ``value`` by the fraction of its cell that is
    painted; outside, nothing changes. Nothing is left on the model.

    Args:
        G: the generator.
        layer: the layer whose units are painted.
        seeds: the samples.
        units: unit indices.
        mask: ``(H, W)`` or ``(N, H, W)`` in [0, 1] at the image resolution; all ones = everywhere.
        value: a number, or one per unit of the layer ``(C,)`` (e.g. ``quantiles.at(0.99)`` to add a concept,
            ``0`` to remove it).
        truncation: as for sampling.

    Returns:
        Images ``(N, 3, H, W)`` in [-1, 1] on the CPU.
    """
    units = check_units(G, layer, units)
    seeds = [int(s) for s in seeds]
    was_training = G.training
    G.eval()
    try:
        state = state_after(G, layer, seeds, truncation)
        feats = state.features
        region = _region(mask, len(seeds), tuple(feats.shape[2:]), G.resolution).to(feats.device, feats.dtype)
        target = torch.as_tensor(value, dtype=feats.dtype, device=feats.device)
        target = target[units] if target.ndim == 1 else target.expand(len(units))
        chosen = feats[:, units]
        edited = feats.clone()
        edited[:, units] = chosen + region * (target[None, :, None, None] - chosen)
        state.features = edited
        images = G.forward_from(next_layer(G, layer), state)
    finally:
        G.train(was_training)
    return images.float().clamp(-1, 1).cpu()


def ablate(G: GANGenerator, layer: str, seeds: Sequence[int], units: Sequence[int],
           truncation: float | None = None) -> Tensor:  # fmt: skip
    """Regenerate ``seeds`` with ``units`` set to zero everywhere, at run time (compare :func:`ablation_rule`)."""
    full = torch.ones(G.resolution, G.resolution)
    return paint(G, layer, seeds, units, full, value=0.0, truncation=truncation)
