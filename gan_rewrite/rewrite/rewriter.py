"""Rewriter: collect a rewrite request (context, copy / paste or erase), solve it, return a RuleDelta.

The Rewriter holds only the *request* and the key statistics; every heavy step is an explicit call, and
the generator is never modified (the result is a :class:`~gan_rewrite.rewrite.delta.RuleDelta` that you
load with ``G.load_rule``). ``spec()`` is the request as JSON, stored in the rule file, and
``Rewriter.from_spec(G, spec)`` rebuilds the request so the same solve can be run again.

Spec JSON (``"version": 1``)::

    {
      "version": 1,
      "layer": "layer3",
      "truncation": null,                          # null: the model's default
      "context": [{"seed": 3, "mask": "<mask code>"}, ...],
      "copy":  {"seed": 1, "mask": "<mask code>"},                                  # or null
      "paste": {"seed": 2, "mask": "<mask code>"} | {"seed": 2, "offset": [dy, dx]}, # or null
      "erase": {"seed": 4, "mask": "<mask code>", "units": null | [int, ...]},      # or null
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
import operator
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from ..errors import RuleError, StatsError
from .context import (
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
    weighted_keys,
)
from .delta import LayerDelta, RuleDelta
from .layers import layer_kind
from .runcache import RunCache
from .solve import CODE_OPTIONS, SOLVERS
from .stats import KeyStats, compute_stats, model_sha256

if TYPE_CHECKING:
    from ..models.base import GANGenerator, LayerState

logger = logging.getLogger(__name__)

SPEC_VERSION = 1


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
        layer: the layer to rewrite; default ``G.config.default_layer``.
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
        layer: str | None = None,
        *,
        truncation: float | None = None,
        base_model: str | None = None,
        base_revision: str | None = None,
    ) -> None:
        self.G = G
        self.layer = layer if layer is not None else G.config.default_layer
        G.layer_index(self.layer)  # LayerError names the valid layers
        self.kind = layer_kind(G.layer_module(self.layer))
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
        self.region = "mask"
        self.runs = RunCache()  # layer runs kept between solves (`reusing_runs`); Rewriters may share one

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
        kwargs.setdefault("remote", self._hub_stats(n, seed))
        self.stats = compute_stats(
            self.G, self.layer, n, batch_size=batch_size, truncation=self.truncation, seed=seed, **kwargs
        )
        return self.stats

    def _hub_stats(self, n: int, seed: int) -> Callable[[str], KeyStats | None] | None:
        """Fetcher of the statistics in the model's own Hub repo (``G.hub_source``), or ``None``."""
        source = getattr(self.G, "hub_source", None)
        if source is None:
            return None
        from ..hub.stats import stats_from_source

        def fetch(model_hash: str) -> KeyStats | None:
            return stats_from_source(
                source, self.layer, model_sha256=model_hash, n=n, truncation=self.truncation, seed=seed
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

    def clear_context(self) -> None:
        self.context.clear()

    def set_copy(self, seed: int, mask: MaskLike) -> None:
        """What to copy: the layer output under ``mask`` of sample ``seed``."""
        self.copy = _Painted(_seed(seed), self._mask(mask, "mask"))
        self.erase = None

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

    def set_erase(self, seed: int, mask: MaskLike, units: Sequence[int] | None = None) -> None:
        """Goal instead of copy/paste: zero the layer's output ``units`` (default all) under ``mask``."""
        self.erase = (_Painted(_seed(seed), self._mask(mask, "mask")), None if units is None else list(units))
        self.copy = self.paste = None

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
            return erase_goal(self.G, self.layer, painted.seed, painted.mask, units=units, truncation=self.truncation)
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
        return context_directions(self._require_stats(), keys, weights, rank)

    def search(self, seeds: Sequence[int], *, rank: int = 1, quantile: float = 0.999) -> ContextMatches:
        """Where the context direction fires in other samples (seeds ranked by best match)."""
        keys, weights = self.context_keys()
        direction = context_directions(self._require_stats(), keys, weights, rank)[:, 0]
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
    def solve(self, rank: int = 1, method: str = "closed_form", **solver_kwargs: Any) -> RuleDelta:
        """Solve the request for ``Λ`` with ``D`` from the context, and package it as a rule.

        Which method:

        * ``"closed_form"`` (default): weighted least squares on the layer output, milliseconds. The fast
          path for interactive use (the Space) and for trying requests.
        * ``"optimize"`` with ``loss="image"``: projected Adam whose L1 loss is measured on the *final
          image* (the edited layer's output run through the rest of the generator). Seconds to tens of
          seconds on a CPU, but on the DCGAN faces it gave the cleanest rules of every setting tried —
          at equal strength about 0.6× the collateral change of a one-context closed form (0.8× of the
          best closed form), and changes that go towards the copied object (``examples/README.md``,
          ``benchmarks/edit_quality.py``). Prefer it for a rule you will publish or reuse, once the
          request looks right with the closed form; ``loss`` is recorded in the spec, so ``solve_spec``
          reproduces the rule.
        * ``"optimize"`` with the default ``loss="layer"``: L1 on the layer output; between the two.

        Args:
            rank: number of context directions ``r``.
            method: ``"closed_form"`` (least squares, milliseconds) or ``"optimize"`` (projected Adam).
            **solver_kwargs: passed to the solver (``ridge`` / ``steps``, ``lr``, ``loss``, ``loss_fn``, ...).
                JSON options are recorded in the spec; code (``loss_fn``, ``render``) is not. For
                ``loss="image"`` the Rewriter supplies ``render`` (:meth:`renderer`).

        Returns:
            A :class:`RuleDelta` for this layer, with the spec in its metadata.

        Raises:
            RuleError: unknown method, no goal / context, or ``rank`` larger than the context allows.
            StatsError: statistics have not been computed.
        """
        if method not in SOLVERS:
            raise RuleError(f"unknown `method` {method!r}; choose one of {sorted(SOLVERS)}.")
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
        direction = context_directions(stats, keys, weights, rank)  # (I, r) float64
        goal = self.goal()
        options = dict(solver_kwargs)
        if method == "optimize" and options.get("loss") == "image" and options.get("render") is None:
            options["render"] = self.renderer(goal.state)
        lam = SOLVERS[method](self.kind, module, goal, direction, **options)
        spec = self.spec()
        recorded = {k: v for k, v in solver_kwargs.items() if k not in CODE_OPTIONS}
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
        stats = (
            None
            if self.stats is None
            else {"n": self.stats.n, "seed": self.stats.seed, "truncation": self.stats.truncation}
        )
        return {
            "version": SPEC_VERSION,
            "layer": self.layer,
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
        G.layer_index(spec["layer"])  # LayerError naming the model's layers
        try:
            rw = cls(G, spec["layer"], truncation=spec.get("truncation"), **kwargs)
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
                rw.set_erase(erase["seed"], decode_mask(erase["mask"]), erase.get("units"))
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
    if data.get("method", "closed_form") == "optimize":
        solver.setdefault("progress", progress)
    return rw.solve(rank=int(data.get("rank", 1)), method=str(data.get("method", "closed_form")), **solver)


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
