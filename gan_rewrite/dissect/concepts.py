"""Unit ↔ concept IoU and the ranking of units per concept.

A unit "fires" at a pixel when its activation, upsampled (bilinearly) to the image, exceeds a threshold: a
quantile of its activation over samples (:class:`~.quantiles.UnitQuantiles`). Its IoU with a concept is
``Σ |fires ∩ mask| / Σ |fires ∪ mask|`` summed over the samples where the concept's mask is known, at the
best of a few threshold levels (chosen per unit and concept, as GAN Dissection does).

Concept masks come from either source:

* a **segmenter**: :class:`SegmenterConcepts` labels every sample (e.g. the toy-world U-Net), every class is a
  concept and every sample counts;
* **painted masks**: :class:`PaintedConcepts`, ``{"glasses": [(seed, mask), ...], ...}``, masks a person paints
  on a few samples; each concept counts only on the samples it was painted on (elsewhere it is unknown).

Example:
    >>> q = compute_quantiles(G, "layer4", n=500)
    >>> result = dissect(G, "layer4", PaintedConcepts({"glasses": [(3, m3), (8, m8)]}), quantiles=q)
    >>> result.top("glasses", 5)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import RuleError
from .units import next_layer, state_after

if TYPE_CHECKING:
    from ..models.base import GANGenerator
    from .quantiles import UnitQuantiles

DEFAULT_LEVELS: tuple[float, ...] = (0.8, 0.9, 0.95, 0.98, 0.99, 0.995)
"""The firing thresholds tried, as quantile levels of each unit's activation (0.99: its top 1 %)."""


class PaintedConcepts:
    """Concepts as masks a person painted on a few samples.

    Args:
        masks: concept name → ``[(seed, mask), ...]``, masks ``(H, W)`` bool/float at the model resolution
            (float masks are thresholded at 0.5).
    """

    def __init__(self, masks: dict[str, Iterable[tuple[int, Any]]]) -> None:
        self.masks: dict[str, dict[int, Tensor]] = {}
        for name, pairs in masks.items():
            by_seed = {}
            for seed, mask in pairs:
                array = torch.as_tensor(np.asarray(mask) if not isinstance(mask, Tensor) else mask)
                if array.ndim != 2:
                    raise RuleError(f"concept {name!r}, seed {seed}: a mask is (H, W), got {tuple(array.shape)}.")
                by_seed[int(seed)] = array.float() >= 0.5
            if not by_seed or not any(bool(m.any()) for m in by_seed.values()):
                raise RuleError(f"concept {name!r} has no painted pixel; paint it on at least one sample.")
            self.masks[name] = by_seed
        if not self.masks:
            raise RuleError("no concepts given; paint at least one concept on one sample.")

    @property
    def names(self) -> list[str]:
        return list(self.masks)

    @property
    def seeds(self) -> list[int]:
        return sorted({s for by_seed in self.masks.values() for s in by_seed})

    def batch(self, seeds: Sequence[int], images: Tensor | None, size: int) -> tuple[Tensor, Tensor]:
        """``(masks (B, K, H, W) bool, known (B, K) bool)`` for ``seeds``."""
        masks = torch.zeros(len(seeds), len(self.masks), size, size, dtype=torch.bool)
        known = torch.zeros(len(seeds), len(self.masks), dtype=torch.bool)
        for k, by_seed in enumerate(self.masks.values()):
            for b, seed in enumerate(seeds):
                if seed in by_seed:
                    mask = by_seed[seed]
                    if tuple(mask.shape) != (size, size):
                        raise RuleError(f"painted masks must be {size}×{size}, got {tuple(mask.shape)}.")
                    masks[b, k], known[b, k] = mask, True
        return masks, known


@dataclass
class SegmenterConcepts:
    """Concepts from a segmenter: ``segment(images (N, 3, H, W)) -> labels (N, H, W)`` indices into ``classes``.

    Attributes:
        segment: the labelling function (e.g. ``lambda x: toyworld.segment.segment(net, x)``).
        classes: the class names; label ``i`` is ``classes[i]``.
        seeds: the samples to score on.
        skip: class names that are not concepts (e.g. a background).
    """

    segment: Callable[[Tensor], Tensor]
    classes: Sequence[str]
    seeds: Sequence[int] = field(default_factory=lambda: range(200))
    skip: Sequence[str] = ()

    @property
    def names(self) -> list[str]:
        return [c for c in self.classes if c not in self.skip]

    def batch(self, seeds: Sequence[int], images: Tensor | None, size: int) -> tuple[Tensor, Tensor]:
        labels = self.segment(images).cpu()  # (B, H, W)
        index = torch.tensor([list(self.classes).index(c) for c in self.names])
        masks = labels[:, None] == index[None, :, None, None]
        return masks, torch.ones(len(seeds), len(index), dtype=torch.bool)


Concepts = PaintedConcepts | SegmenterConcepts


@dataclass
class Dissection:
    """IoU of every unit of a layer with every concept.

    Attributes:
        layer: the dissected layer.
        concepts: concept names, in column order.
        iou: ``(C, K)`` float64, each at the unit's best threshold for that concept.
        levels: ``(C, K)`` the quantile level of that threshold (one of the levels tried).
        thresholds: ``(C, K)`` the threshold itself (activation value).
        concept_pixels: ``(K,)`` how many pixels each concept covered (over the samples it is known on).
        seeds: the samples scored.
    """

    layer: str
    concepts: list[str]
    iou: Tensor
    levels: Tensor
    thresholds: Tensor
    concept_pixels: Tensor
    seeds: list[int]

    @property
    def units(self) -> int:
        return int(self.iou.shape[0])

    def ranking(self, concept: str) -> Tensor:
        """All units by decreasing IoU with ``concept`` ``(C,)`` long."""
        return torch.argsort(self.iou[:, self.column(concept)], descending=True, stable=True)

    def top(self, concept: str, k: int = 10) -> list[tuple[int, float]]:
        """The ``k`` units with the highest IoU with ``concept``, as ``(unit, iou)``."""
        column = self.column(concept)
        return [(int(u), float(self.iou[u, column])) for u in self.ranking(concept)[:k]]

    def best_concept(self) -> list[tuple[str, float]]:
        """For every unit, the concept it matches best and the IoU."""
        best, where = self.iou.max(dim=1)
        return [(self.concepts[int(j)], float(v)) for v, j in zip(best, where, strict=True)]

    def column(self, concept: str) -> int:
        """The column of ``concept``. Raises RuleError naming the known concepts."""
        try:
            return self.concepts.index(concept)
        except ValueError:
            raise RuleError(f"unknown concept {concept!r}; the dissection has {self.concepts}.") from None


def firing(acts: Tensor, thresholds: Tensor, size: int) -> Tensor:
    """Where units fire: ``(N, C, h, w)`` activations upsampled to ``size``, above ``thresholds`` ``(C,)``."""
    return upsample(acts, size) > thresholds.to(acts.device)[None, :, None, None]


def upsample(acts: Tensor, size: int) -> Tensor:
    """Unit maps ``(N, C, h, w)`` bilinearly upsampled to the image, ``(N, C, size, size)`` float32."""
    return F.interpolate(acts.float(), size=(size, size), mode="bilinear", align_corners=False)


@torch.no_grad()
def dissect(
    G: GANGenerator,
    layer: str,
    concepts: Concepts,
    *,
    quantiles: UnitQuantiles,
    levels: Sequence[float] = DEFAULT_LEVELS,
    seeds: Sequence[int] | None = None,
    truncation: float | None = None,
    batch_size: int = 16,
    progress: bool = True,
) -> Dissection:
    """Score every unit of ``layer`` against every concept by IoU.

    Each (unit, concept) pair is scored at each threshold of ``levels`` (quantiles of the unit's activation)
    and keeps the best, as GAN Dissection chooses a threshold per unit and concept: a unit drawing a large
    concept (a wall, the sky) fires on more than its top 1 %.

    Args:
        G: the generator.
        layer: the dissected layer (units are its output channels).
        concepts: :class:`SegmenterConcepts` or :class:`PaintedConcepts`.
        quantiles: the units' activation quantiles at ``layer`` (:func:`~.quantiles.compute_quantiles`).
        levels: the threshold levels tried.
        seeds: samples to score (default: the concepts' own seeds).
        truncation: as for sampling.
        batch_size: samples per forward pass.
        progress: show a tqdm bar.

    Returns:
        :class:`Dissection`.
    """
    from tqdm.auto import tqdm

    if quantiles.layer != layer:
        raise RuleError(f"the unit quantiles are of layer {quantiles.layer!r}, not {layer!r}.")
    seeds = [int(s) for s in (concepts.seeds if seeds is None else seeds)]
    if not seeds:
        raise RuleError("no samples to dissect on; give seeds or paint a concept.")
    levels = [float(q) for q in levels]
    if not levels or not all(0.0 <= q < 1.0 for q in levels):
        raise RuleError(f"threshold levels must lie in [0, 1), got {levels}.")
    thresholds = torch.stack([quantiles.at(q) for q in levels])  # (L, C)
    size = G.resolution
    count = len(concepts.names)
    inter = torch.zeros(len(levels), quantiles.units, count, dtype=torch.float64)
    fired = torch.zeros_like(inter)
    pixels = torch.zeros(count, dtype=torch.float64)
    needs_images = isinstance(concepts, SegmenterConcepts)
    nxt = next_layer(G, layer)
    was_training = G.training
    G.eval()
    try:
        for start in tqdm(range(0, len(seeds), batch_size), desc=f"dissect {layer}", unit="batch",
                          disable=not progress):  # fmt: skip
            chunk = seeds[start : start + batch_size]
            state = state_after(G, layer, chunk, truncation)
            images = G.forward_from(nxt, state).float().clamp(-1, 1) if needs_images else None
            masks, known = concepts.batch(chunk, images, size)  # (B, K, H, W), (B, K)
            masks = (masks & known[:, :, None, None]).float()
            up = upsample(state.features, size).cpu()  # (B, C, H, W)
            for j, level_thresholds in enumerate(thresholds):
                on = (up > level_thresholds[None, :, None, None]).float()
                inter[j] += torch.einsum("bchw,bkhw->ck", on, masks).double()
                fired[j] += torch.einsum("bc,bk->ck", on.sum((2, 3)), known.float()).double()
            pixels += masks.sum((0, 2, 3)).double()
    finally:
        G.train(was_training)
    union = fired + pixels[None, None] - inter
    iou = torch.where(union > 0, inter / union.clamp_min(1), torch.zeros_like(union))  # (L, C, K)
    best, where = iou.max(dim=0)  # (C, K)
    level_values = torch.tensor(levels)
    chosen = torch.gather(thresholds[:, :, None].expand(-1, -1, count), 0, where[None])[0]
    return Dissection(layer=layer, concepts=list(concepts.names), iou=best, levels=level_values[where],
                      thresholds=chosen, concept_pixels=pixels, seeds=seeds)  # fmt: skip


def painted_from_json(data: Any, resolution: int) -> PaintedConcepts:
    """Painted concepts from JSON: ``{"glasses": [{"seed": 3, "box": [top, left, bottom, right]},
    {"seed": 8, "mask": "rle:64x64:…"}, {"seed": 1}], …}`` (boxes in pixels, end exclusive; masks as
    :func:`~gan_rewrite.rewrite.context.encode_mask` writes them; a seed alone: the concept is absent there).

    Raises:
        RuleError: the JSON does not have that shape, or a box or mask does not fit the resolution.
    """
    from ..rewrite.context import decode_mask

    if not isinstance(data, dict) or not data:
        raise RuleError('concept masks must be a JSON object {"concept": [{"seed": S, "box": [t, l, b, r]}, ...]}.')
    concepts: dict[str, list[tuple[int, Tensor]]] = {}
    for name, entries in data.items():
        if not isinstance(entries, list):
            raise RuleError(f"concept {name!r}: expected a list of {{'seed', 'box' or 'mask'}} entries.")
        for entry in entries:
            seed = entry.get("seed") if isinstance(entry, dict) else None
            if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
                raise RuleError(f"concept {name!r}: every entry needs a non-negative integer `seed`, got {entry!r}.")
            if "box" in entry:
                box = entry["box"]
                ok = isinstance(box, list) and len(box) == 4 and all(isinstance(v, int) for v in box)
                top, left, bottom, right = box if ok else (0, 0, 0, 0)
                if not (ok and 0 <= top < bottom <= resolution and 0 <= left < right <= resolution):
                    raise RuleError(
                        f"concept {name!r}, seed {seed}: `box` must be [top, left, bottom, right] inside "
                        f"{resolution}×{resolution}, got {box!r}."
                    )
                mask = torch.zeros(resolution, resolution)
                mask[top:bottom, left:right] = 1
            elif "mask" in entry:
                mask = decode_mask(entry["mask"])
                if tuple(mask.shape) != (resolution, resolution):
                    raise RuleError(f"concept {name!r}, seed {seed}: a {tuple(mask.shape)} mask, not {resolution}².")
            else:  # painted nothing: the concept is absent from this sample (it counts against units firing there)
                mask = torch.zeros(resolution, resolution)
            concepts.setdefault(str(name), []).append((seed, mask))
    return PaintedConcepts(concepts)


def toyworld_concepts(seeds: Sequence[int], device: str | torch.device = "cpu") -> SegmenterConcepts:
    """The toy world's classes as concepts, labelled by its shipped segmenter (``gan_rewrite.toyworld.segment``).

    Raises:
        RuleError: the segmenter's weights are not installed.
    """
    from ..toyworld import segment as toy
    from ..toyworld.render import CLASSES

    if not toy.SEGMENTER_FILE.is_file():
        raise RuleError(f"the toy-world segmenter is not installed ({toy.SEGMENTER_FILE} is missing); "
                        "train it with `python -m gan_rewrite.toyworld.segment` or paint concept masks instead.")
    net = toy.load_segmenter(device=device)
    return SegmenterConcepts(segment=lambda images: toy.segment(net, images), classes=CLASSES, seeds=list(seeds))
