"""Turning image tensors into pictures: grids and PNG files (no torchvision needed)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .atomic import atomic_path


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """``(N, 3, H, W)`` floats in [-1, 1] → ``(N, H, W, 3)`` uint8."""
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images must have shape (N, 3, H, W), got {tuple(images.shape)}.")
    scaled = ((images.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round()
    return scaled.to(torch.uint8).permute(0, 2, 3, 1).numpy()


def image_grid(images: torch.Tensor, *, nrow: int | None = None, padding: int = 2) -> Image.Image:
    """Tile ``(N, 3, H, W)`` images in [-1, 1] into one RGB picture, ``nrow`` per row (default ≈ √N)."""
    pixels = to_uint8(images)
    count, height, width, _ = pixels.shape
    nrow = nrow or math.ceil(math.sqrt(count))
    rows = math.ceil(count / nrow)
    canvas = np.zeros((rows * (height + padding) + padding, nrow * (width + padding) + padding, 3), np.uint8)
    for i, tile in enumerate(pixels):
        top, left = padding + (i // nrow) * (height + padding), padding + (i % nrow) * (width + padding)
        canvas[top : top + height, left : left + width] = tile
    return Image.fromarray(canvas)


def image_format(path: str | Path) -> str:
    """PIL's format name for a file name's suffix; ValueError when the suffix is not an image format."""
    fmt = Image.registered_extensions().get(Path(path).suffix.lower())
    if fmt is None:
        raise ValueError(f"cannot tell the image format of {str(path)!r}; use a .png or .jpg suffix.")
    return fmt


def save_image(picture: Image.Image, path: str | Path) -> Path:
    """Save a picture atomically; the format follows the suffix (.png, .jpg, .webp)."""
    fmt = image_format(path)
    with atomic_path(path) as tmp:
        picture.save(tmp, format=fmt)
    return Path(path)
