"""Masks and a small rule spec shared by the tests that paint on the tiny 16px DCGAN."""

from __future__ import annotations

from typing import Any

import torch

from gan_rewrite.rewrite.context import encode_mask


def box(size: int, top: int, left: int, bottom: int, right: int) -> torch.Tensor:
    """A ``size``×``size`` float mask with ones in rows ``top:bottom`` and columns ``left:right``."""
    mask = torch.zeros(size, size)
    mask[top:bottom, left:right] = 1.0
    return mask


def tiny_copy_paste_spec(*, stats_n: int, layer: str = "layer2") -> dict[str, Any]:
    """A valid copy/paste spec for the 16px ``tiny_dcgan``: seed 0's top-left patch onto seed 1."""
    return {
        "version": 1,
        "layer": layer,
        "truncation": None,
        "context": [{"seed": 1, "mask": encode_mask(box(16, 8, 8, 14, 14))}],
        "copy": {"seed": 0, "mask": encode_mask(box(16, 2, 2, 8, 8))},
        "paste": {"seed": 1, "mask": encode_mask(box(16, 8, 8, 14, 14))},
        "region": "mask",
        "stats": {"n": stats_n, "seed": 0, "truncation": None},
        "rank": 1,
        "method": "closed_form",
        "solver": {},
    }
