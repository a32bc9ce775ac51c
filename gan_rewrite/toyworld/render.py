"""A procedural toy world of buildings, roofs, windows, trees and clouds, with an exact label for every pixel.

Real segmenters and real StyleGAN2 weights cannot be downloaded here, so edits on a StyleGAN2 are measured on
a world we draw ourselves: each scene is a function of its seed alone, drawn with tensor operations over the
whole batch (thousands of scenes a second on a CPU, more on a GPU), and returned with its label map.

A scene, back to front: a sky with a vertical gradient; up to three clouds; the ground below a horizon;
one to three buildings (wall colour from a palette, a roof that is a **dome**, a **spire** or a **flat**
slab, a grid of windows on most buildings, a door on the ground); up to three trees standing on the ground
in front. Windows occur only on walls, doors only at a wall's foot, trees only on the ground, clouds only in
the sky — the co-occurrences that make rules such as "spires → trees" or "remove clouds" meaningful.

Example:
    >>> images, labels = render_scenes([0, 1, 2])
    >>> images.shape, labels.shape, CLASSES[int(labels[0, 0, 0])]
    (torch.Size([3, 3, 64, 64]), torch.Size([3, 64, 64]), 'sky')
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import GanRewriteError

CLASSES: tuple[str, ...] = ("sky", "cloud", "ground", "wall", "window", "door", "dome", "spire", "flat-roof", "tree")
"""Label ``i`` of a label map is ``CLASSES[i]``."""
CLASS_INDEX = {name: index for index, name in enumerate(CLASSES)}
ROOF_KINDS: tuple[str, ...] = ("dome", "spire", "flat-roof")

MAX_BUILDINGS, MAX_TREES, MAX_CLOUDS = 3, 3, 3
# Uniform numbers each scene draws: a fixed count, so a scene depends on its seed alone.
_SCENE_U, _BUILDING_U, _TREE_U, _CLOUD_U = 6, 14, 6, 5
N_UNIFORMS = _SCENE_U + MAX_BUILDINGS * _BUILDING_U + MAX_TREES * _TREE_U + MAX_CLOUDS * _CLOUD_U

_WALLS = torch.tensor([[0.85, 0.78, 0.62], [0.62, 0.62, 0.66], [0.72, 0.36, 0.28], [0.93, 0.90, 0.84]])
_DOMES = torch.tensor([[0.90, 0.72, 0.20], [0.25, 0.62, 0.58], [0.30, 0.42, 0.80]])
_SPIRES = torch.tensor([[0.30, 0.22, 0.35], [0.20, 0.30, 0.45], [0.45, 0.20, 0.18]])
_FLATS = torch.tensor([[0.35, 0.33, 0.32], [0.50, 0.42, 0.38]])
_WINDOWS = torch.tensor([[0.15, 0.22, 0.40], [0.95, 0.85, 0.45]])
_DOOR = torch.tensor([0.40, 0.24, 0.12])
_TRUNK = torch.tensor([0.35, 0.22, 0.10])


class ToyWorldError(GanRewriteError, ValueError):
    """A toy-world request that cannot be drawn (bad seeds, size or count)."""


def scene_uniforms(seeds: Sequence[int]) -> Tensor:
    """The ``(N, N_UNIFORMS)`` numbers in [0, 1) that define each seed's scene (one Philox stream per seed)."""
    rows = []
    for seed in seeds:
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or not 0 <= int(seed) < 2**63:
            raise ToyWorldError(f"toy-world seeds must be integers in [0, 2**63), got {seed!r}.")
        rows.append(np.random.Generator(np.random.Philox(int(seed))).random(N_UNIFORMS, dtype=np.float32))
    return torch.from_numpy(np.stack(rows)) if rows else torch.zeros(0, N_UNIFORMS)


def render_scenes(seeds: Sequence[int], *, size: int = 64, device: str | torch.device = "cpu") -> tuple[Tensor, Tensor]:
    """Draw the scenes of ``seeds``.

    Args:
        seeds: One scene per seed; the same seed always gives the same scene, whatever the batch.
        size: Image side in pixels (the world is laid out on a 64-unit square and scaled).
        device: Where to draw.

    Returns:
        ``(images, labels)``: float ``(N, 3, size, size)`` in [-1, 1] and long ``(N, size, size)``
        indices into :data:`CLASSES`.
    """
    return render_uniforms(scene_uniforms(seeds).to(device), size=size)


def random_scenes(n: int, *, size: int = 64, device: str | torch.device = "cpu",
                  generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """``n`` scenes from fresh random numbers (for training; not tied to seeds)."""
    u = torch.rand(n, N_UNIFORMS, device=device, generator=generator)
    return render_uniforms(u, size=size)


def render_antialiased(u: Tensor, *, size: int = 64, factor: int = 2) -> tuple[Tensor, Tensor]:
    """:func:`render_uniforms` drawn ``factor``× larger and averaged down: soft edges, as a camera sees them.

    Each pixel's label is the class covering most of its ``factor²`` sub-pixels (ties to the lower index).
    """
    images, labels = render_uniforms(u, size=size * factor)
    images = F.avg_pool2d(images, factor)
    n = labels.shape[0]
    blocks = labels.view(n, size, factor, size, factor).permute(0, 1, 3, 2, 4).reshape(n, size, size, -1)
    counts = F.one_hot(blocks, len(CLASSES)).sum(3)  # (N, H, W, classes)
    return images, counts.argmax(-1)


def render_uniforms(u: Tensor, *, size: int = 64) -> tuple[Tensor, Tensor]:
    """Draw one scene per row of ``u`` ``(N, N_UNIFORMS)``: the vectorised painter behind :func:`render_scenes`."""
    if u.ndim != 2 or u.shape[1] != N_UNIFORMS:
        raise ToyWorldError(f"`u` must be (N, {N_UNIFORMS}), got {tuple(u.shape)}.")
    if not isinstance(size, int) or not 16 <= size <= 512:
        raise ToyWorldError(f"`size` must be an integer in 16…512, got {size!r}.")
    n, device = u.shape[0], u.device
    unit = 64.0 / size  # world units per pixel
    coords = (torch.arange(size, device=device, dtype=torch.float32) + 0.5) * unit
    y = coords.view(1, size, 1)  # (1, H, 1), world units 0…64 from the top
    x = coords.view(1, 1, size)  # (1, 1, W)
    image = torch.zeros(n, 3, size, size, device=device)
    labels = torch.zeros(n, size, size, dtype=torch.long, device=device)

    def paint(mask: Tensor, colour: Tensor, label: str) -> None:
        """Paint ``mask`` (N, H, W) with ``colour`` (N, 3) or (N, 3, H, W), and its label."""
        mask = mask.expand(n, size, size)
        if colour.ndim == 2:
            colour = colour[:, :, None, None]
        torch.where(mask[:, None], colour, image, out=image)
        labels.masked_fill_(mask, CLASS_INDEX[label])

    def col(u: Tensor, low: float, high: float) -> Tensor:
        return (low + (high - low) * u).view(n, 1, 1)

    def pick(palette: Tensor, u: Tensor) -> Tensor:
        palette = palette.to(device)
        return palette[(u * len(palette)).long().clamp(max=len(palette) - 1)]

    s = u[:, :_SCENE_U]
    horizon = col(s[:, 0], 40.0, 48.0)  # (N, 1, 1)
    # Sky: blue, lighter toward the horizon; its hue shifts a little per scene.
    sky_top = torch.stack([0.25 + 0.2 * s[:, 1], 0.45 + 0.2 * s[:, 1], 0.85 + 0.1 * s[:, 2]], 1)
    sky_low = torch.stack([0.70 + 0.2 * s[:, 1], 0.80 + 0.15 * s[:, 1], 0.95 + 0.05 * s[:, 2]], 1)
    t = (y / horizon).clamp(0, 1)[:, None]  # (N, 1, H, 1)
    paint(torch.ones(n, size, size, dtype=torch.bool, device=device),
          (sky_top[:, :, None, None] * (1 - t) + sky_low[:, :, None, None] * t).expand(n, 3, size, size), "sky")

    offset = _SCENE_U + MAX_BUILDINGS * _BUILDING_U + MAX_TREES * _TREE_U
    for k in range(MAX_CLOUDS):
        c = u[:, offset + k * _CLOUD_U: offset + (k + 1) * _CLOUD_U]
        present = (c[:, 0] < 0.45).view(n, 1, 1)
        cx, cy = col(c[:, 1], -4.0, 68.0), col(c[:, 2], 4.0, 20.0)
        rx, ry = col(c[:, 3], 5.0, 11.0), col(c[:, 3], 2.0, 4.5)
        puff = ((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2 < 1
        puff |= ((x - cx - 0.5 * rx) / (0.6 * rx)) ** 2 + ((y - cy + 0.8 * ry) / (0.8 * ry)) ** 2 < 1
        grey = 0.88 + 0.12 * c[:, 4]
        paint(present & puff & (y < horizon), torch.stack([grey, grey, grey + 0.02], 1).clamp(max=1), "cloud")

    ground = torch.stack([0.30 + 0.25 * s[:, 3], 0.50 + 0.15 * s[:, 4], 0.20 + 0.10 * s[:, 3]], 1)
    depth = ((y - horizon) / (64 - horizon)).clamp(0, 1)[:, None]  # darker toward the viewer
    paint(y >= horizon, ground[:, :, None, None] * (1 - 0.25 * depth).expand(n, 3, size, size), "ground")

    count = 1 + (s[:, 5] * MAX_BUILDINGS).long().clamp(max=MAX_BUILDINGS - 1)
    for k in range(MAX_BUILDINGS):
        b = u[:, _SCENE_U + k * _BUILDING_U: _SCENE_U + (k + 1) * _BUILDING_U]
        present = (k < count).view(n, 1, 1)
        # Slots spread the buildings across the width; each wobbles within its slot.
        centre = col(b[:, 0], 8.0 + 20.0 * k, 16.0 + 20.0 * k)
        half = col(b[:, 1], 5.0, 9.0)
        height = col(b[:, 2], 12.0, 26.0)
        foot = horizon + col(b[:, 3], 1.0, 6.0)
        top = foot - height
        wall = present & (x >= centre - half) & (x < centre + half) & (y >= top) & (y < foot)
        wall_colour = pick(_WALLS, b[:, 4]) * (0.9 + 0.2 * b[:, 5:6])
        shade = 1 - 0.12 * ((x - (centre - half)) / (2 * half)).clamp(0, 1)  # light from the left
        paint(wall, (wall_colour[:, :, None, None] * shade[:, None]).expand(n, 3, size, size), "wall")

        kind = (b[:, 6] * 3).long().clamp(max=2).view(n, 1, 1)
        # Dome: a half ellipse on the wall's top, as wide as the wall.
        dome = ((x - centre) / half) ** 2 + ((y - top) / (0.8 * half)) ** 2 < 1
        dome &= present & (kind == 0) & (y < top)
        paint(dome, pick(_DOMES, b[:, 7]), "dome")
        # Spire: a tall narrow triangle over the wall.
        spire_h = col(b[:, 8], 8.0, 15.0)
        spire_half = 0.7 * half * ((y - (top - spire_h)) / spire_h).clamp(0, 1)
        spire = present & (kind == 1) & (y < top) & (y >= top - spire_h) & ((x - centre).abs() < spire_half)
        paint(spire, pick(_SPIRES, b[:, 7]), "spire")
        # Flat roof: a slab a little wider than the wall.
        slab = present & (kind == 2) & (y < top) & (y >= top - 2.5) & ((x - centre).abs() < half + 1.5)
        paint(slab, pick(_FLATS, b[:, 7]), "flat-roof")

        # Windows: a grid on most walls, kept clear of the edges and of the door.
        has_windows = (b[:, 9] < 0.8).view(n, 1, 1)
        pitch_x, pitch_y = col(b[:, 10], 4.0, 6.0), col(b[:, 10], 5.0, 7.0)
        gx = torch.remainder(x - (centre - half) - 2.0, pitch_x)
        gy = torch.remainder(y - top - 2.5, pitch_y)
        inside = (x >= centre - half + 1.5) & (x < centre + half - 1.5) & (y >= top + 2.0) & (y < foot - 6.5)
        window = wall & has_windows & inside & (gx < 2.2) & (gy < 2.8)
        paint(window, pick(_WINDOWS, b[:, 11]), "window")
        door = wall & ((x - centre).abs() < 1.8) & (y >= foot - 5.5) & (b[:, 12] < 0.75).view(n, 1, 1)
        paint(door, _DOOR.to(device).expand(n, 3) * (0.8 + 0.4 * b[:, 13:14]), "door")

    offset = _SCENE_U + MAX_BUILDINGS * _BUILDING_U
    for k in range(MAX_TREES):
        t_u = u[:, offset + k * _TREE_U: offset + (k + 1) * _TREE_U]
        present = (t_u[:, 0] < 0.5).view(n, 1, 1)
        base = horizon + col(t_u[:, 1], 3.0, 16.0)
        cx = col(t_u[:, 2], 2.0, 62.0)
        radius = col(t_u[:, 3], 3.0, 6.0) * (0.8 + 0.4 * (base - horizon) / 16)
        trunk_h = 0.9 * radius
        trunk = present & ((x - cx).abs() < 0.25 * radius + 0.5) & (y < base) & (y >= base - trunk_h - radius)
        paint(trunk, _TRUNK.to(device).expand(n, 3), "tree")
        crown_y = base - trunk_h - radius
        crown = present & (((x - cx) ** 2 + ((y - crown_y) / 1.15) ** 2) < radius**2)
        green = torch.stack([0.10 + 0.15 * t_u[:, 4], 0.35 + 0.25 * t_u[:, 5], 0.10 + 0.1 * t_u[:, 4]], 1)
        light = 1.1 - 0.25 * ((y - (crown_y - radius)) / (2 * radius)).clamp(0, 1)  # lit from above
        paint(crown, (green[:, :, None, None] * light[:, None]).expand(n, 3, size, size), "tree")

    return image.clamp(0, 1) * 2 - 1, labels


def colour_labels(labels: Tensor) -> Tensor:
    """A label map as a picture ``(N, 3, H, W)`` in [-1, 1], one fixed colour per class (for grids)."""
    palette = torch.tensor(
        [[0.55, 0.75, 1.0], [1.0, 1.0, 1.0], [0.3, 0.6, 0.2], [0.85, 0.8, 0.6], [0.1, 0.1, 0.6],
         [0.5, 0.25, 0.1], [1.0, 0.8, 0.0], [0.6, 0.0, 0.6], [0.3, 0.3, 0.3], [0.0, 0.35, 0.0]],
        device=labels.device,
    )
    return palette[labels].permute(0, 3, 1, 2) * 2 - 1
