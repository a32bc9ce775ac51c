"""Exact cropped evaluation of a rewritable layer: one output window, computed from only the keys that reach it.

A loss that reads the layer's output only inside a box (the goal's locations with positive weight) needs
the layer evaluated only there. Every layer kind is, along each spatial axis, a short chain of
translation-equivariant stages — a convolution (``conv``) or a transposed convolution (``tconv``), and for
StyleGAN2's upsampling conv a transposed convolution followed by the blur (a ``conv``). Walking the chain
backwards gives, per stage, the window of its input that reaches the wanted output window (the *reach*:
the kernel's extent, stride and padding). Walking forwards, each stage runs without padding on its window
and its result is cut to the next window, with zeros wherever that window lies outside the stage's full
map — exactly the zeros the full computation pads with there. So the cropped output equals the full
output inside the box: the same products summed, only the order of summation may differ (float
rounding), and so do the loss and its gradient with respect to the weight (the demodulation gain depends
on the weight and styles only, not on positions). The stages run once, on one-hot inputs, to build the
small matrices that :class:`LayerCrop` multiplies the weight with at every evaluation.

:func:`layer_crop` returns ``None`` for a layer it does not know how to crop (a module with a custom
``rewrite_layout``, a string ``padding``); callers then evaluate the whole map.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .layers import Conv2dKind, ConvTranspose2dKind, LayerKind, ModulatedConv2dKind, _modconv_scale

if TYPE_CHECKING:
    from ..models.base import LayerState
    from .context import Goal

Span = tuple[int, int]  # [start, stop) along one axis, in a stage's full coordinates


@dataclass(frozen=True)
class Stage:
    """One spatial stage along one axis.

    Attributes:
        op: ``"conv"`` (output ``y`` reads inputs ``y·stride − pad + a·dilation``) or ``"tconv"`` (input ``x``
            writes outputs ``x·stride − pad + a·dilation``), ``a`` over the ``size`` kernel taps.
        size, stride, pad, dilation: as in ``F.conv2d`` / ``F.conv_transpose2d`` (``pad``: the left/top one).
        length: the stage's full output length.
    """

    op: str
    size: int
    stride: int
    pad: int
    dilation: int
    length: int

    def reach(self, want: Span) -> Span:
        """The input span whose values reach the output span ``want``."""
        a, b = want
        extent = self.dilation * (self.size - 1)
        if self.op == "conv":
            return a * self.stride - self.pad, (b - 1) * self.stride - self.pad + extent + 1
        return -((extent - a - self.pad) // self.stride), (b - 1 + self.pad) // self.stride + 1  # ceil, floor

    def origin(self, start: int) -> int:
        """Full output coordinate of the first output of the unpadded stage run on inputs from ``start``."""
        if self.op == "conv":
            return (start + self.pad) // self.stride
        return start * self.stride - self.pad


def conv_length(length: int, size: int, stride: int, pad_before: int, pad_after: int, dilation: int) -> int:
    return (length + pad_before + pad_after - dilation * (size - 1) - 1) // stride + 1


def tconv_length(length: int, size: int, stride: int, pad: int, dilation: int, output_padding: int) -> int:
    return (length - 1) * stride - 2 * pad + dilation * (size - 1) + output_padding + 1


def window(x: Tensor, origin: tuple[int, int], want: tuple[Span, Span], length: tuple[int, int]) -> Tensor:
    """Cut the map ``x`` (whose first entry sits at full coordinates ``origin``) to the spans ``want``.

    Entries of ``want`` outside the full map ``[0, length)`` are zero (the full computation's padding), as
    are entries ``x`` does not cover (no input reaches them). Differentiable.
    """
    pads: list[int] = []
    slices: list[slice] = []
    for axis in (0, 1):
        (a, b), start, size, full = want[axis], origin[axis], x.shape[-2 + axis], length[axis]
        lo, hi = max(a, 0, start), min(b, full, start + size)
        if hi <= lo:  # nothing of x falls in the span
            slices.append(slice(0, 0))
            pads.append((b - a, 0))
        else:
            slices.append(slice(lo - start, hi - start))
            pads.append((lo - a, b - hi))
    cut = x[..., slices[0], slices[1]]
    return F.pad(cut, (pads[1][0], pads[1][1], pads[0][0], pads[0][1]))


class LayerCrop:
    """The layer's output on one output box, evaluated from the keys in that box's reach only.

    The box's output is linear in the weight, and is computed as one of two matrix products, whichever
    needs fewer multiplications (both are built once, by running the stages on one-hot inputs):

    * ``design``: ``(O, I·taps) @ M`` with ``M`` ``(I·taps, N·box)`` the window keys' design (as
      ``LayerKind.design`` with ``D = I``), the weight read as it lies in memory. Best when the box has
      fewer locations than its key window (convolutions).
    * ``factored``: per output channel ``W_oᵀ (taps, I) @ K (I, X)`` over the ``X`` window keys, then the
      geometry ``T`` ``(taps·X, box)`` (where each key location and kernel tap lands in the box, through
      the stride and the blur). Best for upsampling layers, whose key window has ~¼ of the box's locations.

    Args:
        kind, module: the layer.
        state: the samples entering it.
        box: ``(top, left, bottom, right)`` (exclusive) at the layer's output resolution.
        stages: per axis (rows, columns), the chain of stages (the first one carries the weight).
        first: ``(window keys, weight (O, I, kh, kw)) → first stage's output``, run without padding.
        rest: the fixed stages after the first, run without padding (e.g. the blur).
        rows: ``weight (module layout) → (O, I, taps)``, a view where the layout allows.
        key_scale: a constant folded into the keys (StyleGAN2's equalised-lr scale, which would otherwise
            multiply the whole weight at every evaluation).
        style2: StyleGAN2's demodulation: ``scale² · s²`` ``(N, I)``, the gain being
            ``rsqrt(style2 · Σ_ab W² + 1e-8)`` (:class:`_Demodulation`); otherwise ``kind.gain``.
        factored: force one of the two products (default: the one with fewer multiplications).
    """

    def __init__(
        self,
        kind: LayerKind,
        module: nn.Module,
        state: LayerState,
        box: tuple[int, int, int, int],
        stages: tuple[list[Stage], list[Stage]],
        first: Callable[[Tensor, Tensor], Tensor],
        rest: list[Callable[[Tensor], Tensor]],
        rows: Callable[[Tensor], Tensor],
        *,
        key_scale: float = 1.0,
        style2: Tensor | None = None,
        factored: bool | None = None,
    ) -> None:
        self.kind, self.module, self.state, self.box = kind, module, state, box
        self.stages, self.first, self.rest, self.rows = stages, first, rest, rows
        self._style2 = style2
        top, left, bottom, right = box
        # Backwards: the wanted span at every stage's output, then the keys' span.
        self.wants: list[tuple[Span, Span]] = [((top, bottom), (left, right))]
        for depth in range(len(stages[0]) - 1, -1, -1):
            spans = self.wants[0]
            self.wants.insert(0, tuple(stages[axis][depth].reach(spans[axis]) for axis in (0, 1)))  # type: ignore[misc]
        with torch.no_grad():
            keys = kind.keys(module, state).detach()
            keys = window(keys, (0, 0), self.wants[0], (int(keys.shape[-2]), int(keys.shape[-1]))) * key_scale
            self.keys = keys
            n, in_ch, kh, kw = keys.shape[0], keys.shape[1], *kind.shape(module.weight)[2:]
            taps, located = kh * kw, keys.shape[-2] * keys.shape[-1]
            self.size = (bottom - top) * (right - left)
            basis = torch.eye(taps, dtype=keys.dtype, device=keys.device).reshape(taps, 1, kh, kw)
            cheaper = in_ch * located + located * self.size < in_ch * self.size  # multiplications per O·taps·N
            self.factored = cheaper if factored is None else factored
            if self.factored:
                # T: each tap and window location (one-hot), through the stages: (taps·X, box).
                one_hot = torch.eye(located, dtype=keys.dtype, device=keys.device).reshape(located, 1, *keys.shape[-2:])
                geometry = self.run(one_hot, basis).reshape(located, taps, self.size).transpose(0, 1)
                self.geometry = geometry.reshape(taps * located, self.size).contiguous()
                self.keys_flat = keys.reshape(n, 1, in_ch, located).contiguous()  # (N, 1, I, X)
            else:
                # M: one input channel at a time, each tap its own output channel: (N·I, taps, bh, bw).
                design = self.run(keys.reshape(n * in_ch, 1, *keys.shape[-2:]), basis)
                design = design.reshape(n, in_ch * taps, self.size).permute(1, 0, 2)  # (I·taps, N, box)
                self.design = design.reshape(in_ch * taps, -1).contiguous()

    @property
    def key_box(self) -> tuple[int, int, int, int]:
        """``(top, left, bottom, right)`` of the key window (may reach past the map, where keys are zero)."""
        (t, b), (lft, r) = self.wants[0]
        return t, lft, b, r

    def run(self, keys: Tensor, weight: Tensor) -> Tensor:
        """The stages on window ``keys`` with an ``(O, I, kh, kw)`` ``weight``: ``(N, O, bh, bw)``."""
        x = self.first(keys, weight)
        for depth, stage_fn in enumerate([None, *self.rest]):
            if stage_fn is not None:
                x = stage_fn(x)
            rows, cols = self.stages[0][depth], self.stages[1][depth]
            starts = self.wants[depth]
            origin = (rows.origin(starts[0][0]), cols.origin(starts[1][0]))
            x = window(x, origin, self.wants[depth + 1], (rows.length, cols.length))
        return x

    def _linear(self, weight: Tensor) -> Tensor:
        """``kind.linear`` on the box as ``(N, O, box)``."""
        n = self.keys.shape[0]
        if self.factored:
            rows = self.rows(weight).to(self.keys_flat.dtype)  # (O, I, taps)
            per_tap = rows.transpose(1, 2) @ self.keys_flat  # (N, O, taps, X): one small product per channel
            return per_tap.reshape(n, rows.shape[0], -1) @ self.geometry  # (N, O, box)
        rows = self.rows(weight)
        flat = rows.reshape(rows.shape[0], -1).to(self.design.dtype) @ self.design  # (O, N·box)
        return flat.reshape(flat.shape[0], n, self.size).transpose(0, 1)

    def linear(self, weight: Tensor) -> Tensor:
        """``kind.linear`` on the box, for a weight in the module's layout: ``(N, O, bh, bw)``."""
        top, left, bottom, right = self.box
        lin = self._linear(weight)
        return lin.reshape(*lin.shape[:2], bottom - top, right - left)

    def output(self, weight: Tensor) -> Tensor:
        """``kind.output(module, state, weight)[..., top:bottom, left:right]``, exactly (to float rounding)."""
        top, left, bottom, right = self.box
        lin = self._linear(weight)
        if self._style2 is not None:
            out = _Demodulation.apply(self.rows(weight), self._style2.to(lin))[:, :, None] * lin
        else:
            out = self.kind.gain(self.module, self.state, weight) * lin[..., None]
        out = out.reshape(*lin.shape[:2], bottom - top, right - left)
        bias = getattr(self.module, "bias", None)
        if isinstance(bias, Tensor):
            out = out + bias.view(1, -1, 1, 1)
        return out


class _Demodulation(torch.autograd.Function):
    """StyleGAN2's demodulation ``rsqrt(s² · Σ_ab W² + 1e-8)`` ``(N, O)`` for ``W`` as ``(O, I, taps)``.

    One pass over the weight forward (a norm, no squared copy) and one backward (the gradient
    ``2 W ⊙ ∂L/∂energy``), where autograd's own graph takes about four.
    """

    @staticmethod
    def forward(ctx, flat: Tensor, style2: Tensor) -> Tensor:  # noqa: D102
        rows = flat.reshape(flat.shape[0], style2.shape[1], -1)  # (O, I, taps)
        energy = torch.linalg.vector_norm(rows, dim=2).square()  # (O, I)
        gain = torch.rsqrt(style2 @ energy.T + 1e-8)  # (N, O)
        ctx.save_for_backward(flat, style2, gain)
        return gain

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:  # noqa: D102
        flat, style2, gain = ctx.saved_tensors
        grad_energy = (-0.5 * gain.pow(3) * grad).T @ style2  # (O, I)
        rows = flat.reshape(flat.shape[0], style2.shape[1], -1)
        return (rows * (2 * grad_energy)[:, :, None]).reshape(flat.shape), None


def _pair(value: int | tuple[int, ...]) -> tuple[int, int]:
    return (value, value) if isinstance(value, int) else (int(value[0]), int(value[1]))


def layer_crop(
    kind: LayerKind,
    module: nn.Module,
    state: LayerState,
    box: tuple[int, int, int, int],
    *,
    factored: bool | None = None,
) -> LayerCrop | None:
    """A :class:`LayerCrop` of the layer on ``box``, or ``None`` when this layer cannot be cropped exactly.

    Args:
        factored: passed to :class:`LayerCrop` (default: the cheaper product).
    """
    keys = kind.keys(module, state)
    h, w = int(keys.shape[-2]), int(keys.shape[-1])
    if isinstance(kind, ConvTranspose2dKind) and isinstance(module, nn.ConvTranspose2d):
        size, stride, pad = _pair(module.kernel_size), _pair(module.stride), _pair(module.padding)
        dil, extra = _pair(module.dilation), _pair(module.output_padding)
        stages = tuple(
            [
                Stage(
                    "tconv",
                    size[i],
                    stride[i],
                    pad[i],
                    dil[i],
                    tconv_length((h, w)[i], size[i], stride[i], pad[i], dil[i], extra[i]),
                )
            ]
            for i in (0, 1)
        )

        def first(x: Tensor, weight: Tensor) -> Tensor:
            return F.conv_transpose2d(x, weight.transpose(0, 1), None, stride, 0, 0, 1, dil)

        def rows(weight: Tensor) -> Tensor:
            return weight.flatten(2).transpose(0, 1)  # (I, O, kh, kw) → (O, I, kh·kw), a strided view

        return LayerCrop(kind, module, state, box, stages, first, [], rows, factored=factored)  # type: ignore[arg-type]
    if isinstance(kind, Conv2dKind) and isinstance(module, nn.Conv2d) and not isinstance(module.padding, str):
        size, stride, pad, dil = (
            _pair(v) for v in (module.kernel_size, module.stride, module.padding, module.dilation)
        )
        stages = tuple(
            [
                Stage(
                    "conv",
                    size[i],
                    stride[i],
                    pad[i],
                    dil[i],
                    conv_length((h, w)[i], size[i], stride[i], pad[i], pad[i], dil[i]),
                )
            ]
            for i in (0, 1)
        )

        def first(x: Tensor, weight: Tensor) -> Tensor:
            return F.conv2d(x, weight, None, stride, 0, dil)

        def rows(weight: Tensor) -> Tensor:
            return weight.flatten(2)  # (O, I, kh·kw), a view

        return LayerCrop(kind, module, state, box, stages, first, [], rows, factored=factored)  # type: ignore[arg-type]
    if isinstance(kind, ModulatedConv2dKind) and not getattr(module, "downsample", False):
        size = int(module.weight.shape[-1])

        def modconv_rows(weight: Tensor) -> Tensor:
            return weight[0].flatten(2)  # (1, O, I, k, k) → (O, I, k·k), a view

        if getattr(module, "upsample", False):
            blur = getattr(module, "blur", None)
            kernel = getattr(blur, "kernel", None)
            pad = getattr(blur, "pad", None)
            if not isinstance(kernel, Tensor) or kernel.ndim != 2 or not isinstance(pad, tuple | list):
                return None
            blur_size = int(kernel.shape[0])
            before, after = int(pad[0]), int(pad[1])
            stages_list = []
            for length in (h, w):
                up = tconv_length(length, size, 2, 0, 1, 0)
                stages_list.append(
                    [
                        Stage("tconv", size, 2, 0, 1, up),
                        Stage("conv", blur_size, 1, before, 1, conv_length(up, blur_size, 1, before, after, 1)),
                    ]
                )
            flipped = torch.flip(kernel.detach(), (0, 1))

            def first(x: Tensor, weight: Tensor) -> Tensor:
                return F.conv_transpose2d(x, weight.transpose(0, 1), None, stride=2)

            def blur_fn(x: Tensor) -> Tensor:
                channels = x.shape[1]
                return F.conv2d(x, flipped.to(x).expand(channels, 1, *flipped.shape), groups=channels)

            return LayerCrop(
                kind,
                module,
                state,
                box,
                (stages_list[0], stages_list[1]),
                first,
                [blur_fn],
                modconv_rows,
                **_modconv_extras(kind, module, state),
                factored=factored,
            )
        pad = int(getattr(module, "padding", size // 2))
        stages = tuple([Stage("conv", size, 1, pad, 1, conv_length(n, size, 1, pad, pad, 1))] for n in (h, w))

        def first(x: Tensor, weight: Tensor) -> Tensor:
            return F.conv2d(x, weight)

        return LayerCrop(
            kind,
            module,
            state,
            box,
            stages,
            first,
            [],
            modconv_rows,
            **_modconv_extras(kind, module, state),  # type: ignore[arg-type]
            factored=factored,
        )
    return None


def _modconv_extras(kind: LayerKind, module: nn.Module, state: LayerState) -> dict:
    """The equalised-lr scale moved onto the keys, and the demodulation computed with it folded in.

    ``ModulatedConv2dKind.gain`` is ``rsqrt(Σ_i s_i² Σ_ab (scale·W)² + 1e-8)``; here ``scale²`` multiplies the
    small ``(N, I)`` styles instead of the whole weight (fewer passes over the weight per step).
    """
    scale = float(_modconv_scale(module, module.weight))
    if not getattr(module, "demodulate", True):
        return {"key_scale": scale}
    return {"key_scale": scale, "style2": state.style.detach().pow(2) * scale**2}


def weight_box(weight: Tensor) -> tuple[int, int, int, int] | None:
    """``(top, left, bottom, right)`` of the positive entries of an ``(N, H, W)`` weight, all samples together."""
    covered = (weight > 0).any(0)
    rows = torch.nonzero(covered.any(1))[:, 0]
    cols = torch.nonzero(covered.any(0))[:, 0]
    if rows.numel() == 0:
        return None
    return int(rows[0]), int(cols[0]), int(rows[-1]) + 1, int(cols[-1]) + 1


def goal_window(kind: LayerKind, module: nn.Module, goal: Goal) -> tuple[slice, slice, Callable[[Tensor], Tensor]]:
    """The goal's bounding box and the layer evaluated on it: ``(rows, cols, weight → output[..., rows, cols])``.

    Every location with positive goal weight lies in the box, so a solver that reads the output only there
    (``solve_closed_form``'s residuals) can work on the box alone. The whole map when the layer cannot be
    cropped or the goal has no positive weight.
    """
    box = weight_box(goal.weight)
    cropped = layer_crop(kind, module, goal.state, box) if box is not None else None
    if cropped is None:
        return slice(None), slice(None), lambda weight: kind.output(module, goal.state, weight)
    top, left, bottom, right = box
    return slice(top, bottom), slice(left, right), cropped.output
