"""``load_generator``: one entry point for model folders, known names and Hub repos."""

from __future__ import annotations

import contextlib
import json
import logging
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import torch

from ..errors import CheckpointError, ConfigError, HubError, ModelNotFoundError, short_repr
from .known import bundled_folder, did_you_mean, known_model, known_models
from .mixin import CARD_NAME, CONFIG_NAME, WEIGHTS_NAME

logger = logging.getLogger(__name__)

# The Hub's own rule: `owner/name`, each part 1-96 of [A-Za-z0-9_.-], starting with a letter or digit, not ending
# in '.' or '-', with no '..' or '--' (so `zz/..` is not a repo id and never reaches the client's validator).
_REPO_ID = re.compile(r"^(?!.*(?:\.\.|--))(?!.*[.-]/)(?!.*[.-]$)[A-Za-z0-9][\w.-]{0,95}/[A-Za-z0-9][\w.-]{0,95}$")


def _probe(path: Path) -> str:
    """``"dir"``, ``"file"``, ``"missing"`` — or ``"invalid"`` for a name the OS refuses (too long, NUL, ...)."""
    try:
        return "dir" if path.is_dir() else "file" if path.exists() else "missing"
    except (OSError, ValueError):  # ENAMETOOLONG, "embedded null byte"
        return "invalid"


class HubSource(NamedTuple):
    """Where a generator loaded from the Hub came from: ``G.hub_source`` (absent for local models)."""

    repo_id: str
    revision: str | None  # as asked for (None: the default branch)
    commit: str  # the commit sha the files were downloaded at


def load_generator(
    name_or_path: str | Path,
    *,
    revision: str | None = None,
    device: str | torch.device | None = None,
    token: str | None = None,
) -> Any:
    """Load a generator from a model folder, a known model name, or a Hub repo.

    Args:
        name_or_path: a folder holding config.json + model.safetensors; a name from ``hub_configs/``
            (``"dcgan-faces-64"``, the embedded default); or a Hub repo id ``"owner/name"``.
        revision: for Hub repos, a branch, tag or commit sha (default: main).
        device: where to put the model; default CUDA when available, else CPU.
        token: Hub token for private repos.

    Returns:
        A ``GANGenerator`` in eval mode.

    Raises:
        ModelNotFoundError: no such folder, known name or Hub repo (the message lists the known names).
        ConfigError / CheckpointError: the folder's config.json or weights are invalid.
        HubError: the Hub could not be reached.

    Example:
        >>> G = load_generator("dcgan-faces-64")
        >>> G.layer_names
        ['layer1', 'layer2', 'layer3', 'layer4', 'layer5']
    """
    from ..models import pick_device

    target = pick_device(device)
    text = str(name_or_path)
    path = Path(text).expanduser()
    kind = _probe(path)
    if kind == "dir":
        return load_folder(path, device=target)
    if kind == "file":
        raise ModelNotFoundError(
            f"{text!r} is a file, not a model folder; convert a legacy checkpoint first with "
            f"`gan-rewrite convert {text} OUT_DIR --format ...`."
        )
    if text in known_models():
        model = known_model(text)
        if model.source.get("kind") == "bundled":  # a model folder shipped inside this package
            return load_folder(bundled_folder(model), device=target)
        from .convert import ensure_known_model

        return load_folder(ensure_known_model(known_model(text), token=token), device=target)
    if _REPO_ID.match(text) and not text.startswith((".", "/", "~")):
        folder = download_model(text, revision=revision, token=token)
        generator = load_folder(folder, device=target)
        # Remember where it came from (the snapshot folder is named after the commit), e.g. for repo stats.
        generator.hub_source = HubSource(text, revision, folder.name)
        return generator
    raise ModelNotFoundError(
        f"no model folder, known model name or Hub repo id {text[:100]!r}{did_you_mean(text[:100])}. Known names are "
        f"{sorted(known_models())}; a Hub repo id looks like 'owner/name'."
    )


def load_folder(folder: Path, *, device: torch.device | None = None) -> Any:
    """Build a generator from a model folder (config.json + model.safetensors).

    Nothing is allocated for the model before its config and weights agree: the generator is first built
    on the ``meta`` device, so a config.json with absurd sizes is refused instead of exhausting memory.

    Raises:
        ModelNotFoundError: a file is missing.
        ConfigError: config.json is not a JSON object of valid, consistent fields.
        CheckpointError: model.safetensors is unreadable, or its keys, shapes, dtypes or values (NaN, Inf)
            do not fit the config.
    """
    import warnings

    from ..errors import GanRewriteError
    from ..models import generator_class

    folder = Path(folder)
    config_path, weights_path = folder / CONFIG_NAME, folder / WEIGHTS_NAME
    for needed in (config_path, weights_path):
        if not needed.is_file():
            raise ModelNotFoundError(
                f"{str(folder)!r} is not a model folder: {needed.name} is missing "
                f"(a model folder holds {CONFIG_NAME}, {WEIGHTS_NAME} and {CARD_NAME})."
            )
    for attempt in range(3):
        raw, state_dict, weights_id = _read_folder_files(config_path, weights_path)
        config_id = raw.get("save_id")
        if config_id is None or weights_id is None or config_id == weights_id:
            break
        if attempt == 2:
            raise CheckpointError(
                f"{str(folder)!r}: config.json and model.safetensors come from different saves (save ids "
                f"{short_repr(config_id, 40)} and {short_repr(weights_id, 40)}); save the model again."
            )
    cls = generator_class(raw["architecture"])
    config = cls.config_class.from_dict(raw)
    try:
        with torch.device("meta"):  # shapes only: no memory, however large the config says the model is
            skeleton = cls(config)
    except GanRewriteError:
        raise
    except (TypeError, ValueError, RuntimeError, OverflowError, MemoryError) as exc:
        raise ConfigError(f"{config_path} describes no buildable {raw['architecture']} generator: {exc}") from exc
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "copying into a meta parameter is a no-op": intended
        skeleton.load_weights(state_dict)  # CheckpointError naming missing / unexpected / mis-shaped keys
    if config.default_layer not in skeleton.layer_names:
        raise ConfigError(
            f"{config_path}: field `default_layer` must be one of {skeleton.layer_names}, got "
            f"{short_repr(config.default_layer)}."
        )
    # Everything the model holds, buffers that are not saved included, must be of the weights' order of size.
    weight_bytes = sum(t.numel() * t.element_size() for t in state_dict.values())
    model_bytes = sum(t.numel() * t.element_size() for t in (*skeleton.parameters(), *skeleton.buffers()))
    if model_bytes > 4 * weight_bytes + (64 << 20):
        raise ConfigError(
            f"{config_path} describes a generator of {model_bytes / 2**20:.0f} MiB for {weight_bytes / 2**20:.0f} MiB "
            "of weights; a field is implausibly large."
        )
    generator = cls(config)
    generator.load_weights(state_dict)
    return generator.to(device or torch.device("cpu")).eval()


def _read_folder_files(config_path: Path, weights_path: Path) -> tuple[dict[str, Any], dict[str, Any], str | None]:
    """config.json (checked to be an object with a string ``architecture``), the tensors, and the weights' save id."""
    from safetensors import SafetensorError, safe_open

    try:
        raw = json.loads(config_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:  # ValueError: JSON, or a 5000-digit int
        raise ConfigError(f"{config_path} is not valid JSON: {str(exc)[:200]}.") from exc
    except OSError as exc:
        raise ConfigError(f"cannot read {config_path}: {exc}.") from exc
    if not isinstance(raw, dict) or "architecture" not in raw:
        raise ConfigError(f"{config_path} has no `architecture` field; is it a gan-rewrite model folder?")
    if not isinstance(raw["architecture"], str):
        raise ConfigError(
            f"{config_path}: field `architecture` must be a string, got {short_repr(raw['architecture'])}."
        )
    try:
        with safe_open(str(weights_path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            state_dict = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{weights_path} is not a readable safetensors file: {exc}.") from exc
    return raw, state_dict, metadata.get("save_id")


def download_model(repo_id: str, *, revision: str | None = None, token: str | None = None) -> Path:
    """Fetch a model repo's folder files into the standard Hub cache and return the snapshot folder."""
    from huggingface_hub import snapshot_download

    with hub_errors(repo_id, revision):
        folder = snapshot_download(
            repo_id, revision=revision, token=token,
            allow_patterns=[CONFIG_NAME, WEIGHTS_NAME, CARD_NAME],
        )
    missing = [name for name in (CONFIG_NAME, WEIGHTS_NAME) if not (Path(folder) / name).is_file()]
    if missing:
        raise ModelNotFoundError(
            f"Hub repo {repo_id!r} (revision {revision or 'main'!r}) lacks {missing}: it is not a gan-rewrite "
            "model repo. For a legacy checkpoint, download it and run `gan-rewrite convert`."
        )
    return Path(folder)


@contextlib.contextmanager
def hub_errors(repo_id: str, revision: str | None = None) -> Iterator[None]:
    """Turn the Hub client's errors into ours, with a message that says what to do."""
    from huggingface_hub.errors import (
        EntryNotFoundError,
        GatedRepoError,
        HfHubHTTPError,
        HFValidationError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    try:
        yield
    except HFValidationError as exc:
        raise ModelNotFoundError(
            f"{repo_id[:100]!r} (revision {str(revision)[:60]!r}) is not a valid Hub repo id or revision: "
            f"{str(exc)[:200]}"
        ) from exc
    except GatedRepoError as exc:
        raise HubError(f"Hub repo {repo_id!r} is gated: accept its terms on the Hub and pass a `token`.") from exc
    except RepositoryNotFoundError as exc:
        raise ModelNotFoundError(
            f"Hub repo {repo_id!r} was not found (or is private: pass a `token`). Known model names are "
            f"{sorted(known_models())}."
        ) from exc
    except RevisionNotFoundError as exc:
        raise ModelNotFoundError(
            f"revision {revision!r} of Hub repo {repo_id!r} was not found; give a branch, tag or commit sha."
        ) from exc
    except LocalEntryNotFoundError as exc:
        raise HubError(
            f"could not reach the Hub for {repo_id!r} and it is not in the local cache: {exc}"
        ) from exc
    except EntryNotFoundError as exc:
        raise ModelNotFoundError(f"Hub repo {repo_id!r} lacks a needed file: {exc}") from exc
    except HfHubHTTPError as exc:
        raise HubError(f"the Hub refused the request for {repo_id!r}: {exc}") from exc
    except Exception as exc:
        # Transport failures (refused connection, timeout) come from the client's HTTP library.
        if type(exc).__module__.split(".")[0] in {"httpx", "httpx2", "requests", "urllib3"}:
            raise HubError(f"could not reach the Hub for {repo_id!r}: {exc}") from exc
        raise
