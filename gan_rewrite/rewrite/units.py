"""Input units of a layer: which fire selectively in a context, and the keys with the top ones switched off.

Used by the erase goal (``erase_goal(..., top_units=n)``, the way the paper's reference code erases) and
by dissection: a unit is one channel of the layer's key (its input); its *selectivity* in a context is how
far its mean activation there stands above its usual level, in units of its spread over the statistics'
samples.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from ..errors import RuleError

if TYPE_CHECKING:
    from .stats import KeyStats


def unit_selectivity(stats: KeyStats, keys: Tensor, weights: Tensor | None = None) -> Tensor:
    """Per input unit: ``(mean in the context − mean over all keys) / std over all keys``.

    Args:
        stats: key statistics of the layer (``mean`` and the diagonal of ``C`` give each unit's mean and
            spread over every location of the statistics' samples).
        keys: ``(m, I)`` keys in the context (e.g. from :func:`~gan_rewrite.rewrite.context.weighted_keys`).
        weights: ``(m,)`` area weights (default: all 1).

    Returns:
        ``(I,)`` float64 selectivity (a z-score; larger = fires more specifically in the context).
    """
    keys = keys.to(torch.float64)
    if keys.ndim != 2 or keys.shape[1] != stats.dim:
        raise RuleError(f"`keys` must be (m, {stats.dim}) for these statistics, got {tuple(keys.shape)}.")
    if keys.shape[0] == 0:
        raise RuleError("the context holds no keys: paint a region that covers at least one location.")
    w = torch.ones(keys.shape[0], dtype=torch.float64) if weights is None else weights.to(torch.float64)
    context_mean = (w[:, None] * keys).sum(0) / w.sum()
    mean = stats.mean.to(torch.float64)
    var = (torch.diagonal(stats.second_moment).to(torch.float64) - mean**2).clamp_min(0)
    std = var.sqrt().clamp_min(1e-12 + 1e-6 * float(var.sqrt().max()))
    return (context_mean - mean) / std


def rank_units_by_selectivity(stats: KeyStats, keys: Tensor, weights: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Input units sorted by their selectivity in a context, most selective first.

    Args:
        stats, keys, weights: as for :func:`unit_selectivity`.

    Returns:
        ``(order, selectivity)``: ``order`` ``(I,)`` int64 unit indices, best first, and ``selectivity``
        ``(I,)`` float64 in the same (sorted) order.

    Example:
        >>> keys, weights = weighted_keys(run.keys, glasses_mask)
        >>> order, z = rank_units_by_selectivity(rw.stats, keys, weights)
        >>> order[:16]   # the units to switch off to erase the glasses
    """
    z = unit_selectivity(stats, keys, weights)
    order = torch.argsort(z, descending=True, stable=True)
    return order, z[order]


def switch_off_units(keys: Tensor, units: Tensor | list[int], region: Tensor) -> Tensor:
    """Keys with ``units`` set to zero inside ``region`` (alpha-blended); every other unit is untouched.

    Args:
        keys: ``(N, I, h, w)`` key map.
        units: input channel indices to switch off.
        region: ``(h, w)`` weights in [0, 1] at the key resolution (1: fully off, 0: untouched).

    Returns:
        A new ``(N, I, h, w)`` tensor; channels not in ``units`` are bit-identical to ``keys``.
    """
    units = torch.as_tensor(units, dtype=torch.long)
    if units.numel() and (int(units.min()) < 0 or int(units.max()) >= keys.shape[1]):
        raise RuleError(f"unit indices must lie in [0, {keys.shape[1]}), got {units.tolist()}.")
    out = keys.clone()
    keep = (1 - region.to(keys.device, keys.dtype))[None, None]
    out[:, units] = keys[:, units] * keep
    return out
