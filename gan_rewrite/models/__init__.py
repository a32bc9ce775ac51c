"""Generator architectures, each in its published state-dict layout, looked up by ``architecture`` name."""

from __future__ import annotations

from ..errors import ConfigError
from .base import GANGenerator, GeneratorConfig, LayerState, pick_device
from .dcgan import DCGANConfig, DCGANGenerator
from .progan import ProGANConfig, ProGANGenerator
from .stylegan2 import StyleGAN2Config, StyleGAN2Generator

ARCHITECTURES: dict[str, type[GANGenerator]] = {
    cls.config_class.architecture: cls for cls in (DCGANGenerator, ProGANGenerator, StyleGAN2Generator)
}


def generator_class(architecture: str) -> type[GANGenerator]:
    """The generator class for an ``architecture`` name. Raises ConfigError listing the known ones."""
    try:
        return ARCHITECTURES[architecture]
    except KeyError:
        raise ConfigError(
            f"unknown architecture {architecture!r}; known architectures are {sorted(ARCHITECTURES)}."
        ) from None


__all__ = [
    "ARCHITECTURES", "DCGANConfig", "DCGANGenerator", "GANGenerator", "GeneratorConfig", "LayerState",
    "ProGANConfig", "ProGANGenerator", "StyleGAN2Config", "StyleGAN2Generator", "generator_class",
    "pick_device",
]
