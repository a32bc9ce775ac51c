"""Legacy checkpoints → model folders, without ever executing code from a checkpoint.

Checkpoints are read with ``torch.load(weights_only=True)``, whose unpickler only rebuilds tensors and
plain containers: a pickle that names any other class or function is refused, not run. Each format has
an explicit reader that finds the generator's state dict and lets the architecture infer its
hyper-parameters from the shapes; ``load_weights`` then checks every key and shape.
"""

from __future__ import annotations

import glob
import logging
import pickle
import re
import shutil
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from filelock import FileLock
from torch import Tensor

from .. import __version__
from ..errors import CheckpointError, ModelNotFoundError, UnsafeCheckpointError
from ..hashing import file_sha256
from .known import KnownModel, cache_home, package_file
from .safe_pickle import check_tree, short_repr
from .sniff import read_head

logger = logging.getLogger(__name__)

_INFLATE_SLACK = 64 << 20


# ----- reading files safely --------------------------------------------------------------------------
def read_checkpoint(path: str | Path) -> Any:
    """Read a legacy PyTorch checkpoint (zip or legacy pickle format) without running any of its code.

    Raises:
        ModelNotFoundError: the path does not exist.
        CheckpointError: empty, an image, or not a PyTorch checkpoint at all.
        UnsafeCheckpointError: the pickle asks for a class or function beyond tensors and containers.
    """
    path = Path(path)
    head = read_head(path, "checkpoint")
    if head.startswith(b"PK"):
        if not zipfile.is_zipfile(path):
            raise CheckpointError(f"{str(path)!r} is a truncated or corrupt zip checkpoint.")
        _check_inflated_size(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # torch's note on pickle protocols is noise here
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        refused = re.search(r"GLOBAL ([\w.]+)", str(exc))
        what = f"the global `{refused.group(1)}`" if refused else "pickle instructions beyond tensors and containers"
        raise UnsafeCheckpointError(
            f"refused to load {str(path)!r}: its pickle asks for {what}, which a checkpoint of weights never "
            "needs. Nothing from it was imported or executed. Re-save the generator's state dict with "
            "`torch.save(model.state_dict(), path)` from a trusted environment."
        ) from exc
    except Exception as exc:  # torch.load fails in many ways on junk: report them all as one error
        raise CheckpointError(f"{str(path)!r} is not a readable PyTorch checkpoint ({type(exc).__name__}: "
                              f"{str(exc)[:200]}).") from exc
    check_tree(ckpt, repr(str(path)))  # before anything walks, hashes or prints it
    return ckpt


def _check_inflated_size(path: Path) -> None:
    """Refuse a zip whose records inflate to far more than the file: ``torch.save`` stores them uncompressed.

    torch's zip reader allocates each record's declared uncompressed size and inflates it; a 2 MB file of
    DEFLATE-compressed zeros can declare gigabytes. A legitimately re-compressed checkpoint of weights
    shrinks little (float noise does not compress), so twice the file size plus 64 MiB is a generous cap.
    """
    try:
        with zipfile.ZipFile(path) as archive:
            inflated = sum(info.file_size for info in archive.infolist())
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise CheckpointError(f"{str(path)!r} is a corrupt zip checkpoint: {str(exc)[:200]}.") from exc
    on_disk = path.stat().st_size
    if inflated > 2 * on_disk + _INFLATE_SLACK:
        raise CheckpointError(
            f"{str(path)!r} inflates to {inflated / 2**20:.0f} MiB from {on_disk / 2**20:.1f} MiB (compressed "
            "records); `torch.save` never compresses, so this is refused. Re-save it with `torch.save`."
        )


def _tensor_dict(obj: Any, where: str) -> dict[str, Tensor]:
    if not isinstance(obj, dict) or not obj:
        raise CheckpointError(f"expected a state dict (a mapping of names to tensors) at {where}, "
                              f"found {type(obj).__name__}.")
    bad = [k for k, v in obj.items() if not isinstance(k, str) or not isinstance(v, Tensor)]
    if bad:
        raise CheckpointError(f"the state dict at {where} has non-tensor entries: {short_repr(bad[:5])}.")
    return dict(obj)


# ----- one reader per format: checkpoint object → (generator class, state dict, extras) --------------
def _read_rosinality(ckpt: Any) -> tuple[dict[str, Tensor], Tensor | None]:
    """rosinality/stylegan2-pytorch: ``{"g_ema": state_dict, "latent_avg": (512,), ...}`` or a bare g_ema."""
    if isinstance(ckpt, dict) and "g_ema" in ckpt:
        latent_avg = ckpt.get("latent_avg")
        return _tensor_dict(ckpt["g_ema"], "`g_ema`"), latent_avg if isinstance(latent_avg, Tensor) else None
    if isinstance(ckpt, dict) and "g" in ckpt and "style.1.weight" not in ckpt:
        raise CheckpointError("checkpoint has `g` but no `g_ema`; rosinality checkpoints keep the "
                              "generator to use in `g_ema`.")
    return _tensor_dict(ckpt, "the top level"), None


def _read_dcgan(ckpt: Any) -> dict[str, Tensor]:
    """PyTorch DCGAN tutorial: ``{"netG_state_dict": state_dict, ...}`` or a bare state dict."""
    if isinstance(ckpt, dict) and "netG_state_dict" in ckpt:
        return _tensor_dict(ckpt["netG_state_dict"], "`netG_state_dict`")
    return _tensor_dict(ckpt, "the top level")


def _read_progan(ckpt: Any) -> dict[str, Tensor]:
    """GAN-dissection ProGAN: a bare state dict (``layer1.conv.weight``, ...), possibly under ``state_dict``."""
    if isinstance(ckpt, dict) and isinstance(ckpt.get("state_dict"), dict):
        ckpt = ckpt["state_dict"]
    return _tensor_dict(ckpt, "the top level")


@dataclass(frozen=True)
class LegacyFormat:
    name: str
    architecture: str
    description: str


FORMATS: dict[str, LegacyFormat] = {
    f.name: f
    for f in (
        LegacyFormat("rosinality", "stylegan2", "rosinality/stylegan2-pytorch .pt (g_ema + latent_avg)"),
        LegacyFormat("gandissect-progan", "progan", "GAN-dissection ProGAN .pth state dict"),
        LegacyFormat("dcgan", "dcgan", "PyTorch DCGAN tutorial (netG_state_dict or bare state dict)"),
        LegacyFormat("nvidia-pkl", "stylegan2", "NVIDIA stylegan2-ada-pytorch network pickle (.pkl with G_ema)"),
    )
}


def convert_checkpoint(
    source: str | Path,
    *,
    format: str,
    provenance: dict[str, Any] | None = None,
    **overrides: Any,
) -> Any:
    """Read a legacy checkpoint and return the generator it holds (on CPU, eval mode).

    Args:
        source: the checkpoint file.
        format: one of ``FORMATS`` (``rosinality``, ``gandissect-progan``, ``dcgan``, ``nvidia-pkl``).
        provenance: extra facts recorded in the config and model card (source, licence...).
        **overrides: hyper-parameters that cannot be read off the shapes (e.g. ``resolution``).

    Raises:
        CheckpointError: unknown format, unsafe or unreadable file, or keys/shapes that do not fit.
    """
    from ..models import generator_class

    if format not in FORMATS:
        raise CheckpointError(f"unknown checkpoint format {format!r}; supported formats are {sorted(FORMATS)}.")
    spec = FORMATS[format]
    if format == "nvidia-pkl":
        from .nvidia import nvidia_generator, read_nvidia_pickle

        ckpt = read_nvidia_pickle(source)
    else:
        ckpt = read_checkpoint(source)
    latent_avg = None
    cls = generator_class(spec.architecture)
    try:
        if format == "nvidia-pkl":
            nvidia = nvidia_generator(ckpt)
            state_dict, latent_avg = nvidia.state_dict, nvidia.latent_avg
            overrides = {"lr_mlp": nvidia.lr_mlp, **overrides}
            provenance = {"nvidia": nvidia.notes, **(provenance or {})}
        elif format == "rosinality":
            state_dict, latent_avg = _read_rosinality(ckpt)
        elif format == "dcgan":
            state_dict = _read_dcgan(ckpt)
        else:
            state_dict = _read_progan(ckpt)
        config = cls.infer_config(state_dict, **overrides)
    except CheckpointError as exc:
        raise CheckpointError(f"{str(source)!r} does not look like a {spec.description}: {exc}") from exc
    config.extra = {
        **config.extra,
        "provenance": {
            "converted_from": Path(source).name,
            "source_format": format,
            "source_sha256": file_sha256(source),
            "converted_with": f"gan-rewrite {__version__}",
            **(provenance or {}),
        },
    }
    generator = cls(config)
    generator.load_weights(state_dict)
    if latent_avg is not None:
        generator.latent_avg.copy_(_checked_latent_avg(latent_avg, generator.latent_avg, source))
    elif hasattr(generator, "estimate_latent_avg") and "latent_avg" not in state_dict:
        generator.estimate_latent_avg()
    check_finite_state(generator, f"the model converted from {str(source)!r}")
    return generator.eval()


def _checked_latent_avg(latent_avg: Tensor, target: Tensor, source: str | Path) -> Tensor:
    """The checkpoint's average latent, if it has the model's shape (up to leading 1s) and finite float32 values."""
    if latent_avg.numel() != target.numel() or latent_avg.squeeze().shape != target.squeeze().shape:
        raise CheckpointError(
            f"{str(source)!r}: `latent_avg` has shape {short_repr(tuple(latent_avg.shape))}; the model needs "
            f"{tuple(target.shape)}."
        )
    if not latent_avg.is_floating_point():
        raise CheckpointError(f"{str(source)!r}: `latent_avg` is {latent_avg.dtype}, not floating point.")
    value = latent_avg.detach().reshape(target.shape).to(target.dtype)
    if not bool(torch.isfinite(value).all()):
        raise CheckpointError(f"{str(source)!r}: `latent_avg` holds NaN or infinite values (or values beyond float32).")
    return value


def check_finite_state(generator: Any, what: str) -> None:
    """Refuse a model whose parameters or buffers hold NaN or infinite values: it would not load again.

    Raises:
        CheckpointError: naming the first such tensor.
    """
    for key, tensor in generator.state_dict().items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise CheckpointError(f"{what} has NaN or infinite values in `{key}`; the weights are broken.")


def convert_to_folder(source: str | Path, out_dir: str | Path, *, format: str, **kwargs: Any) -> Path:
    """Convert ``source`` and write the model folder ``out_dir`` (config.json, model.safetensors, card)."""
    generator = convert_checkpoint(source, format=format, **kwargs)
    return generator.save_pretrained(out_dir)


# ----- known models: convert once, keep in the cache --------------------------------------------------
def ensure_known_model(model: KnownModel, *, token: str | None = None) -> Path:
    """The cached model folder of a known model, converting it from its source on first use.

    The folder is built in a staging folder and swapped into place, so a crash never leaves a half-converted
    model in the cache; concurrent first uses wait on a file lock, and staging left by killed ones is removed.
    """
    folder = cache_home() / "models" / model.name
    if (folder / "config.json").is_file() and (folder / "model.safetensors").is_file():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    # One process converts; the others wait for it, then find the folder (racing conversions used to crash).
    locks = cache_home() / "locks"
    locks.mkdir(parents=True, exist_ok=True)
    with FileLock(str(locks / f"{model.name}.lock")):
        if (folder / "config.json").is_file() and (folder / "model.safetensors").is_file():
            return folder
        for leftover in folder.parent.glob(f".{glob.escape(model.name)}.*"):  # staging of killed conversions
            if leftover.is_dir():
                shutil.rmtree(leftover, ignore_errors=True)
        return _convert_known(model, folder, token=token)


def _convert_known(model: KnownModel, folder: Path, *, token: str | None) -> Path:
    source = _known_source_file(model, token=token)
    logger.info("converting %s from %s (first use)", model.name, source)
    provenance = {
        "name": model.name,
        "source": _describe_source(model.source),
        "license": model.license,
    }
    generator = convert_checkpoint(source, format=model.format, provenance=provenance)
    if generator.config.resolution != model.resolution:
        raise CheckpointError(
            f"{model.name} should be {model.resolution}px but its checkpoint is {generator.config.resolution}px."
        )
    generator.config.default_layer = model.default_layer
    generator.config.extra.update(
        {"name": model.name, "license": model.license, "description": model.description, "tags": model.tags}
    )
    if model.raw.get("license_name"):
        generator.config.extra["license_name"] = model.raw["license_name"]
    generator.save_pretrained(folder)  # staged beside the cache folder, swapped in atomically
    return folder


def _describe_source(source: dict[str, Any]) -> str:
    kind = source["kind"]
    if kind == "package":
        return f"PyPI package {source['package']} ({source['file']}); {source.get('homepage', '')}".strip("; ")
    if kind == "hub":
        return f"Hub repo {source['repo']} ({source['filename']})"
    return source.get("url", str(source))


def _known_source_file(model: KnownModel, *, token: str | None) -> Path:
    source = model.source
    if source["kind"] == "package":
        return package_file(source)
    if source["kind"] == "hub":
        from huggingface_hub import hf_hub_download

        from .loading import hub_errors

        with hub_errors(source["repo"], source.get("revision")):
            return Path(hf_hub_download(source["repo"], source["filename"], revision=source.get("revision"),
                                        token=token))
    raise ModelNotFoundError(
        f"{model.name} is not on the Hub: download it from {source.get('url')} and convert it with "
        f"`gan-rewrite convert FILE OUT_DIR --format {model.format}`."
    )

