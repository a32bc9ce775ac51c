"""Deterministic random weights in rosinality/stylegan2-pytorch's ``Generator`` layout, for tests.

The key/shape table is written from rosinality's constructor, independently of ``gan_rewrite``'s model, so
tests can check the model's layout against it. Weights are filled by :func:`rosinality_random_state_dict`:
every key in sorted order from one seeded CPU ``torch.Generator``, as ``offset + scale · randn(shape)``
with ``(scale, offset)`` from :data:`FILL` (first matching suffix); blur / upsample kernels get their true
values (rosinality's ``make_kernel(k) · 4``) and draw nothing. Scales mimic rosinality's initialisation so
that images vary with ``z`` (the mapping weights are stored as ``randn / lr_mlp``).
"""

from __future__ import annotations

import hashlib
import math

import torch

# (key suffix, scale, offset); the first match wins, anything else is scale 1, offset 0.
FILL: list[tuple[str, float, float]] = [
    ("modulation.bias", 0.2, 1.0),  # styles near 1, as rosinality's bias_init=1
    ("noise.weight", 0.1, 0.0),
    ("activate.bias", 0.1, 0.0),
    (".bias", 0.1, 0.0),  # to_rgb biases; mapping biases (scaled by lr_mlp at run time)
]
MAPPING_WEIGHT_SCALE = 100.0  # style.N.weight: randn / lr_mlp with lr_mlp = 0.01
BLUR_KERNEL = [1, 3, 3, 1]


def rosinality_channels(size: int, channel_multiplier: int) -> dict[int, int]:
    table = {4: 512, 8: 512, 16: 512, 32: 512, 64: 256, 128: 128, 256: 64, 512: 32, 1024: 16}
    return {r: c * (channel_multiplier if r >= 64 else 1) for r, c in table.items() if r <= size}


def rosinality_shapes(
    size: int, channel_multiplier: int = 2, style_dim: int = 512, n_mlp: int = 8, channels: dict[int, int] | None = None
) -> dict[str, tuple[int, ...]]:
    """Every key of ``Generator(size, style_dim, n_mlp, channel_multiplier).state_dict()`` and its shape."""
    ch = channels or rosinality_channels(size, channel_multiplier)
    shapes: dict[str, tuple[int, ...]] = {}
    for i in range(1, n_mlp + 1):
        shapes[f"style.{i}.weight"] = (style_dim, style_dim)
        shapes[f"style.{i}.bias"] = (style_dim,)

    def modconv(prefix: str, c_in: int, c_out: int, k: int) -> None:
        shapes[f"{prefix}.weight"] = (1, c_out, c_in, k, k)
        shapes[f"{prefix}.modulation.weight"] = (c_in, style_dim)
        shapes[f"{prefix}.modulation.bias"] = (c_in,)

    def styled(prefix: str, c_in: int, c_out: int, upsample: bool) -> None:
        modconv(f"{prefix}.conv", c_in, c_out, 3)
        if upsample:
            shapes[f"{prefix}.conv.blur.kernel"] = (4, 4)
        shapes[f"{prefix}.noise.weight"] = (1,)
        shapes[f"{prefix}.activate.bias"] = (c_out,)

    shapes["input.input"] = (1, ch[4], 4, 4)
    styled("conv1", ch[4], ch[4], upsample=False)
    modconv("to_rgb1.conv", ch[4], 3, 1)
    shapes["to_rgb1.bias"] = (1, 3, 1, 1)
    c_in, log_size = ch[4], int(math.log2(size))
    for block, log_res in enumerate(range(3, log_size + 1)):
        c_out = ch[2**log_res]
        styled(f"convs.{2 * block}", c_in, c_out, upsample=True)
        styled(f"convs.{2 * block + 1}", c_out, c_out, upsample=False)
        modconv(f"to_rgbs.{block}.conv", c_out, 3, 1)
        shapes[f"to_rgbs.{block}.bias"] = (1, 3, 1, 1)
        shapes[f"to_rgbs.{block}.upsample.kernel"] = (4, 4)
        c_in = c_out
    for i in range((log_size - 2) * 2 + 1):
        side = 2 ** ((i + 5) // 2)
        shapes[f"noises.noise_{i}"] = (1, 1, side, side)
    return shapes


def blur_kernel_2d() -> torch.Tensor:
    """rosinality's stored upsampling kernel: ``outer(k, k) / sum(k)² · 4`` for k = [1, 3, 3, 1]."""
    k = torch.tensor(BLUR_KERNEL, dtype=torch.float32)
    k = k[None, :] * k[:, None]
    return k / k.sum() * 4


def rosinality_random_state_dict(
    size: int,
    channel_multiplier: int = 2,
    style_dim: int = 512,
    n_mlp: int = 8,
    seed: int = 0,
    channels: dict[int, int] | None = None,
) -> dict[str, torch.Tensor]:
    """Random float32 weights in rosinality's layout, the same for the same arguments (see the module doc)."""
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in sorted(rosinality_shapes(size, channel_multiplier, style_dim, n_mlp, channels).items()):
        if key.endswith("kernel"):
            state[key] = blur_kernel_2d()
            continue
        scale, offset = next(((s, o) for suffix, s, o in FILL if key.endswith(suffix)), (1.0, 0.0))
        if key.startswith("style.") and key.endswith(".weight"):
            scale = MAPPING_WEIGHT_SCALE
        state[key] = torch.randn(shape, generator=generator) * scale + offset
    return state


def state_dict_sha256(state: dict[str, torch.Tensor]) -> str:
    """SHA-256 over sorted keys, shapes and float32 little-endian bytes."""
    digest = hashlib.sha256()
    for key in sorted(state):
        tensor = state[key].detach().to("cpu", torch.float32).contiguous()
        digest.update(f"{key}:{tuple(tensor.shape)};".encode())
        digest.update(tensor.numpy().astype("<f4").tobytes())
    return digest.hexdigest()
