"""NVIDIA stylegan2-ada-pytorch network pickles → our StyleGAN2 (rosinality's key layout).

The pickle is read by :mod:`.safe_pickle`, so no code in it runs; ``G_ema``'s parameters are then mapped
key by key, every shape checked, onto :class:`~gan_rewrite.models.stylegan2.StyleGAN2Generator`.

Why the two layouts compute the same function:

* mapping ``fc{i}``: both store ``W / lr`` and use ``W · lr/√in`` and ``b · lr`` (rosinality's ``lr_mul`` is
  NVIDIA's ``lr_multiplier``, read off the pickle's ``bias_gain``); leaky ReLU 0.2 with gain √2 in both.
* ``affine`` (bias init 1, lr 1) is ``modulation``; conv weights ``(O, I, k, k)`` gain a leading 1. NVIDIA
  leaves synthesis weights unscaled where rosinality multiplies by ``1/√(I·k²)``: demodulation cancels the
  scale (only its 1e-8 epsilon moves, far below float32 rounding of the outputs), and to-RGB scales its
  styles by the same ``1/√I`` that rosinality folds into the weight.
* NVIDIA's ``up=2`` conv (``flip_weight=False``: a true convolution of the zero-stuffed input, run as a
  stride-2 transposed conv, then the FIR filter with gain 4 and padding (1, 1)) is rosinality's transposed
  conv + blur exactly, with the kernel *unflipped* (rosinality's TF converter flips it; TF stores it
  differently). Checked against NVIDIA's own code, and in the tests against a direct implementation.
* ``noise_const · noise_strength`` is added after demodulation and before bias + activation in both.
* the skip image is FIR-upsampled with the same ``resample_filter`` (×4 gain) and padding.

Supported subset: unconditional (``c_dim`` 0), ``architecture='skip'`` (config-f and every ada config),
``z_dim == w_dim``, mapping with ``layer_features == w_dim``, RGB, 3×3 convs with noise, one resample
filter. Refused with a reason: conditional, 'orig'/'resnet' generators, StyleGAN3 (``SynthesisInput``).
Accepted but not reproduced: ``num_fp16_res`` (we run in float32: the function fp16 approximates) and
``conv_clamp`` (±256 clamping of activations; inactive unless an activation leaves ±256), both recorded
in the provenance and logged.
"""

from __future__ import annotations

import logging
import math
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..errors import CheckpointError
from .safe_pickle import PersistentStandIn, TensorRecord, safe_load, short_repr
from .sniff import read_head

logger = logging.getLogger(__name__)



@dataclass
class NvidiaGenerator:
    """``G_ema`` in rosinality's layout, plus what the state dict cannot say."""

    state_dict: dict[str, Tensor]
    latent_avg: Tensor
    lr_mlp: float
    notes: dict[str, Any] = field(default_factory=dict)


def read_nvidia_pickle(path: str | Path) -> Any:
    """Unpickle an NVIDIA network pickle safely (see :mod:`.safe_pickle`).

    Raises:
        ModelNotFoundError: the path does not exist.
        CheckpointError: empty, an image, a ``torch.save`` zip, truncated or not a pickle.
        UnsafeCheckpointError: the pickle names a global outside the allow-list; nothing was run.
    """
    path = Path(path)
    head = read_head(path, "network pickle")
    if head.startswith(b"PK") and zipfile.is_zipfile(path):
        raise CheckpointError(
            f"{str(path)!r} is a `torch.save` zip checkpoint, not an NVIDIA network pickle; try `--format rosinality`."
        )
    return safe_load(path)


def nvidia_generator(ckpt: Any) -> NvidiaGenerator:
    """Map the ``G_ema`` of an unpickled NVIDIA snapshot onto rosinality's StyleGAN2 keys.

    Raises:
        CheckpointError: no ``G_ema``, an unsupported variant (see the module doc), or a key or shape that
            does not fit.
    """
    if not isinstance(ckpt, dict) or "G_ema" not in ckpt:
        found = (
            short_repr(sorted(str(k)[:40] for k in list(ckpt)[:50])[:8]) if isinstance(ckpt, dict)
            else type(ckpt).__name__
        )
        raise CheckpointError(f"an NVIDIA network pickle is a dict with `G_ema`; found {found}.")
    g = ckpt["G_ema"]
    if not isinstance(g, PersistentStandIn) or g.class_name != "Generator":
        raise CheckpointError(f"`G_ema` should be a persistent `Generator`, got {_describe(g)}.")
    return _Mapper(g).run()


def _describe(obj: Any) -> str:
    return f"`{obj.class_name}`" if isinstance(obj, PersistentStandIn) else type(obj).__name__


def _number(module: PersistentStandIn, name: str, default: Any = None) -> Any:
    value = module.state.get(name, default)
    if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
        raise CheckpointError(f"`{name}` of {module.class_name} should be a number, got {short_repr(value)}.")
    return value


class _Mapper:
    """One conversion: takes tensors by NVIDIA name with a shape check, fails if any is left over."""

    def __init__(self, g: PersistentStandIn) -> None:
        self.g = g
        # Records, not tensors: each becomes a tensor only once its name and shape have been checked, so
        # unknown or mis-shaped entries cost nothing (60 views of one 32 MB storage used to cost 2.3 GB).
        self.source: dict[str, TensorRecord] = g.tensors()
        for record in self.source.values():
            record.check()
        self.out: dict[str, Tensor] = {}
        self.filter: Tensor | None = None

    def take(self, key: str, shape: tuple[int, ...]) -> Tensor:
        if key not in self.source:
            raise CheckpointError(f"`G_ema` has no `{key}`; found {short_repr(sorted(self.source)[:6])}...")
        record = self.source.pop(key)
        if tuple(record.size) != shape:
            raise CheckpointError(f"`G_ema.{key}` should be {shape}, got {short_repr(tuple(record.size))}.")
        return self.convert(key, record)

    @staticmethod
    def convert(key: str, record: TensorRecord) -> Tensor:
        """A checked record as a finite float32 tensor (weights are floating point; Bool/Int storages are not)."""
        if not record.dtype.is_floating_point:
            raise CheckpointError(f"`G_ema.{key}` is stored as {record.dtype}, not as floating-point weights.")
        tensor = record.to_tensor().float()
        if not bool(torch.isfinite(tensor).all()):
            raise CheckpointError(f"`G_ema.{key}` holds NaN or infinite values (or values beyond float32).")
        return tensor

    def child(self, module: PersistentStandIn, name: str, class_name: str) -> PersistentStandIn:
        sub = module.submodules().get(name)
        if sub is None or sub.class_name != class_name:
            raise CheckpointError(
                f"expected a `{class_name}` at `{name}` in {module.class_name}, got {_describe(sub)}."
            )
        return sub

    def run(self) -> NvidiaGenerator:
        g = self.g
        z_dim, w_dim, c_dim = (_number(g, k) for k in ("z_dim", "w_dim", "c_dim"))
        resolution, img_channels = _number(g, "img_resolution"), _number(g, "img_channels")
        if c_dim:
            raise CheckpointError(f"conditional generators (`c_dim`={c_dim}) are not supported.")
        if img_channels != 3:
            raise CheckpointError(f"only RGB generators are supported, this one has `img_channels`={img_channels}.")
        if z_dim != w_dim:
            raise CheckpointError(f"`z_dim` ({z_dim}) must equal `w_dim` ({w_dim}) for our StyleGAN2.")
        if not isinstance(resolution, int) or resolution < 8 or resolution & (resolution - 1):
            raise CheckpointError(f"`img_resolution` must be a power of two >= 8, got {resolution!r}.")
        lr_mlp = self.mapping(self.child(g, "mapping", "MappingNetwork"), w_dim)
        synthesis = g.submodules().get("synthesis")
        if isinstance(synthesis, PersistentStandIn) and "input" in synthesis.submodules():
            raise CheckpointError(
                "this is a StyleGAN3 generator (`synthesis.input`); only StyleGAN2(-ADA) is supported."
            )
        notes = self.synthesis(self.child(g, "synthesis", "SynthesisNetwork"), w_dim, resolution)
        latent_avg = self.out.pop("latent_avg")
        if self.source:
            raise CheckpointError(
                f"`G_ema` has tensors this conversion does not know: {short_repr(sorted(self.source)[:8])}."
            )
        return NvidiaGenerator(self.out, latent_avg, lr_mlp, notes)

    def mapping(self, mapping: PersistentStandIn, w_dim: int) -> float:
        """``mapping.fc{i}`` → ``style.{i+1}``; ``w_avg`` → ``latent_avg``. Returns ``lr_mlp``."""
        if "embed" in mapping.submodules():
            raise CheckpointError("conditional mapping networks (`mapping.embed`) are not supported.")
        n_layers = _number(mapping, "num_layers")
        gains = set()
        for i in range(n_layers or 0):
            fc = self.child(mapping, f"fc{i}", "FullyConnectedLayer")
            if fc.state.get("activation") != "lrelu":
                raise CheckpointError(
                    f"`mapping.fc{i}` uses {short_repr(fc.state.get('activation'))}; only 'lrelu' is supported."
                )
            lr, weight_gain = _number(fc, "bias_gain", 1), _number(fc, "weight_gain", 1)
            if not lr or not math.isclose(weight_gain, lr / math.sqrt(w_dim), rel_tol=1e-6):
                raise CheckpointError(f"`mapping.fc{i}` gains ({weight_gain}, {lr}) are not lr/√in and lr.")
            gains.add(float(lr))
            self.out[f"style.{i + 1}.weight"] = self.take(f"mapping.fc{i}.weight", (w_dim, w_dim))
            self.out[f"style.{i + 1}.bias"] = self.take(f"mapping.fc{i}.bias", (w_dim,))
        if not n_layers or len(gains) != 1:
            raise CheckpointError(
                f"the mapping network needs >= 1 layer with one lr_multiplier, got {n_layers} "
                f"layers with {sorted(gains)}."
            )
        self.out["latent_avg"] = self.take("mapping.w_avg", (w_dim,))
        return gains.pop()

    def synthesis(self, synthesis: PersistentStandIn, w_dim: int, resolution: int) -> dict[str, Any]:
        """Blocks ``b4`` … ``b{resolution}`` → ``input``, ``conv1``, ``convs.N``, ``to_rgb1``, ``to_rgbs.N``."""
        notes: dict[str, Any] = {"conv_clamp": None, "fp16_resolutions": []}
        layer_index = 0
        channels_in = 0
        for log_res in range(2, int(math.log2(resolution)) + 1):
            res = 2**log_res
            block = self.child(synthesis, f"b{res}", "SynthesisBlock")
            architecture = block.state.get("architecture", "skip")
            if architecture != "skip":
                raise CheckpointError(
                    f"`synthesis.b{res}` has architecture {short_repr(architecture)}; only 'skip' (config-f / ada) "
                    "is supported."
                )
            if block.state.get("use_fp16"):
                notes["fp16_resolutions"].append(res)
            prefix = f"synthesis.b{res}"
            self.check_filter(f"{prefix}.resample_filter")
            conv1 = self.child(block, "conv1", "SynthesisLayer")
            conv1_weight = self.source.get(f"{prefix}.conv1.weight")
            channels = conv1_weight.size[0] if conv1_weight is not None and conv1_weight.size else 0
            if res == 4:
                self.out["input.input"] = self.take(f"{prefix}.const", (channels, 4, 4))[None]
                self.layer(conv1, f"{prefix}.conv1", "conv1", channels, channels, w_dim, res, layer_index, notes)
                self.to_rgb(self.child(block, "torgb", "ToRGBLayer"), f"{prefix}.torgb", "to_rgb1", channels, w_dim)
            else:
                conv0 = self.child(block, "conv0", "SynthesisLayer")
                n = 2 * (log_res - 3)
                self.layer(
                    conv0,
                    f"{prefix}.conv0",
                    f"convs.{n}",
                    channels_in,
                    channels,
                    w_dim,
                    res,
                    layer_index,
                    notes,
                    up=True,
                )
                layer_index += 1
                self.layer(
                    conv1, f"{prefix}.conv1", f"convs.{n + 1}", channels, channels, w_dim, res, layer_index, notes
                )
                rgb = f"to_rgbs.{log_res - 3}"
                self.to_rgb(self.child(block, "torgb", "ToRGBLayer"), f"{prefix}.torgb", rgb, channels, w_dim)
                self.out[f"{rgb}.upsample.kernel"] = self.filter * 4
            layer_index += 1
            channels_in = channels
        if notes["conv_clamp"] is not None:
            logger.warning(
                "this generator clamps activations to ±%s (`conv_clamp`); the converted model does "
                "not, which changes nothing unless an activation leaves that range.",
                notes["conv_clamp"],
            )
        return notes

    def check_filter(self, key: str) -> None:
        """Every ``resample_filter`` must be one and the same 2-D FIR filter (ours has one ``blur_kernel``)."""
        record = self.source.pop(key, None)
        size = None if record is None else tuple(record.size)
        if size is None or len(size) != 2 or size[0] != size[1] or not 1 <= size[0] <= 16:
            raise CheckpointError(
                f"`G_ema.{key}` should be a square 2-D FIR filter (at most 16 taps), got {short_repr(size)}."
            )
        f = self.convert(key, record)
        if self.filter is None:
            self.filter = f.float()
        elif f.shape != self.filter.shape or not torch.equal(f.float(), self.filter):
            raise CheckpointError(f"`G_ema.{key}` differs from the other resample filters.")

    def layer(
        self,
        layer: PersistentStandIn,
        nv: str,
        ros: str,
        c_in: int,
        c_out: int,
        w_dim: int,
        res: int,
        index: int,
        notes: dict[str, Any],
        *,
        up: bool = False,
    ) -> None:
        """One ``SynthesisLayer`` → one rosinality ``StyledConv`` and its ``noises.noise_{index}``."""
        if layer.state.get("activation", "lrelu") != "lrelu" or _number(layer, "up", 1) != (2 if up else 1):
            raise CheckpointError(f"`{nv}` should be a leaky-ReLU layer with up={2 if up else 1}.")
        if not layer.state.get("use_noise", True):
            raise CheckpointError(f"`{nv}` has no noise input (`use_noise=False`), which our StyleGAN2 requires.")
        clamp = _number(layer, "conv_clamp")
        if clamp is not None:
            notes["conv_clamp"] = clamp
        self.check_filter(f"{nv}.resample_filter")
        if up:
            self.out[f"{ros}.conv.blur.kernel"] = self.filter * 4
        self.out[f"{ros}.conv.weight"] = self.take(f"{nv}.weight", (c_out, c_in, 3, 3))[None]
        self.affine(layer, nv, f"{ros}.conv.modulation", c_in, w_dim)
        self.out[f"{ros}.noise.weight"] = self.take(f"{nv}.noise_strength", ()).reshape(1)
        self.out[f"{ros}.activate.bias"] = self.take(f"{nv}.bias", (c_out,))
        self.out[f"noises.noise_{index}"] = self.take(f"{nv}.noise_const", (res, res))[None, None]

    def to_rgb(self, layer: PersistentStandIn, nv: str, ros: str, c_in: int, w_dim: int) -> None:
        weight_gain = _number(layer, "weight_gain", 1 / math.sqrt(c_in))
        if not math.isclose(weight_gain, 1 / math.sqrt(c_in), rel_tol=1e-6):
            raise CheckpointError(f"`{nv}` has weight_gain {weight_gain}, expected 1/√{c_in} (a 1×1 conv).")
        self.out[f"{ros}.conv.weight"] = self.take(f"{nv}.weight", (3, c_in, 1, 1))[None]
        self.affine(layer, nv, f"{ros}.conv.modulation", c_in, w_dim)
        self.out[f"{ros}.bias"] = self.take(f"{nv}.bias", (3,)).reshape(1, 3, 1, 1)

    def affine(self, layer: PersistentStandIn, nv: str, ros: str, c_in: int, w_dim: int) -> None:
        fc = self.child(layer, "affine", "FullyConnectedLayer")
        gains = (_number(fc, "bias_gain", 1), _number(fc, "weight_gain", 1 / math.sqrt(w_dim)))
        if (
            gains[0] != 1
            or not math.isclose(gains[1], 1 / math.sqrt(w_dim), rel_tol=1e-6)
            or fc.state.get("activation", "linear") != "linear"
        ):
            raise CheckpointError(f"`{nv}.affine` should be a linear layer with lr_multiplier 1.")
        self.out[f"{ros}.weight"] = self.take(f"{nv}.affine.weight", (c_in, w_dim))
        self.out[f"{ros}.bias"] = self.take(f"{nv}.affine.bias", (c_in,))
