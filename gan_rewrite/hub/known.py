"""Models known by name: one YAML per model in ``hub_configs/`` (the repository's top level; an installed
wheel carries it as ``gan_rewrite/hub_configs/``).

A known model says where its weights come from (``source.kind``):

* ``package``: a file inside an installed Python package (the embedded default ``dcgan-faces-64``);
* ``hub``: a legacy checkpoint file in a Hub repo, downloaded with the official client and converted;
* ``bundled``: a model folder shipped inside this package (``source.folder``, relative to ``gan_rewrite/``),
  loaded as it is — the toy-world StyleGAN2 the project trains itself;
* ``url``: recorded for reference only (not on the Hub): the user downloads it and runs ``gan-rewrite convert``.

Converted models are cached as model folders under :func:`cache_home` so conversion runs once.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from ..errors import ConfigError, ModelNotFoundError

_PACKAGE = Path(__file__).resolve().parent.parent
CONFIG_DIR = next(
    (folder for folder in (_PACKAGE / "hub_configs", _PACKAGE.parent / "hub_configs") if folder.is_dir()),
    _PACKAGE.parent / "hub_configs",
)
"""The known models' YAML: inside the installed package (a wheel), else at the top of the checkout."""
_MODEL_FIELDS = ("z_dim", "channel_multiplier", "n_mlp")  # hyper-parameters a YAML may pin for conversion


@dataclass(frozen=True)
class KnownModel:
    """One entry of ``hub_configs/``."""

    name: str
    architecture: str
    format: str
    resolution: int
    source: dict[str, Any]
    license: str
    default_layer: str
    description: str = ""
    tags: list[str] = field(default_factory=list)
    hyperparameters: dict[str, Any] = field(default_factory=dict)  # documented; conversion reads shapes
    raw: dict[str, Any] = field(default_factory=dict)


def cache_home() -> Path:
    """Where converted models live: ``$GAN_REWRITE_HOME``, else ``$XDG_CACHE_HOME/gan_rewrite``."""
    if os.environ.get("GAN_REWRITE_HOME"):
        return Path(os.environ["GAN_REWRITE_HOME"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "gan_rewrite"


@cache
def known_models() -> dict[str, KnownModel]:
    """All models of ``hub_configs/``, by name."""
    models = {}
    for path in sorted(CONFIG_DIR.glob("*.yaml")):
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
        try:
            model = KnownModel(
                name=data["name"], architecture=data["architecture"], format=data["format"],
                resolution=int(data["resolution"]), source=dict(data["source"]), license=data["license"],
                default_layer=data["default_layer"], description=data.get("description", ""),
                tags=list(data.get("tags", [])),
                hyperparameters={k: data[k] for k in _MODEL_FIELDS if k in data}, raw=data,
            )
        except (KeyError, TypeError) as exc:
            raise ConfigError(f"hub config {path.name} is missing or mistypes field {exc}.") from exc
        models[model.name] = model
    return models


def known_model(name: str) -> KnownModel:
    """The known model called ``name``. Raises ModelNotFoundError listing the known names."""
    try:
        return known_models()[name]
    except KeyError:
        raise ModelNotFoundError(
            f"unknown model name {name!r}{did_you_mean(name)}; known names are {sorted(known_models())}."
        ) from None


def did_you_mean(name: str) -> str:
    """``" (did you mean 'dcgan-faces-64'?)"`` for the known name nearest ``name``, or ``""`` if none is near."""
    import difflib

    close = difflib.get_close_matches(name, list(known_models()), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def package_file(source: dict[str, Any]) -> Path:
    """Locate a file inside an installed package without importing the package.

    Raises:
        ModelNotFoundError: the package is not installed, with the pip command that installs it.
    """
    spec = importlib.util.find_spec(source["module"])
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(
            f"the weights of this model ship in the `{source['package']}` package, which is not installed; "
            f"install it with `pip install --no-deps {source['package']}`."
        )
    path = Path(next(iter(spec.submodule_search_locations))) / source["file"]
    if not path.is_file():
        raise ModelNotFoundError(f"`{source['package']}` is installed but has no {source['file']} at {path}.")
    return path


def bundled_folder(model: KnownModel) -> Path:
    """The model folder of a ``bundled`` known model, inside the installed package.

    Raises:
        ModelNotFoundError: the package was installed without the folder (a broken or trimmed install).
    """
    folder = Path(__file__).resolve().parent.parent / model.source["folder"]
    if not (folder / "config.json").is_file() or not (folder / "model.safetensors").is_file():
        raise ModelNotFoundError(
            f"{model.name} ships inside gan-rewrite at {folder}, but the folder is incomplete; "
            f"reinstall the package (`pip install --force-reinstall gan-rewrite`)."
        )
    return folder
