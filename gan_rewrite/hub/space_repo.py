"""Publishing the rewriting app as a Hugging Face Space: :func:`push_space` (``gan-rewrite space push``).

The Space repo gets everything it needs to start, in one commit, through the official client:

* ``app.py`` — the app of this checkout (``spaces/rewrite/app.py``, with the modules beside it);
* ``README.md`` — the Space's YAML (``sdk: gradio`` at the installed gradio's version, ``app_file``, the
  ``models`` it offers that live on the Hub, ``suggested_hardware``) above the app's own text;
* ``requirements.txt`` — the library's own requirements, read from its installed metadata, plus ``spaces``
  and, when the embedded ``dcgan-faces-64`` is offered, the ``gan-face-generate`` package holding its weights;
* ``gan_rewrite/`` — this library, vendored (its Python files and its ``hub_configs/*.yaml``), so nothing
  is copied by hand and the Space runs exactly this version;
* ``space_models.json`` — the models the app offers, first the one it opens with.

Example:
    >>> push_space("me/rewrite-faces", models=["dcgan-faces-64"], hardware="cpu-basic")
"""

from __future__ import annotations

import json
import logging
import re
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from ..atomic import write_bytes_atomic, write_text_atomic
from ..errors import GanRewriteError
from .known import CONFIG_DIR, bundled_folder, known_model, known_models
from .loading import _REPO_ID

if TYPE_CHECKING:
    from huggingface_hub import CommitInfo

logger = logging.getLogger(__name__)

PACKAGE_DIR = Path(__file__).resolve().parents[1]
APP_DIR = PACKAGE_DIR.parent / "spaces" / "rewrite"
"""The app of the checkout: ``spaces/rewrite/`` beside the package (``app.py`` and its ``README.md``)."""
MODELS_FILE = "space_models.json"
DEFAULT_MODELS = ("dcgan-faces-64", "toyworld-stylegan2-64")
_FRONT_MATTER = re.compile(r"^---\s*\n(.*?)\n---\s*\n?", re.S)


def space_requirements(models: Sequence[str]) -> list[str]:
    """The lines of the Space's ``requirements.txt`` (gradio itself comes from the README's ``sdk_version``)."""
    from importlib.metadata import PackageNotFoundError, requires

    try:
        needed = [line for line in requires("gan-rewrite") or [] if "extra ==" not in line]
    except PackageNotFoundError:  # vendored, not installed: the minimal set of pyproject.toml
        needed = ["torch>=2.1", "huggingface_hub>=0.30", "safetensors>=0.4", "numpy>=1.24", "pillow>=10",
                  "tqdm>=4.60", "pyyaml>=6"]  # fmt: skip
    needed.append("spaces")
    for name in models:
        source = known_models()[name].source if name in known_models() else {}
        if source.get("kind") == "package" and source.get("package") not in needed:
            needed.append(source["package"])
    return needed


def space_card(models: Sequence[str], hardware: str | None, template: str) -> str:
    """The Space's ``README.md``: ``template``'s front matter with ``sdk_version``, ``models`` and
    ``suggested_hardware`` set for this push, then ``template``'s text."""
    import gradio
    import yaml

    match = _FRONT_MATTER.match(template)
    meta = (yaml.safe_load(match.group(1)) if match else None) or {}
    body = template[match.end() :] if match else template
    hub_models = []
    for name in models:
        source = known_model(name).source if name in known_models() else {"kind": "hub", "repo": name}
        if source.get("kind") == "hub" and source.get("repo"):
            hub_models.append(source["repo"])
    meta.update({"sdk": "gradio", "sdk_version": gradio.__version__, "app_file": "app.py"})
    meta["models"] = list(dict.fromkeys(hub_models))
    if not meta["models"]:
        del meta["models"]
    if hardware:
        meta["suggested_hardware"] = hardware
    return "---\n" + yaml.safe_dump(meta, sort_keys=False, allow_unicode=True) + "---\n" + body


def stage_space(folder: Path, models: Sequence[str], hardware: str | None = None, app_dir: Path = APP_DIR) -> Path:
    """Write the Space's files into ``folder`` (see the module docstring); returns ``folder``.

    Raises:
        GanRewriteError: the app is not beside the package (an installed wheel has no ``spaces/``), or a
            model is neither a known name nor a Hub repo id.
    """
    app = app_dir / "app.py"
    if not app.is_file():
        raise GanRewriteError(
            f"the Space's app is not at {app}: `space push` publishes the app of a checkout of the repository; "
            "run it from one (pip install -e '.[demo]')."
        )
    for name in models:
        if name not in known_models() and not _REPO_ID.match(name):
            from .known import did_you_mean

            raise GanRewriteError(
                f"model {name!r}{did_you_mean(name)} is neither a known name ({sorted(known_models())}) nor a Hub "
                "repo id 'owner/name'; a Space can only offer models it can download."
            )
    folder.mkdir(parents=True, exist_ok=True)
    for module in sorted(app_dir.glob("*.py")):  # app.py and the modules beside it (paint_tab.py)
        write_bytes_atomic(folder / module.name, module.read_bytes())
    readme = app_dir / "README.md"
    template = readme.read_text(encoding="utf-8") if readme.is_file() else "# Rewrite a GAN\n"
    write_text_atomic(folder / "README.md", space_card(models, hardware, template))
    write_text_atomic(folder / "requirements.txt", "\n".join(space_requirements(models)) + "\n")
    write_text_atomic(folder / MODELS_FILE, json.dumps({"models": list(models)}, indent=1) + "\n")
    vendored = folder / "gan_rewrite"
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        if "__pycache__" in path.parts:
            continue
        target = vendored / path.relative_to(PACKAGE_DIR)
        target.parent.mkdir(parents=True, exist_ok=True)
        write_bytes_atomic(target, path.read_bytes())
    (vendored / "hub_configs").mkdir(parents=True, exist_ok=True)
    for path in sorted(CONFIG_DIR.glob("*.yaml")):
        write_bytes_atomic(vendored / "hub_configs" / path.name, path.read_bytes())
    for name in models:  # a model shipped inside the package (the toy world's) travels with it
        if name in known_models() and known_models()[name].source.get("kind") == "bundled":
            source = bundled_folder(known_models()[name])
            for path in sorted(p for p in source.iterdir() if p.is_file()):
                write_bytes_atomic(vendored / source.relative_to(PACKAGE_DIR) / path.name, path.read_bytes())
    return folder


def push_space(
    repo_id: str,
    *,
    models: Sequence[str] = DEFAULT_MODELS,
    hardware: str | None = None,
    private: bool | None = None,
    token: str | None = None,
    commit_message: str | None = None,
) -> CommitInfo:
    """Create (or update) the Space ``repo_id`` with the rewriting app offering ``models``.

    Args:
        repo_id: ``owner/name`` of the Space.
        models: known names or Hub repo ids; the first is the one the app opens with.
        hardware: a Space hardware flavour (``cpu-basic``, ``t4-small``, ...), requested for the Space and
            written as its ``suggested_hardware``; default: the Hub's (free CPU).
        private: make a new Space private.
        token: a Hub write token (default: the logged-in one).
        commit_message: the commit's title.

    Returns:
        The ``CommitInfo`` of the upload.

    Raises:
        GanRewriteError: no models, an unknown model or hardware flavour, or no app beside the package.
        HubError: the Hub refused the request or could not be reached.
    """
    from huggingface_hub import HfApi, SpaceHardware

    from .loading import hub_errors

    if not _REPO_ID.match(repo_id):
        raise GanRewriteError(f"give the Space as owner/name, got {repo_id!r}.")
    models = list(dict.fromkeys(models))
    if not models:
        raise GanRewriteError("give at least one model for the Space to offer (--model NAME).")
    flavours = [flavour.value for flavour in SpaceHardware]
    if hardware is not None and hardware not in flavours:
        raise GanRewriteError(f"unknown Space hardware {hardware!r}; choose one of {flavours}.")
    api = HfApi(token=token)
    with tempfile.TemporaryDirectory(prefix="gan-rewrite-space-") as tmp:
        folder = stage_space(Path(tmp), models, hardware)
        with hub_errors(repo_id):
            api.create_repo(repo_id, repo_type="space", space_sdk="gradio", private=private, exist_ok=True)
            if hardware is not None:
                api.request_space_hardware(repo_id, hardware)
            info = api.upload_folder(
                repo_id=repo_id,
                repo_type="space",
                folder_path=str(folder),
                commit_message=commit_message or f"gan-rewrite Space offering {', '.join(models)}",
            )
    logger.info("pushed the Space %s at %s", repo_id, info.oid)
    return info
