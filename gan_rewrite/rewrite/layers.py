"""The one place that knows each layer kind's weight layout: where keys are read, how the layer's output
depends on its weight, and how a per-tap update ``ΔW_t = Λ_t Dᵀ`` maps into the module's ``weight``.

Every rewritable layer is, as a function of its weight, linear up to a per-sample, per-channel gain::

    output(W) = gain ⊙ linear(keys, W) + offset

* ``conv_transpose2d`` (DCGAN): weight ``(I, O, kh, kw)``; each input location writes a kh×kw patch.
* ``conv2d`` (ProGAN): weight ``(O, I, kh, kw)``; each output location reads a kh×kw window of keys.
* ``modulated_conv2d`` (StyleGAN2): weight ``(1, O, I, k, k)``; keys are ``x·s`` (input times style) and
  the gain is the demodulation, recomputed from the weight as the architecture does.

In all three, tap ``t = (a, b)`` of the kernel holds an ``O×I`` matrix ``W_t``. A rule changes every tap
within the same ``r``-dimensional key subspace: ``ΔW_t = Λ_t Dᵀ`` with ``D`` ``(I, r)`` shared and
``Λ`` ``(O, r, kh, kw)``. Keys ``k`` with ``Dᵀk = 0`` are therefore left exactly alone.

Because ``linear`` is linear in the weight, the change of output caused by ``Λ`` is the same layer
operation applied to the projected keys ``P = Dᵀ K`` (``r`` channels) with ``Λ`` as the weight, which is
how :meth:`LayerKind.design` builds the least-squares design matrix without unfolding anything.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import LayerError

if TYPE_CHECKING:  # models/base.py imports the rule machinery, which imports this module
    from ..models.base import LayerState


class LayerKind:
    """How one kind of layer stores its weight and maps keys to outputs.

    Subclasses set ``layout`` (the ``weight_layout`` string written into rule files) and implement
    ``to_oihw`` / ``from_oihw`` (layout ↔ the standard ``(O, I, kh, kw)``) and ``linear``.
    """

    layout: ClassVar[str] = ""
    description: ClassVar[str] = ""

    # ----- layout ------------------------------------------------------------------------------
    def to_oihw(self, weight: Tensor) -> Tensor:
        """View a weight in this layout as ``(O, I, kh, kw)``."""
        raise NotImplementedError

    def from_oihw(self, weight: Tensor) -> Tensor:
        """Turn an ``(O, I, kh, kw)`` tensor into this layout."""
        raise NotImplementedError

    def shape(self, weight: Tensor) -> tuple[int, int, int, int]:
        """``(O, I, kh, kw)`` of a weight in this layout."""
        o, i, kh, kw = self.to_oihw(weight).shape
        return int(o), int(i), int(kh), int(kw)

    def delta_weight(self, direction: Tensor, lam: Tensor) -> Tensor:
        """``ΔW_t = Λ_t Dᵀ`` for every tap, in this layout.

        Args:
            direction: ``D`` ``(I, r)``.
            lam: ``Λ`` ``(O, r, kh, kw)``.

        Returns:
            A tensor shaped like the module's weight (dtype of the inputs).
        """
        return self.from_oihw(torch.einsum("ir,orab->oiab", direction, lam))

    def lambda_from_delta(self, delta: Tensor, direction: Tensor) -> Tensor:
        """``Λ_t = ΔW_t D`` per tap: the coordinates of ``ΔW`` in the span of an orthonormal ``D``.

        Returns:
            ``Λ`` ``(O, r, kh, kw)``; ``delta_weight(D, Λ)`` is the projection of ``delta`` onto span ``D``.
        """
        return torch.einsum("oiab,ir->orab", self.to_oihw(delta), direction)

    # ----- computation -------------------------------------------------------------------------
    def keys(self, module: nn.Module, state: LayerState) -> Tensor:
        """The key map ``(N, I, h, w)`` read at every input location of the layer."""
        return state.features

    def linear(self, module: nn.Module, keys: Tensor, weight: Tensor) -> Tensor:
        """The part of the layer that is linear in the weight: ``(N, C, h, w)`` keys → ``(N, O', H, W)``.

        ``keys`` may have any number ``C`` of channels as long as ``weight`` (in this layout) matches it.
        """
        raise NotImplementedError

    def gain(self, module: nn.Module, state: LayerState, weight: Tensor) -> Tensor | float:
        """Per-sample, per-channel factor applied after ``linear`` (StyleGAN2's demodulation), else 1."""
        return 1.0

    def output(self, module: nn.Module, state: LayerState, weight: Tensor | None = None) -> Tensor:
        """The layer's output ``(N, O, H, W)`` for ``weight`` (default: the module's current weight)."""
        weight = module.weight if weight is None else weight
        out = self.gain(module, state, weight) * self.linear(module, self.keys(module, state), weight)
        bias = getattr(module, "bias", None)
        if isinstance(bias, Tensor):
            out = out + bias.view(1, -1, 1, 1)
        return out

    def design(self, module: nn.Module, keys: Tensor, direction: Tensor) -> Tensor:
        """Design columns: the output change per unit of each ``Λ`` entry, shared by all output channels.

        ``linear(K, delta_weight(D, Λ))[n, o] == Σ_c Λ.reshape(O, -1)[o, c] · design[n, c]``.

        Args:
            keys: ``(N, I, h, w)``.
            direction: ``D`` ``(I, r)``.

        Returns:
            ``(N, r·kh·kw, H, W)``.
        """
        kh, kw = _taps(module, self)
        rank = direction.shape[1]
        q = rank * kh * kw
        projected = torch.einsum("nihw,ir->nrhw", keys, direction.to(keys.device, keys.dtype))  # (N, r, h, w)
        basis = torch.eye(q, dtype=keys.dtype, device=keys.device).reshape(q, rank, kh, kw)
        return self.linear(module, projected, self.from_oihw(basis))


def _taps(module: nn.Module, kind: LayerKind) -> tuple[int, int]:
    _, _, kh, kw = kind.shape(module.weight)
    return kh, kw


class ConvTranspose2dKind(LayerKind):
    """``nn.ConvTranspose2d`` (DCGAN): weight ``(I, O, kh, kw)``; each key writes a kh×kw output patch."""

    layout = "conv_transpose2d"
    description = "ConvTranspose2d weight (I, O, kh, kw)"

    def to_oihw(self, weight: Tensor) -> Tensor:
        return weight.permute(1, 0, 2, 3)

    def from_oihw(self, weight: Tensor) -> Tensor:
        return weight.permute(1, 0, 2, 3).contiguous()

    def linear(self, module: nn.Module, keys: Tensor, weight: Tensor) -> Tensor:
        return F.conv_transpose2d(
            keys,
            weight.to(keys.dtype),
            None,
            module.stride,
            module.padding,
            module.output_padding,
            1,
            module.dilation,
        )


class Conv2dKind(LayerKind):
    """``nn.Conv2d`` (ProGAN): weight ``(O, I, kh, kw)``; each output reads a kh×kw window of keys."""

    layout = "conv2d"
    description = "Conv2d weight (O, I, kh, kw)"

    def to_oihw(self, weight: Tensor) -> Tensor:
        return weight

    def from_oihw(self, weight: Tensor) -> Tensor:
        return weight.contiguous()

    def linear(self, module: nn.Module, keys: Tensor, weight: Tensor) -> Tensor:
        return F.conv2d(keys, weight.to(keys.dtype), None, module.stride, module.padding, module.dilation)


class ModulatedConv2dKind(LayerKind):
    """StyleGAN2's modulated convolution (rosinality layout): weight ``(1, O, I, k, k)``.

    The key at a location is ``x·s`` (input times the sample's style), the shared weight is ``W`` and the
    output is ``demod(W, s) ⊙ conv(scale · x·s, W)``; the upsampling variant is a stride-2 transposed
    convolution followed by the module's blur, exactly as the module runs it. Demodulation is the gain.
    """

    layout = "modulated_conv2d"
    description = "StyleGAN2 modulated conv weight (1, O, I, k, k)"

    def to_oihw(self, weight: Tensor) -> Tensor:
        return weight[0]

    def from_oihw(self, weight: Tensor) -> Tensor:
        return weight.unsqueeze(0).contiguous()

    def keys(self, module: nn.Module, state: LayerState) -> Tensor:
        if state.style is None:
            raise LayerError("a modulated conv layer needs `LayerState.style`; this state has none.")
        return state.features * state.style[:, :, None, None]  # (N, I, h, w)

    def linear(self, module: nn.Module, keys: Tensor, weight: Tensor) -> Tensor:
        w = self.to_oihw(weight).to(keys.dtype) * _modconv_scale(module, weight)  # (O, C, k, k)
        if getattr(module, "upsample", False):
            out = F.conv_transpose2d(keys, w.transpose(0, 1), None, stride=2, padding=0)
            return module.blur(out)
        if getattr(module, "downsample", False):
            raise LayerError("downsampling modulated convs (discriminator side) cannot be rewritten.")
        return F.conv2d(keys, w, None, padding=int(getattr(module, "padding", w.shape[-1] // 2)))

    def gain(self, module: nn.Module, state: LayerState, weight: Tensor) -> Tensor | float:
        if not getattr(module, "demodulate", True):
            return 1.0
        w = self.to_oihw(weight) * _modconv_scale(module, weight)  # (O, I, k, k)
        style = state.style.to(w.dtype)  # (N, I)
        # Σ_{i,a,b} (w[o,i,a,b] s_i)² per sample and output channel.
        energy = torch.einsum("oi,ni->no", w.pow(2).sum((2, 3)), style.pow(2))
        return torch.rsqrt(energy + 1e-8)[:, :, None, None]  # (N, O, 1, 1)


def _modconv_scale(module: nn.Module, weight: Tensor) -> float:
    scale = getattr(module, "scale", None)
    if scale is None:
        _, fan_in, k, _ = weight[0].shape
        return 1.0 / math.sqrt(fan_in * k * k)
    return float(scale)


LAYER_KINDS: dict[str, type[LayerKind]] = {
    kind.layout: kind for kind in (ConvTranspose2dKind, Conv2dKind, ModulatedConv2dKind)
}


def kind_for_layout(layout: str) -> LayerKind:
    """The :class:`LayerKind` for a ``weight_layout`` string. Raises LayerError naming the known ones."""
    try:
        return LAYER_KINDS[layout]()
    except KeyError:
        raise LayerError(f"unknown weight layout {layout!r}; known layouts are {sorted(LAYER_KINDS)}.") from None


def layer_kind(module: nn.Module) -> LayerKind:
    """The :class:`LayerKind` of a module returned by ``G.layer_module(layer)``.

    A module may name its layout itself with a ``rewrite_layout`` attribute (how new architectures plug
    in); otherwise ``nn.ConvTranspose2d`` and ``nn.Conv2d`` are recognised, and a module with a 5-d weight
    and a ``modulation`` is taken as a StyleGAN2 modulated conv.

    Raises:
        LayerError: the module is not a kind of layer that can be rewritten.
    """
    named = getattr(module, "rewrite_layout", None)
    if isinstance(named, str):
        return kind_for_layout(named)
    if isinstance(module, nn.ConvTranspose2d | nn.Conv2d):
        if module.groups != 1 or module.padding_mode != "zeros":
            raise LayerError(f"only ungrouped, zero-padded convolutions can be rewritten; got {module!r}.")
        return ConvTranspose2dKind() if isinstance(module, nn.ConvTranspose2d) else Conv2dKind()
    weight = getattr(module, "weight", None)
    if isinstance(weight, Tensor) and weight.ndim == 5 and hasattr(module, "modulation"):
        return ModulatedConv2dKind()
    raise LayerError(f"cannot rewrite a {type(module).__name__}: no known weight layout for it.")


def keys_matrix(keys: Tensor) -> Tensor:
    """Flatten a key map ``(N, I, h, w)`` into rows ``(N·h·w, I)``, sample-major then row-major."""
    return keys.permute(0, 2, 3, 1).reshape(-1, keys.shape[1])
