"""Context and goals: masks → weighted keys → directions ``D``; copy / paste / erase → target outputs ``V*``.

Masks are painted at image resolution ``(H, W)`` and brought to a layer's resolution by area averaging,
so a location half covered by the brush gets weight ½. Keys are read at the layer's *input* resolution,
goals at its *output* resolution (twice as large for an upsampling layer).
"""

from __future__ import annotations

import base64
import logging
import re
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import RuleError
from .layers import LayerKind, keys_matrix, layer_kind
from .runcache import active_cache

if TYPE_CHECKING:
    from ..models.base import GANGenerator, LayerState
    from .stats import KeyStats

logger = logging.getLogger(__name__)

MaskLike = Tensor | np.ndarray


# ----- masks -----------------------------------------------------------------------------------
def as_mask(mask: MaskLike, size: int | tuple[int, int], *, name: str = "mask") -> Tensor:
    """Check a painted mask and return it as float32 ``(H, W)`` in [0, 1].

    Args:
        mask: ``(H, W)`` bool or float (also ``(1, H, W)``), a tensor or numpy array.
        size: the image resolution it must have (``G.resolution``).
        name: the argument's name, for error messages.

    Raises:
        RuleError: wrong type, shape or range, or nothing painted.
    """
    if isinstance(mask, np.ndarray):
        mask = torch.from_numpy(np.ascontiguousarray(mask))
    if not isinstance(mask, Tensor):
        raise RuleError(f"`{name}` must be a tensor or numpy array, got {type(mask).__name__}.")
    if mask.ndim == 3 and mask.shape[0] == 1:
        mask = mask[0]
    expected = (size, size) if isinstance(size, int) else tuple(size)
    if tuple(mask.shape) != expected:
        raise RuleError(f"`{name}` must have shape {expected} (the image resolution), got {tuple(mask.shape)}.")
    mask = mask.detach().to("cpu", torch.float32)
    if not torch.isfinite(mask).all() or mask.min() < 0 or mask.max() > 1:
        raise RuleError(f"`{name}` values must lie in [0, 1] (bool or float).")
    if not mask.any():
        raise RuleError(f"`{name}` is empty: paint at least one pixel.")
    return mask


def quantize_mask(mask: Tensor) -> Tensor:
    """Round a float mask to multiples of 1/255 so that its spec encoding reproduces it exactly."""
    return torch.round(mask * 255) / 255


def encode_mask(mask: Tensor) -> str:
    """A compact, exact text form of an ``(H, W)`` mask with values in ``{k/255}``, for rule specs.

    Binary masks: ``"rle:HxW:n0,n1,..."``, run lengths of alternating 0 and 1 pixels in row-major order,
    starting with 0 (``n0`` may be 0). Soft masks: ``"u8z:HxW:<base64>"``, the zlib-compressed bytes of
    ``round(255·mask)`` in row-major order.
    """
    height, width = mask.shape
    flat = torch.round(mask.reshape(-1).float() * 255).to(torch.uint8)
    if bool(((flat == 0) | (flat == 255)).all()):
        bits = (flat == 255).to(torch.int8)
        changes = torch.nonzero(bits[1:] != bits[:-1])[:, 0] + 1
        edges = [0, *changes.tolist(), bits.numel()]
        runs = [b - a for a, b in zip(edges[:-1], edges[1:], strict=True)]
        if bits[0] == 1:
            runs = [0, *runs]
        return f"rle:{height}x{width}:" + ",".join(str(r) for r in runs)
    packed = base64.b64encode(zlib.compress(flat.numpy().tobytes(), 9)).decode("ascii")
    return f"u8z:{height}x{width}:{packed}"


MAX_MASK_SIDE = 8192  # pixels; no model here makes images larger than 1024
_MASK_CODE = re.compile(r"^(rle|u8z):(\d+)x(\d+):(.*)$", re.DOTALL)


def decode_mask(code: str) -> Tensor:
    """Inverse of :func:`encode_mask`: float32 ``(H, W)``. Raises RuleError on a malformed string.

    A code is checked before anything is allocated: sides are at most ``MAX_MASK_SIDE`` pixels and the runs
    (or the decompressed bytes) must add up to exactly ``H × W``, so a short hostile string cannot ask for
    gigabytes.
    """
    match = _MASK_CODE.match(code) if isinstance(code, str) else None
    if match is None:
        raise RuleError(f"malformed mask code {str(code)[:40]!r}; expected 'rle:HxW:...' or 'u8z:HxW:...'.")
    kind, height, width, body = match.group(1), int(match.group(2)), int(match.group(3)), match.group(4)
    if height > MAX_MASK_SIDE or width > MAX_MASK_SIDE:
        raise RuleError(
            f"mask code {code[:40]!r} is {height}×{width}; masks are at most {MAX_MASK_SIDE} pixels a side."
        )
    pixels = height * width
    try:
        if kind == "rle":
            runs = [int(r) for r in body.split(",")] if body else []
        else:
            inflater = zlib.decompressobj()
            raw = inflater.decompress(base64.b64decode(body, validate=True), pixels + 1)  # never more than needed
    except (ValueError, zlib.error) as err:
        raise RuleError(f"malformed mask code {code[:40]!r}: {err}") from err
    if kind == "rle":
        if any(n < 0 for n in runs) or sum(runs) != pixels:
            raise RuleError(f"mask code {code[:40]!r}: its runs do not add up to {height}×{width} pixels.")
        values = torch.cat([torch.full((n,), float(j % 2)) for j, n in enumerate(runs)] or [torch.zeros(0)])
    else:
        values = torch.frombuffer(bytearray(raw), dtype=torch.uint8).float() / 255 if raw else torch.zeros(0)
    if values.numel() != pixels:
        raise RuleError(f"mask code {code[:40]!r} holds {values.numel()} pixels, expected {height}×{width}.")
    return values.reshape(height, width)


def downsample_mask(mask: Tensor, size: tuple[int, int]) -> Tensor:
    """Area-average an ``(H, W)`` mask to ``size`` = ``(h, w)``: the fraction of each cell covered."""
    return F.adaptive_avg_pool2d(mask[None, None].float(), size)[0, 0]


def bounding_box(mask: Tensor) -> tuple[int, int, int, int]:
    """``(top, left, bottom, right)`` (exclusive) of the non-zero entries of an ``(h, w)`` mask."""
    rows = torch.nonzero(mask.sum(1) > 0)[:, 0]
    cols = torch.nonzero(mask.sum(0) > 0)[:, 0]
    if rows.numel() == 0:
        raise RuleError("the mask covers nothing at this layer's resolution.")
    return int(rows[0]), int(cols[0]), int(rows[-1]) + 1, int(cols[-1]) + 1


# ----- running the layer -----------------------------------------------------------------------
@dataclass
class LayerRun:
    """One forward pass to a layer: its input state, key map and output (all for the given seeds)."""

    state: LayerState
    keys: Tensor  # (N, I, h, w)
    output: Tensor  # (N, O, H, W)


@torch.no_grad()
def run_layer(G: GANGenerator, layer: str, seeds: Sequence[int], truncation: float | None = None) -> LayerRun:
    """Run ``G`` up to ``layer`` for ``seeds`` and evaluate the layer once (nothing after it).

    Inside a ``Rewriter``'s request (an active :class:`~gan_rewrite.rewrite.runcache.RunCache`) a run
    already made on the unchanged generator is returned instead; treat the result as read-only.
    """
    seeds = [int(s) for s in seeds]
    cache = active_cache()
    key = (id(G), layer, tuple(seeds), None if truncation is None else float(truncation))
    if cache is not None and (stored := cache.get(key)) is not None:
        return stored
    module = G.layer_module(layer)
    kind = layer_kind(module)
    state = G.forward_to(layer, G.make_latents(seeds), truncation, noise=G.make_noise(seeds))
    run = LayerRun(state=state, keys=kind.keys(module, state), output=kind.output(module, state))
    if cache is not None:
        cache.put(key, run)
    return run


# ----- context ---------------------------------------------------------------------------------
def weighted_keys(keys: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """Keys under a mask with their area weights.

    Args:
        keys: ``(1, I, h, w)`` key map of one sample.
        mask: ``(H, W)`` float mask at image resolution.

    Returns:
        ``(K, w)``: ``K`` ``(m, I)`` float64 keys where the downsampled mask is positive, ``w`` ``(m,)``.
    """
    area = downsample_mask(mask, tuple(keys.shape[-2:])).reshape(-1)  # (h·w,)
    rows = keys_matrix(keys[:1]).to("cpu", torch.float64)  # (h·w, I)
    keep = area > 0
    return rows[keep], area[keep].to(torch.float64)


def mean_key(keys: Tensor, weights: Tensor) -> Tensor:
    """``k*``: the weighted mean of context keys ``(m, I)`` → ``(I,)``."""
    return (weights[:, None] * keys).sum(0) / weights.sum()


DEFAULT_DIRECTION_RIDGE = 1e-3
"""The relative ridge ``ε`` of ``(C + ε·tr(C)/I · I)⁻¹`` in the context direction, unless the score chose one."""


def rank_one_direction(
    stats: KeyStats, keys: Tensor, weights: Tensor, ridge: float = DEFAULT_DIRECTION_RIDGE
) -> Tensor:
    """``D = C⁻¹k* / ‖C⁻¹k*‖`` ``(I, 1)``: the update direction that disturbs other keys least.

    ``C⁻¹k*`` is also the least-squares linear detector of the context among all keys; with few context
    examples it fits them too closely, and a larger ``ridge`` (``C + ridge·tr(C)/I``) makes it carry over to
    other samples better (the leave-one-out score chooses it under ``layer="auto"``).
    """
    d = stats.solve(mean_key(keys, weights), eps=ridge)
    return (d / d.norm())[:, None]


def whitened_directions(
    stats: KeyStats, keys: Tensor, weights: Tensor, rank: int, ridge: float = DEFAULT_DIRECTION_RIDGE
) -> Tensor:
    """Rank-``r`` directions: top-``r`` principal directions of the whitened context keys.

    ``Z = w ⊙ (K C^-½)`` rows; ``U_r`` = its top right singular vectors; ``D = QR(C^-½ U_r)``, each column's
    sign chosen to agree with the mean whitened key so that positive Λ adds what the context has.

    Returns:
        ``D`` ``(I, r)`` float64 with orthonormal columns.

    Raises:
        RuleError: ``rank`` exceeds the number of context locations or the key dimension.
    """
    check_rank(rank, keys.shape[0], keys.shape[1])
    whiten = stats.inv_sqrt(ridge)  # (I, I) symmetric
    z = weights[:, None] * (keys @ whiten)  # (m, I)
    _, _, vh = torch.linalg.svd(z, full_matrices=False)
    directions = whiten @ vh[:rank].T  # (I, r)
    q, _ = torch.linalg.qr(directions)
    signs = torch.sign(q.T @ (whiten @ z.sum(0)))
    signs[signs == 0] = 1.0
    return q * signs[None, :]


def check_rank(rank: int, locations: int, dim: int) -> None:
    """Refuse a rank the context cannot support (at most one direction per location and per channel)."""
    if not isinstance(rank, int) or isinstance(rank, bool) or rank < 1:
        raise RuleError(f"`rank` must be a positive integer, got {rank!r}.")
    limit = min(locations, dim)
    if rank > limit:
        raise RuleError(
            f"`rank`={rank} is larger than the context allows ({locations} context location(s) at this "
            f"layer, {dim} channels → at most {limit}); paint more context or lower `rank`."
        )


def context_directions(
    stats: KeyStats, keys: Tensor, weights: Tensor, rank: int = 1, ridge: float = DEFAULT_DIRECTION_RIDGE
) -> Tensor:
    """``D`` ``(I, r)``: ``C⁻¹k*`` for rank 1, whitened principal directions for larger ranks; ``C`` is
    loaded with ``ridge·tr(C)/I`` on its diagonal."""
    check_rank(rank, keys.shape[0], keys.shape[1])
    if rank == 1:
        return rank_one_direction(stats, keys, weights, ridge)
    return whitened_directions(stats, keys, weights, rank, ridge)


# ----- context search --------------------------------------------------------------------------
@dataclass
class ContextMatches:
    """Where a direction fires across samples.

    Attributes:
        seeds: the seeds searched, best first.
        best: each seed's best score (same order as ``seeds``).
        heatmaps: ``(N, H, W)`` scores at image resolution (same order).
        matches: ``(N, H, W)`` bool, scores above ``threshold``.
        threshold: the ``quantile`` of all scores.
    """

    seeds: list[int]
    best: Tensor
    heatmaps: Tensor
    matches: Tensor
    threshold: float


@torch.no_grad()
def search_context(
    G: GANGenerator,
    layer: str,
    direction: Tensor,
    seeds: Sequence[int],
    *,
    reference: Tensor | None = None,
    quantile: float = 0.999,
    batch_size: int = 32,
    truncation: float | None = None,
) -> ContextMatches:
    """Score every location of every seed by ``dᵀk`` and rank the seeds by their best location.

    Args:
        direction: ``d`` ``(I,)`` or ``(I, 1)``.
        reference: ``k*``; scores are divided by ``dᵀk*`` so the context itself scores about 1
            (default: by the largest absolute score found).
        quantile: locations above this quantile of all scores are the ``matches``.

    Returns:
        :class:`ContextMatches`, seeds sorted by best score, descending.
    """
    module = G.layer_module(layer)
    kind = layer_kind(module)
    d = direction.reshape(-1).to("cpu", torch.float64)
    seeds = [int(s) for s in seeds]
    if not seeds:
        raise RuleError("`seeds` is empty; give at least one seed to search.")
    maps = []
    for start in range(0, len(seeds), batch_size):
        chunk = seeds[start : start + batch_size]
        noise = G.make_noise(chunk, layers=G.layer_index(layer))  # only what forward_to needs
        state = G.forward_to(layer, G.make_latents(chunk), truncation, noise=noise)
        keys = kind.keys(module, state).to("cpu", torch.float64)  # (B, I, h, w)
        maps.append(torch.einsum("nihw,i->nhw", keys, d))
    scores = torch.cat(maps)  # (N, h, w)
    norm = float(d @ reference.to("cpu", torch.float64).reshape(-1)) if reference is not None else 0.0
    if norm == 0.0:
        norm = float(scores.abs().max()) or 1.0
    scores = scores / norm
    heatmaps = F.interpolate(
        scores[:, None].float(), size=(G.resolution, G.resolution), mode="bilinear", align_corners=False
    )[:, 0]
    threshold = float(torch.quantile(scores.reshape(-1).float(), quantile)) if scores.numel() > 1 else 0.0
    best = scores.flatten(1).max(1).values.float()
    order = torch.argsort(best, descending=True)
    return ContextMatches(
        seeds=[seeds[i] for i in order.tolist()],
        best=best[order],
        heatmaps=heatmaps[order],
        matches=heatmaps[order] > threshold,
        threshold=threshold,
    )


# ----- goals -----------------------------------------------------------------------------------
@dataclass
class Goal:
    """What the layer should output on some samples: the solvers fit ``output(W) ≈ target``.

    Attributes:
        state: the samples' :class:`LayerState` entering the layer.
        target: ``V*`` ``(N, O, H, W)``.
        weight: ``(N, H, W)`` ≥ 0, how much each output location counts.
        seeds: the samples' seeds, in batch order (what :func:`stack_goals` re-runs as one batch).
    """

    state: LayerState
    target: Tensor
    weight: Tensor
    seeds: tuple[int, ...] = ()


def paste_goal(
    G: GANGenerator,
    layer: str,
    copy_seed: int,
    copy_mask: Tensor,
    paste_seed: int,
    paste_at: Tensor | tuple[int, int],
    *,
    region: str = "mask",
    truncation: float | None = None,
) -> Goal:
    """Copy the layer output under ``copy_mask`` of one sample and paste it into another.

    The copied patch is the bounding box of the (output-resolution) copy mask; it is placed centred on the
    bounding box of ``paste_at`` (a mask), or shifted by ``paste_at = (dy, dx)`` image pixels from where
    it was copied, clipped at the borders, and alpha-blended with the copy mask.

    Args:
        copy_mask, paste_at: masks at image resolution (checked by :func:`as_mask`), or an offset.
        region: ``"mask"``: fit only where the pasted object is (weights = its alpha, the object's own
            mask); ``"box"``: fit its whole bounding box, so the rest of the box is asked to stay as it was.

    Returns:
        :class:`Goal` for the paste sample.
    """
    if region not in ("mask", "box"):
        raise RuleError(f"`region` must be 'mask' or 'box', got {region!r}.")
    source = run_layer(G, layer, [copy_seed], truncation)
    target_run = source if paste_seed == copy_seed else run_layer(G, layer, [paste_seed], truncation)
    out_h, out_w = source.output.shape[-2:]
    alpha = downsample_mask(copy_mask, (out_h, out_w)).to(source.output.device)  # (H', W')
    top, left, bottom, right = bounding_box(alpha)
    height, width = bottom - top, right - left
    if isinstance(paste_at, tuple):
        dy, dx = (round(v * out_h / G.resolution) for v in paste_at)
        new_top, new_left = top + dy, left + dx
    else:
        p_top, p_left, p_bottom, p_right = bounding_box(downsample_mask(paste_at, (out_h, out_w)))
        new_top = (p_top + p_bottom - height) // 2
        new_left = (p_left + p_right - width) // 2
    # Clip the placed box to the output, cropping the patch the same way.
    t0, l0 = max(new_top, 0), max(new_left, 0)
    t1, l1 = min(new_top + height, out_h), min(new_left + width, out_w)
    if t0 >= t1 or l0 >= l1:
        raise RuleError("the paste location puts the copied patch entirely outside the image.")
    patch = source.output[:, :, top + t0 - new_top : top + t1 - new_top, left + l0 - new_left : left + l1 - new_left]
    a = alpha[top + t0 - new_top : top + t1 - new_top, left + l0 - new_left : left + l1 - new_left]
    target = target_run.output.clone()
    a4 = a[None, None].to(target.dtype)
    target[:, :, t0:t1, l0:l1] = a4 * patch + (1 - a4) * target[:, :, t0:t1, l0:l1]
    weight = torch.zeros(1, out_h, out_w, device=target.device)
    weight[0, t0:t1, l0:l1] = a if region == "mask" else 1.0
    return Goal(state=target_run.state, target=target, weight=weight, seeds=(int(paste_seed),))


def erase_goal(
    G: GANGenerator,
    layer: str,
    seed: int,
    mask: Tensor,
    *,
    units: Sequence[int] | None = None,
    top_units: int | None = None,
    stats: KeyStats | None = None,
    context: tuple[Tensor, Tensor] | None = None,
    truncation: float | None = None,
) -> Goal:
    """What the layer should output on sample ``seed`` with the thing under ``mask`` erased.

    Two ways:

    * ``top_units=n`` (the paper's reference way, and the default of new requests): rank the layer's
      *input* units by their selectivity in the context (:func:`~gan_rewrite.rewrite.units.rank_units_by_selectivity`;
      ``context`` = ``(keys, weights)``, default the keys under ``mask``), switch the top ``n`` off inside the
      mask, and take the layer's output on those keys as the target. The goal's weights cover the mask and
      every output location the switched-off keys reach.
    * otherwise (older specs): zero the layer's *output* ``units`` (default all) under the mask. This
      paints a hole rather than erasing (measured on the DCGAN faces: the eyes go, the glasses stay).
    """
    run = run_layer(G, layer, [seed], truncation)
    out_h, out_w = run.output.shape[-2:]
    alpha = downsample_mask(mask, (out_h, out_w)).to(run.output.device)[None, None]  # (1, 1, H', W')
    if top_units is not None:
        from .units import rank_units_by_selectivity, switch_off_units

        if stats is None:
            raise RuleError("an erase with `top_units` needs the key statistics (call `compute_stats()`).")
        module = G.layer_module(layer)
        kind = layer_kind(module)
        if not isinstance(top_units, int) or isinstance(top_units, bool) or not 1 <= top_units <= stats.dim:
            raise RuleError(f"`top_units` must be an integer in [1, {stats.dim}], got {top_units!r}.")
        if context is None:
            context = weighted_keys(run.keys, mask)
        order, _ = rank_units_by_selectivity(stats, *context)
        region = downsample_mask(mask, tuple(run.keys.shape[-2:]))
        keys = switch_off_units(run.keys, order[:top_units], region)
        target = output_for_keys(kind, module, run.state, keys)
        changed = (target - run.output).abs().amax(1) > 0  # (1, H', W')
        weight = torch.maximum(alpha[0], changed.to(alpha.dtype))
        return Goal(state=run.state, target=target, weight=weight, seeds=(int(seed),))
    target = run.output.clone()
    channels = list(range(target.shape[1])) if units is None else [int(u) for u in units]
    if not channels or min(channels) < 0 or max(channels) >= target.shape[1]:
        raise RuleError(f"`units` must be indices in [0, {target.shape[1]}), got {units!r}.")
    target[:, channels] = (1 - alpha) * target[:, channels]
    return Goal(state=run.state, target=target, weight=alpha[0].clone(), seeds=(int(seed),))


def stack_goals(G: GANGenerator, layer: str, goals: Sequence[Goal], truncation: float | None = None) -> Goal:
    """One goal over every sample of ``goals``, so that a solver runs the rest of the generator on them as
    one batch (the state is a fresh batched run of the same seeds; targets and weights are concatenated)."""
    goals = list(goals)
    if len(goals) == 1:
        return goals[0]
    seeds = [seed for goal in goals for seed in goal.seeds]
    if not goals or len(seeds) != sum(goal.target.shape[0] for goal in goals):
        raise RuleError("goals to stack must each name the seeds of their samples.")
    run = run_layer(G, layer, seeds, truncation)
    return Goal(
        state=run.state,
        target=torch.cat([goal.target for goal in goals]),
        weight=torch.cat([goal.weight for goal in goals]),
        seeds=tuple(seeds),
    )


@torch.no_grad()
def output_for_keys(kind: LayerKind, module: torch.nn.Module, state: LayerState, keys: Tensor) -> Tensor:
    """The layer's output ``(N, O, H, W)`` with its current weight when it reads ``keys`` instead of its own."""
    weight = module.weight
    out = kind.gain(module, state, weight) * kind.linear(module, keys, weight)
    bias = getattr(module, "bias", None)
    if isinstance(bias, Tensor):
        out = out + bias.view(1, -1, 1, 1)
    return out
