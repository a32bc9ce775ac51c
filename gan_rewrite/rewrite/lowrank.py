"""A layer's output as a function of ``Λ`` alone, for a fixed ``D``: the fast, exact inner loop of the optimiser.

Inside the span of ``D`` the weight is ``W₀ + ΛDᵀ`` (:mod:`~gan_rewrite.rewrite.layers`), so the linear part
of the layer splits into a constant and a term that only sees the ``r`` projected key channels::

    linear(K, W₀ + ΛDᵀ) = linear(K, W₀) + Σ_c Λ[o, c] · design[n, c]

Both pieces are computed once, on the window the loss reads; every optimiser step is then one small
matrix product (``O × r·kh·kw`` per location) instead of the layer's ``O × I × kh·kw`` convolution.
StyleGAN2's demodulation depends on the weight; its energy ``Σ_{i,t} (W s)²`` is a quadratic in ``Λ``
whose three coefficients are also precomputed::

    energy[n, o] = e₀[n, o] + 2 Σ_c Λ[o, c] m[n, o, c] + Σ_t Λ[o, :, t]ᵀ g[n] Λ[o, :, t]

So :meth:`LowRankLayer.output` is the layer's output for ``W₀ + delta_weight(D, Λ)`` — the same sums in
another order (float rounding only), and autograd gives the exact gradient with respect to ``Λ``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from .layers import LayerKind, ModulatedConv2dKind, _modconv_scale

if TYPE_CHECKING:
    from ..models.base import LayerState

Box = tuple[int, int, int, int]  # top, left, bottom, right (end exclusive), as crop.weight_box returns


@dataclass
class LowRankLayer:
    """The layer's output on a window as a function of ``Λ`` ``(O, r, kh, kw)``.

    Attributes:
        base: ``linear(K, W₀)`` on the window ``(N, O, h, w)``.
        design: ``(N, q, h, w)``, ``q = r·kh·kw`` (:meth:`LayerKind.design` on the window).
        bias: the module's bias ``(1, O, 1, 1)`` or ``None``.
        energy0, energy_cross, energy_gram: the demodulation energy's coefficients (``None`` without
            demodulation): ``(N, O)``, ``(N, O, q)``, ``(N, r, r)``.
    """

    base: Tensor
    design: Tensor
    bias: Tensor | None = None
    energy0: Tensor | None = None
    energy_cross: Tensor | None = None
    energy_gram: Tensor | None = None

    def output(self, lam: Tensor) -> Tensor:
        """The layer's output on the window for the weight ``W₀ + ΛDᵀ``."""
        out_ch = lam.shape[0]
        flat = lam.reshape(out_ch, -1).to(self.design.dtype)  # (O, q)
        out = self.base + torch.einsum("nqhw,oq->nohw", self.design, flat)
        if self.energy0 is not None:
            taps = lam.reshape(out_ch, lam.shape[1], -1).to(self.design.dtype)  # (O, r, t)
            energy = (
                self.energy0
                + 2 * torch.einsum("noq,oq->no", self.energy_cross, flat)
                + torch.einsum("ort,nrs,ost->no", taps, self.energy_gram, taps)
            )
            out = out * torch.rsqrt(energy + 1e-8)[:, :, None, None]
        if self.bias is not None:
            out = out + self.bias
        return out


@torch.no_grad()
def low_rank_layer(
    kind: LayerKind, module: nn.Module, state: LayerState, direction: Tensor, box: Box | None = None
) -> LowRankLayer:
    """Precompute :class:`LowRankLayer` for one goal's samples at the module's current weight ``W₀``.

    Args:
        kind: the layer kind (:func:`~gan_rewrite.rewrite.layers.layer_kind`).
        module: the layer; its current weight is ``W₀``.
        state: what enters the layer for the goal's samples.
        direction: ``D`` ``(I, r)``.
        box: the output window the loss reads (``None``: the whole map).
    """
    weight0 = module.weight.detach()
    keys = kind.keys(module, state).detach().to(weight0.dtype)
    direction = direction.to(weight0.device, weight0.dtype)
    base = kind.linear(module, keys, weight0)
    design = kind.design(module, keys, direction)
    if box is not None:
        top, left, bottom, right = box
        base = base[..., top:bottom, left:right]
        design = design[..., top:bottom, left:right]
    bias = getattr(module, "bias", None)
    bias = bias.detach().view(1, -1, 1, 1).to(base.dtype) if isinstance(bias, Tensor) else None
    parts: dict[str, Tensor] = {}
    if isinstance(kind, ModulatedConv2dKind) and getattr(module, "demodulate", True):
        w0 = kind.to_oihw(weight0).to(torch.float64)  # (O, I, k, k)
        out_ch, _, kh, kw = w0.shape
        d = direction.to(torch.float64)
        s2 = state.style.detach().to(torch.float64).pow(2) * _modconv_scale(module, weight0) ** 2  # (N, I)
        parts["energy0"] = torch.einsum("oi,ni->no", w0.pow(2).sum((2, 3)), s2)
        cross = torch.einsum("oiab,ir,ni->norab", w0, d, s2)  # (N, O, r, k, k)
        parts["energy_cross"] = cross.reshape(cross.shape[0], out_ch, -1)
        parts["energy_gram"] = torch.einsum("ir,is,ni->nrs", d, d, s2)
        parts = {name: value.to(base.dtype) for name, value in parts.items()}
    return LowRankLayer(base=base.contiguous(), design=design.contiguous(), bias=bias, **parts)
