"""RuleDelta: a rewrite as portable data — per layer a direction ``D`` and a ``Λ``, plus provenance.

A rule never touches a model by itself: :meth:`RuleDelta.delta_weight` returns the ``ΔW`` to add, and
the generator's rule mixin (``G.load_rule``) decides when to add it and how to take it off again.

File format (``rule.safetensors``), for every layer ``L`` of the rule::

    L.direction   float32 (I, r)            D, orthonormal columns
    L.lambda      float32 (O, r, kh, kw)    Λ; per tap ΔW_t = Λ_t Dᵀ (times the rule's scale)

and string metadata ``format`` (``gan-rewrite.rule/1``), ``base_model``, ``base_revision``,
``base_layer_sha256``, ``layer``, ``weight_layout``, ``rank``, ``scale``, ``method``, ``created``,
``library_version`` and ``spec`` (JSON). For a rule over several layers, ``layer``,
``base_layer_sha256``, ``weight_layout`` and ``rank`` are comma-separated lists in the same order.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from ..atomic import atomic_path
from ..errors import RuleError, RuleNotFoundError
from .layers import kind_for_layout

if TYPE_CHECKING:
    from huggingface_hub import CommitInfo

    from ..models.base import GANGenerator

logger = logging.getLogger(__name__)

RULE_FORMAT = "gan-rewrite.rule/1"
RULE_FILENAME = "rule.safetensors"

Resolver = Callable[[str, str | None], Path]
"""Turns a rule source that is not a local path (e.g. a Hub repo id) and a revision into a local file."""


@dataclass
class LayerDelta:
    """The part of a rule that edits one layer: ``ΔW_t = Λ_t Dᵀ`` for every tap ``t``.

    Attributes:
        direction: ``D`` ``(I, r)`` float32; the key subspace the rule writes into.
        lam: ``Λ`` ``(O, r, kh, kw)`` float32; what each tap writes for each direction.
        weight_layout: how ``ΔW`` maps into the module weight (see :mod:`gan_rewrite.rewrite.layers`).
        base_layer_sha256: hash of the layer weight the rule was solved against.
    """

    direction: Tensor
    lam: Tensor
    weight_layout: str
    base_layer_sha256: str

    def __post_init__(self) -> None:
        self.direction = self.direction.detach().to("cpu", torch.float32).contiguous()
        self.lam = self.lam.detach().to("cpu", torch.float32).contiguous()
        kind_for_layout(self.weight_layout)  # raises on an unknown layout
        if self.direction.ndim != 2 or self.lam.ndim != 4:
            raise RuleError(
                f"a layer delta needs `direction` (I, r) and `lambda` (O, r, kh, kw); got shapes "
                f"{tuple(self.direction.shape)} and {tuple(self.lam.shape)}."
            )
        if self.direction.shape[1] != self.lam.shape[1]:
            raise RuleError(
                f"rank mismatch: `direction` has {self.direction.shape[1]} column(s), `lambda` has "
                f"{self.lam.shape[1]} (shapes {tuple(self.direction.shape)}, {tuple(self.lam.shape)})."
            )
        if self.direction.numel() == 0 or self.lam.numel() == 0:
            raise RuleError(
                f"a layer delta needs rank >= 1 and non-empty tensors; got shapes {tuple(self.direction.shape)} "
                f"and {tuple(self.lam.shape)}."
            )
        for label, tensor in (("direction", self.direction), ("lambda", self.lam)):
            if not bool(torch.isfinite(tensor).all()):  # a NaN rule would silently turn every image into NaN
                raise RuleError(f"a layer delta's `{label}` holds NaN or infinite values.")

    @property
    def rank(self) -> int:
        return int(self.direction.shape[1])

    def delta_weight(self, scale: float = 1.0) -> Tensor:
        """``scale · ΔW`` in the module's weight layout, float32 on the CPU."""
        return kind_for_layout(self.weight_layout).delta_weight(self.direction, self.lam * scale)


@dataclass
class RuleDelta:
    """A rewrite rule as data: per-layer deltas, a strength, and enough provenance to reproduce it.

    Attributes:
        layers: layer name → :class:`LayerDelta`.
        scale: the rule's own strength ``s`` (scales ``Λ``); loading multiplies it by the load scale.
        base_model: repo id or name of the model the rule was made on.
        base_revision: its revision (commit) when known.
        method: the solver that produced the rule (``closed_form``, ``optimize``, ...).
        spec: the JSON-able request (seeds, masks, copy/paste) that reproduces the solve.
        created: ISO-8601 UTC time of creation.
        library_version: gan-rewrite version that wrote the rule.

    Example:
        >>> delta = rw.solve(rank=1)
        >>> delta.save("rule.safetensors")
        >>> same = RuleDelta.load("rule.safetensors")
        >>> G.load_rule(same, name="smile", scale=0.8)
    """

    layers: dict[str, LayerDelta]
    scale: float = 1.0
    base_model: str = ""
    base_revision: str = ""
    method: str = ""
    spec: dict[str, Any] = field(default_factory=dict)
    created: str = field(default_factory=lambda: datetime.now(timezone.utc).isoformat(timespec="seconds"))
    library_version: str = field(default_factory=lambda: _library_version())

    def __post_init__(self) -> None:
        if not self.layers:
            raise RuleError("a RuleDelta needs at least one layer.")
        for name in self.layers:
            if not name or "," in name:
                raise RuleError(f"layer name {name!r} cannot be stored in a rule (empty or has a comma).")
        if not math.isfinite(float(self.scale)):
            raise RuleError(f"`scale` must be a finite number, got {self.scale!r}.")
        self.scale = float(self.scale)

    @property
    def layer_names(self) -> list[str]:
        return list(self.layers)

    def delta_weight(self, layer: str | None = None) -> Tensor:
        """``scale · ΔW`` for ``layer`` (default: the rule's only layer), shaped like the module weight.

        Raises:
            RuleError: ``layer`` is not part of the rule, or it is omitted for a multi-layer rule.
        """
        return self._layer(layer).delta_weight(self.scale)

    def _layer(self, layer: str | None) -> LayerDelta:
        if layer is None:
            if len(self.layers) != 1:
                raise RuleError(f"this rule edits {self.layer_names}; pass `layer` to pick one.")
            return next(iter(self.layers.values()))
        try:
            return self.layers[layer]
        except KeyError:
            raise RuleError(f"this rule does not edit layer {layer!r}; it edits {self.layer_names}.") from None

    # ----- file format -------------------------------------------------------------------------
    def metadata(self) -> dict[str, str]:
        """The safetensors header metadata (all strings), as documented in the module docstring."""
        entries = list(self.layers.items())
        return {
            "format": RULE_FORMAT,
            "base_model": self.base_model,
            "base_revision": self.base_revision,
            "base_layer_sha256": ",".join(d.base_layer_sha256 for _, d in entries),
            "layer": ",".join(name for name, _ in entries),
            "weight_layout": ",".join(d.weight_layout for _, d in entries),
            "rank": ",".join(str(d.rank) for _, d in entries),
            "scale": repr(self.scale),
            "method": self.method,
            "created": self.created,
            "library_version": self.library_version,
            "spec": json.dumps(self.spec, sort_keys=True, separators=(",", ":")),
        }

    def save(self, path: str | os.PathLike) -> Path:
        """Write the rule to ``path`` (a ``.safetensors`` file, or a folder → ``folder/rule.safetensors``).

        The write is atomic: an interrupted save leaves any previous file intact.

        Returns:
            The path written.
        """
        from safetensors.torch import save_file

        path = Path(path)
        if path.is_dir():
            path = path / RULE_FILENAME
        tensors: dict[str, Tensor] = {}
        for name, delta in self.layers.items():
            tensors[f"{name}.direction"] = delta.direction
            tensors[f"{name}.lambda"] = delta.lam
        with atomic_path(path) as tmp:
            save_file(tensors, str(tmp), metadata=self.metadata())
        logger.info("saved rule (%s) to %s", ", ".join(self.layer_names), path)
        return path

    def push_to_hub(
        self,
        repo_id: str,
        *,
        generator: GANGenerator | None = None,
        preview_seeds: Iterable[int] | None = range(8),
        commit_message: str | None = None,
        private: bool | None = None,
        token: str | None = None,
        revision: str | None = None,
    ) -> CommitInfo:
        """Share the rule as a Hub repo, in one commit (see :mod:`gan_rewrite.hub.rules`).

        The commit holds ``rule.safetensors`` (:meth:`save`), ``rule.json`` (the spec, pretty-printed),
        ``preview.png`` (row 1: before, row 2: after, on ``preview_seeds``) and a ``README.md`` card whose YAML
        names ``base_model`` with ``base_model_relation: adapter``.

        Args:
            repo_id: ``owner/name`` of the rule repo (created if missing).
            generator: renders the preview; the rule is loaded on it under a unique name and unloaded
                again, so it is left exactly as it was. Default: the base model, loaded from
                ``base_model`` at ``base_revision``; if that fails, the preview is skipped with a warning.
            preview_seeds: the preview's columns; ``None`` or empty for no preview.
            commit_message: defaults to "Upload gan-rewrite rule (<layers>)".
            private: create the repo as private (ignored when it exists).
            token: a Hub token; defaults to the one the client finds (``HF_TOKEN``, login).
            revision: the branch to commit to (created from main if missing).

        Returns:
            The client's ``CommitInfo`` (``.oid`` is the new commit sha).

        Raises:
            RuleMismatchError / LayerError: the rule does not fit the given ``generator``.
            HubError: the Hub could not be reached or refused the upload.

        Example:
            >>> delta = rw.solve(rank=1)
            >>> delta.push_to_hub("me/church-domes", generator=G)
            >>> G2.load_rule("me/church-domes")
        """
        from ..hub.rules import push_rule

        return push_rule(
            self,
            repo_id,
            generator=generator,
            preview_seeds=preview_seeds,
            commit_message=commit_message,
            private=private,
            token=token,
            revision=revision,
        )

    @classmethod
    def load(
        cls, source: str | os.PathLike, *, revision: str | None = None, resolver: Resolver | None = None
    ) -> RuleDelta:
        """Read a rule from a local ``.safetensors`` file, a folder holding ``rule.safetensors``, or a Hub repo.

        Args:
            source: a file, a folder, or anything the resolver understands (by default a Hub repo id
                ``owner/name``, whose ``rule.safetensors`` is downloaded into the standard Hub cache).
            revision: passed to the resolver (a Hub branch, tag or commit sha); ignored for local paths.
            resolver: ``(source, revision) -> local file`` for sources that are not local paths; default
                :func:`default_resolver`.

        Returns:
            The rule, bit-exact as saved.

        Raises:
            RuleNotFoundError: ``source`` is not a local file/folder and no resolver could find it (for the
                Hub: no such repo, revision or ``rule.safetensors``).
            HubError: the Hub could not be reached.
            RuleError: the file is not a gan-rewrite rule, is inconsistent (metadata vs tensors), holds
                tensors that are not float32, or holds NaN / infinite values.

        Example:
            >>> RuleDelta.load("rule.safetensors")
            >>> RuleDelta.load("owner/smile", revision="v1")
        """
        path = _local_rule_path(source)
        if path is None:
            resolver = resolver or default_resolver()
            if resolver is None:
                raise RuleNotFoundError(f"rule {str(source)!r} is not a local file or a folder with {RULE_FILENAME}.")
            path = _local_rule_path(resolver(str(source), revision))
            if path is None:
                raise RuleNotFoundError(f"rule {str(source)!r} could not be resolved to a file.")
        return cls._from_file(path)

    @classmethod
    def _from_file(cls, path: Path) -> RuleDelta:
        from safetensors import SafetensorError, safe_open

        from ..errors import LayerError

        try:
            with safe_open(str(path), framework="pt") as handle:
                meta = handle.metadata() or {}
                tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
        except (SafetensorError, OSError) as err:
            raise RuleError(f"cannot read rule file {str(path)!r}: {err}") from err
        try:
            return cls._from_contents(path, meta, tensors)
        except LayerError as err:  # an unknown `weight_layout`: the file is at fault, not a layer name
            raise RuleError(f"rule file {str(path)!r}: {err}") from err

    @classmethod
    def _from_contents(cls, path: Path, meta: dict[str, str], tensors: dict[str, Tensor]) -> RuleDelta:
        if meta.get("format") != RULE_FORMAT:
            raise RuleError(
                f"{str(path)!r} is not a gan-rewrite rule: metadata `format` is {meta.get('format')!r}, "
                f"expected {RULE_FORMAT!r}."
            )
        missing = [k for k in ("layer", "weight_layout", "base_layer_sha256", "rank", "scale") if k not in meta]
        if missing:
            raise RuleError(f"rule file {str(path)!r} lacks metadata {missing}.")
        names = meta["layer"].split(",")
        columns = {key: meta[key].split(",") for key in ("weight_layout", "base_layer_sha256", "rank")}
        for key, values in columns.items():
            if len(values) != len(names):
                raise RuleError(
                    f"rule file {str(path)!r}: `{key}` lists {len(values)} value(s) for {len(names)} layer(s)."
                )
        if len(set(names)) != len(names):
            raise RuleError(f"rule file {str(path)!r} lists a layer twice in `layer`: {meta['layer']!r}.")
        expected = {f"{n}.{part}" for n in names for part in ("direction", "lambda")}
        if set(tensors) != expected:
            raise RuleError(f"rule file {str(path)!r} holds tensors {sorted(tensors)}, expected {sorted(expected)}.")
        wrong = sorted(f"{key}: {t.dtype}" for key, t in tensors.items() if t.dtype != torch.float32)
        if wrong:
            raise RuleError(f"rule file {str(path)!r}: rule tensors are float32, got {wrong}.")
        layers = {}
        for j, name in enumerate(names):
            delta = LayerDelta(
                direction=tensors[f"{name}.direction"],
                lam=tensors[f"{name}.lambda"],
                weight_layout=columns["weight_layout"][j],
                base_layer_sha256=columns["base_layer_sha256"][j],
            )
            if str(delta.rank) != columns["rank"][j]:
                raise RuleError(
                    f"rule file {str(path)!r}: layer {name!r} has rank {delta.rank} but metadata says "
                    f"{columns['rank'][j]!r}."
                )
            layers[name] = delta
        try:
            spec = json.loads(meta.get("spec") or "{}")
            scale = float(meta["scale"])
        except (ValueError, RecursionError) as err:
            raise RuleError(f"rule file {str(path)!r} has malformed `spec` or `scale`: {err}") from err
        if not isinstance(spec, dict):
            raise RuleError(f"rule file {str(path)!r}: `spec` must be a JSON object, got {type(spec).__name__}.")
        return cls(
            layers=layers,
            scale=scale,
            base_model=meta.get("base_model", ""),
            base_revision=meta.get("base_revision", ""),
            method=meta.get("method", ""),
            spec=spec,
            created=meta.get("created", ""),
            library_version=meta.get("library_version", ""),
        )


def default_resolver() -> Resolver | None:
    """The resolver :meth:`RuleDelta.load` uses for non-local sources when none is passed.

    Hub support: :func:`gan_rewrite.hub.rules.hub_rule_resolver` downloads ``rule.safetensors`` of a repo id
    (``owner/name``) at a revision into the standard Hub cache.
    """
    from ..hub.rules import hub_rule_resolver  # lazy: the hub package imports this module

    return hub_rule_resolver


def _local_rule_path(source: str | os.PathLike) -> Path | None:
    path = Path(source)
    try:
        if path.is_dir():
            path = path / RULE_FILENAME
        return path if path.is_file() else None
    except (OSError, ValueError):  # a name the OS refuses (too long, NUL byte) is not a local rule
        return None


def _library_version() -> str:
    from .. import __version__

    return __version__
