"""StyleGAN2 (Karras et al. 2020), in rosinality/stylegan2-pytorch's state-dict layout, in plain torch.

The generator maps ``z`` to ``w`` with an MLP, then draws the image from a learned 4×4 constant with
modulated convolutions, adding each resolution's RGB output to an upsampled skip image. For 256×256::

    z (N, 512) ─ style: pixel norm, 8 × equalised linear + leaky ReLU ─ w (N, 512) ─ truncation
    input.input (1, 512, 4, 4)
      layer1  conv1     3×3 modulated conv           4×4  ─ to_rgb1 ─────────────── skip  4×4
      layer2  convs.0   3×3 modulated conv, up ×2    8×8
      layer3  convs.1   3×3 modulated conv           8×8  ─ to_rgbs.0 + upsampled skip ─ 8×8
      ...     (two convs and one to-RGB per resolution)
      layer13 convs.11  3×3 modulated conv         256×256 ─ to_rgbs.5 + upsampled skip ─ image

Each conv is followed by noise injection and a biased leaky ReLU (slope 0.2, gain √2). Keys and shapes are
exactly rosinality's ``Generator``: ``style.1.weight``, ``input.input``, ``conv1.conv.weight``,
``convs.N.conv.blur.kernel``, ``to_rgbs.N.upsample.kernel``, ``noises.noise_N``... plus one buffer of ours,
``latent_avg`` (the mean ``w``, the centre of truncation), which rosinality keeps beside ``g_ema``.

Named layers follow the paper's code: ``layer1`` is ``conv1``, ``layerN`` (N ≥ 2) is ``convs.(N-2)``.
``layer_module`` returns the :class:`ModulatedConv2d`; its key is ``x·s``, the input times the layer's
style, which :meth:`StyleGAN2Generator._enter` puts in ``LayerState.style``.

No compiled ops: ``upfirdn2d`` and the fused leaky ReLU are written with ``F.conv2d`` / ``F.pad``, so the
file runs unchanged on CPU and CUDA and matches rosinality's output to float rounding.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import CheckpointError, ConfigError, short_repr
from .base import MAX_CHANNELS, GANGenerator, GeneratorConfig, LayerState

MAX_N_MLP = 64  # mapping layers (8 in every published StyleGAN2)
MAX_CHANNEL_MULTIPLIER = 64

# rosinality's channel table: 512 up to 32×32, then halving, times `channel_multiplier` from 64×64 on.
_BASE_CHANNELS = {4: 512, 8: 512, 16: 512, 32: 512, 64: 256, 128: 128, 256: 64, 512: 32, 1024: 16}


def rosinality_channels(resolution: int, channel_multiplier: int) -> dict[int, int]:
    """Channels at each resolution 4…``resolution`` in rosinality's table."""
    return {r: c * (channel_multiplier if r >= 64 else 1) for r, c in _BASE_CHANNELS.items() if r <= resolution}


def default_layer_for(resolution: int) -> str:
    """The upsampling conv that reads keys at a quarter of the image side, capped at 32×32.

    At 256px and above this is the paper's StyleGAN2 choice, ``layer8`` (32×32 keys, coarse enough for one
    rule to cover whole objects, fine enough to place them); a 64px model gets ``layer6`` (16×16 keys, the
    scale that behaved best on the 64px DCGAN), a 32px model ``layer4``. The upsampling conv reading
    ``r×r`` keys is ``convs.(2·log2(r) − 4)``, i.e. ``layer(2·log2(r) − 2)``.
    """
    keys = min(32, max(4, resolution // 4))
    return f"layer{2 * int(math.log2(keys)) - 2}"


@dataclass
class StyleGAN2Config(GeneratorConfig):
    """StyleGAN2 hyper-parameters, named as rosinality's ``Generator`` arguments where they have one.

    ``resolution`` is rosinality's ``size`` and ``z_dim`` its ``style_dim`` (z and w have the same size).
    ``channels`` overrides the channel table (keys are resolutions as strings, ``"4"`` … ``str(resolution)``),
    for toy models and checkpoints whose table is not rosinality's; ``channel_multiplier`` is then unused.
    An empty ``default_layer`` is filled in by :func:`default_layer_for`.
    """

    architecture: ClassVar[str] = "stylegan2"
    class_name: ClassVar[str] = "StyleGAN2Generator"

    resolution: int = 256
    z_dim: int = 512
    default_layer: str = ""
    n_mlp: int = 8
    channel_multiplier: int = 2
    lr_mlp: float = 0.01
    blur_kernel: list[int] = field(default_factory=lambda: [1, 3, 3, 1])
    channels: dict[str, int] | None = None

    def __post_init__(self) -> None:
        is_power_of_two = isinstance(self.resolution, int) and self.resolution >= 4
        is_power_of_two = is_power_of_two and not self.resolution & (self.resolution - 1)
        if not self.default_layer and is_power_of_two:
            self.default_layer = default_layer_for(self.resolution)

    @property
    def log_size(self) -> int:
        return int(math.log2(self.resolution))

    @property
    def num_layers(self) -> int:
        """Named layers (= modulated 3×3 convs = noise inputs): ``conv1`` and two per resolution from 8×8."""
        return 2 * self.log_size - 3

    @property
    def n_latent(self) -> int:
        """Positions of the per-layer latent ``w+``: every conv plus the last to-RGB."""
        return 2 * self.log_size - 2

    def layer_names(self) -> list[str]:
        return [f"layer{j + 1}" for j in range(self.num_layers)]

    def channel_table(self) -> dict[int, int]:
        """Channels at each resolution 4…``resolution`` (the override if given, else rosinality's table)."""
        if self.channels is not None:
            return {int(r): int(c) for r, c in self.channels.items()}
        return rosinality_channels(self.resolution, self.channel_multiplier)

    def validate(self) -> None:
        super().validate()
        if self.channels is None and not 32 <= self.resolution <= 1024:
            raise ConfigError(
                f"config field `resolution` must be 32…1024 with rosinality's channel table, got "
                f"{self.resolution}; give `channels` for other sizes."
            )
        if self.resolution < 8:
            raise ConfigError(f"config field `resolution` must be >= 8 for StyleGAN2, got {self.resolution}.")
        if self.channels is not None:
            needed = {str(2**i) for i in range(2, self.log_size + 1)}
            if set(self.channels) != needed or any(
                not isinstance(c, int) or isinstance(c, bool) or not 1 <= c <= MAX_CHANNELS
                for c in self.channels.values()
            ):
                raise ConfigError(
                    f"config field `channels` must map every resolution {sorted(needed, key=int)} (as strings) "
                    f"to a channel count in [1, {MAX_CHANNELS}], got {short_repr(self.channels)}."
                )
        for name, ceiling in (("n_mlp", MAX_N_MLP), ("channel_multiplier", MAX_CHANNEL_MULTIPLIER)):
            if not 1 <= getattr(self, name) <= ceiling:
                raise ConfigError(f"config field `{name}` must be in [1, {ceiling}], got {getattr(self, name)}.")
        if not self.lr_mlp > 0:
            raise ConfigError(f"config field `lr_mlp` must be positive, got {self.lr_mlp}.")
        if not 2 <= len(self.blur_kernel) <= 16 or sum(self.blur_kernel) <= 0:
            raise ConfigError(
                "config field `blur_kernel` must list 2 to 16 taps with a positive sum, got "
                f"{short_repr(self.blur_kernel)}."
            )
        if self.default_layer not in self.layer_names():
            raise ConfigError(
                f"config field `default_layer` must be one of layer1..layer{self.num_layers}, "
                f"got {short_repr(self.default_layer)}."
            )


# ----- resampling: upfirdn2d in plain torch ---------------------------------------------------------
def make_kernel(taps: Sequence[float]) -> Tensor:
    """The 2-D FIR filter (outer product of the 1-D taps), normalised to sum 1: ``(k, k)``."""
    k = torch.tensor(taps, dtype=torch.float32)
    if k.ndim == 1:
        k = k[None, :] * k[:, None]
    return k / k.sum()


def upfirdn2d(x: Tensor, kernel: Tensor, up: int = 1, down: int = 1, pad: tuple[int, int] = (0, 0)) -> Tensor:
    """Upsample by zero insertion, pad, filter with ``kernel``, keep every ``down``-th pixel.

    StyleGAN2's resampling op (rosinality compiles it for CUDA); here zero insertion, ``F.pad`` and one
    depthwise ``F.conv2d``.
    ``pad = (before, after)`` applies to both axes; a negative pad crops.

    Args:
        x: ``(N, C, H, W)``.
        kernel: ``(kh, kw)`` FIR filter, applied as a true convolution (flipped).

    Returns:
        ``(N, C, (H·up + before + after − kh) // down + 1, ...)``.
    """
    n, c, h, w = x.shape
    if up > 1:
        spread = x.new_zeros(n, c, h * up, w * up)
        spread[:, :, ::up, ::up] = x
        x = spread  # (N, C, H·up, W·up)
    before, after = pad
    x = F.pad(x, (before, after, before, after))
    # Depthwise: every channel filtered alike (much faster on CPU than folding channels into the batch).
    weight = torch.flip(kernel, (0, 1)).to(x.dtype).expand(c, 1, *kernel.shape)
    x = F.conv2d(x, weight, groups=c)
    return x[:, :, ::down, ::down]


class Blur(nn.Module):
    """FIR low-pass filter with fixed padding; after a stride-2 transposed conv it completes the upsampling."""

    def __init__(self, taps: Sequence[int], pad: tuple[int, int], upsample_factor: int = 1) -> None:
        super().__init__()
        # Zero insertion keeps 1/factor² of the energy, so the filter's gain restores it.
        self.register_buffer("kernel", make_kernel(taps) * upsample_factor**2)
        self.pad = pad

    def forward(self, x: Tensor) -> Tensor:
        return upfirdn2d(x, self.kernel, pad=self.pad)


class Upsample(nn.Module):
    """×2 FIR upsampling of the skip image between resolutions."""

    def __init__(self, taps: Sequence[int], factor: int = 2) -> None:
        super().__init__()
        self.factor = factor
        self.register_buffer("kernel", make_kernel(taps) * factor**2)
        p = len(taps) - factor
        self.pad = ((p + 1) // 2 + factor - 1, p // 2)

    def forward(self, x: Tensor) -> Tensor:
        return upfirdn2d(x, self.kernel, up=self.factor, pad=self.pad)  # (N, C, 2H, 2W)


# ----- equalised layers ----------------------------------------------------------------------------
def fused_leaky_relu(x: Tensor, bias: Tensor, negative_slope: float = 0.2, gain: float = math.sqrt(2)) -> Tensor:
    """Add a per-channel bias, leaky ReLU, times √2 to keep unit variance (rosinality's fused op)."""
    shape = (1, -1) + (1,) * (x.ndim - 2)
    return F.leaky_relu(x + bias.view(shape), negative_slope) * gain


class FusedLeakyReLU(nn.Module):
    """:func:`fused_leaky_relu` with its own bias (``activate.bias``)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: Tensor) -> Tensor:
        return fused_leaky_relu(x, self.bias)


class PixelNorm(nn.Module):
    """Scale each latent to unit root-mean-square: the mapping network's input is on a sphere."""

    def forward(self, z: Tensor) -> Tensor:
        return z * torch.rsqrt(torch.mean(z**2, dim=1, keepdim=True) + 1e-8)


class EqualLinear(nn.Module):
    """Linear layer with equalised learning rate: weights are stored at unit scale, multiplied by
    ``lr_mul / sqrt(in)`` at run time (``lr_mul`` = 0.01 slows the mapping network down)."""

    def __init__(
        self, in_dim: int, out_dim: int, *, bias_init: float = 0.0, lr_mul: float = 1.0, activation: bool = False
    ) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_dim, in_dim) / lr_mul)
        self.bias = nn.Parameter(torch.full((out_dim,), float(bias_init)))
        self.scale = lr_mul / math.sqrt(in_dim)
        self.lr_mul = lr_mul
        self.activation = activation

    def forward(self, x: Tensor) -> Tensor:
        if self.activation:
            return fused_leaky_relu(F.linear(x, self.weight * self.scale), self.bias * self.lr_mul)
        return F.linear(x, self.weight * self.scale, self.bias * self.lr_mul)


# ----- the modulated convolution and its blocks -----------------------------------------------------
class ModulatedConv2d(nn.Module):
    """StyleGAN2's modulated convolution: scale the input channels by the style ``s = A(w)``, convolve
    with the shared weight, then (demodulation) normalise each output channel to unit expected variance.

    Written as ``demod(W, s) ⊙ conv(x·s, W)`` rather than with per-sample weights, so the key a rule reads
    is ``x·s`` and the weight it edits is the shared ``W`` (``(1, O, I, k, k)``, as rosinality stores it).
    The upsampling variant is a stride-2 transposed conv followed by a blur.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        style_dim: int,
        *,
        demodulate: bool = True,
        upsample: bool = False,
        blur_kernel: Sequence[int] = (1, 3, 3, 1),
    ) -> None:
        super().__init__()
        self.eps = 1e-8
        self.in_channels, self.out_channels, self.kernel_size = in_channels, out_channels, kernel_size
        self.upsample = upsample
        self.downsample = False  # the generator never downsamples; read by the rewrite layer kinds
        self.demodulate = demodulate
        if upsample:
            factor = 2
            p = (len(blur_kernel) - factor) - (kernel_size - 1)
            self.blur = Blur(blur_kernel, pad=((p + 1) // 2 + factor - 1, p // 2 + 1), upsample_factor=factor)
        self.scale = 1 / math.sqrt(in_channels * kernel_size**2)
        self.padding = kernel_size // 2
        self.weight = nn.Parameter(torch.randn(1, out_channels, in_channels, kernel_size, kernel_size))
        self.modulation = EqualLinear(style_dim, in_channels, bias_init=1.0)

    def demodulation(self, s: Tensor) -> Tensor:
        """``1 / ‖W·s‖`` per sample and output channel: ``(N, O)``."""
        energy = (self.weight[0] * self.scale).square().sum((2, 3))  # (O, I)
        return torch.rsqrt(s.square() @ energy.t() + self.eps)

    def forward(self, x: Tensor, w: Tensor) -> Tensor:
        """``x`` ``(N, I, h, w)``, ``w`` ``(N, style_dim)`` → ``(N, O, h, w)`` (``2h, 2w`` if upsampling)."""
        s = self.modulation(w)  # (N, I)
        keys = x * s[:, :, None, None]  # (N, I, h, w)
        weight = self.weight[0] * self.scale  # (O, I, k, k)
        if self.upsample:
            out = F.conv_transpose2d(keys, weight.transpose(0, 1), stride=2)  # (N, O, 2h+k-2, ...)
            out = self.blur(out)  # (N, O, 2h, 2w)
        else:
            out = F.conv2d(keys, weight, padding=self.padding)  # (N, O, h, w)
        if self.demodulate:
            out = out * self.demodulation(s)[:, :, None, None]
        return out

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}, {self.kernel_size}, upsample={self.upsample}"


class NoiseInjection(nn.Module):
    """Add per-pixel noise, one learned strength for all channels: the stochastic detail (hair, grain)."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))

    def forward(self, x: Tensor, noise: Tensor) -> Tensor:
        return x + self.weight * noise  # noise (N or 1, 1, h, w)


class ConstantInput(nn.Module):
    """The learned 4×4 tensor every image starts from (the latent enters only through the styles)."""

    def __init__(self, channels: int, size: int = 4) -> None:
        super().__init__()
        self.input = nn.Parameter(torch.randn(1, channels, size, size))

    def forward(self, batch: int) -> Tensor:
        return self.input.repeat(batch, 1, 1, 1)  # (N, C, 4, 4)


class StyledConv(nn.Module):
    """Modulated 3×3 conv, noise, biased leaky ReLU: one named layer."""

    def __init__(
        self, in_channels: int, out_channels: int, style_dim: int, *, upsample: bool, blur_kernel: Sequence[int]
    ) -> None:
        super().__init__()
        self.conv = ModulatedConv2d(in_channels, out_channels, 3, style_dim, upsample=upsample, blur_kernel=blur_kernel)
        self.noise = NoiseInjection()
        self.activate = FusedLeakyReLU(out_channels)

    def forward(self, x: Tensor, w: Tensor, noise: Tensor) -> Tensor:
        return self.activate(self.noise(self.conv(x, w), noise))


class ToRGB(nn.Module):
    """1×1 modulated conv to RGB (not demodulated), plus the upsampled skip image from the coarser level."""

    def __init__(self, in_channels: int, style_dim: int, *, upsample: bool, blur_kernel: Sequence[int]) -> None:
        super().__init__()
        if upsample:
            self.upsample = Upsample(blur_kernel)
        self.conv = ModulatedConv2d(in_channels, 3, 1, style_dim, demodulate=False)
        self.bias = nn.Parameter(torch.zeros(1, 3, 1, 1))

    def forward(self, x: Tensor, w: Tensor, skip: Tensor | None = None) -> Tensor:
        out = self.conv(x, w) + self.bias  # (N, 3, h, w)
        if skip is not None:
            out = out + self.upsample(skip)
        return out


# ----- the generator --------------------------------------------------------------------------------
class StyleGAN2Generator(GANGenerator):
    """rosinality's StyleGAN2 ``Generator`` with named layers, truncation and split execution.

    ``forward(z, t, noise=noise)`` equals rosinality's
    ``Generator([z], truncation=t, truncation_latent=latent_avg, noise=noise, randomize_noise=False)[0]``;
    with ``noise=None`` the fixed ``noises.noise_N`` buffers are used. ``latent_avg`` starts as zeros:
    converters fill it from the checkpoint or with :meth:`estimate_latent_avg`.

    Example:
        >>> G = StyleGAN2Generator(StyleGAN2Config(resolution=256, channel_multiplier=2))
        >>> G.layer_names[:3], G.layer_module("layer8").weight.shape
        (['layer1', 'layer2', 'layer3'], torch.Size([1, 256, 512, 3, 3]))
    """

    config_class = StyleGAN2Config

    def __init__(self, config: StyleGAN2Config) -> None:
        super().__init__(config)
        style_dim, blur = config.z_dim, list(config.blur_kernel)
        self.style = nn.Sequential(
            PixelNorm(),
            *(EqualLinear(style_dim, style_dim, lr_mul=config.lr_mlp, activation=True) for _ in range(config.n_mlp)),
        )
        channels = config.channel_table()
        self.input = ConstantInput(channels[4])
        self.conv1 = StyledConv(channels[4], channels[4], style_dim, upsample=False, blur_kernel=blur)
        self.to_rgb1 = ToRGB(channels[4], style_dim, upsample=False, blur_kernel=blur)
        self.convs = nn.ModuleList()
        self.to_rgbs = nn.ModuleList()
        c_in = channels[4]
        for log_res in range(3, config.log_size + 1):
            c_out = channels[2**log_res]
            self.convs.append(StyledConv(c_in, c_out, style_dim, upsample=True, blur_kernel=blur))
            self.convs.append(StyledConv(c_out, c_out, style_dim, upsample=False, blur_kernel=blur))
            self.to_rgbs.append(ToRGB(c_out, style_dim, upsample=True, blur_kernel=blur))
            c_in = c_out
        self.noises = nn.Module()  # fixed noise, used when no noise is passed (rosinality's randomize_noise=False)
        for index, size in enumerate(self.noise_sizes()):
            self.noises.register_buffer(f"noise_{index}", torch.randn(1, 1, size, size))
        self.register_buffer("latent_avg", torch.zeros(style_dim))

    # ----- layout ------------------------------------------------------------------------------
    def noise_sizes(self) -> list[int]:
        """Side of each noise input, one per named layer: 4, 8, 8, 16, 16, …"""
        return [2 ** ((index + 5) // 2) for index in range(self.config.num_layers)]

    @property
    def layer_names(self) -> list[str]:
        return self.config.layer_names()

    def _styled_conv(self, index: int) -> StyledConv:
        return self.conv1 if index == 0 else self.convs[index - 1]

    def layer_module(self, layer: str) -> ModulatedConv2d:
        return self._styled_conv(self.layer_index(layer)).conv

    def optional_keys(self) -> set[str]:
        return {"latent_avg"}  # rosinality keeps it beside g_ema, not inside it

    @classmethod
    def infer_config(cls, state_dict: dict[str, Tensor], **overrides: Any) -> StyleGAN2Config:
        """Read size, style size, MLP depth and channel table off a rosinality ``g_ema`` state dict.

        The channel table becomes ``channel_multiplier`` when it is rosinality's, else explicit ``channels``.
        ``lr_mlp`` cannot be read off the weights; it keeps rosinality's default 0.01 unless overridden.

        Raises:
            CheckpointError: the keys or shapes are not those of a rosinality StyleGAN2 generator.
            ConfigError: an override is not a StyleGAN2 config field.
        """
        required = ("style.1.weight", "input.input", "conv1.conv.weight", "to_rgb1.conv.weight", "convs.0.conv.weight")
        missing = [key for key in required if key not in state_dict]
        if missing:
            hint = ""
            if any(key.startswith(("mapping.", "synthesis.")) for key in state_dict):
                hint = " (NVIDIA's `mapping.*` / `synthesis.*` layout: convert it to rosinality's first)"
            elif any(key.startswith(("g_ema", "g.", "d.")) for key in state_dict):
                hint = " (pass the checkpoint's `g_ema` entry, not the whole training checkpoint)"
            raise CheckpointError(
                f"not a StyleGAN2 (rosinality/stylegan2-pytorch) generator state dict: missing {missing}; "
                f"found keys {sorted(state_dict)[:8]}{hint}."
            )

        def shape(key: str) -> tuple[int, ...]:
            return tuple(state_dict[key].shape)

        n_mlp = 0
        while f"style.{n_mlp + 1}.weight" in state_dict:
            n_mlp += 1
        style_dim = shape("style.1.weight")[-1]
        n_convs = sum(1 for key in state_dict if key.startswith("convs.") and key.endswith(".conv.weight"))
        n_rgbs = sum(1 for key in state_dict if key.startswith("to_rgbs.") and key.endswith(".conv.weight"))
        if n_convs % 2 or n_rgbs != n_convs // 2:
            raise CheckpointError(
                f"a rosinality StyleGAN2 has two `convs.N` per `to_rgbs.N`; found {n_convs} convs and {n_rgbs} to_rgbs."
            )
        resolution = 2 ** (n_convs // 2 + 2)
        if len(shape("input.input")) != 4 or shape("input.input")[2:] != (4, 4):
            raise CheckpointError(f"`input.input` should be (1, C, 4, 4), got {shape('input.input')}.")
        channels = {"4": shape("input.input")[1]}
        for block in range(n_convs // 2):
            key = f"convs.{2 * block}.conv.weight"
            if key not in state_dict or len(shape(key)) != 5:
                raise CheckpointError(f"`{key}` should be a 5-d modulated conv weight (1, O, I, 3, 3).")
            channels[str(2 ** (block + 3))] = shape(key)[1]

        channel_multiplier, explicit = 2, True
        if 32 <= resolution <= 1024:
            candidates = [channels["64"] // 256] if resolution >= 64 and channels["64"] % 256 == 0 else []
            for candidate in candidates or [2]:
                table = rosinality_channels(resolution, candidate)
                if candidate >= 1 and channels == {str(r): c for r, c in table.items()}:
                    channel_multiplier, explicit = candidate, False

        values: dict[str, Any] = dict(
            resolution=resolution,
            z_dim=style_dim,
            n_mlp=n_mlp,
            channel_multiplier=channel_multiplier,
            channels=channels if explicit else None,
        )
        if "blur_kernel" not in overrides:
            values["blur_kernel"] = _blur_taps(state_dict.get("convs.0.conv.blur.kernel"))
        fields = {f.name for f in dataclasses.fields(StyleGAN2Config)}
        unknown = sorted(set(overrides) - fields)
        if unknown:
            raise ConfigError(f"unknown StyleGAN2 config override(s) {unknown}; known fields are {sorted(fields)}.")
        if overrides.get("resolution", resolution) != resolution:
            raise CheckpointError(
                f"the checkpoint has {n_convs} convs, i.e. it is {resolution}px, but `resolution`="
                f"{overrides['resolution']} was given."
            )
        config = StyleGAN2Config(**{**values, **overrides})
        config.validate()
        return config

    # ----- latents and noise -------------------------------------------------------------------
    def mapping(self, z: Tensor) -> Tensor:
        """The mapping network: ``z`` ``(N, z_dim)`` → ``w`` ``(N, z_dim)``."""
        return self.style(z.to(self.latent_avg.dtype))

    def truncate(self, w: Tensor, truncation: float) -> Tensor:
        """Pull ``w`` (or ``w+``) toward ``latent_avg``: 1 leaves it, 0 gives the average image."""
        if truncation >= 1:
            return w
        return self.latent_avg + truncation * (w - self.latent_avg)

    @torch.no_grad()
    def estimate_latent_avg(self, n: int = 10_000, *, seed: int = 0, batch_size: int = 1000) -> Tensor:
        """Set ``latent_avg`` to the mean ``w`` of ``n`` seeded latents (for checkpoints that lack it).

        Returns:
            The new ``latent_avg`` ``(z_dim,)``.
        """
        generator = torch.Generator().manual_seed(seed)
        total = torch.zeros(self.z_dim, dtype=torch.float64, device=self.device)
        for start in range(0, n, batch_size):
            z = torch.randn(min(batch_size, n - start), self.z_dim, generator=generator)
            total += self.mapping(z.to(self.device)).double().sum(0)
        self.latent_avg.copy_(total / n)
        return self.latent_avg

    def make_noise(self, seeds: Sequence[int], *, layers: int | None = None) -> list[Tensor]:
        """Per-seed noise inputs ``(N, 1, r, r)``, one per named layer, on the model's device.

        Seed ``s`` continues the CPU random stream that :meth:`make_latents` starts for its ``z`` (which is
        drawn and discarded here), so noise and latent are independent and no seed depends on the batch.
        With ``layers=k`` only the first ``k`` maps are drawn — the same maps, since the stream runs in
        layer order — which is all ``forward_to`` the (k+1)-th layer needs (statistics use this).
        """
        sizes = self.noise_sizes()[:layers]
        per_seed = []
        for seed in seeds:
            generator = torch.Generator().manual_seed(int(seed))
            torch.randn(self.z_dim, generator=generator)  # the latent of this seed
            per_seed.append([torch.randn(1, size, size, generator=generator) for size in sizes])
        if not sizes:
            return []
        return [torch.stack(inputs).to(self.device) for inputs in zip(*per_seed, strict=True)]

    def _noise_inputs(self, noise: list[Tensor] | None, like: Tensor) -> list[Tensor]:
        if noise is None:
            return [getattr(self.noises, f"noise_{index}") for index in range(self.config.num_layers)]
        if len(noise) > self.config.num_layers:
            raise ValueError(
                f"`noise` must hold at most {self.config.num_layers} tensors (one per named layer), got {len(noise)}."
            )
        return [n.to(device=like.device, dtype=like.dtype) for n in noise]

    # ----- split execution ---------------------------------------------------------------------
    def _start(self, latent: Tensor, noise: list[Tensor] | None) -> LayerState:
        """The state entering ``layer1`` for ``w`` ``(N, D)`` or ``w+`` ``(N, n_latent, D)``."""
        if latent.ndim == 2:
            latent = latent.unsqueeze(1).repeat(1, self.config.n_latent, 1)  # (N, n_latent, D)
        if latent.ndim != 3 or latent.shape[1:] != (self.config.n_latent, self.z_dim):
            raise ValueError(
                f"latent must be w (N, {self.z_dim}) or w+ (N, {self.config.n_latent}, {self.z_dim}), "
                f"got {tuple(latent.shape)}."
            )
        x = self.input(latent.shape[0])  # (N, C_4, 4, 4)
        carry = {"latent": latent, "noise": self._noise_inputs(noise, x), "skip": None}
        return LayerState(features=x, carry=carry)

    def _prepare(self, z: Tensor, truncation: float, noise: list[Tensor] | None) -> LayerState:
        return self._start(self.truncate(self.mapping(z), truncation), noise)

    def _enter(self, index: int, state: LayerState) -> LayerState:
        """Add the layer's style ``s`` ``(N, C_in)``: its key is ``features · s``."""
        style = self.layer_module(self.layer_names[index]).modulation(state.carry["latent"][:, index])
        return LayerState(features=state.features, style=style, carry=state.carry)

    def _step(self, index: int, state: LayerState) -> LayerState:
        latent = state.carry["latent"]  # (N, n_latent, D): layer j reads w_j, its to-RGB w_{j+1}
        noise = state.carry["noise"]
        if index >= len(noise):
            raise ValueError(f"`noise` covers only the first {len(noise)} layers; layer{index + 1} needs its own.")
        x = self._styled_conv(index)(state.features, latent[:, index], noise[index])
        skip = state.carry["skip"]
        if index % 2 == 0:  # layer1, layer3, …: the last conv at its resolution feeds a to-RGB
            to_rgb = self.to_rgb1 if index == 0 else self.to_rgbs[index // 2 - 1]
            skip = to_rgb(x, latent[:, index + 1], skip)  # (N, 3, h, w)
        return LayerState(features=x, carry={**state.carry, "skip": skip})  # a new dict: states are reusable

    def _finish(self, state: LayerState) -> Tensor:
        return state.carry["skip"]  # (N, 3, H, W), not clamped (as rosinality)

    def synthesis(self, latent: Tensor, *, noise: list[Tensor] | None = None) -> Tensor:
        """Images from ``w`` ``(N, D)`` or ``w+`` ``(N, n_latent, D)``, skipping mapping and truncation."""
        state = self._start(latent, noise)
        for index in range(self.config.num_layers):
            state = self._step(index, state)
        return self._finish(state)


def _blur_taps(kernel: Tensor | None) -> list[int]:
    """Recover the integer 1-D taps of a stored 2-D blur kernel (``outer(k, k) / sum² · 4``)."""
    if kernel is None or kernel.ndim != 2 or kernel.shape[0] != kernel.shape[1] or kernel.is_meta:
        return [1, 3, 3, 1]
    kernel = kernel.detach().to("cpu", torch.float64)
    row = kernel.sum(1)
    if row.min() <= 0:
        raise CheckpointError(f"`convs.0.conv.blur.kernel` is not a positive separable FIR kernel: {kernel.tolist()}.")
    taps = [round(t) for t in (row / row.min()).tolist()]
    if not torch.allclose(make_kernel(taps).double() * 4, kernel, rtol=1e-4, atol=1e-6):
        raise CheckpointError(
            "`convs.0.conv.blur.kernel` is not the outer product of integer taps; give `blur_kernel` explicitly."
        )
    return taps
