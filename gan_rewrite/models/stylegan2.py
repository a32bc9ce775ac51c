"""PLACEHOLDER: being written by a helper."""
from dataclasses import dataclass
from typing import ClassVar

from .base import GANGenerator, GeneratorConfig


@dataclass
class StyleGAN2Config(GeneratorConfig):
    architecture: ClassVar[str] = "stylegan2"
    class_name: ClassVar[str] = "StyleGAN2Generator"


class StyleGAN2Generator(GANGenerator):
    config_class = StyleGAN2Config
