"""Fixtures shared by many test files (imported into conftest.py)."""

from __future__ import annotations

import os

import pytest
import torch

from gan_rewrite.models import (
    DCGANConfig,
    DCGANGenerator,
    ProGANConfig,
    ProGANGenerator,
    StyleGAN2Config,
    StyleGAN2Generator,
)

TINY_ARCHITECTURES = {
    "dcgan": lambda: DCGANGenerator(DCGANConfig(resolution=16, ngf=8, z_dim=8)),
    "progan": lambda: ProGANGenerator(
        ProGANConfig(resolution=16, z_dim=8, channels=[12, 12, 10, 10, 8, 8], default_layer="layer4")
    ),
    "stylegan2": lambda: StyleGAN2Generator(
        StyleGAN2Config(resolution=16, z_dim=12, n_mlp=2, channels={"4": 12, "8": 10, "16": 8})
    ),
}
"""One tiny random generator per architecture (16×16 images, 8–12 channels): call an entry to build it."""


@pytest.fixture(scope="session", autouse=True)
def default_device() -> None:
    """Exact comparisons need one device: CPU unless the run asks for another (GAN_REWRITE_DEVICE=cuda)."""
    mp = pytest.MonkeyPatch()
    mp.setenv("GAN_REWRITE_DEVICE", os.environ.get("GAN_REWRITE_DEVICE") or "cpu")
    yield
    mp.undo()


@pytest.fixture(scope="session", autouse=True)
def isolated_model_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Converted known models go to a per-run folder, never the user's cache."""
    mp = pytest.MonkeyPatch()
    mp.setenv("GAN_REWRITE_HOME", str(tmp_path_factory.mktemp("gan_rewrite_home")))
    yield
    mp.undo()


@pytest.fixture(scope="session", autouse=True)
def no_real_hub() -> None:
    """No test may reach huggingface.co: the client runs offline unless a test uses the loopback `hub` fixture."""
    import huggingface_hub.constants as constants

    mp = pytest.MonkeyPatch()
    mp.setenv("HF_HUB_OFFLINE", "1")
    mp.setattr(constants, "HF_HUB_OFFLINE", True)
    yield
    mp.undo()


@pytest.fixture(scope="session")
def dcgan_faces(isolated_model_cache: None) -> DCGANGenerator:
    """The embedded pretrained DCGAN (converted on first use from the gan-face-generate wheel)."""
    import gan_rewrite as gr

    return gr.load_generator("dcgan-faces-64", device="cpu")


@pytest.fixture
def tiny_dcgan() -> DCGANGenerator:
    """A 16×16 DCGAN with 8 channels and non-trivial BatchNorm statistics, for fast algebra."""
    torch.manual_seed(0)
    generator = DCGANGenerator(DCGANConfig(resolution=16, ngf=8, z_dim=8))
    for module in generator.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 1.5)
    return generator.eval()
