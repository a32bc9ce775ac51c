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
from .hashing import cached_digest, tensor_sha256
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


@dataclass
class _LoadedRule:
    delta: RuleDelta
    scale: float
    delta_weights: dict[str, Tensor]  # layer -> delta.scale · ΔW in the weight's layout, on its device
    fused: bool = False


@dataclass
class _RuleState:
    rules: dict[str, _LoadedRule] = field(default_factory=dict)
    originals: dict[str, Tensor] = field(default_factory=dict)  # layer -> weight before any rule
    original_digests: dict[str, str] = field(default_factory=dict)  # layer -> sha256 of that original


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
        if name in state.rules:
            raise RuleError(f"a rule named {name!r} is already loaded; unload it or pick another `name`.")
        scale = _check_scale(name, scale)
        delta_weights = {}
        for layer, part in delta.layers.items():
            self.layer_index(layer)  # LayerError on an unknown layer
            base = self._base_weight(layer)
            kind = layer_kind(self.layer_module(layer))
            if part.weight_layout != kind.layout:
                raise RuleMismatchError(
                    f"rule {name!r} does not fit layer {layer!r}: it is for a {part.weight_layout} weight, the "
                    f"layer is a {kind.layout}."
                )
            # Shapes first, so a rule with absurd sizes is refused before its ΔW is ever allocated.
            out_ch, in_ch, kh, kw = kind.shape(base)
            fits = (part.lam.shape[0], part.direction.shape[0], *part.lam.shape[2:]) == (out_ch, in_ch, kh, kw)
            if not fits:
                raise RuleMismatchError(
                    f"rule {name!r} does not fit layer {layer!r}: its direction {tuple(part.direction.shape)} and "
                    f"lambda {tuple(part.lam.shape)} need a weight of (O, I, kh, kw) = "
                    f"{(part.lam.shape[0], part.direction.shape[0], *part.lam.shape[2:])}, the layer has "
                    f"{(out_ch, in_ch, kh, kw)}."
                )
            dw = delta.delta_weight(layer)  # the rule's own scale included, as RuleDelta reports it
            delta_weights[layer] = dw.to(base.device)
            digest = cached_digest(self, f"base:{layer}", [base], lambda base=base: tensor_sha256(base))
            if layer not in state.originals:
                state.original_digests[layer] = digest
            if digest != part.base_layer_sha256:
                message = (
                    f"rule {name!r} was made for a different {layer!r} weight (sha256 "
                    f"{part.base_layer_sha256[:12]}…, model has {digest[:12]}…; base model "
                    f"{delta.base_model or 'unknown'!r})."
                )
                if not force:
                    raise RuleMismatchError(message + " Pass `force=True` to load it anyway.")
                logger.warning("%s Loading anyway (force=True).", message)
        state.rules[name] = _LoadedRule(delta=delta, scale=scale, delta_weights=delta_weights)
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
        for name, value in checked.items():
            state.rules[name].scale = value
            touched.update(state.rules[name].delta.layer_names)
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
        return (self.layer_module(layer).weight if stored is None else stored).detach().clone()

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
        except KeyError:
            raise RuleError(
                f"no rule named {name!r} is loaded; loaded rules are {sorted(self._rules().rules)}."
            ) from None

    def _names(self, names: list[str] | None) -> list[str]:
        if names is None:
            return sorted(self._rules().rules)
        for name in names:
            self._rule(name)
        return list(names)

    def _base_weight(self, layer: str) -> Tensor:
        """Original + fused rules: the weight a new rule must have been solved against."""
        state = self._rules()
        original = state.originals.get(layer)
        if original is None:
            return self.layer_module(layer).weight.detach()
        return self._compose(layer, original, fused_only=True)

    def _compose(self, layer: str, original: Tensor, *, fused_only: bool) -> Tensor:
        deltas = [
            r.delta_weights[layer] * r.scale
            for _, r in sorted(self._rules().rules.items())
            if layer in r.delta.layers and (r.fused or not fused_only)
        ]
        if not deltas:
            return original
        total = deltas[0] if len(deltas) == 1 else torch.stack(deltas).sum(0)  # name order: load order is moot
        return (original.to(torch.float32) + total.to(original.device)).to(original.dtype)

    def _refresh(self, layers: set[str] | list[str]) -> None:
        """Recompute each layer's weight from its stored original and the rules that touch it."""
        state = self._rules()
        for layer in layers:
            weight = self.layer_module(layer).weight
            original = state.originals.get(layer)
            uses = any(layer in r.delta.layers for r in state.rules.values())
            with torch.no_grad():
                if original is None:
                    if not uses:
                        continue
                    original = weight.detach().clone()
                    state.originals[layer] = original
                if uses:
                    weight.copy_(self._compose(layer, original, fused_only=False))
                else:
                    weight.copy_(original)
                    del state.originals[layer]
                    # The weight is the original again, bit for bit: its digest is known, no need to rehash.
                    known = state.original_digests.pop(layer)
                    cached_digest(self, f"base:{layer}", [weight], lambda known=known: known)


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
