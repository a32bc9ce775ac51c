"""NVIDIA stylegan2-ada-pytorch network pickles built without NVIDIA's code, and its math written directly.

:func:`write_snapshot` pickles like NVIDIA's training loop: networks are ``torch_utils.persistence``-style
objects (``__reduce__`` to ``_reconstruct_persistent_obj(meta)`` with ``module_src`` and the module's
``__dict__`` as ``state``), kwargs are ``dnnlib.util.EasyDict``, gains ``np.float64``, tensors pickled by
torch's own ``__reduce_ex__``. The fake modules exist in ``sys.modules`` only while a pickle is written.

:func:`nvidia_reference` is ``G_ema(z, None, truncation_psi=psi, noise_mode='const')`` from the tensors alone,
taking NVIDIA's general resampling path (upsample, FIR filter, then a true convolution) rather than the
transposed convolution our model uses, so the two share no code.
"""

from __future__ import annotations

import contextlib
import math
import pickle
import sys
import types
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

W_DIM, LR, CLAMP = 16, 0.01, 256
CHANNELS = {4: 16, 8: 16, 16: 8, 32: 8}  # channel_base 256, channel_max 16
FILTER = torch.tensor([1.0, 3, 3, 1]).outer(torch.tensor([1.0, 3, 3, 1])) / 64  # upfirdn2d.setup_filter


# ----- writing NVIDIA-shaped pickles -------------------------------------------------------------------
def _reconstruct_persistent_obj(meta):  # only a name for pickle to write; never called
    raise AssertionError("the reduce target of a persistent object was called")


class EasyDict(dict):
    pass


_reconstruct_persistent_obj.__module__ = "torch_utils.persistence"
EasyDict.__module__, EasyDict.__qualname__ = "dnnlib.util", "EasyDict"


@contextlib.contextmanager
def _fake_nvidia_modules() -> Iterator[None]:
    """``torch_utils.persistence`` and ``dnnlib.util`` in ``sys.modules`` while pickling, then gone."""
    persistence = types.ModuleType("torch_utils.persistence")
    persistence._reconstruct_persistent_obj = _reconstruct_persistent_obj
    util = types.ModuleType("dnnlib.util")
    util.EasyDict = EasyDict
    fakes = {
        "torch_utils": types.ModuleType("torch_utils"),
        "torch_utils.persistence": persistence,
        "dnnlib": types.ModuleType("dnnlib"),
        "dnnlib.util": util,
    }
    sys.modules.update(fakes)
    try:
        yield
    finally:
        for name in fakes:
            sys.modules.pop(name, None)


class Persistent(torch.nn.Module):
    """Pickles as NVIDIA's ``persistent_class`` decorator does: source code plus ``__dict__``."""

    def __init__(self, class_name: str, source: str, **attrs) -> None:
        super().__init__()
        self._nv_class, self._nv_source = class_name, source
        for name, value in attrs.items():
            setattr(self, name, value)

    def __reduce__(self):
        meta = dict(
            type="class", version=6, module_src=self._nv_source, class_name=self._nv_class, state=dict(self.__dict__)
        )
        return _reconstruct_persistent_obj, (meta,)


def random_params(seed: int = 0, c: dict[int, int] = CHANNELS, n_mlp: int = 2) -> dict[str, torch.Tensor]:
    """NVIDIA-named tensors of a 32px ``G_ema``, scaled as trained weights roughly are."""
    g = torch.Generator().manual_seed(seed)
    p: dict[str, torch.Tensor] = {}

    def randn(*shape: int, scale: float = 1.0, offset: float = 0.0) -> torch.Tensor:
        return torch.randn(shape, generator=g) * scale + offset

    for i in range(n_mlp):
        p[f"mapping.fc{i}.weight"] = randn(W_DIM, W_DIM, scale=1 / LR)
        p[f"mapping.fc{i}.bias"] = randn(W_DIM, scale=0.1)
    p["mapping.w_avg"] = randn(W_DIM, scale=0.5)

    def layer(prefix: str, c_in: int, c_out: int, res: int, k: int = 3, noise: bool = True) -> None:
        p[f"{prefix}.affine.weight"] = randn(c_in, W_DIM)
        p[f"{prefix}.affine.bias"] = randn(c_in, scale=0.2, offset=1.0)
        p[f"{prefix}.weight"] = randn(c_out, c_in, k, k)
        p[f"{prefix}.bias"] = randn(c_out, scale=0.1)
        if noise:
            p[f"{prefix}.noise_strength"] = randn(scale=0.1)
            p[f"{prefix}.noise_const"] = randn(res, res)

    for res in c:
        b = f"synthesis.b{res}"
        if res == 4:
            p[f"{b}.const"] = randn(c[4], 4, 4)
        else:
            layer(f"{b}.conv0", c[res // 2], c[res], res)
        layer(f"{b}.conv1", c[res], c[res], res)
        layer(f"{b}.torgb", c[res], 3, res, k=1, noise=False)
    return p


def nvidia_generator(
    p: dict[str, torch.Tensor],
    source: str,
    *,
    architecture: str = "skip",
    c_dim: int = 0,
    extra: dict[str, Persistent] | None = None,
) -> Persistent:
    """The module tree of NVIDIA's ``Generator`` around the tensors ``p``."""

    def module(class_name: str, prefix: str, params=(), buffers=(), children=None, **attrs) -> Persistent:
        m = Persistent(class_name, source, **attrs)
        for name in (n for n in params if f"{prefix}.{n}" in p):
            m.register_parameter(name, torch.nn.Parameter(p[f"{prefix}.{name}"].clone(), requires_grad=False))
        for name in buffers:
            m.register_buffer(name, p[f"{prefix}.{name}"].clone() if f"{prefix}.{name}" in p else FILTER.clone())
        for name, child in (children or {}).items():
            m.add_module(name, child)
        return m

    def fc(prefix: str, lr: float = 1.0, activation: str = "linear") -> Persistent:
        in_features = p[f"{prefix}.weight"].shape[1]
        return module(
            "FullyConnectedLayer",
            prefix,
            ("weight", "bias"),
            activation=activation,
            weight_gain=np.float64(lr / np.sqrt(in_features)),
            bias_gain=lr,
        )

    def layer(prefix: str, res: int, up: int) -> Persistent:
        return module(
            "SynthesisLayer",
            prefix,
            ("weight", "noise_strength", "bias"),
            ("resample_filter", "noise_const"),
            {"affine": fc(f"{prefix}.affine")},
            resolution=res,
            up=up,
            use_noise=True,
            activation="lrelu",
            conv_clamp=CLAMP,
            padding=1,
            act_gain=np.float64(np.sqrt(2)),
        )

    n_mlp = sum(1 for k in p if k.startswith("mapping.fc") and k.endswith(".weight"))
    fcs = {f"fc{i}": fc(f"mapping.fc{i}", LR, "lrelu") for i in range(n_mlp)}
    mapping = module(
        "MappingNetwork",
        "mapping",
        (),
        ("w_avg",),
        fcs,
        z_dim=W_DIM,
        c_dim=c_dim,
        w_dim=W_DIM,
        num_ws=None,
        num_layers=n_mlp,
        w_avg_beta=0.995,
    )
    blocks = {}
    resolutions = sorted(int(k.split(".")[1][1:]) for k in p if k.endswith(".conv1.weight"))
    for res in resolutions:
        b = f"synthesis.b{res}"
        children = {
            "conv1": layer(f"{b}.conv1", res, 1),
            "torgb": module(
                "ToRGBLayer",
                f"{b}.torgb",
                ("weight", "bias"),
                (),
                {"affine": fc(f"{b}.torgb.affine")},
                conv_clamp=CLAMP,
                weight_gain=np.float64(1 / np.sqrt(p[f"{b}.torgb.weight"].shape[1])),
            ),
        }
        if res > 4:
            children["conv0"] = layer(f"{b}.conv0", res, 2)
        blocks[f"b{res}"] = module(
            "SynthesisBlock",
            b,
            ("const",) if res == 4 else (),
            ("resample_filter",),
            children,
            resolution=res,
            architecture=architecture,
            use_fp16=False,
            in_channels=0 if res == 4 else CHANNELS[res // 2],
            is_last=res == resolutions[-1],
        )
    synthesis = module(
        "SynthesisNetwork",
        "synthesis",
        children={**blocks, **(extra or {})},
        w_dim=W_DIM,
        img_resolution=resolutions[-1],
        img_channels=3,
        block_resolutions=resolutions,
    )
    return module(
        "Generator",
        "",
        children={"mapping": mapping, "synthesis": synthesis},
        z_dim=W_DIM,
        c_dim=c_dim,
        w_dim=W_DIM,
        img_resolution=resolutions[-1],
        img_channels=3,
        _init_kwargs=EasyDict(mapping_kwargs=EasyDict(num_layers=n_mlp)),
    )


def write_snapshot(path: Path, g_ema: object, **extra: object) -> Path:
    with _fake_nvidia_modules():
        data = {
            "G": g_ema,
            "D": None,
            "G_ema": g_ema,
            "augment_pipe": None,
            "training_set_kwargs": EasyDict(path="ffhq.zip", resolution=32),
            **extra,
        }
        path.write_bytes(pickle.dumps(data, protocol=3))  # NVIDIA's pickle.dump: the default protocol of 2021
    return path


def sentinel_source(sentinel: Path) -> str:
    return f"import pathlib\npathlib.Path({str(sentinel)!r}).write_text('module_src was executed')\n"


# ----- NVIDIA's math, written directly ------------------------------------------------------------------
def upfirdn(x: torch.Tensor, f: torch.Tensor, up: int, pad: tuple[int, int], gain: float) -> torch.Tensor:
    """``upfirdn2d_ref``: zero-stuff, pad (before, after), convolve with the flipped filter times gain."""
    n, c, h, w = x.shape
    x = x.reshape(n, c, h, 1, w, 1)
    x = F.pad(x, [0, up - 1, 0, 0, 0, up - 1]).reshape(n, c, h * up, w * up)
    x = F.pad(x, [pad[0], pad[1], pad[0], pad[1]])
    kernel = (f * gain).flip(0, 1)[None, None].repeat(c, 1, 1, 1)
    return F.conv2d(x, kernel, groups=c)


def fc(p, prefix: str, x: torch.Tensor, lr: float = 1.0, act: bool = False) -> torch.Tensor:
    w = p[f"{prefix}.weight"]
    y = x @ (w * lr / math.sqrt(w.shape[1])).t() + p[f"{prefix}.bias"] * lr
    return F.leaky_relu(y, 0.2) * math.sqrt(2) if act else y


def synthesis_layer(p, prefix: str, x: torch.Tensor, w: torch.Tensor, up: int) -> torch.Tensor:
    styles = fc(p, f"{prefix}.affine", w)  # (N, I)
    weight = p[f"{prefix}.weight"][None] * styles[:, None, :, None, None]  # (N, O, I, 3, 3)
    weight = weight * (weight.square().sum((2, 3, 4)) + 1e-8).rsqrt()[:, :, None, None, None]
    out = []
    for xi, wi in zip(x, weight, strict=True):  # one sample at a time: no grouped-conv trick to get wrong
        xi = xi[None]
        if up == 2:  # conv2d_resample, general path: upsample (pad 1+2, 1+1), then a true convolution
            out.append(F.conv2d(upfirdn(xi, FILTER, 2, (3, 2), 4), wi.flip(2, 3)))
        else:
            out.append(F.conv2d(xi, wi, padding=1))
    y = torch.cat(out) + p[f"{prefix}.noise_const"] * p[f"{prefix}.noise_strength"]
    y = F.leaky_relu(y + p[f"{prefix}.bias"][None, :, None, None], 0.2) * math.sqrt(2)
    return y.clamp(-CLAMP, CLAMP)


def to_rgb(p, prefix: str, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    styles = fc(p, f"{prefix}.affine", w) / math.sqrt(x.shape[1])
    y = torch.einsum("nihw,oi,ni->nohw", x, p[f"{prefix}.weight"][:, :, 0, 0], styles)
    return (y + p[f"{prefix}.bias"][None, :, None, None]).clamp(-CLAMP, CLAMP)


def nvidia_reference(p, z: torch.Tensor, psi: float) -> torch.Tensor:
    """``G_ema(z, None, truncation_psi=psi, noise_mode='const')`` from the tensors alone."""
    x = z * (z.square().mean(1, keepdim=True) + 1e-8).rsqrt()
    n_mlp = sum(1 for k in p if k.startswith("mapping.fc") and k.endswith(".weight"))
    for i in range(n_mlp):
        x = fc(p, f"mapping.fc{i}", x, LR, act=True)
    w = p["mapping.w_avg"].lerp(x, psi)  # the same w for every layer
    resolutions = sorted(int(k.split(".")[1][1:]) for k in p if k.endswith(".conv1.weight"))
    img = None
    for res in resolutions:
        b = f"synthesis.b{res}"
        if res == 4:
            h = p[f"{b}.const"][None].repeat(len(z), 1, 1, 1)
        else:
            h = synthesis_layer(p, f"{b}.conv0", h, w, up=2)
        h = synthesis_layer(p, f"{b}.conv1", h, w, up=1)
        y = to_rgb(p, f"{b}.torgb", h, w)
        img = y if img is None else upfirdn(img, FILTER, 2, (2, 1), 4) + y
    return img
