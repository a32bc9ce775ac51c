"""PLACEHOLDER: being written by a helper."""
from dataclasses import dataclass
from typing import ClassVar

from .base import GANGenerator, GeneratorConfig


@dataclass
class ProGANConfig(GeneratorConfig):
    architecture: ClassVar[str] = "progan"
    class_name: ClassVar[str] = "ProGANGenerator"


class ProGANGenerator(GANGenerator):
    config_class = ProGANConfig
