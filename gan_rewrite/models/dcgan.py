"""DCGAN, in the PyTorch DCGAN tutorial's layout (``main.0.weight``, ``main.1.running_mean``, ...).

One ``nn.Sequential`` called ``main``: for every layer a ConvTranspose2d, then BatchNorm2d + ReLU, except
the last layer, which is followed by Tanh. A 64×64 model has five layers: 1×1 → 4 → 8 → 16 → 32 → 64.
Named layer ``layerJ`` is the J-th ConvTranspose2d (``main.{3(J-1)}``); its key is the conv's input.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from ..errors import CheckpointError, ConfigError
from .base import GANGenerator, GeneratorConfig, LayerState


@dataclass
class DCGANConfig(GeneratorConfig):
    """DCGAN hyper-parameters (names as in the tutorial: ``nz`` is ``z_dim``, ``ngf``, ``nc``)."""

    architecture: ClassVar[str] = "dcgan"
    class_name: ClassVar[str] = "DCGANGenerator"

    resolution: int = 64
    z_dim: int = 100
    default_layer: str = "layer3"
    ngf: int = 64  # feature maps of the last hidden layer; earlier layers have ngf × 2, 4, 8...
    nc: int = 3  # image channels

    def validate(self) -> None:
        super().validate()
        if self.nc != 3:
            raise ConfigError(f"config field `nc` must be 3 (RGB images), got {self.nc}.")
        if not 1 <= self.ngf <= 4096:
            raise ConfigError(f"config field `ngf` must be in [1, 4096], got {self.ngf}.")

    @property
    def num_layers(self) -> int:
        return int(math.log2(self.resolution)) - 1

    def channels(self) -> list[int]:
        """Channels entering each layer, then the image channels: [nz, ngf*8, ngf*4, ngf*2, ngf, nc] at 64px."""
        hidden = [self.ngf * 2 ** (self.num_layers - 2 - j) for j in range(self.num_layers - 1)]
        return [self.z_dim, *hidden, self.nc]


class DCGANGenerator(GANGenerator):
    """The tutorial generator with named layers and split execution."""

    config_class = DCGANConfig

    def __init__(self, config: DCGANConfig) -> None:
        super().__init__(config)
        channels = config.channels()
        blocks: list[nn.Module] = []
        for j, (c_in, c_out) in enumerate(itertools.pairwise(channels)):
            first, last = j == 0, j == config.num_layers - 1
            # 1×1 → 4×4 for the first layer, then each layer doubles the resolution.
            stride, padding = (1, 0) if first else (2, 1)
            blocks.append(nn.ConvTranspose2d(c_in, c_out, 4, stride, padding, bias=False))
            blocks += [nn.Tanh()] if last else [nn.BatchNorm2d(c_out), nn.ReLU(True)]
        self.main = nn.Sequential(*blocks)

    @classmethod
    def infer_config(cls, state_dict: dict[str, torch.Tensor], **overrides: Any) -> DCGANConfig:
        """Read nz, ngf and the resolution off the ConvTranspose2d weights ``main.{3j}.weight``."""
        convs = []
        while f"main.{3 * len(convs)}.weight" in state_dict:
            convs.append(state_dict[f"main.{3 * len(convs)}.weight"])
        if len(convs) < 2 or any(w.ndim != 4 for w in convs):
            raise CheckpointError(
                "not a DCGAN (PyTorch tutorial layout) state dict: expected 4-d ConvTranspose2d weights "
                f"`main.0.weight`, `main.3.weight`, ...; found keys {sorted(state_dict)[:8]}."
            )
        config = DCGANConfig(
            resolution=2 ** (len(convs) + 1), z_dim=int(convs[0].shape[0]), ngf=int(convs[-1].shape[0]),
            nc=int(convs[-1].shape[1]),
        )
        for name, value in overrides.items():
            setattr(config, name, value)
        config.validate()
        return config

    @property
    def layer_names(self) -> list[str]:
        return [f"layer{j + 1}" for j in range(self.config.num_layers)]

    def layer_module(self, layer: str) -> nn.ConvTranspose2d:
        return self.main[3 * self.layer_index(layer)]

    def _prepare(self, z: Tensor, truncation: float, noise: list[Tensor] | None) -> LayerState:
        # z ~ N(0, I) has mean 0, so truncating towards the mean is a plain scaling.
        return LayerState(features=(z * truncation)[:, :, None, None])  # (N, nz, 1, 1)

    def _step(self, index: int, state: LayerState) -> LayerState:
        start = 3 * index
        x = self.main[start](state.features)  # (N, C_out, 2h, 2w)
        for module in self.main[start + 1 : start + 3 if index < self.config.num_layers - 1 else start + 2]:
            x = module(x)
        return LayerState(features=x)

    def _finish(self, state: LayerState) -> Tensor:
        return state.features  # (N, 3, H, W), already through Tanh
