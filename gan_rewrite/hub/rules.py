"""Rules on the Hub, shared like LoRAs: a rule repo holds one :class:`~gan_rewrite.rewrite.delta.RuleDelta`.

A rule repo (``owner/name``) has:

* ``rule.safetensors`` — the rule, exactly as :meth:`RuleDelta.save` writes it;
* ``rule.json``        — the request that produced it (the ``spec`` of the rule's metadata), pretty-printed;
* ``preview.png``      — before (top row) / after (bottom row) samples of the base model on a few seeds;
* ``README.md``        — a card with ``library_name: gan-rewrite``, ``base_model: <repo>`` and
  ``base_model_relation: adapter``, so the Hub lists the rule among the base model's adapters.

``RuleDelta.load("owner/name", revision=...)`` and ``G.load_rule("owner/name", revision=...)`` download
``rule.safetensors`` into the standard Hub cache through :func:`hub_rule_resolver`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import tempfile
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..errors import GanRewriteError, RuleNotFoundError
from ..rewrite.delta import RULE_FILENAME
from .loading import _REPO_ID, hub_errors
from .mixin import CARD_NAME

if TYPE_CHECKING:
    from huggingface_hub import CommitInfo
    from PIL import Image

    from ..models.base import GANGenerator
    from ..rewrite.delta import RuleDelta

logger = logging.getLogger(__name__)

SPEC_NAME = "rule.json"
PREVIEW_NAME = "preview.png"


def looks_like_repo_id(source: str) -> bool:
    """Whether ``source`` can be a Hub repo id (``owner/name``) rather than a path to a rule file."""
    return bool(_REPO_ID.match(source)) and not source.endswith(".safetensors")


def hub_rule_resolver(source: str, revision: str | None = None) -> Path:
    """Download ``rule.safetensors`` of the rule repo ``source`` at ``revision`` (standard Hub cache).

    This is the default resolver of :meth:`RuleDelta.load` for sources that are not local paths.

    Args:
        source: a Hub repo id, ``owner/name``.
        revision: branch, tag or commit sha (default: main).

    Returns:
        The local path of the downloaded file.

    Raises:
        RuleNotFoundError: ``source`` is not a repo id, or the repo, revision or file does not exist.
        HubError: the Hub could not be reached (and the file is not cached).

    Example:
        >>> RuleDelta.load("owner/smile", revision="v1")  # uses this resolver
    """
    return download_rule(source, revision=revision)


def download_rule(repo_id: str, *, revision: str | None = None, token: str | None = None) -> Path:
    """:func:`hub_rule_resolver` with a ``token`` (for private rule repos)."""
    from huggingface_hub import hf_hub_download

    if not looks_like_repo_id(repo_id):
        raise RuleNotFoundError(
            f"rule {repo_id[:100]!r} is not a local file, a folder with {RULE_FILENAME}, or a Hub repo id 'owner/name'."
        )
    with rule_hub_errors(repo_id, revision):
        return Path(hf_hub_download(repo_id, RULE_FILENAME, revision=revision, token=token))


@contextlib.contextmanager
def rule_hub_errors(repo_id: str, revision: str | None = None) -> Iterator[None]:
    """:func:`~gan_rewrite.hub.loading.hub_errors` for rule repos: what is missing is a ``RuleNotFoundError``."""
    from huggingface_hub.errors import (
        EntryNotFoundError,
        GatedRepoError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    at = f" (revision {revision!r})" if revision else ""
    with hub_errors(repo_id, revision):
        try:
            yield
        except GatedRepoError:
            raise
        except RepositoryNotFoundError as exc:
            raise RuleNotFoundError(
                f"rule {repo_id!r} is not a local file and no Hub repo {repo_id!r} was found (if it is private, "
                "log in or set HF_TOKEN)."
            ) from exc
        except RevisionNotFoundError as exc:
            raise RuleNotFoundError(
                f"revision {revision!r} of rule repo {repo_id!r} was not found; give a branch, tag or commit sha."
            ) from exc
        except EntryNotFoundError as exc:
            if isinstance(exc, LocalEntryNotFoundError):
                raise  # the Hub is unreachable: hub_errors makes it a HubError
            raise RuleNotFoundError(
                f"Hub repo {repo_id!r}{at} has no {RULE_FILENAME}: it is not a gan-rewrite rule repo."
            ) from exc


def render_preview(
    delta: RuleDelta, generator: GANGenerator, seeds: Iterable[int], *, truncation: float | None = None
) -> Image.Image:
    """A before/after grid: row 1 the generator as it is, row 2 with the rule loaded (at its own scale).

    The rule is loaded under a unique name and unloaded again, so the generator's weights and loaded
    rules are exactly as before, even when sampling fails.

    Args:
        delta: the rule.
        generator: a generator the rule fits (same base layer weights).
        seeds: the seeds of the columns.
        truncation: passed to ``generator.sample``.

    Returns:
        An RGB picture of ``2`` rows × ``len(seeds)`` columns (see :func:`~gan_rewrite.imaging.image_grid`).

    Raises:
        RuleMismatchError / LayerError: the rule does not fit the generator.
        ValueError: ``seeds`` is empty.
    """
    from ..imaging import image_grid

    seeds = [int(s) for s in seeds]
    if not seeds:
        raise ValueError("`seeds` is empty; give at least one seed for the preview.")
    name = f"_preview-{uuid.uuid4().hex}"
    before = generator.sample(seeds, truncation)  # (N, 3, H, W)
    try:
        generator.load_rule(delta, name=name)
        after = generator.sample(seeds, truncation)
    finally:
        if any(rule.name == name for rule in generator.active_rules):
            generator.unload_rules([name])
    return image_grid(torch.cat([before, after]), nrow=len(seeds))


def push_rule(
    delta: RuleDelta,
    repo_id: str,
    *,
    generator: GANGenerator | None = None,
    preview_seeds: Iterable[int] | None = range(8),
    commit_message: str | None = None,
    private: bool | None = None,
    token: str | None = None,
    revision: str | None = None,
) -> CommitInfo:
    """Create the rule repo if needed and upload the rule, its spec, a preview and a card in one commit.

    See :meth:`RuleDelta.push_to_hub` (which calls this) for the arguments.
    """
    from huggingface_hub import HfApi

    from .cards import rule_card

    seeds = list(preview_seeds) if preview_seeds is not None else []
    preview_generator = generator if seeds else None
    if seeds and generator is None:
        preview_generator = _load_base_model(delta, token)
    api = HfApi(token=token)
    layers = ", ".join(delta.layer_names)
    message = commit_message or f"Upload gan-rewrite rule ({layers})"
    if not _REPO_ID.match(delta.base_model):
        logger.warning(
            "the rule's `base_model` %r is not a Hub repo id, so its card cannot link the base model; "
            "make rules on a model loaded from the Hub (or pass `base_model=` to the Rewriter).",
            delta.base_model,
        )
    with tempfile.TemporaryDirectory(prefix="gan-rewrite-rule-") as tmp:
        folder = Path(tmp)
        delta.save(folder / RULE_FILENAME)
        (folder / SPEC_NAME).write_text(json.dumps(delta.spec, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        preview = None
        if preview_generator is not None:
            truncation = delta.spec.get("truncation")
            picture = _preview_or_none(delta, preview_generator, seeds, truncation, strict=generator is not None)
            if picture is not None:
                picture.save(folder / PREVIEW_NAME, format="PNG")
                preview = PREVIEW_NAME
        config = getattr(generator or preview_generator, "config", None)
        extra: dict[str, Any] = (getattr(config, "extra", None) or {}) if config is not None else {}
        card = rule_card(
            delta,
            repo_id=repo_id,
            architecture=getattr(config, "architecture", None) or None,
            license_id=extra.get("license"),
            preview=preview,
        )
        (folder / CARD_NAME).write_text(str(card), encoding="utf-8")
        with rule_hub_errors(repo_id, revision):
            api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
            if revision is not None and revision != "main":
                api.create_branch(repo_id, branch=revision, exist_ok=True)
            info = api.upload_folder(
                repo_id=repo_id,
                folder_path=str(folder),
                commit_message=message,
                revision=revision,
                delete_patterns=None if preview else [PREVIEW_NAME],  # no stale preview of an older rule
            )
    logger.info("pushed rule (%s) to %s at %s", layers, repo_id, info.oid)
    return info


def _load_base_model(delta: RuleDelta, token: str | None) -> GANGenerator | None:
    from .loading import load_generator

    if not delta.base_model:
        logger.warning("skipping the preview: the rule names no `base_model` and no `generator` was given.")
        return None
    try:
        return load_generator(delta.base_model, revision=delta.base_revision or None, token=token)
    except GanRewriteError as err:
        logger.warning("skipping the preview: cannot load base model %r: %s", delta.base_model, err)
        return None


def _preview_or_none(
    delta: RuleDelta, generator: GANGenerator, seeds: list[int], truncation: float | None, *, strict: bool
) -> Image.Image | None:
    """The preview; errors propagate for a generator the caller gave, else they skip the preview."""
    try:
        return render_preview(delta, generator, seeds, truncation=truncation)
    except GanRewriteError as err:
        if strict:
            raise
        logger.warning("skipping the preview: the rule does not load on base model %r: %s", delta.base_model, err)
        return None
