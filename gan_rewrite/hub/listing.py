"""Finding rules others shared: :func:`list_rules` lists the rule repos on the Hub made for one model.

A rule card (:func:`~gan_rewrite.hub.cards.rule_card`) names its base model: ``base_model: <repo>`` with
``base_model_relation: adapter`` when the model is a Hub repo (the Hub then tags the rule
``base_model:adapter:<repo>``), or the tag :func:`model_tag` when it is a known name such as
``dcgan-faces-64``. Listing filters on that tag, newest first, and reads each rule's ``rule.json`` (a few
hundred bytes, cached) for its description.

Example:
    >>> import gan_rewrite as gr
    >>> for rule in gr.list_rules("dcgan-faces-64"):
    ...     print(rule.repo_id, rule.description)
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from ..errors import GanRewriteError, HubError
from .loading import _REPO_ID, hub_errors

logger = logging.getLogger(__name__)

LIBRARY_TAG = "gan-rewrite"


@dataclass(frozen=True)
class RuleListing:
    """One rule repo found by :func:`list_rules`.

    Attributes:
        repo_id: the rule repo, ``owner/name`` (load it with ``G.load_rule(repo_id)``).
        last_modified: when it was last pushed (``None`` if the Hub did not say).
        description: what the rule does, from its ``rule.json`` (e.g. ``layer3: copy seed 4 → paste seed 7``).
        preview_url: the URL of its before/after ``preview.png`` at the listed commit, or ``None``.
        sha: the commit listed.
    """

    repo_id: str
    last_modified: datetime | None
    description: str
    preview_url: str | None
    sha: str | None


def model_tag(model: str) -> str:
    """The tag that marks a rule made for ``model``: the Hub's own ``base_model:adapter:<repo>`` for a Hub repo
    id, else ``gan-rewrite-for-<name>`` (a known name, which the Hub refuses as ``base_model``)."""
    if _REPO_ID.match(model):
        return f"base_model:adapter:{model}"
    return f"gan-rewrite-for-{model}"


def rule_description(spec: dict[str, Any] | None) -> str:
    """One line saying what a rule's request did, e.g. ``layer3: copy seed 4 → paste seed 7, context seed 1``.

    Returns ``""`` for a spec that says nothing readable (e.g. a rule saved without one).
    """
    if not isinstance(spec, dict):
        return ""

    def seed(item: Any) -> Any:
        return item.get("seed") if isinstance(item, dict) else None

    parts = []
    copy, paste, erase = spec.get("copy"), spec.get("paste"), spec.get("erase")
    if seed(copy) is not None and seed(paste) is not None:
        parts.append(f"copy seed {seed(copy)} → paste seed {seed(paste)}")
    elif seed(paste) is not None:
        parts.append(f"paste into seed {seed(paste)}")
    if seed(erase) is not None:
        parts.append(f"erase on seed {seed(erase)}")
    context = [str(seed(item)) for item in spec.get("context") or [] if seed(item) is not None]
    if context:
        parts.append(f"context seed {', '.join(context)}")
    text = ", ".join(parts)
    layer = spec.get("layer")
    return f"{layer}: {text}" if layer and text else text


def list_rules(model: str, *, limit: int = 20, token: str | None = None) -> list[RuleListing]:
    """The rule repos on the Hub made for ``model``, newest first.

    Args:
        model: the base model as rules record it: a Hub repo id (``owner/name``) or a known name.
        limit: at most this many rules.
        token: Hub token (private rule repos of its owner are listed too).

    Returns:
        :class:`RuleListing` records, most recently pushed first; a rule whose ``rule.json`` cannot be read
        is listed with an empty description.

    Raises:
        HubError: the Hub could not be reached.
        ValueError: ``limit`` is below 1.

    Example:
        >>> gr.list_rules("owner/stylegan2-ffhq")[0].repo_id
        'someone/smile'
    """
    from huggingface_hub import HfApi, hf_hub_download, hf_hub_url

    if limit < 1:
        raise ValueError(f"`limit` must be at least 1, got {limit}.")
    api = HfApi(token=token)
    with hub_errors(f"rules of {model}"):
        found = list(
            api.list_models(
                filter=[LIBRARY_TAG, model_tag(model)],
                sort="last_modified",
                limit=limit,
                expand=["lastModified", "sha", "siblings", "tags"],
            )
        )
    found.sort(key=lambda info: info.last_modified.timestamp() if info.last_modified else 0.0, reverse=True)
    out = []
    for info in found:
        files = {sibling.rfilename for sibling in info.siblings or []}
        description = ""
        if "rule.json" in files:
            try:
                with hub_errors(info.id):
                    path = hf_hub_download(info.id, "rule.json", revision=info.sha, token=token)
                description = rule_description(json.loads(Path(path).read_text(encoding="utf-8")))
            except HubError:
                raise
            except (GanRewriteError, OSError, ValueError) as err:
                logger.warning("rule %s: cannot read its rule.json: %s", info.id, err)
        preview = hf_hub_url(info.id, "preview.png", revision=info.sha) if "preview.png" in files else None
        out.append(RuleListing(info.id, info.last_modified, description, preview, info.sha))
    return out
