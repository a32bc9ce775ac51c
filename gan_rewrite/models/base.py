"""What every generator shares: a typed config, named layers, seeded sampling, and split execution.

An architecture describes its forward pass as three pieces, and this class builds everything else
from them, so ``forward``, ``forward_to`` and ``forward_from`` can never disagree:

* ``_prepare(z, truncation, noise)`` -> the :class:`LayerState` entering the first named layer;
* ``_step(index, state)``            -> the state entering the next layer (runs named layer ``index``);
* ``_finish(state)``                 -> the image, once every named layer has run.

``forward_to(layer)`` runs ``_prepare`` and the steps *before* ``layer`` only; ``forward_from(layer, state)``
runs the rest. The rewrite engine reads keys from the state at a layer and writes values after it.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from ..errors import CheckpointError, ConfigError, LayerError
from ..hashing import cached_digest, tensor_sha256
from ..hub.mixin import HubMixin
from ..rules import RuleMixin

# Ceilings on config counts, checked before anything is built (a 60-byte config must not hang the loader).
MAX_RESOLUTION = 8192
MAX_Z_DIM = 16384
MAX_CHANNELS = 16384
MAX_CONFIG_DEPTH = 32  # nesting of `extra` (free-form notes)


def pick_device(device: str | torch.device | None = None) -> torch.device:
    """The device to run on: the one asked for, else ``$GAN_REWRITE_DEVICE``, else CUDA when available, else CPU."""
    if device is not None:
        return torch.device(device)
    if os.environ.get("GAN_REWRITE_DEVICE"):
        return torch.device(os.environ["GAN_REWRITE_DEVICE"])
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@dataclass
class GeneratorConfig:
    """Hyper-parameters shared by every architecture; subclasses add their own fields.

    Saved as ``config.json`` (with ``_class_name`` and ``architecture``) and read back as ``G.config``.
    Item access (``G.config["resolution"]``) works as well as attribute access.
    """

    architecture: ClassVar[str] = ""
    class_name: ClassVar[str] = ""

    resolution: int
    z_dim: int
    default_layer: str
    default_truncation: float = 1.0
    extra: dict[str, Any] = field(default_factory=dict)  # provenance and other free-form notes

    def __getitem__(self, key: str) -> Any:
        if key == "architecture":
            return self.architecture
        try:
            return getattr(self, key)
        except AttributeError:
            raise KeyError(key) from None

    def to_dict(self) -> dict[str, Any]:
        """The JSON-ready dict written as config.json."""
        from .. import __version__

        body = dataclasses.asdict(self)
        return {"_class_name": self.class_name, "architecture": self.architecture, **body,
                "library_version": __version__}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GeneratorConfig:
        """Build a config from a config.json dict, checking every field's presence and type.

        Raises:
            ConfigError: a field is missing, unknown, or of the wrong type.
        """
        if not isinstance(data, dict):
            raise ConfigError(f"config must be a JSON object, got {type(data).__name__}.")
        _check_depth(data)
        data = dict(data)
        for meta in ("_class_name", "architecture", "library_version", "save_id"):
            data.pop(meta, None)
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - set(fields))
        if unknown:
            raise ConfigError(
                f"config has unknown field(s) {unknown} for architecture `{cls.architecture}`; "
                f"known fields are {sorted(fields)}."
            )
        missing = sorted(
            name for name, f in fields.items()
            if name not in data and f.default is dataclasses.MISSING
            and f.default_factory is dataclasses.MISSING
        )
        if missing:
            raise ConfigError(f"config for `{cls.architecture}` is missing required field(s) {missing}.")
        hints = typing.get_type_hints(cls)
        for name, value in data.items():
            if not _matches_type(value, hints[name]):
                raise ConfigError(
                    f"config field `{name}` should be {_type_name(hints[name])}, got {value!r} "
                    f"({type(value).__name__})."
                )
        config = cls(**data)
        config.validate()
        return config

    def validate(self) -> None:
        """Check value ranges; subclasses extend it. Raises ConfigError."""
        if self.resolution < 4 or self.resolution > MAX_RESOLUTION or self.resolution & (self.resolution - 1):
            raise ConfigError(
                f"config field `resolution` must be a power of two in [4, {MAX_RESOLUTION}], got {self.resolution}."
            )
        if not 1 <= self.z_dim <= MAX_Z_DIM:
            raise ConfigError(f"config field `z_dim` must be in [1, {MAX_Z_DIM}], got {self.z_dim}.")
        if not 0.0 <= self.default_truncation <= 1.0:
            raise ConfigError(
                f"config field `default_truncation` must be in [0, 1], got {self.default_truncation}."
            )
        extra = self.extra if isinstance(self.extra, dict) else {}
        for key, (hint, kind) in _EXTRA_FIELDS.items():  # `extra` is free-form, but these keys are read back
            if extra.get(key) is not None and not _matches_type(extra[key], hint):
                raise ConfigError(f"config field `extra.{key}` should be {kind}, got {extra[key]!r}.")
        for record in extra.get("applied_rules") or []:
            if not (isinstance(record.get("name"), str) and isinstance(record.get("source"), str)
                    and isinstance(record.get("sha256"), str) and _matches_type(record.get("scale"), float)):
                raise ConfigError(
                    f"config field `extra.applied_rules` holds {record!r}; each entry needs `name`, `source`, "
                    "`sha256` (strings) and `scale` (a number)."
                )


def _check_depth(data: Any) -> None:
    """Refuse JSON nested deeper than ``MAX_CONFIG_DEPTH`` (copying or printing it would recurse ~1000 deep)."""
    stack = [(data, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            if depth >= MAX_CONFIG_DEPTH:
                raise ConfigError(
                    f"config is nested more than {MAX_CONFIG_DEPTH} levels deep; a config is a flat record."
                )
            stack.extend((child, depth + 1) for child in (item.values() if isinstance(item, dict) else item))


# The keys of `GeneratorConfig.extra` that the library reads back (model cards, `gan-rewrite apply`), and their types.
_EXTRA_FIELDS: dict[str, tuple[Any, str]] = {
    "name": (str, "a string"),
    "description": (str, "a string"),
    "license": (str, "a string"),
    "license_name": (str, "a string"),
    "tags": (list[str], "a list of strings"),
    "provenance": (dict[str, Any], "an object"),
    "applied_rules": (list[dict[str, Any]], "a list of objects"),
}


def _matches_type(value: Any, hint: Any) -> bool:
    origin = typing.get_origin(hint)
    if hint is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_matches_type(value, h) for h in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if origin in (list, tuple):
        (item,) = typing.get_args(hint)[:1] or (Any,)
        return isinstance(value, (list, tuple)) and all(_matches_type(v, item) for v in value)
    if origin is dict:
        return isinstance(value, dict)
    return isinstance(value, hint)


def _type_name(hint: Any) -> str:
    return getattr(hint, "__name__", str(hint))


@dataclass
class LayerState:
    """Everything the network carries into a named layer.

    Attributes:
        features: the tensor entering the layer, ``(N, C_in, h, w)``: the rewrite keys are read from it.
        style: StyleGAN2 only, the per-sample modulation ``(N, C_in)`` of the layer's conv.
        carry: whatever else the rest of the network needs (latents, skip image, noise).
    """

    features: Tensor
    style: Tensor | None = None
    carry: dict[str, Any] = field(default_factory=dict)


class GANGenerator(RuleMixin, HubMixin, nn.Module):
    """Base class of every generator: named layers, seeded sampling and split execution.

    Subclasses set ``config_class`` and implement ``layer_names``, ``layer_module``, ``_prepare``,
    ``_step`` and ``_finish``.
    """

    config_class: ClassVar[type[GeneratorConfig]] = GeneratorConfig

    def __init__(self, config: GeneratorConfig) -> None:
        super().__init__()
        if not isinstance(config, self.config_class):
            raise ConfigError(
                f"`config` must be a {self.config_class.__name__}, got {type(config).__name__}."
            )
        config.validate()
        self.config = config

    # ----- what subclasses provide -------------------------------------------------------------
    @property
    def layer_names(self) -> list[str]:
        """Names of the layers a rule can rewrite, in execution order (``layer1`` first)."""
        raise NotImplementedError

    def layer_module(self, layer: str) -> nn.Module:
        """The module whose ``weight`` a rule at ``layer`` edits."""
        raise NotImplementedError

    def _prepare(self, z: Tensor, truncation: float, noise: list[Tensor] | None) -> LayerState:
        raise NotImplementedError

    def _step(self, index: int, state: LayerState) -> LayerState:
        raise NotImplementedError

    def _finish(self, state: LayerState) -> Tensor:
        raise NotImplementedError

    def _enter(self, index: int, state: LayerState) -> LayerState:
        """Hook run when ``forward_to`` stops before layer ``index`` (StyleGAN2 adds the style)."""
        return state

    @classmethod
    def infer_config(cls, state_dict: dict[str, Tensor], **overrides: Any) -> GeneratorConfig:
        """Infer the hyper-parameters of a checkpoint in this architecture's layout from its shapes.

        Raises:
            CheckpointError: the keys or shapes do not fit this architecture.
        """
        raise NotImplementedError

    def optional_keys(self) -> set[str]:
        """State-dict keys a checkpoint may lack; ``load_weights`` leaves them as they are."""
        return set()

    def load_weights(self, state_dict: dict[str, Tensor]) -> None:
        """Load ``state_dict`` strictly: every key present, none unexpected, every shape equal.

        Raises:
            CheckpointError: listing the missing, unexpected and mis-shaped keys (at most 10 of each).
        """
        own = self.state_dict()
        missing = sorted(set(own) - set(state_dict) - self.optional_keys())
        unexpected = sorted(set(state_dict) - set(own))
        misshaped = sorted(
            f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(own[k].shape)}"
            for k in set(own) & set(state_dict)
            if tuple(own[k].shape) != tuple(state_dict[k].shape)
        )
        problems = []
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", misshaped)):
            if keys:
                more = f" (+{len(keys) - 10} more)" if len(keys) > 10 else ""
                problems.append(f"{len(keys)} {label} key(s): {keys[:10]}{more}")
        if problems:
            raise CheckpointError(
                f"checkpoint does not fit {type(self).__name__}"
                f"({self.config.architecture}, {self.config.resolution}px): " + "; ".join(problems)
                + ". Check the `--format` / architecture and the resolution."
            )
        for key, value in state_dict.items():
            if not isinstance(value, Tensor):
                raise CheckpointError(f"checkpoint entry {key!r} is a {type(value).__name__}, not a tensor.")
            if value.dtype != own[key].dtype and not (value.is_floating_point() and own[key].is_floating_point()):
                raise CheckpointError(
                    f"checkpoint entry {key!r} has dtype {value.dtype}, expected {own[key].dtype}."
                )
            if value.is_floating_point() and not bool(torch.isfinite(value).all()):
                raise CheckpointError(f"checkpoint entry {key!r} holds NaN or infinite values; the weights are broken.")
        self.load_state_dict(state_dict, strict=False)

    def make_noise(self, seeds: Sequence[int], *, layers: int | None = None) -> list[Tensor] | None:
        """Per-seed noise inputs, for architectures that have them (``None`` otherwise).

        ``layers=k`` asks only for the inputs of the first ``k`` named layers: enough for ``forward_to``
        the next one, and cheaper on large models.
        """
        return None

    # ----- derived behaviour -------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    @property
    def z_dim(self) -> int:
        return self.config.z_dim

    @property
    def resolution(self) -> int:
        return self.config.resolution

    def layer_index(self, layer: str) -> int:
        """Position of ``layer`` in ``layer_names``. Raises LayerError naming the valid layers."""
        names = self.layer_names
        if layer not in names:
            raise LayerError(
                f"unknown layer {layer!r} for {type(self).__name__}; valid layers are {names}."
            )
        return names.index(layer)

    def layer_weight_sha256(self, layer: str) -> str:
        """SHA-256 of the layer's weight (float32, CPU, C order): identifies the base a rule was made on."""
        weight = self.layer_module(layer).weight
        return cached_digest(self, f"layer:{layer}", [weight], lambda: tensor_sha256(weight))

    def make_latents(self, seeds: Sequence[int]) -> Tensor:
        """Latent codes ``(N, z_dim)`` on the model's device; seed ``s`` always gives the same row.

        Each seed has its own CPU generator, so a seed's latent does not depend on the batch or device.
        """
        rows = [torch.randn(self.z_dim, generator=torch.Generator().manual_seed(int(s))) for s in seeds]
        return torch.stack(rows).to(self.device)

    def _truncation(self, truncation: float | None) -> float:
        value = self.config.default_truncation if truncation is None else float(truncation)
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"`truncation` must be in [0, 1], got {truncation!r}.")
        return value

    def _check_latents(self, z: Tensor) -> None:
        if z.ndim != 2 or z.shape[1] != self.z_dim:
            raise ValueError(
                f"latents must have shape (N, {self.z_dim}), got {tuple(z.shape)}."
            )

    def forward(
        self, z: Tensor, truncation: float | None = None, *, noise: list[Tensor] | None = None
    ) -> Tensor:
        """Map latents ``(N, z_dim)`` to images ``(N, 3, H, W)`` in [-1, 1]."""
        first = self.layer_names[0]
        return self.forward_from(first, self.forward_to(first, z, truncation, noise=noise))

    def forward_to(
        self, layer: str, z: Tensor, truncation: float | None = None, *, noise: list[Tensor] | None = None
    ) -> LayerState:
        """Run the network up to (not including) ``layer``; nothing after it is computed."""
        stop = self.layer_index(layer)
        self._check_latents(z)
        state = self._prepare(z, self._truncation(truncation), noise)
        for index in range(stop):
            state = self._step(index, state)
        return self._enter(stop, state)

    def forward_from(self, layer: str, state: LayerState) -> Tensor:
        """Run ``layer`` and everything after it on ``state``; returns images in [-1, 1]."""
        for index in range(self.layer_index(layer), len(self.layer_names)):
            state = self._step(index, state)
        return self._finish(state)

    @torch.no_grad()
    def sample(
        self,
        seeds: Sequence[int],
        truncation: float | None = None,
        *,
        batch_size: int = 16,
        progress: bool = False,
    ) -> Tensor:
        """Generate one image per seed, deterministically (noise included).

        Args:
            seeds: integer seeds; the same seed always yields the same image.
            truncation: in [0, 1]; ``None`` uses ``config.default_truncation``.
            batch_size: images per forward pass.
            progress: show a tqdm bar.

        Returns:
            A float tensor ``(N, 3, H, W)`` in [-1, 1] on the CPU.

        Example:
            >>> G = gan_rewrite.load_generator("dcgan-faces-64")
            >>> G.sample(seeds=[0, 1, 2]).shape
            torch.Size([3, 3, 64, 64])
        """
        from tqdm.auto import tqdm

        seeds = [int(s) for s in seeds]
        if not seeds:
            raise ValueError("`seeds` is empty; give at least one integer seed.")
        if batch_size < 1:
            raise ValueError(f"`batch_size` must be >= 1, got {batch_size}.")
        was_training = self.training
        self.eval()
        out = []
        try:
            starts = range(0, len(seeds), batch_size)
            for start in tqdm(starts, desc="sampling", unit="batch", disable=not progress):
                chunk = seeds[start : start + batch_size]
                images = self(self.make_latents(chunk), truncation, noise=self.make_noise(chunk))
                out.append(images.float().clamp(-1, 1).cpu())
        finally:
            self.train(was_training)
        return torch.cat(out)
