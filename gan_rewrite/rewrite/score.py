"""Does a context generalise? A leave-one-out score, before solving, that needs no labels.

A rule changes the model wherever ``dᵀk`` is large, so it carries over to other images only if the
context direction singles out *the kind of place* the user painted, not just the painted example. For each
context example ``j``: build ``d`` from the *other* examples (``C⁻¹k*``), then ask how well ``dᵀk`` picks
out example ``j``'s region among every place of many samples — the AUC (the chance that a key in the
left-out region scores above a key at a random place of a random sample; 0.5 = chance, 1 = perfect).
The score of a layer is the mean over the left-out examples; it is computed for a few ridges of the
direction (``(C + ridge·tr(C)/I)⁻¹k*``, :data:`DIRECTION_RIDGES`) and the best ridge is kept. The layer
with the best score, and its ridge, are what ``layer="auto"`` picks.

Measured on the embedded DCGAN faces (``examples/README.md``): see :data:`GOOD_AUC`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from ..errors import RuleError
from .context import DEFAULT_DIRECTION_RIDGE, rank_one_direction, run_layer, weighted_keys
from .layers import keys_matrix, layer_kind

if TYPE_CHECKING:
    from ..models.base import GANGenerator
    from .stats import KeyStats

logger = logging.getLogger(__name__)

SCORE_SEEDS = range(900_000, 900_064)
"""The samples whose every place is a negative (64 seeds that no example or benchmark uses)."""

GOOD_AUC = 0.9
"""Below this leave-one-out AUC a context is reported as not generalising (see ``examples/README.md``)."""

DIRECTION_RIDGES = (1e-3, 1e-2, 0.1, 1.0, 10.0)
"""The ridges of the context direction the score tries per layer (``C + ridge·tr(C)/I``); the best is kept.
On six frozen face requests the best was 1 or 10 for five (``examples/README.md``): the plain ``C⁻¹k*``
(1e-3) fits the context examples too closely."""


@dataclass
class LayerScore:
    """The leave-one-out score of a context at one layer.

    Attributes:
        layer: the layer.
        auc: mean AUC over the left-out context examples (in-sample when there is only one example).
        per_context: the AUC of each left-out example, in the order of the context.
        held_out: ``False`` when there was a single context example, so it was scored on itself.
        ridge: the direction's ridge that scored best (the one ``auc`` is for).
        by_ridge: the AUC of every ridge tried (one entry, the default ridge, with a single example: an
            in-sample score cannot tell which ridge carries over).
    """

    layer: str
    auc: float
    per_context: list[float]
    held_out: bool
    ridge: float = DEFAULT_DIRECTION_RIDGE
    by_ridge: dict[float, float] = field(default_factory=dict)


@dataclass
class GeneralisationScore:
    """Per-layer leave-one-out scores of a request's context, the best layer, and advice in one line.

    Attributes:
        layers: :class:`LayerScore` per layer scored, in the order scored.
        best: the layer with the highest score (what ``layer="auto"`` picks).
        layer: the layer the advice is about (the Rewriter's fixed layer, or ``best`` under ``"auto"``).
        advice: one line for the user, e.g. ``"this context does not generalise at layer3 (AUC 0.85): add
            examples or try layer4 (0.93)"``.
    """

    layers: dict[str, LayerScore]
    best: str
    layer: str
    advice: str = ""
    threshold: float = GOOD_AUC
    extra: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, float]:
        """``{layer: auc}``, rounded to 4 digits (what a spec records)."""
        return {name: round(s.auc, 4) for name, s in self.layers.items()}

    def __str__(self) -> str:
        rows = [f"{'layer':<12} {'AUC':>6} {'ridge':>6}  per left-out example"]
        for name, s in self.layers.items():
            mark = " *" if name == self.best else ""
            each = ", ".join(f"{a:.2f}" for a in s.per_context)
            rows.append(f"{name:<12} {s.auc:>6.3f} {s.ridge:>6g}  {each}{mark}")
        return "\n".join([*rows, self.advice])


def _auc(positives: Tensor, weights: Tensor, negatives_sorted: Tensor) -> float:
    """Weighted P(positive > negative) (+½ for ties) against sorted negatives."""
    below = torch.searchsorted(negatives_sorted, positives, right=False).to(torch.float64)
    not_above = torch.searchsorted(negatives_sorted, positives, right=True).to(torch.float64)
    frac = (below + not_above) / (2 * negatives_sorted.numel())
    return float((weights * frac).sum() / weights.sum())


@torch.no_grad()
def layer_score(
    G: GANGenerator,
    layer: str,
    stats: KeyStats,
    contexts: Sequence[tuple[int, Tensor]],
    *,
    seeds: Sequence[int] = SCORE_SEEDS,
    truncation: float | None = None,
    batch_size: int = 32,
    ridges: Sequence[float] = DIRECTION_RIDGES,
) -> LayerScore:
    """Leave-one-out AUC of the context direction at ``layer`` (see the module docstring), for each ridge of
    the direction in ``ridges``; the best ridge's score is returned.

    Args:
        G: the generator.
        layer: the layer to score.
        stats: key statistics at ``layer``.
        contexts: ``(seed, mask)`` pairs, masks ``(H, W)`` at image resolution.
        seeds: the samples whose every place is a negative.
        truncation: of every sample (``None``: the model's default).
        ridges: the direction ridges to try (a single context example is scored at the default only).

    Returns:
        :class:`LayerScore`.
    """
    if not contexts:
        raise RuleError("no context to score: call `add_context(seed, mask)` (or set a paste / erase).")
    parts = []
    for seed, mask in contexts:
        run = run_layer(G, layer, [seed], truncation)
        parts.append(weighted_keys(run.keys, mask))
    if any(k.shape[0] == 0 for k, _ in parts):
        raise RuleError(f"a context mask covers no location at {layer}'s resolution; paint a larger region.")
    held_out = len(parts) > 1
    ridges = [float(r) for r in ridges] if held_out else [DEFAULT_DIRECTION_RIDGE]
    if not ridges or any(not r > 0 for r in ridges):
        raise RuleError(f"`ridges` must be positive numbers, got {list(ridges)}.")
    directions = []  # fold-major within each ridge: column = ridge_index · folds + fold
    for ridge in ridges:
        for j in range(len(parts)):
            rest = [p for i, p in enumerate(parts) if i != j] if held_out else parts
            keys = torch.cat([k for k, _ in rest])
            weights = torch.cat([w for _, w in rest])
            directions.append(rank_one_direction(stats, keys, weights, ridge)[:, 0])
    d = torch.stack(directions, 1)  # (I, ridges · folds)
    module = G.layer_module(layer)
    kind = layer_kind(module)
    seeds = [int(s) for s in seeds]
    negatives = []
    for start in range(0, len(seeds), batch_size):
        chunk = seeds[start : start + batch_size]
        noise = G.make_noise(chunk, layers=G.layer_index(layer))
        state = G.forward_to(layer, G.make_latents(chunk), truncation, noise=noise)
        keys = keys_matrix(kind.keys(module, state)).to("cpu", torch.float64)  # (B·h·w, I)
        negatives.append(keys @ d)
    scores = torch.cat(negatives)  # (places, ridges · folds)
    per_ridge = []
    for r in range(len(ridges)):
        per = []
        for j, (keys, weights) in enumerate(parts):
            column = r * len(parts) + j
            per.append(_auc(keys @ d[:, column], weights, torch.sort(scores[:, column]).values))
        per_ridge.append(per)
    means = [sum(per) / len(per) for per in per_ridge]
    best = max(range(len(ridges)), key=means.__getitem__)  # the first (smallest) ridge wins a tie
    return LayerScore(
        layer=layer, auc=means[best], per_context=per_ridge[best], held_out=held_out, ridge=ridges[best],
        by_ridge=dict(zip(ridges, means, strict=True)),
    )


def candidate_layers(G: GANGenerator) -> list[str]:
    """The layers ``layer="auto"`` chooses among: the model's default layer and its two neighbours,
    leaving out the first layer (1×1 keys for a DCGAN) and the last (it writes pixels)."""
    names = list(G.layer_names)
    index = names.index(G.config.default_layer)
    lo, hi = max(1, index - 1), min(len(names) - 2, index + 1)
    chosen = names[lo : hi + 1] if lo <= hi else [G.config.default_layer]
    return chosen or [G.config.default_layer]


def advice(scores: dict[str, LayerScore], layer: str, threshold: float = GOOD_AUC) -> tuple[str, str]:
    """``(best layer, one line of advice)`` about ``layer`` given per-layer scores."""
    best = max(scores, key=lambda name: scores[name].auc)
    here = scores.get(layer, scores[best])
    b = scores[best]
    if not here.held_out:
        return best, (
            f"one context example: it cannot be checked on a left-out example (in-sample AUC {here.auc:.2f} at "
            f"{here.layer}); add examples on other samples so the rule can carry over."
        )
    if here.auc >= threshold:
        text = f"this context generalises at {here.layer} (AUC {here.auc:.2f})"
        if best != here.layer and b.auc > here.auc + 0.01:
            text += f"; {best} scores higher ({b.auc:.2f})"
        return best, text + "."
    if best != here.layer and b.auc > here.auc + 0.01:
        return best, (
            f"this context does not generalise at {here.layer} (AUC {here.auc:.2f}): add examples or try "
            f"{best} ({b.auc:.2f})."
        )
    return best, (
        f"this context does not generalise at {here.layer} (AUC {here.auc:.2f}, below {threshold:.2f}) nor at "
        "the other layers scored: add examples, or paint tighter regions."
    )
