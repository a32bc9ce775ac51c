"""ProGAN (Karras et al. 2018), in the GAN-dissection checkpoint layout (``layer1.conv.weight``, ...).

The network is a chain of equalised-learning-rate convolutions. For a 256×256 model (14 layers)::

    z (N, 512) ─ pixel-norm ─ layer1: 4×4 conv, padding 3, on the 1×1 latent → 4×4
                 pixel-norm ─ layer2: 3×3 conv                                 4×4
    nearest ×2 · pixel-norm ─ layer3: 3×3 conv                                 8×8
                 pixel-norm ─ layer4: 3×3 conv                                 8×8
                 ...           (odd layers from layer3 on double the resolution)
                 pixel-norm ─ output_256x256: 1×1 conv to RGB, then clamped to [-1, 1]

Every conv has no bias of its own; ``wscale`` multiplies its output by the He constant
``sqrt(2) / k / sqrt(C_in)`` (``1 / sqrt(C_in)`` for the to-RGB conv) and adds the bias ``wscale.b``.
Hidden layers end in a leaky ReLU with slope 0.2. The scale is a plain float, not a buffer, so the state
dict holds exactly ``layerN.conv.weight``, ``layerN.wscale.b`` and ``output_RxR.conv.weight`` /
``output_RxR.wscale.b``, as the GAN-dissection ``.pth`` files do.

Named layers are ``layer1`` … ``layerK`` (K = 2·log2(resolution) − 2); ``layer_module`` returns the
``nn.Conv2d`` a rule edits. The to-RGB conv is not a named layer: its output is the image itself, three
channels, so a rule there could only remap colours, not teach the model a new rule about objects.

Split execution: ``state.features`` entering ``layerN`` is *exactly* the input of its conv. Pixel norm
and nearest upsampling act on each location independently (upsampling only copies locations), so they
commute; each step therefore ends by pixel-normalising its output and, when the next layer doubles the
resolution, upsampling it. The function is unchanged and no rewrite code ever has to upsample.

Truncation: pixel norm projects every latent onto the sphere of radius ``sqrt(z_dim)``, so scaling ``z``
itself would change nothing. We scale the *normalised* latent towards its mean, 0, instead — the input
of ``layer1``'s conv is ``truncation · pixel_norm(z)``: 1 is the original model, 0 gives one image.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import CheckpointError, ConfigError, short_repr
from .base import MAX_CHANNELS, GANGenerator, GeneratorConfig, LayerState

# Channels per layer of the GAN-dissection 256×256 LSUN models (Karras' fmap_base 8192, fmap_max 512):
# two layers per resolution 4, 8, 16, 32, 64, 128, 256.
_LSUN_256_CHANNELS = [512] * 8 + [256] * 2 + [128] * 2 + [64] * 2


def default_layer_for(resolution: int) -> str:
    """The second conv at 32×32 (or at half the resolution for models smaller than 64px).

    The rewriting paper's ProGAN experiments edit ``layer8`` of 256px models: its keys are 32×32, coarse
    enough that one rule covers whole objects (domes, trees) yet fine enough to place them, much as 16×16
    keys behaved best on the 64px DCGAN (a quarter of the image side; 32×32 is an eighth of 256px).
    """
    size = min(32, resolution // 2)
    return f"layer{2 * int(math.log2(size)) - 2}"


@dataclass
class ProGANConfig(GeneratorConfig):
    """ProGAN hyper-parameters: the resolution, the latent size and every layer's output channels.

    ``channels[j]`` is the number of output channels of ``layer{j+1}``; layer ``j+1`` reads
    ``channels[j-1]`` (``z_dim`` for ``layer1``) and the to-RGB conv reads ``channels[-1]``.
    """

    architecture: ClassVar[str] = "progan"
    class_name: ClassVar[str] = "ProGANGenerator"

    resolution: int = 256
    z_dim: int = 512
    default_layer: str = "layer8"
    channels: list[int] = field(default_factory=lambda: list(_LSUN_256_CHANNELS))

    @property
    def num_layers(self) -> int:
        return 2 * int(math.log2(self.resolution)) - 2

    def layer_names(self) -> list[str]:
        return [f"layer{j + 1}" for j in range(self.num_layers)]

    def validate(self) -> None:
        super().validate()
        if len(self.channels) != self.num_layers:
            raise ConfigError(
                f"config field `channels` must list {self.num_layers} layers for a {self.resolution}px ProGAN "
                f"(two per resolution from 4×4), got {len(self.channels)}: {short_repr(self.channels)}."
            )
        if any(not isinstance(c, int) or not 1 <= c <= MAX_CHANNELS for c in self.channels):
            raise ConfigError(
                f"config field `channels` must hold integers in [1, {MAX_CHANNELS}], got {short_repr(self.channels)}."
            )
        if self.default_layer not in self.layer_names():
            raise ConfigError(
                f"config field `default_layer` must be one of layer1..layer{self.num_layers}, "
                f"got {short_repr(self.default_layer)}."
            )


# ----- parts ----------------------------------------------------------------------------------------
def pixel_norm(x: Tensor) -> Tensor:
    """Scale each location's feature vector to unit root-mean-square over channels: ``(N, C, h, w)``."""
    return x / torch.sqrt(torch.mean(x**2, dim=1, keepdim=True) + 1e-8)


class WScale(nn.Module):
    """Equalised learning rate: ``x · scale + b`` with the fixed He constant ``scale = gain / sqrt(fan_in)``."""

    def __init__(self, channels: int, fan_in: int, gain: float) -> None:
        super().__init__()
        self.scale = gain / math.sqrt(fan_in)  # a constant, deliberately not saved in the state dict
        self.b = nn.Parameter(torch.zeros(channels))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.scale + self.b.view(1, -1, 1, 1)


class EqualizedConv(nn.Module):
    """``conv`` (no bias) then ``wscale``, then a leaky ReLU unless ``negative_slope`` is None.

    The input is expected already pixel-normalised (and upsampled): the generator prepares it, so that
    what enters this module is what its ``conv`` reads.
    """

    def __init__(
        self, c_in: int, c_out: int, kernel_size: int, padding: int, gain: float, negative_slope: float | None
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, kernel_size, 1, padding, bias=False)
        # GAN-dissection writes the He constant as gain sqrt(2)/k over sqrt(C_in): sqrt(2 / (C_in·k²)).
        self.wscale = WScale(c_out, c_in, gain)
        self.negative_slope = negative_slope

    def forward(self, x: Tensor) -> Tensor:
        x = self.wscale(self.conv(x))  # (N, C_out, h', w')
        return x if self.negative_slope is None else F.leaky_relu(x, self.negative_slope)


# ----- the generator --------------------------------------------------------------------------------
class ProGANGenerator(GANGenerator):
    """The GAN-dissection ProGAN generator with named layers and split execution."""

    config_class = ProGANConfig

    def __init__(self, config: ProGANConfig) -> None:
        super().__init__(config)
        c_in = config.z_dim
        for j, c_out in enumerate(config.channels):
            # layer1 maps the 1×1 latent to 4×4 with a 4×4 kernel and padding 3; the rest are 3×3 convs.
            kernel, padding = (4, 3) if j == 0 else (3, 1)
            block = EqualizedConv(c_in, c_out, kernel, padding, math.sqrt(2) / kernel, negative_slope=0.2)
            self.add_module(f"layer{j + 1}", block)
            c_in = c_out
        self.output_name = f"output_{config.resolution}x{config.resolution}"
        self.add_module(self.output_name, EqualizedConv(c_in, 3, 1, 0, 1.0, negative_slope=None))

    @classmethod
    def infer_config(cls, state_dict: dict[str, Tensor], **overrides: Any) -> ProGANConfig:
        """Read the resolution, latent size and channels off ``layerN.conv.weight`` and the to-RGB conv.

        Raises:
            CheckpointError: the keys or shapes are not those of a GAN-dissection ProGAN.
        """
        found = sorted(state_dict)[:8]
        weights = []
        while f"layer{len(weights) + 1}.conv.weight" in state_dict:
            weights.append(state_dict[f"layer{len(weights) + 1}.conv.weight"])
        if len(weights) < 2 or len(weights) % 2:
            hint = (
                " (old `features.N` names must be renamed to `layerN+1` first)"
                if any(k.startswith("features.") for k in state_dict)
                else ""
            )
            raise CheckpointError(
                "not a GAN-dissection ProGAN state dict: expected an even number (>= 2) of conv weights "
                f"`layer1.conv.weight`, `layer2.conv.weight`, ...; found {len(weights)} among keys {found}{hint}."
            )
        channels, c_in = [], int(weights[0].shape[1]) if weights[0].ndim == 4 else -1
        for j, weight in enumerate(weights):
            kernel = 4 if j == 0 else 3
            if weight.ndim != 4 or tuple(weight.shape[1:]) != (c_in, kernel, kernel):
                raise CheckpointError(
                    f"`layer{j + 1}.conv.weight` has shape {tuple(weight.shape)}; a ProGAN layer here reads "
                    f"{c_in} channels with a {kernel}×{kernel} kernel, so expected (C_out, {c_in}, {kernel}, {kernel})."
                )
            c_in = int(weight.shape[0])
            channels.append(c_in)
        resolution = 2 ** (len(weights) // 2 + 1)
        if overrides.get("resolution", resolution) != resolution:
            raise CheckpointError(
                f"the checkpoint has {len(weights)} layers, so it is {resolution}px, not the "
                f"`resolution` {overrides['resolution']!r} that was asked for."
            )
        out = f"output_{resolution}x{resolution}"
        rgb = state_dict.get(f"{out}.conv.weight")
        if rgb is None or tuple(rgb.shape) != (3, c_in, 1, 1):
            outputs = sorted({k.split(".")[0] for k in state_dict if k.startswith("output")})
            raise CheckpointError(
                f"a ProGAN with {len(weights)} layers is {resolution}px and needs the to-RGB conv "
                f"`{out}.conv.weight` of shape (3, {c_in}, 1, 1); found "
                f"{tuple(rgb.shape) if rgb is not None else 'no such key'} (output layers present: {outputs})."
            )
        config = ProGANConfig(
            resolution=resolution,
            z_dim=int(weights[0].shape[1]),
            channels=channels,
            default_layer=default_layer_for(resolution),
        )
        unknown = sorted(set(overrides) - {f.name for f in dataclasses.fields(ProGANConfig)})
        if unknown:
            raise ConfigError(f"unknown ProGAN config override(s) {unknown}.")
        config = dataclasses.replace(config, **overrides)
        config.validate()
        return config

    @property
    def layer_names(self) -> list[str]:
        return self.config.layer_names()

    def layer_module(self, layer: str) -> nn.Conv2d:
        self.layer_index(layer)  # raises LayerError for unknown names
        return self.get_submodule(layer).conv

    def _upsamples(self, index: int) -> bool:
        """Whether named layer ``index`` (0-based) doubles the resolution: layer3, layer5, ..."""
        return index >= 2 and index % 2 == 0

    def _prepare(self, z: Tensor, truncation: float, noise: list[Tensor] | None) -> LayerState:
        z = pixel_norm(z[:, :, None, None])  # (N, z_dim, 1, 1), each latent on the sphere of radius sqrt(z_dim)
        return LayerState(features=z * truncation)

    def _step(self, index: int, state: LayerState) -> LayerState:
        x = self.get_submodule(f"layer{index + 1}")(state.features)  # (N, C_index, h, w)
        x = pixel_norm(x)  # the next conv (or the to-RGB conv) reads normalised features
        if index + 1 < self.config.num_layers and self._upsamples(index + 1):
            x = F.interpolate(x, scale_factor=2, mode="nearest")  # (N, C_index, 2h, 2w)
        return LayerState(features=x)

    def _finish(self, state: LayerState) -> Tensor:
        rgb = self.get_submodule(self.output_name)(state.features)  # (N, 3, H, W)
        return rgb.clamp(-1.0, 1.0)  # GAN-dissection's Hardtanh
