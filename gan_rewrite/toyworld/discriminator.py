"""The discriminator that trains the toy StyleGAN2: StyleGAN2's residual design in plain torch.

Only training needs it (the Hub format stores generators), so it lives beside the toy world rather than in
``models/``. Bottom-up, as rosinality's: equalised conv and linear layers, a residual block that halves the
resolution, then the network: from-RGB, blocks down to 4×4, minibatch standard deviation, a last conv and
two linear layers to one logit per image.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def lrelu(x: Tensor) -> Tensor:
    """Leaky ReLU (slope 0.2) with StyleGAN's gain √2, which keeps activations at unit scale."""
    return F.leaky_relu(x, 0.2) * math.sqrt(2)


class EqualConv2d(nn.Module):
    """A conv whose weight is stored at unit scale and multiplied by 1/√fan_in at run time (equalised LR)."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, *, bias: bool = True) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_channels, in_channels, kernel, kernel))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        self.scale = 1 / math.sqrt(in_channels * kernel * kernel)
        self.padding = kernel // 2

    def forward(self, x: Tensor) -> Tensor:
        return F.conv2d(x, self.weight * self.scale, self.bias, padding=self.padding)


class EqualLinear(nn.Module):
    """A linear layer with equalised learning rate."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_features, in_features))
        self.bias = nn.Parameter(torch.zeros(out_features))
        self.scale = 1 / math.sqrt(in_features)

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight * self.scale, self.bias)


class ResBlock(nn.Module):
    """Two 3×3 convs and a 2× average-pool, beside a pooled 1×1 skip; the sum is scaled by 1/√2."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv1 = EqualConv2d(in_channels, in_channels, 3)
        self.conv2 = EqualConv2d(in_channels, out_channels, 3)
        self.skip = EqualConv2d(in_channels, out_channels, 1, bias=False)

    def forward(self, x: Tensor) -> Tensor:  # (N, C_in, r, r) → (N, C_out, r/2, r/2)
        out = F.avg_pool2d(lrelu(self.conv2(lrelu(self.conv1(x)))), 2)
        return (out + F.avg_pool2d(self.skip(x), 2)) / math.sqrt(2)


class Discriminator(nn.Module):
    """Images ``(N, 3, R, R)`` in [-1, 1] → realness logits ``(N,)``.

    Args:
        resolution: Image side (a power of two ≥ 8).
        channels: Channels at each resolution, as the generator's table (keys are resolutions).
    """

    def __init__(self, resolution: int, channels: dict[int, int]) -> None:
        super().__init__()
        self.from_rgb = EqualConv2d(3, channels[resolution], 1)
        blocks, size = [], resolution
        while size > 4:
            blocks.append(ResBlock(channels[size], channels[size // 2]))
            size //= 2
        self.blocks = nn.Sequential(*blocks)
        top = channels[4]
        self.final_conv = EqualConv2d(top + 1, top, 3)
        self.final_linear = EqualLinear(top * 16, top)
        self.logit = EqualLinear(top, 1)

    def forward(self, images: Tensor) -> Tensor:
        x = self.blocks(lrelu(self.from_rgb(images)))  # (N, C_4, 4, 4)
        x = torch.cat([x, minibatch_stddev(x)], 1)  # (N, C_4 + 1, 4, 4)
        x = lrelu(self.final_conv(x)).flatten(1)
        return self.logit(lrelu(self.final_linear(x))).squeeze(1)


def minibatch_stddev(x: Tensor, group: int = 4) -> Tensor:
    """One extra feature map: the spread of features across a small group of images (fights mode collapse)."""
    n, _, h, w = x.shape
    group = min(group, n)
    while n % group:
        group -= 1
    spread = x.view(group, n // group, -1).var(0, unbiased=False).add(1e-8).sqrt().mean(1)  # (N / group,)
    return spread.repeat(group).view(n, 1, 1, 1).expand(n, 1, h, w)
