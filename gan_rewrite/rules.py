"""Rules on a generator, LoRA-style: load, rescale, stack, fuse, unfuse, unload.

Every generator inherits :class:`RuleMixin`. A loaded rule is data kept beside the model; the layer's
weight is always *recomputed* from the stored original::

    W = W_original + Σ_fused s_i ΔW_i + Σ_unfused s_j ΔW_j

so rescaling or removing a rule never accumulates rounding, and unloading copies the stored original
back bit for bit. Rules are summed in name order, so the weight does not depend on load order.

Fusing (as in peft's ``merge``): fused rules become part of the model's *base* weight. They can no
longer be rescaled or unloaded one by one; a new rule is checked against the fused base (so rules made
on a fused model load onto it); ``unfuse_rules()`` turns them back into separate, adjustable rules; and
``unload_rules()`` removes everything, fused or not, restoring the original weights bit-exactly.
"""

from __future__ import annotations

import itertools
import logging
import math
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor

from .errors import RuleError, RuleMismatchError
from .hashing import cached_digest, tensor_sha256, tensor_token
from .rewrite.delta import RuleDelta
from .rewrite.layers import layer_kind

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ActiveRule:
    """One loaded rule, as listed by ``G.active_rules``."""

    name: str
    layers: tuple[str, ...]
    scale: float  # the load scale; the weight moves by ``scale · delta.scale · ΔW``
    fused: bool


_serials = itertools.count(1)  # numbers loaded rules and stored originals; never reused in a process
_FINITE_BOUND = 1e37  # below float32's 3.4e38 with room: a bound under it proves the sum finite
_MAX_NAME = 200


@dataclass
class _LoadedRule:
    delta: RuleDelta
    scale: float
    delta_weights: dict[str, Tensor]  # layer -> delta.scale · ΔW in the weight's layout, on its device
    fused: bool = False
    serial: int = field(default_factory=lambda: next(_serials))
    delta_max: dict[str, float] = field(default_factory=dict)  # layer -> max |ΔW| (for the finiteness bound)


@dataclass
class _Original:
    """A layer's weight before any rule: a private copy, its digest, its largest |value| and a serial."""

    weight: Tensor
    digest: str
    max_abs: float
    serial: int = field(default_factory=lambda: next(_serials))


@dataclass
class _Restored:
    """What ``unload`` left in a layer: the original copy, kept to skip the copy and hash on the next load.

    Valid while the parameter is the same object at the same version (a write by anyone else bumps it).
    """

    original: _Original
    token: int
    version: int
    data_ptr: int


@dataclass
class _RuleState:
    rules: dict[str, _LoadedRule] = field(default_factory=dict)
    originals: dict[str, _Original] = field(default_factory=dict)  # layer -> weight before any rule
    restored: dict[str, _Restored] = field(default_factory=dict)  # layer -> original after the last unload
    fused_digests: dict[tuple, str] = field(default_factory=dict)  # (layer, original, fused rules) -> sha256


class RuleMixin:
    """Gives a generator the rule verbs. Needs ``layer_module(layer)`` and ``layer_index(layer)``.

    Example:
        >>> G.load_rule("rule.safetensors", name="smile", scale=1.0)
        >>> G.set_rule_scales({"smile": 0.5})
        >>> G.unload_rules()  # weights are bit-identical to before load_rule
    """

    def _rules(self) -> _RuleState:
        state = self.__dict__.get("_rule_state")
        if state is None:
            state = _RuleState()
            self.__dict__["_rule_state"] = state
        return state

    # ----- public verbs ------------------------------------------------------------------------
    def load_rule(
        self,
        rule: RuleDelta | str | os.PathLike,
        name: str | None = None,
        scale: float = 1.0,
        *,
        force: bool = False,
        revision: str | None = None,
    ) -> str:
        """Add a rule to the model; its layers' weights change at once.

        Args:
            rule: a :class:`RuleDelta`, a path to a rule file / folder, or a Hub repo id ``owner/name``.
            name: how to refer to the rule later; default: the file stem, else ``rule<N>``.
            scale: strength multiplier on top of the rule's own ``scale`` (0 disables, negative inverts).
            force: load even if the rule was made for a different base weight (hash mismatch).
            revision: revision of a rule given by repo id (see :meth:`RuleDelta.load`).

        Returns:
            The rule's name.

        Raises:
            RuleError: ``name`` is taken, or ``scale`` is not finite.
            LayerError: the rule edits a layer this model does not have.
            RuleMismatchError: the rule's weight layout or shapes do not fit the layer, or (unless ``force``) the
                layer's base weight is not the one the rule was solved against.
        """
        if isinstance(rule, RuleDelta):
            delta = rule
        else:
            delta = RuleDelta.load(rule, revision=revision)
            name = name or Path(rule).stem
        state = self._rules()
        if name is None:
            name = f"rule{len(state.rules)}"
            while name in state.rules:
                name += "_"
        _check_name(name)
        if name in state.rules:
            raise RuleError(f"a rule named {name!r} is already loaded; unload it or pick another `name`.")
        scale = _check_scale(name, scale)
        delta_weights, delta_max = {}, {}
        for layer, part in delta.layers.items():
            self.layer_index(layer)  # LayerError on an unknown layer
            weight = self.layer_module(layer).weight
            kind = layer_kind(self.layer_module(layer))
            if part.weight_layout != kind.layout:
                raise RuleMismatchError(
                    f"rule {name!r} does not fit layer {layer!r}: it is for a {part.weight_layout} weight, the "
                    f"layer is a {kind.layout}."
                )
            # Shapes first, so a rule with absurd sizes is refused before its ΔW is ever allocated.
            out_ch, in_ch, kh, kw = kind.shape(weight)
            fits = (part.lam.shape[0], part.direction.shape[0], *part.lam.shape[2:]) == (out_ch, in_ch, kh, kw)
            if not fits:
                raise RuleMismatchError(
                    f"rule {name!r} does not fit layer {layer!r}: its direction {tuple(part.direction.shape)} and "
                    f"lambda {tuple(part.lam.shape)} need a weight of (O, I, kh, kw) = "
                    f"{(part.lam.shape[0], part.direction.shape[0], *part.lam.shape[2:])}, the layer has "
                    f"{(out_ch, in_ch, kh, kw)}."
                )
            delta_weights[layer], delta_max[layer] = _delta_weight(delta, layer, weight.device, name)
            digest = self._base_digest(layer)
            if digest != part.base_layer_sha256:
                message = (
                    f"rule {name!r} was made for a different {layer!r} weight (sha256 "
                    f"{part.base_layer_sha256[:12]}…, model has {digest[:12]}…; base model "
                    f"{delta.base_model or 'unknown'!r})."
                )
                if not force:
                    raise RuleMismatchError(message + " Pass `force=True` to load it anyway.")
                logger.warning("%s Loading anyway (force=True).", message)
        loaded = _LoadedRule(delta=delta, scale=scale, delta_weights=delta_weights, delta_max=delta_max)
        state.rules[name] = loaded
        try:
            self._check_finite(delta.layer_names)
        except RuleError:
            del state.rules[name]
            raise
        self._refresh(delta.layer_names)
        return name

    def set_rule_scales(self, scales: dict[str, float]) -> None:
        """Change the strength of loaded (unfused) rules, e.g. ``{"smile": 0.5}``.

        Raises:
            RuleError: a name is not loaded, is fused, or a scale is not finite.
        """
        state = self._rules()
        checked = {}
        for name, value in scales.items():
            loaded = self._rule(name)
            if loaded.fused:
                raise RuleError(f"rule {name!r} is fused; call `unfuse_rules()` before rescaling it.")
            checked[name] = _check_scale(name, value)
        touched: set[str] = set()
        previous = {name: state.rules[name].scale for name in checked}
        for name, value in checked.items():
            state.rules[name].scale = value
            touched.update(state.rules[name].delta.layer_names)
        try:
            self._check_finite(touched)
        except RuleError:
            for name, value in previous.items():
                state.rules[name].scale = value
            raise
        self._refresh(touched)

    def fuse_rules(self, names: list[str] | None = None) -> None:
        """Make loaded rules part of the base weight (see the module docstring for what that means)."""
        for name in self._names(names):
            self._rules().rules[name].fused = True

    def unfuse_rules(self, names: list[str] | None = None) -> None:
        """Turn fused rules back into separate rules that can be rescaled or unloaded."""
        for name in self._names(names):
            self._rules().rules[name].fused = False

    def unload_rules(self, names: list[str] | None = None) -> None:
        """Remove rules (default: all, fused included). With none left, weights are bit-exact originals."""
        state = self._rules()
        touched: set[str] = set()
        for name in self._names(names):
            touched.update(state.rules.pop(name).delta.layer_names)
        self._refresh(touched)

    @property
    def active_rules(self) -> list[ActiveRule]:
        """The loaded rules in name order, with their load scale and whether they are fused."""
        return [
            ActiveRule(name=name, layers=tuple(r.delta.layer_names), scale=r.scale, fused=r.fused)
            for name, r in sorted(self._rules().rules.items())
        ]

    def original_layer_weight(self, layer: str) -> Tensor:
        """The layer's weight without any rule (a copy)."""
        self.layer_index(layer)
        stored = self._rules().originals.get(layer)
        return (self.layer_module(layer).weight if stored is None else stored.weight).detach().clone()

    def _tensors_to_save(self) -> dict[str, Tensor]:
        """The base weights (original + fused rules): unfused rules are data beside the model, not saved."""
        tensors = dict(self.state_dict())
        unfused = sorted(name for name, r in self._rules().rules.items() if not r.fused)
        if unfused:
            logger.warning(
                "saving the base model without the unfused rule(s) %s; call `fuse_rules()` first to bake them "
                "in, or save them as rules with `RuleDelta.save`.", unfused,
            )
        for layer in self._rules().originals:
            tensors[self._weight_key(layer)] = self._base_weight(layer)
        return tensors

    def _weight_key(self, layer: str) -> str:
        module = self.layer_module(layer)
        return next(name for name, m in self.named_modules() if m is module) + ".weight"

    # ----- internals ---------------------------------------------------------------------------
    def _rule(self, name: str) -> _LoadedRule:
        try:
            return self._rules().rules[name]
        except (KeyError, TypeError):  # TypeError: an unhashable "name"
            raise RuleError(
                f"no rule named {str(name)[:80]!r} is loaded; loaded rules are {sorted(self._rules().rules)}."
            ) from None

    def _names(self, names: list[str] | None) -> list[str]:
        if names is None:
            return sorted(self._rules().rules)
        if isinstance(names, str) or not isinstance(names, list | tuple | set | frozenset):
            raise RuleError(f"`names` must be a list of rule names, got {type(names).__name__}; e.g. [{names!r:.40}].")
        for name in names:
            self._rule(name)
        return list(names)

    def _base_weight(self, layer: str) -> Tensor:
        """Original + fused rules: the weight a new rule must have been solved against."""
        original = self._rules().originals.get(layer)
        if original is None:
            return self.layer_module(layer).weight.detach()
        return self._compose(layer, original.weight, fused_only=True)

    def _terms(self, layer: str, *, fused_only: bool) -> list[_LoadedRule]:
        return [
            r for _, r in sorted(self._rules().rules.items())
            if layer in r.delta.layers and (r.fused or not fused_only)
        ]

    def _compose(self, layer: str, original: Tensor, *, fused_only: bool, out: Tensor | None = None) -> Tensor:
        """``original + Σ scale·ΔW`` in name order (so load order is moot), computed in float32.

        The one routine that writes layer weights and computes fused bases, so a rule solved on a fused model
        hashes the same base when loaded onto another model with the same rules fused.
        """
        terms = self._terms(layer, fused_only=fused_only)
        if not terms:
            return original if out is None else out.copy_(original)
        if original.dtype == torch.float32 and (out is None or out.dtype == torch.float32):
            total = torch.add(original, terms[0].delta_weights[layer], alpha=terms[0].scale, out=out)
        else:
            total = torch.add(original.to(torch.float32), terms[0].delta_weights[layer], alpha=terms[0].scale)
        for r in terms[1:]:
            total.add_(r.delta_weights[layer], alpha=r.scale)
        if total.dtype != original.dtype:
            total = total.to(original.dtype)
            if out is not None:
                return out.copy_(total)
        return total

    def _base_digest(self, layer: str) -> str:
        """SHA-256 of :meth:`_base_weight`, from what the rule code knows rather than rehashing when it can.

        Keys that can never be reused: a stored original is hashed once (its digest kept beside it); a fused
        base is keyed by the serial numbers of the original and of each fused rule plus its scale; an
        untouched weight goes through :func:`cached_digest` (a per-tensor token and version counter).
        """
        state = self._rules()
        original = state.originals.get(layer) or self._restored(layer)
        fused = self._terms(layer, fused_only=True)
        if original is None:
            weight = self.layer_module(layer).weight
            return cached_digest(self, f"base:{layer}", [weight], lambda: tensor_sha256(weight))
        if not fused:
            return original.digest
        key = (layer, original.serial, *((r.serial, r.scale) for r in fused))
        if key not in state.fused_digests:
            if len(state.fused_digests) >= 64:
                state.fused_digests.clear()
            state.fused_digests[key] = tensor_sha256(self._compose(layer, original.weight, fused_only=True))
        return state.fused_digests[key]

    def _restored(self, layer: str) -> _Original | None:
        """The original an unload left, if nobody has written the weight since (else forget it)."""
        state = self._rules()
        kept = state.restored.get(layer)
        if kept is None:
            return None
        weight = self.layer_module(layer).weight
        if (tensor_token(weight), weight._version, weight.data_ptr()) == (kept.token, kept.version, kept.data_ptr):
            return kept.original
        del state.restored[layer]
        return None

    def _check_finite(self, layers: set[str] | list[str]) -> None:
        """Refuse rules or scales that would make a weight infinite, before any weight is written.

        A bound ``max|W| + Σ|s|·max|ΔW|`` below 1e37 proves the result finite at no cost; above it, the
        weight is composed into a scratch tensor and checked.
        """
        state = self._rules()
        for layer in layers:
            terms = self._terms(layer, fused_only=False)
            if not terms:
                continue
            original = state.originals.get(layer) or self._restored(layer)
            base = original.weight if original is not None else self.layer_module(layer).weight.detach()
            base_max = original.max_abs if original is not None else float(base.abs().max())
            bound = base_max + sum(abs(r.scale) * r.delta_max[layer] for r in terms)
            if bound < _FINITE_BOUND:
                continue
            too_large = any(abs(r.scale) > torch.finfo(torch.float32).max for r in terms)
            if too_large or not bool(torch.isfinite(self._compose(layer, base, fused_only=False)).all()):
                raise RuleError(
                    f"these rule scales make layer {layer!r}'s weight infinite (scales "
                    f"{ {name: r.scale for name, r in sorted(state.rules.items()) if layer in r.delta.layers} }); "
                    "use smaller scales."
                )

    def _refresh(self, layers: set[str] | list[str]) -> None:
        """Recompute each layer's weight from its stored original and the rules that touch it."""
        state = self._rules()
        for layer in layers:
            weight = self.layer_module(layer).weight
            uses = any(layer in r.delta.layers for r in state.rules.values())
            original = state.originals.get(layer)
            with torch.no_grad():
                if original is None:
                    if not uses:
                        continue
                    original = self._restored(layer)
                    if original is None:
                        copy = weight.detach().clone()
                        original = _Original(copy, tensor_sha256(copy), float(copy.abs().max()))
                    state.originals[layer] = original
                    state.restored.pop(layer, None)
                if uses:
                    self._compose(layer, original.weight, fused_only=False, out=weight)
                else:
                    weight.copy_(original.weight)
                    del state.originals[layer]
                    # The weight is the original again, bit for bit: keep the copy and digest for the next load.
                    kept = _Restored(original, tensor_token(weight), weight._version, weight.data_ptr())
                    state.restored[layer] = kept


def _delta_weight(delta: RuleDelta, layer: str, device: torch.device, name: str) -> tuple[Tensor, float]:
    """``delta.scale · ΔW`` on ``device`` and its largest |value|, remembered on ``delta`` for the next load.

    The Space loads the same rule on every request; the dense ΔW is the costly part. The memo is keyed on the
    tokens and version counters of ``Λ`` and ``D`` (see :mod:`gan_rewrite.hashing`) and the rule's scale.

    Raises:
        RuleError: ``ΔW`` is not finite (e.g. a rule file whose ``scale`` overflows float32).
    """
    part = delta.layers[layer]
    key = (layer, str(device), delta.scale, tensor_token(part.direction), part.direction._version,
           tensor_token(part.lam), part.lam._version)
    memo: dict = delta.__dict__.setdefault("_gan_rewrite_delta_weights", {})
    if key not in memo:
        dw = delta.delta_weight(layer).to(device=device, dtype=torch.float32)
        peak = float(dw.abs().max()) if dw.numel() else 0.0
        if not math.isfinite(peak):
            raise RuleError(
                f"rule {name!r} changes layer {layer!r} by infinite or NaN amounts (its scale is {delta.scale!r}); "
                "the rule file is broken."
            )
        if len(memo) >= 8:
            memo.clear()
        memo[key] = (dw, peak)
    return memo[key]


def _check_name(name: object) -> None:
    if not isinstance(name, str) or not name or len(name) > _MAX_NAME or not name.isprintable():
        shown = repr(name) if not isinstance(name, str) else repr(name[:40]) + ("…" if len(name) > 40 else "")
        raise RuleError(
            f"a rule name must be a non-empty printable string of at most {_MAX_NAME} characters, got {shown}."
        )


def _check_scale(name: str, scale: float) -> float:
    try:
        value = float(scale)
    except (TypeError, ValueError):
        raise RuleError(f"`scale` for rule {name!r} must be a number, got {scale!r}.") from None
    if not math.isfinite(value):
        raise RuleError(f"`scale` for rule {name!r} must be finite, got {scale!r}.")
    return value


@contextmanager
def rules_applied(G: RuleMixin, rules: Sequence[tuple[RuleDelta, float]]) -> Iterator[None]:
    """Load ``rules`` (``(delta, scale)`` pairs) onto ``G`` for the block, then unload every rule.

    ``G`` must have no rules loaded on entry (the Space never leaves any), so on exit its weights are the
    originals bit for bit, even when loading or sampling raised.
    """
    try:
        for i, (delta, scale) in enumerate(rules):
            G.load_rule(delta, name=f"session{i:03d}", scale=scale)
        yield
    finally:
        G.unload_rules()
