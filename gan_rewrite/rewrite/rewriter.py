"""Rewriter: collect a rewrite request (context, copy / paste or erase), solve it, return a RuleDelta.

The Rewriter holds only the *request* and the key statistics; every heavy step is an explicit call, and
the generator is never modified (the result is a :class:`~gan_rewrite.rewrite.delta.RuleDelta` that you
load with ``G.load_rule``). ``spec()`` is the request as JSON, stored in the rule file, and
``Rewriter.from_spec(G, spec)`` rebuilds the request so the same solve can be run again.

Spec JSON (``"version": 1``)::

    {
      "version": 1,
      "layer": "layer3",                           # or "auto" for a request not solved yet
      "auto_layer": {"scores": {"layer2": 0.77, "layer3": 0.90, "layer4": 0.87}} | null,  # how "auto" chose
      "direction_ridge": 1.0,                      # the ridge of D; null for a request not solved yet
      "truncation": null,                          # null: the model's default
      "context": [{"seed": 3, "mask": "<mask code>"}, ...],
      "copy":  {"seed": 1, "mask": "<mask code>"},                                  # or null
      "paste": {"seed": 2, "mask": "<mask code>"} | {"seed": 2, "offset": [dy, dx]}, # or null
      "erase": {"seed": 4, "mask": "<mask code>", "units": null, "top_units": 128}, # or null
      "region": "mask" | "box",                    # where the goal is fitted (see paste_goal)
      "stats": {"n": 1000, "seed": 0, "truncation": null} | null,
      "rank": 1, "method": "closed_form", "solver": {...}   # written by solve()
    }

``solver`` holds the JSON solver options, e.g. ``{"steps": 1000, "loss": "image"}`` for ``method="optimize"``
(code options — ``loss_fn``, ``render`` — are never recorded).

Mask codes are ``rle:HxW:...`` (binary) or ``u8z:HxW:...`` (soft, 8-bit); see
:func:`~gan_rewrite.rewrite.context.encode_mask`. Soft masks are rounded to 1/255 when set, so a spec
reproduces the request exactly.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from ..errors import RuleError, StatsError
from .context import (
    DEFAULT_DIRECTION_RIDGE,
    ContextMatches,
    Goal,
    MaskLike,
    as_mask,
    context_directions,
    decode_mask,
    encode_mask,
    erase_goal,
    mean_key,
    paste_goal,
    quantize_mask,
    run_layer,
    search_context,
    stack_goals,
    weighted_keys,
)
from .delta import LayerDelta, RuleDelta
from .layers import LayerKind, layer_kind
from .learn import BATCH_SIZE, SAMPLE_SEED, SAMPLES, check_sample_options
from .learn import RANK as LEARN_RANK
from .runcache import RunCache
from .score import GeneralisationScore
from .solve import CODE_OPTIONS, SOLVERS
from .stats import KeyStats, compute_stats, model_sha256

if TYPE_CHECKING:
    from ..models.base import GANGenerator, LayerState

logger = logging.getLogger(__name__)

SPEC_VERSION = 1

AUTO = "auto"
"""``layer="auto"``: choose the layer by the leave-one-out score of the context (:meth:`Rewriter.score`)."""

DEFAULT_METHOD = "bounded"
"""The solver of new requests where the image fit would be slow (:func:`default_solver`)."""

FIT_CONTEXTS: dict[str, Any] = {
    "loss": "image", "targets": "contexts", "keep_weight": 1.0, "steps": 100, "lr_factor": 3.0,
}
"""The optimiser's options of the default solve (:func:`default_solver`): Adam on ``Λ``, its L1 loss on the final
images of the copy pasted onto every context sample, the rest of those images kept. Chosen on six frozen face
requests (``benchmarks/edit_quality.py``): of every setting tried, the only one with the edit visible on ≥ 20 of
32 held-out faces and a mean change elsewhere ≤ 0.03 for a request (the cap), and about as clean as the bounded
solve on the others (cleaner on four of five)."""

IMAGE_FIT_MAX_RESOLUTION = 128
"""Up to this image size (or on a GPU) the default solve is the image fit; above it, on a CPU, every step of it
would run the rest of a large generator on several samples (minutes), so the default is ``"bounded"``."""


def default_solver(G: GANGenerator) -> tuple[str, dict[str, Any]]:
    """``(method, options)`` of ``Rewriter.solve()`` when no method is named: the optimiser with
    :data:`FIT_CONTEXTS` for small models or on a GPU, else the bounded closed form. Recorded in the rule's spec
    either way, so ``solve_spec`` reproduces the rule on any device."""
    if G.resolution <= IMAGE_FIT_MAX_RESOLUTION or G.device.type == "cuda":
        return "optimize", dict(FIT_CONTEXTS)
    return DEFAULT_METHOD, {}

ERASE_FRACTION = 0.5
"""An erase switches off this fraction of the layer's input units by default (``set_erase(top_units=...)``).

Measured on the frozen erase request (``examples/README.md``): erasing each held-out wearer's frames directly
in the layer output with the top 16 / 64 / 128 / 256 of layer3's 256 units made the frames visibly lighter on
0 / 12 / 21 / 7 of 32 faces; half the units was best."""


@dataclass
class _Painted:
    seed: int
    mask: Tensor  # (H, W) float32, quantised to 1/255


def reusing_runs(method: Callable[..., Any]) -> Callable[..., Any]:
    """Run a :class:`Rewriter` method with the request's :class:`RunCache` active: the layer runs of its
    samples (context, copy, paste, erase) are made once and reused by later calls — a second solve with
    another rank, region, mask or method runs no forward pass — until the generator's weights or active
    rules change (then they are made again). Seeds are part of the key, so new samples are always run."""

    @functools.wraps(method)
    def wrapper(self: Rewriter, *args: Any, **kwargs: Any) -> Any:
        runs = self.__dict__.get("runs")
        if runs is None:  # a subclass that skipped __init__
            return method(self, *args, **kwargs)
        with runs.active(self.G):
            return method(self, *args, **kwargs)

    return wrapper


class Rewriter:
    """Build one rewrite of a generator layer.

    Args:
        G: the generator (not modified).
        layer: the layer to rewrite. ``"auto"`` (default): chosen when solving, among the default layer and
            its neighbours, by the leave-one-out score of the context (:meth:`score`); the chosen layer is
            written into the spec, so ``solve_spec`` reproduces the rule exactly. ``None``: the model's
            ``default_layer``.
        direction_ridge: the relative ridge of the context direction, ``(C + ridge·tr(C)/I)⁻¹k*``.
            ``None`` (default): chosen with the layer by the score under ``layer="auto"`` (the ridge whose
            direction carries over best to left-out context examples), else
            :data:`~gan_rewrite.rewrite.context.DEFAULT_DIRECTION_RIDGE`. Written into the spec.
        truncation: truncation for every sample the request refers to (``None``: the model's default).
        base_model: repo id or name recorded in the rule (default: the Hub repo the generator was loaded
            from, else from ``G.config.extra``).
        base_revision: its revision (default: the commit the generator was loaded at, else from ``extra``).

    Raises:
        LayerError: ``layer`` is not one of ``G.layer_names``.

    Example:
        >>> rw = Rewriter(G, layer="layer3")
        >>> rw.compute_stats(n=1000)
        >>> rw.set_copy(seed=1, mask=eye_mask)
        >>> rw.set_paste(seed=2, mask_or_offset=target_mask)
        >>> rw.add_context(seed=2, mask=target_mask)
        >>> delta = rw.solve(rank=1)
        >>> G.load_rule(delta, name="eye")
    """

    def __init__(
        self,
        G: GANGenerator,
        layer: str | None = "auto",
        *,
        truncation: float | None = None,
        base_model: str | None = None,
        base_revision: str | None = None,
        direction_ridge: float | None = None,
    ) -> None:
        self.G = G
        if direction_ridge is not None and not (
            isinstance(direction_ridge, (int, float)) and not isinstance(direction_ridge, bool)
            and math.isfinite(direction_ridge) and direction_ridge > 0
        ):
            raise RuleError(f"`direction_ridge` must be a positive number or None, got {direction_ridge!r}.")
        self._direction_ridge = None if direction_ridge is None else float(direction_ridge)
        self.auto = layer == AUTO
        self._layer = G.config.default_layer if layer is None or self.auto else layer
        G.layer_index(self._layer)  # LayerError names the valid layers
        self._chosen: GeneralisationScore | None = None  # the score that fixed the layer under "auto"
        self._stats_options: dict[str, Any] = {}
        self.truncation = None if truncation is None else float(truncation)
        extra = G.config.extra or {}
        source = getattr(G, "hub_source", None)  # set by load_generator for a model from a Hub repo
        if source is not None:
            extra = {**extra, "base_model": source.repo_id, "revision": source.commit}
        self.base_model = (
            base_model
            if base_model is not None
            else str(extra.get("base_model") or extra.get("name") or extra.get("repo_id") or "")
        )
        self.base_revision = base_revision if base_revision is not None else str(extra.get("revision") or "")
        self.stats: KeyStats | None = None
        self.context: list[_Painted] = []
        self.copy: _Painted | None = None
        self.paste: tuple[int, Tensor | tuple[int, int]] | None = None
        self.erase: tuple[_Painted, list[int] | None] | None = None
        self._erase_top_units: int | str | None = None  # "default": ERASE_FRACTION of the units
        self.region = "mask"
        self.runs = RunCache()  # layer runs kept between solves (`reusing_runs`); Rewriters may share one

    # ----- the layer ----------------------------------------------------------------------------
    @property
    def layer(self) -> str:
        """The layer to rewrite. Under ``layer="auto"`` it is the model's default layer until the layer is
        chosen (by :meth:`choose_layer`, which :meth:`solve` calls), then the chosen one."""
        return self._layer

    @property
    def chosen(self) -> GeneralisationScore | None:
        """The score that fixed the layer under ``layer="auto"`` (``None`` with a fixed layer, or before
        :meth:`choose_layer` / :meth:`solve` ran)."""
        return self._chosen

    @property
    def direction_ridge(self) -> float:
        """The ridge of the context direction used now: the one given, else the one the score chose with
        the layer under ``"auto"``, else :data:`~gan_rewrite.rewrite.context.DEFAULT_DIRECTION_RIDGE`."""
        if self._direction_ridge is not None:
            return self._direction_ridge
        if self.auto and self._chosen is not None and self._layer in self._chosen.layers:
            return self._chosen.layers[self._layer].ridge
        return DEFAULT_DIRECTION_RIDGE

    @property
    def kind(self) -> LayerKind:
        return layer_kind(self.G.layer_module(self._layer))

    def _changed(self) -> None:
        """The request changed: under ``"auto"`` the layer will be chosen again."""
        self._chosen = None

    def choose_layer(self, *, progress: bool = False) -> str:
        """Under ``layer="auto"``: score the candidate layers and switch to the best (no-op otherwise).

        The statistics for the chosen layer are computed (or read from the cache) with the options of the
        last :meth:`compute_stats` call (default ``n=1000``, ``seed=0``).

        Returns:
            The layer.
        """
        if not self.auto or self._chosen is not None:
            return self._layer
        result = self.score(progress=progress)
        self._chosen = result
        if result.best != self._layer or self.stats is None or self.stats.layer != result.best:
            self._layer = result.best
            self.stats = self._stats_at(result.best, progress=progress)
        logger.info("layer='auto' chose %s (%s)", result.best, result.as_dict())
        return self._layer

    def _stats_at(self, layer: str, *, progress: bool = False) -> KeyStats:
        """Key statistics at ``layer`` with the recorded options (the Rewriter's own when at its layer)."""
        if self.stats is not None and self.stats.layer == layer:
            return self.stats
        options = dict(self._stats_options)
        if not options and self.stats is not None:
            options = {"n": self.stats.n, "seed": self.stats.seed}
        options.setdefault("progress", progress)
        n = int(options.pop("n", 1000))
        seed = int(options.pop("seed", 0))
        if "remote" not in options:
            options["remote"] = self._hub_stats(n, seed, layer)
        return compute_stats(self.G, layer, n, truncation=self.truncation, seed=seed, **options)

    def score(
        self,
        layers: Sequence[str] | None = None,
        *,
        seeds: Sequence[int] | None = None,
        progress: bool = False,
    ) -> GeneralisationScore:
        """How well the context generalises, per layer, before solving (leave one context example out).

        For each context example, the direction is built from the *other* examples and the AUC of ``dᵀk`` at
        the left-out example's region against every place of 64 other samples is measured
        (:mod:`gan_rewrite.rewrite.score`). No labels are needed.

        Args:
            layers: the layers to score (default: :func:`~gan_rewrite.rewrite.score.candidate_layers` under
                ``"auto"``, else the Rewriter's layer and the candidates).
            seeds: the samples whose places are the negatives (default ``SCORE_SEEDS``).

        Returns:
            :class:`~gan_rewrite.rewrite.score.GeneralisationScore`, with ``.advice`` one line such as
            ``"this context does not generalise at layer3 (AUC 0.85): add examples or try layer4 (0.93)."``.

        Example:
            >>> print(rw.score())           # a table per layer and the advice
            >>> rw.score().advice
        """
        from .score import SCORE_SEEDS, advice, candidate_layers, layer_score

        if layers is None:
            layers = candidate_layers(self.G)
            if not self.auto and self._layer not in layers:
                layers = [self._layer, *layers]
        contexts = [(p.seed, p.mask) for p in (self.context or [self._implicit_context()])]
        scores = {}
        for name in layers:
            self.G.layer_index(name)
            stats = self._stats_at(name, progress=progress)
            scores[name] = layer_score(
                self.G, name, stats, contexts, seeds=SCORE_SEEDS if seeds is None else seeds,
                truncation=self.truncation,
            )
        best = max(scores, key=lambda n: scores[n].auc)
        about = best if self.auto or self._layer not in scores else self._layer
        best, text = advice(scores, about)
        return GeneralisationScore(layers=scores, best=best, layer=about, advice=text)

    # ----- statistics --------------------------------------------------------------------------
    def compute_stats(self, n: int = 1000, batch_size: int | None = None, *, seed: int = 0, **kwargs: Any) -> KeyStats:
        """Compute (or fetch) the key statistics at the layer; see :func:`compute_stats`.

        Tried in order: the local cache; for a generator loaded from the Hub, the statistics pushed beside
        it in its repo (``stats/<layer>.safetensors``, used only when the model hash and request match);
        computing. Pass ``remote=None`` to skip the Hub.

        Example:
            >>> G = gr.load_generator("owner/stylegan2-church")
            >>> Rewriter(G, "layer8").compute_stats(n=1000)  # from the repo when pushed there, else computed
        """
        self._stats_options = {"n": n, "seed": seed, "batch_size": batch_size}
        self._stats_options.update({k: v for k, v in kwargs.items() if k in ("cache_dir", "use_cache")})
        kwargs.setdefault("remote", self._hub_stats(n, seed))
        self.stats = compute_stats(
            self.G, self.layer, n, batch_size=batch_size, truncation=self.truncation, seed=seed, **kwargs
        )
        return self.stats

    def _hub_stats(self, n: int, seed: int, layer: str | None = None) -> Callable[[str], KeyStats | None] | None:
        """Fetcher of the statistics in the model's own Hub repo (``G.hub_source``), or ``None``."""
        source = getattr(self.G, "hub_source", None)
        if source is None:
            return None
        from ..hub.stats import stats_from_source

        layer = self._layer if layer is None else layer

        def fetch(model_hash: str) -> KeyStats | None:
            return stats_from_source(
                source, layer, model_sha256=model_hash, n=n, truncation=self.truncation, seed=seed
            )

        return fetch

    def set_stats(self, stats: KeyStats) -> None:
        """Use statistics computed elsewhere (e.g. loaded from ``stats/<layer>.safetensors``).

        Raises:
            StatsError: they were computed at another layer or have the wrong dimension.
        """
        in_ch = self.kind.shape(self.G.layer_module(self.layer).weight)[1]
        if stats.layer != self.layer or stats.dim != in_ch:
            raise StatsError(
                f"statistics are for layer {stats.layer!r} with {stats.dim} channels; this rewriter needs "
                f"{self.layer!r} with {in_ch}."
            )
        self.stats = stats

    # ----- the request -------------------------------------------------------------------------
    def add_context(self, seed: int, mask: MaskLike) -> None:
        """Add a context example: where, on sample ``seed``, the rule should take effect.

        Args:
            seed: the sample's seed.
            mask: ``(H, W)`` bool/float at image resolution.

        Raises:
            RuleError: the mask is empty, of the wrong size, or out of [0, 1].
        """
        self.context.append(_Painted(_seed(seed), self._mask(mask, "mask")))
        self._changed()

    def clear_context(self) -> None:
        self.context.clear()
        self._changed()

    def set_copy(self, seed: int, mask: MaskLike) -> None:
        """What to copy: the layer output under ``mask`` of sample ``seed``."""
        self.copy = _Painted(_seed(seed), self._mask(mask, "mask"))
        self.erase = None
        self._changed()

    def set_paste(self, seed: int, mask_or_offset: MaskLike | Sequence[int], *, region: str = "mask") -> None:
        """Where to paste: centred on a mask of sample ``seed``, or shifted by ``(dy, dx)`` image pixels.

        Args:
            region: ``"mask"`` fits the pasted object only; ``"box"`` its whole bounding box.
        """
        if region not in ("mask", "box"):
            raise RuleError(f"`region` must be 'mask' or 'box', got {region!r}.")
        if isinstance(mask_or_offset, (tuple, list)):
            if len(mask_or_offset) != 2 or not all(isinstance(v, int) for v in mask_or_offset):
                raise RuleError(f"a paste offset must be two integers (dy, dx), got {mask_or_offset!r}.")
            where: Tensor | tuple[int, int] = (int(mask_or_offset[0]), int(mask_or_offset[1]))
        else:
            where = self._mask(mask_or_offset, "mask_or_offset")
        self.paste = (_seed(seed), where)
        self.region = region
        self.erase = None
        self._changed()

    def set_erase(
        self,
        seed: int,
        mask: MaskLike,
        units: Sequence[int] | None = None,
        *,
        top_units: int | None = None,
    ) -> None:
        """Goal instead of copy/paste: erase what is under ``mask`` on sample ``seed``.

        Args:
            top_units: switch off this many of the layer's *input* units — the most selective in the context
                (:func:`~gan_rewrite.rewrite.units.rank_units_by_selectivity`) — inside the mask, and make
                the layer's output on those keys the target (the reference's erase). Default
                :data:`ERASE_FRACTION` of the layer's input units when ``units`` is not given.
            units: older behaviour, kept for old specs: zero these *output* channels under the mask (this
                paints a hole rather than erasing).
        """
        if units is not None and top_units is not None:
            raise RuleError("give either `units` (output channels to zero) or `top_units`, not both.")
        self.erase = (_Painted(_seed(seed), self._mask(mask, "mask")), None if units is None else list(units))
        self._erase_top_units = "default" if units is None and top_units is None else top_units
        self.copy = self.paste = None
        self._changed()

    def _mask(self, mask: MaskLike, name: str) -> Tensor:
        return quantize_mask(as_mask(mask, self.G.resolution, name=name))

    # ----- derived quantities ------------------------------------------------------------------
    @reusing_runs
    def goal(self) -> Goal:
        """The target output of the layer for the request.

        Raises:
            RuleError: neither copy + paste nor erase has been set.
        """
        if self.erase is not None:
            painted, units = self.erase
            top = self._top_units()
            return erase_goal(
                self.G,
                self.layer,
                painted.seed,
                painted.mask,
                units=units,
                top_units=top,
                stats=self._require_stats() if top is not None else None,
                context=self.context_keys() if top is not None else None,
                truncation=self.truncation,
            )
        if self.copy is None or self.paste is None:
            raise RuleError("no goal: call `set_copy` and `set_paste` (or `set_erase`) before solving.")
        seed, where = self.paste
        return paste_goal(
            self.G,
            self.layer,
            self.copy.seed,
            self.copy.mask,
            seed,
            where,
            region=self.region,
            truncation=self.truncation,
        )

    def _top_units(self) -> int | None:
        """The erase's ``top_units``, at most the layer's number of input units."""
        if self._erase_top_units is None:
            return None
        dim = self.kind.shape(self.G.layer_module(self._layer).weight)[1]
        if self._erase_top_units == "default":
            return max(1, round(ERASE_FRACTION * dim))
        return min(int(self._erase_top_units), dim)

    def goals(self, targets: str = "contexts") -> list[Goal]:
        """The goal (:meth:`goal`) and, for ``targets="contexts"``, the same goal on every other context
        sample: the copy pasted centred on each context mask, or each context region erased. Used by the
        ``"bounded"`` solver, so that ``Λ`` has targets on more than one sample.
        """
        main = self.goal()
        if targets == "paste":
            return [main]
        if targets != "contexts":
            raise RuleError(f"`targets` must be 'contexts' or 'paste', got {targets!r}.")
        done = {self.erase[0].seed if self.erase is not None else self.paste[0]}
        out = [main]
        goal_at = self._goal_maker()
        for item in self.context:
            if item.seed not in done:
                done.add(item.seed)
                out.append(goal_at(item.seed, item.mask))
        return out

    def sample_batches(self, samples: int, sample_seed: int, batch_size: int) -> list[Goal]:
        """The goals of ``method="learn"``, stacked into batches of ``batch_size`` samples: :meth:`goals` over the
        contexts, then the same goal on ``samples`` random samples (seeds from ``sample_seed``, skipping seeds
        already used) at the paste place, or with the erase region erased — a correct example of the request
        wherever the model draws its objects at about the same place in every image (aligned faces)."""
        check_sample_options(samples, sample_seed, batch_size)
        goals = self.goals("contexts")
        used = {seed for goal in goals for seed in goal.seeds}
        seeds = [seed for seed in range(sample_seed, sample_seed + samples + len(used)) if seed not in used]
        place = self.erase[0].mask if self.erase is not None else self.paste[1]
        goal_at = self._goal_maker()
        goals += [goal_at(seed, place) for seed in seeds[:samples]]
        return [
            stack_goals(self.G, self.layer, goals[start : start + batch_size], self.truncation)
            for start in range(0, len(goals), batch_size)
        ]

    def _goal_maker(self) -> Callable[[int, Tensor | tuple[int, int]], Goal]:
        """``(seed, place) → Goal``: the request's goal on sample ``seed``, the copy pasted at ``place`` (a mask or
        an offset) or the erase region ``place`` (a mask) erased. An erase's context keys are gathered once here,
        not once per sample."""
        if self.erase is None:
            copy = self.copy
            return lambda seed, place: paste_goal(
                self.G, self.layer, copy.seed, copy.mask, seed, place, region=self.region, truncation=self.truncation
            )
        _, units = self.erase
        top = self._top_units()
        stats = self.stats if top is not None else None
        context = self.context_keys() if top is not None else None
        return lambda seed, place: erase_goal(
            self.G, self.layer, seed, place, units=units, top_units=top, stats=stats, context=context,
            truncation=self.truncation,
        )

    @reusing_runs
    def context_keys(self) -> tuple[Tensor, Tensor]:
        """All context keys ``(m, I)`` float64 and their area weights ``(m,)``.

        Without explicit context the paste (or erase) mask on its target sample is the context.
        """
        painted = list(self.context)
        if not painted:
            painted = [self._implicit_context()]
            logger.info("no context given; using the %s region as context", "erase" if self.erase else "paste")
        keys, weights = [], []
        for item in painted:
            run = run_layer(self.G, self.layer, [item.seed], self.truncation)
            k, w = weighted_keys(run.keys, item.mask)
            keys.append(k)
            weights.append(w)
        return torch.cat(keys), torch.cat(weights)

    def _implicit_context(self) -> _Painted:
        """The paste region on the paste sample (the copy mask moved there), or the erase mask."""
        if self.erase is not None:
            return self.erase[0]
        if self.paste is None:
            raise RuleError("no context: call `add_context(seed, mask)` (or `set_paste` / `set_erase`).")
        seed, where = self.paste
        if isinstance(where, Tensor):
            return _Painted(seed, where)
        if self.copy is None:
            raise RuleError("no context: a paste offset needs `set_copy` (or call `add_context`).")
        moved = _shift(self.copy.mask, *where)
        if not moved.any():
            raise RuleError(f"the paste offset {where} moves the copied region out of the image.")
        return _Painted(seed, moved)

    def directions(self, rank: int = 1) -> Tensor:
        """The context directions ``D`` ``(I, r)`` (needs statistics)."""
        keys, weights = self.context_keys()
        return context_directions(self._require_stats(), keys, weights, rank, self.direction_ridge)

    def search(self, seeds: Sequence[int], *, rank: int = 1, quantile: float = 0.999) -> ContextMatches:
        """Where the context direction fires in other samples (seeds ranked by best match)."""
        keys, weights = self.context_keys()
        direction = context_directions(self._require_stats(), keys, weights, rank, self.direction_ridge)[:, 0]
        return search_context(
            self.G,
            self.layer,
            direction,
            seeds,
            reference=mean_key(keys, weights),
            quantile=quantile,
            truncation=self.truncation,
        )

    def _require_stats(self) -> KeyStats:
        if self.stats is None:
            raise StatsError("no key statistics: call `compute_stats()` (or `set_stats`) first.")
        return self.stats

    # ----- solving -----------------------------------------------------------------------------
    def renderer(self, state: LayerState) -> Callable[[Tensor], Tensor]:
        """``render(output) → images``: the rest of the generator run from this layer on ``state``, with the
        layer's output replaced by ``output`` ``(N, O, H, W)`` (differentiable in it).

        ``state`` is what enters the layer (a goal's ``state``). Used by ``solve(method="optimize",
        loss="image")`` to measure the edit on the final image.
        """
        module = self.G.layer_module(self.layer)

        def render(output: Tensor) -> Tensor:
            handle = module.register_forward_hook(lambda _module, _inputs, _output: output)
            try:
                return self.G.forward_from(self.layer, state)
            finally:
                handle.remove()

        return render

    @reusing_runs
    def solve(self, rank: int | None = None, method: str | None = None, **solver_kwargs: Any) -> RuleDelta:
        """Solve the request for ``Λ`` with ``D`` from the context, and package it as a rule.

        Under ``layer="auto"`` the layer is chosen first (:meth:`choose_layer`).

        Which method (``None``, the default: :func:`default_solver` — the image fit below for models up to
        128 px or on a GPU, else ``"bounded"``; options given here override its options):

        * ``"optimize"`` with :data:`FIT_CONTEXTS` (``loss="image"``, ``targets="contexts"``, ``keep_weight=1``,
          100 steps at 3× the default step size; the default for small models): Adam on ``Λ`` with its L1 loss on
          the final images of the copy pasted onto *every* context sample, the rest of those images kept as they
          were. About 1.5 s on a 2-core CPU for the embedded model. On six frozen requests it was the only
          setting that put a request's edit on ≥ 20 of 32 held-out faces with a mean change elsewhere ≤ 0.03,
          and it was about as clean as the bounded solve on the others (``examples/README.md``).
        * ``"bounded"``: least squares on the layer output over the copy pasted onto *every*
          context sample (each context mask is a paste place), with keep constraints on the rest of those
          samples and a penalty on the mean change over the key distribution, ``tr(Λ DᵀCD Λᵀ)``, whose
          weight is set by leaving each sample out (:func:`~gan_rewrite.rewrite.solve.solve_bounded`).
          About a second on a CPU for the embedded model (scoring the layers included), and it cannot blow
          up: on six requests it was not tuned for, its mean change elsewhere on 32 held-out faces was 3.5–30×
          smaller than the plain closed form's and no face got a blob — but its edits are weak, and on the cap
          it spilled (``examples/README.md``). The default for models over 128 px on a CPU.
        * ``"learn"`` (rank 4 by default): ``D`` and ``Λ`` learned together by Adam on the final images of the copy
          pasted at the paste place on many random samples (512 by default) as well as on the contexts — for
          *aligned* models, where that place is right on every sample (faces). Minutes on a CPU for the embedded
          model, seconds on a GPU. On the frozen cap request it drew a blue cap on all 32 held-out faces where the
          default draws a tint, spilling more around it (:mod:`~gan_rewrite.rewrite.learn`, ``examples/README.md``).
        * ``"closed_form"``: the earlier default, weighted least squares on the paste sample only,
          milliseconds; with several contexts or at a weak layer it can print blobs on other faces.
        * ``"optimize"`` with ``loss="image"``: projected Adam whose L1 loss is measured on the *final
          image* (the edited layer's output run through the rest of the generator). Seconds to tens of
          seconds on a CPU, but on the DCGAN faces it gave the cleanest rules of every setting tried —
          at equal strength about 0.6× the collateral change of a one-context closed form (0.8× of the
          best closed form), and changes that go towards the copied object (``examples/README.md``,
          ``benchmarks/edit_quality.py``). Prefer it for a rule you will publish or reuse, once the
          request looks right with the closed form; ``loss`` is recorded in the spec, so ``solve_spec``
          reproduces the rule.
        * ``"optimize"`` with the default ``loss="layer"``: L1 on the layer output; between the two.

        ``"optimize"`` runs Adam on ``Λ`` (``variable="lambda"``, the default: about 1 ms a step on the CPU
        for a 256px StyleGAN2 at layer8, 16–20× faster than the reference's way) or, with
        ``variable="weight"``, on the whole weight projected onto span ``D`` as the paper's code does; a spec
        saved before this option existed is re-solved on the weight.

        Args:
            rank: number of context directions ``r``; default 1, or :data:`~gan_rewrite.rewrite.learn.RANK` (4)
                for ``method="learn"``.
            method: ``"bounded"``, ``"closed_form"``, ``"optimize"`` or ``"learn"`` (above); ``None``: the default.
            **solver_kwargs: passed to the solver (``ridge`` / ``steps``, ``lr``, ``loss``, ``loss_fn``, ...).
                JSON options are recorded in the spec; code (``loss_fn``, ``render``) is not. For
                ``loss="image"`` the Rewriter supplies ``render`` (:meth:`renderer`).

        Returns:
            A :class:`RuleDelta` for this layer, with the spec in its metadata.

        Raises:
            RuleError: unknown method, no goal / context, or ``rank`` larger than the context allows.
            StatsError: statistics have not been computed.
        """
        if method is None:
            method, defaults = default_solver(self.G)
            solver_kwargs = {**defaults, **solver_kwargs}
        if method not in SOLVERS:
            raise RuleError(f"unknown `method` {method!r}; choose one of {sorted(SOLVERS)}.")
        if rank is None:
            rank = LEARN_RANK if method == "learn" else 1
        self._require_stats()
        self.choose_layer(progress=bool(solver_kwargs.get("progress", False)))
        stats = self._require_stats()
        if stats.model_sha256 != model_sha256(self.G):
            logger.warning("key statistics were computed on a different model state (rules loaded since?)")
        module = self.G.layer_module(self.layer)
        if any(self.layer in r.layers and not r.fused for r in getattr(self.G, "active_rules", [])):
            logger.warning(
                "unfused rules are active on %s; the new rule is solved on top of them and will only load "
                "onto a model where they are present (fuse them first to make that explicit).",
                self.layer,
            )
        keys, weights = self.context_keys()
        direction = context_directions(stats, keys, weights, rank, self.direction_ridge)  # (I, r) float64
        options = dict(solver_kwargs)
        if method == "bounded":
            goals: Goal | list[Goal] = self.goals(str(options.get("targets", "contexts")))
            second = stats.second_moment.to(direction)
            options["moment"] = direction.T @ second @ direction
        elif method == "optimize" and options.get("targets") == "contexts":
            goals = stack_goals(self.G, self.layer, self.goals("contexts"), self.truncation)
        elif method == "learn":
            goals = self.sample_batches(
                options.get("samples", SAMPLES),
                options.get("sample_seed", SAMPLE_SEED),
                options.get("batch_size", BATCH_SIZE),
            )
            options["renderer"] = lambda goal: self.renderer(goal.state)
        else:
            goals = self.goal()
        if method == "optimize" and options.get("loss") == "image" and options.get("render") is None:
            options["render"] = self.renderer(goals.state)
        if method == "learn":
            direction, lam = SOLVERS[method](self.kind, module, goals, direction, **options)
        else:
            lam = SOLVERS[method](self.kind, module, goals, direction, **options)
        spec = self.spec()
        recorded = {k: v for k, v in solver_kwargs.items() if k not in CODE_OPTIONS}
        if method == "optimize":  # recorded even when defaulted, so that a spec keeps how it was solved
            recorded.setdefault("variable", "lambda")
        if solver_kwargs.get("loss_fn") is not None:
            logger.info("a custom `loss_fn` is code and is not recorded: solve_spec will not reproduce this rule")
        spec.update(rank=rank, method=method, solver=_jsonable(recorded))
        part = LayerDelta(
            direction=direction,
            lam=lam,
            weight_layout=self.kind.layout,
            base_layer_sha256=self.G.layer_weight_sha256(self.layer),
        )
        return RuleDelta(
            layers={self.layer: part},
            base_model=self.base_model,
            base_revision=self.base_revision,
            method=method,
            spec=spec,
        )

    # ----- spec --------------------------------------------------------------------------------
    def spec(self) -> dict[str, Any]:
        """The request as a JSON-able dict (format in the module docstring)."""
        paste = None
        if self.paste is not None:
            seed, where = self.paste
            paste = (
                {"seed": seed, "mask": encode_mask(where)}
                if isinstance(where, Tensor)
                else {"seed": seed, "offset": list(where)}
            )
        erase = None
        if self.erase is not None:
            painted, units = self.erase
            erase = {"seed": painted.seed, "mask": encode_mask(painted.mask), "units": units}
            if self._erase_top_units is not None:
                erase["top_units"] = self._top_units()
        stats = (
            None
            if self.stats is None
            else {"n": self.stats.n, "seed": self.stats.seed, "truncation": self.stats.truncation}
        )
        auto = self.auto and self._chosen is None
        return {
            "version": SPEC_VERSION,
            "layer": AUTO if auto else self._layer,
            "auto_layer": None if not self.auto or auto else {"scores": self._chosen.as_dict()},
            "direction_ridge": self._direction_ridge if auto else self.direction_ridge,
            "truncation": self.truncation,
            "context": [{"seed": p.seed, "mask": encode_mask(p.mask)} for p in self.context],
            "copy": None if self.copy is None else {"seed": self.copy.seed, "mask": encode_mask(self.copy.mask)},
            "paste": paste,
            "erase": erase,
            "region": self.region,
            "stats": stats,
        }

    @classmethod
    def from_spec(cls, G: GANGenerator, spec: dict[str, Any] | str, **kwargs: Any) -> Rewriter:
        """Rebuild a request from :meth:`spec` output (a dict or its JSON text); statistics not included.

        Raises:
            RuleError: the spec is malformed or of an unknown version.
        """
        if isinstance(spec, str):
            try:
                spec = json.loads(spec)
            except (ValueError, RecursionError) as err:  # bad JSON, or a 5000-digit number
                raise RuleError(f"rule spec is not valid JSON: {err}") from err
        from .spec import check_spec

        check_spec(spec, resolution=G.resolution)
        if spec["layer"] != AUTO:
            G.layer_index(spec["layer"])  # LayerError naming the model's layers
        try:
            rw = cls(G, spec["layer"], truncation=spec.get("truncation"), direction_ridge=spec.get("direction_ridge"),
                     **kwargs)
            for item in spec.get("context") or []:
                rw.add_context(item["seed"], decode_mask(item["mask"]))
            if spec.get("copy"):
                rw.set_copy(spec["copy"]["seed"], decode_mask(spec["copy"]["mask"]))
            if spec.get("paste"):
                paste = spec["paste"]
                where = tuple(paste["offset"]) if "offset" in paste else decode_mask(paste["mask"])
                rw.set_paste(paste["seed"], where, region=spec.get("region", "mask"))
            if spec.get("erase"):
                erase = spec["erase"]
                top = erase.get("top_units")
                units = erase.get("units")
                rw.set_erase(erase["seed"], decode_mask(erase["mask"]), units, top_units=top or (None if units else 1))
                rw._erase_top_units = top  # a spec without `top_units` is an older output-zeroing erase
        except (KeyError, TypeError) as err:
            raise RuleError(f"malformed rule spec: missing or mistyped {err}.") from err
        return rw


def solve_spec(
    G: GANGenerator,
    spec: dict[str, Any] | str,
    *,
    stats: KeyStats | None = None,
    progress: bool = True,
    **kwargs: Any,
) -> RuleDelta:
    """Re-run a saved request: rebuild it, get its statistics, solve with its rank, method and options.

    Args:
        G: the generator the spec was made on.
        spec: a rule's ``spec`` (dict or JSON text), e.g. ``RuleDelta.load(path).spec`` or ``rule.json``.
        stats: statistics to use; default: computed (or taken from the cache) with the spec's ``n`` and
            ``seed`` (1000 and 0 when the spec has none).
        progress: show progress bars.
        **kwargs: passed to :class:`Rewriter` (``base_model``, ``base_revision``).

    Returns:
        The rule; on the same model and statistics it equals the original bit for bit.

    Example:
        >>> delta = solve_spec(G, RuleDelta.load("rule.safetensors").spec)
    """
    rw = Rewriter.from_spec(G, spec, **kwargs)
    data = json.loads(spec) if isinstance(spec, str) else spec
    if stats is not None:
        rw.set_stats(stats)
    else:
        wanted = data.get("stats") or {}
        rw.compute_stats(n=int(wanted.get("n", 1000)), seed=int(wanted.get("seed", 0)), progress=progress)
    solver = dict(data.get("solver") or {})
    method = data.get("method")  # a request without a solve uses today's default (`default_solver`)
    if method in ("optimize", "learn"):
        solver.setdefault("progress", progress)
    if method == "optimize":
        # Specs written before the optimiser could update Λ directly were solved on the weight.
        solver.setdefault("variable", "weight")
    return rw.solve(rank=int(data.get("rank", 1)), method=None if method is None else str(method), **solver)


def _shift(mask: Tensor, dy: int, dx: int) -> Tensor:
    """``mask`` moved by ``(dy, dx)`` pixels, zero-filled (no wrap-around)."""
    height, width = mask.shape
    out = torch.zeros_like(mask)
    if abs(dy) >= height or abs(dx) >= width:
        return out
    src = mask[max(0, -dy) : height - max(0, dy), max(0, -dx) : width - max(0, dx)]
    out[max(0, dy) : max(0, dy) + src.shape[0], max(0, dx) : max(0, dx) + src.shape[1]] = src
    return out


def _seed(seed: int) -> int:
    try:
        value = operator.index(seed)  # ints and numpy integers, not floats
    except TypeError:
        value = -1
    if isinstance(seed, bool) or value < 0:
        raise RuleError(f"`seed` must be a non-negative integer, got {seed!r}.")
    return value


def _jsonable(kwargs: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for key, value in kwargs.items():
        try:
            json.dumps(value)
        except TypeError:
            logger.info("solver option %r is not JSON-able; it is not recorded in the spec", key)
            continue
        out[key] = value
    return out
