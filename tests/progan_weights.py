"""Deterministic random weights in the GAN-dissection ProGAN checkpoint layout (real checkpoints cannot be
downloaded here). Written from the layout, not from our model, so tests can check the model against it."""

from __future__ import annotations

import math

import torch


def gandissect_channels(resolution: int, *, fmap_base: int = 8192, fmap_max: int = 512) -> list[int]:
    """Output channels of ``layer1`` ... ``layerK``: Karras' ``min(fmap_base / 2**stage, fmap_max)``, two
    layers per resolution 4, 8, ..., ``resolution``. The defaults give the LSUN / CelebA-HQ models."""
    sizes = [4 * 2**s for s in range(int(math.log2(resolution)) - 1)]
    return [min(2 * fmap_base // size, fmap_max) for size in sizes for _ in range(2)]


def gandissect_random_state_dict(
    resolution: int = 256,
    seed: int = 0,
    *,
    fmap_base: int = 8192,
    fmap_max: int = 512,
    z_dim: int | None = None,
) -> dict[str, torch.Tensor]:
    """A state dict with exactly the keys and shapes of a GAN-dissection ``proggan_*.pth`` file.

    Keys, in order: ``layerN.conv.weight`` ``(C_out, C_in, k, k)`` (k = 4 for ``layer1``, else 3) and
    ``layerN.wscale.b`` ``(C_out,)`` for every layer, then ``output_RxR.conv.weight`` ``(3, C_last, 1, 1)``
    and ``output_RxR.wscale.b`` ``(3,)``. Weights are N(0, 1) as equalised-learning-rate weights are stored;
    biases N(0, 0.1²). The same arguments always give the same tensors.

    Args:
        resolution: image side, a power of two >= 8.
        seed: seed of the CPU generator the tensors are drawn from.
        fmap_base / fmap_max: channel schedule (make them small for fast tests).
        z_dim: latent size; defaults to ``fmap_max`` (512 for the real models).
    """
    generator = torch.Generator().manual_seed(seed)
    channels = gandissect_channels(resolution, fmap_base=fmap_base, fmap_max=fmap_max)
    c_in = fmap_max if z_dim is None else z_dim
    state: dict[str, torch.Tensor] = {}
    for j, c_out in enumerate(channels):
        kernel = 4 if j == 0 else 3
        state[f"layer{j + 1}.conv.weight"] = torch.randn(c_out, c_in, kernel, kernel, generator=generator)
        state[f"layer{j + 1}.wscale.b"] = 0.1 * torch.randn(c_out, generator=generator)
        c_in = c_out
    out = f"output_{resolution}x{resolution}"
    state[f"{out}.conv.weight"] = torch.randn(3, c_in, 1, 1, generator=generator)
    state[f"{out}.wscale.b"] = 0.1 * torch.randn(3, generator=generator)
    return state
