"""Helpers for the Space's "Paint" tab (``spaces/rewrite/paint_tab.py``): no gradio here.

* :class:`UnitTables` — unit quantiles per (model, layer), computed once and shared by every session;
* :func:`default_unit_layer` — a layer worth painting with (about a quarter of the image's resolution);
* :func:`session_concepts` — the concepts a session dissects with: its painted masks, else the toy-world
  segmenter for the toy model;
* :func:`paint_units` — the units to paint for a concept, and the value to paint them with.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

import torch

from ..errors import RuleError
from .concepts import Concepts, Dissection, PaintedConcepts, toyworld_concepts
from .units import has_side_output, state_after

if TYPE_CHECKING:
    from ..models.base import GANGenerator
    from .quantiles import UnitQuantiles

QUANTILE_SAMPLES = 200
"""Samples behind the Space's unit quantiles (a few seconds on a CPU for the 64px models)."""
PAINT_LEVEL = 0.99
"""Painting "add" sets units to this quantile of their activation."""


class UnitTables:
    """Unit quantiles by (model, layer), computed on first use. Call :meth:`get` with the model's lock held."""

    def __init__(self, n: int = QUANTILE_SAMPLES) -> None:
        self.n = n
        self._tables: dict[tuple[str, str], UnitQuantiles] = {}
        self._guard = threading.Lock()

    def get(self, name: str, G: GANGenerator, layer: str) -> UnitQuantiles:
        from .quantiles import compute_quantiles

        key = (name, layer)
        with self._guard:
            if key not in self._tables:
                self._tables[key] = compute_quantiles(G, layer, self.n, progress=False)
            return self._tables[key]


def default_unit_layer(G: GANGenerator) -> str:
    """The first layer whose units are at least a quarter of the image's resolution and feed only the next layer."""
    names = G.layer_names[:-1]
    for layer in names:
        if has_side_output(G, layer):
            continue
        size = state_after(G, layer, [0]).features.shape[-1]
        if size * 4 >= G.resolution:
            return layer
    return names[-1]


def session_concepts(model: str, painted: dict[str, list[tuple[int, Any]]], seeds: range = range(64)) -> Concepts:
    """The session's painted concepts, or (none painted, toy model) the toy-world segmenter's classes.

    Raises:
        RuleError: nothing painted and no segmenter for this model.
    """
    if painted:
        return PaintedConcepts(painted)
    if "toyworld" in model:
        return toyworld_concepts(seeds)
    raise RuleError("paint a concept on a sample first (name it, paint it, then 'Add example').")


def paint_units(result: Dissection, concept: str, k: int) -> list[int]:
    """The ``k`` best units of ``concept`` (checked)."""
    if k < 1:
        raise RuleError(f"paint with at least one unit, got {k}.")
    return [unit for unit, _ in result.top(concept, k)]


def paint_value(quantiles: UnitQuantiles, mode: str) -> torch.Tensor | float:
    """What ``mode`` ("add" / "remove") sets the units to."""
    if mode not in ("add", "remove"):
        raise RuleError(f"mode must be 'add' or 'remove', got {mode!r}.")
    return quantiles.at(PAINT_LEVEL) if mode == "add" else 0.0
