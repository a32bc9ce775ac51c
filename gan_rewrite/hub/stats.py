"""Key statistics beside a model on the Hub: ``stats/<layer>.safetensors`` in the model repo.

Statistics take minutes to compute on a large model and are the same for everyone using it, so they can be
pushed into the model's own repo once (:func:`push_stats`) and fetched by anyone (:func:`fetch_stats`).
A fetched file is only used when it answers the request: same layer, same model hash (so statistics of
another model state are never used silently) and, where asked, the same ``n``, truncation and seed.

A :class:`~gan_rewrite.rewrite.rewriter.Rewriter` on a generator loaded from the Hub (which records its
``G.hub_source``) looks here automatically, after the local cache and before computing.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import GanRewriteError
from ..rewrite.stats import KeyStats, stats_filename
from .loading import HubSource, hub_errors

if TYPE_CHECKING:
    from huggingface_hub import CommitInfo

logger = logging.getLogger(__name__)

_UNSET = object()


def push_stats(
    stats: KeyStats,
    repo_id: str,
    *,
    token: str | None = None,
    revision: str | None = None,
    commit_message: str | None = None,
) -> CommitInfo:
    """Upload statistics into a model repo as ``stats/<layer>.safetensors`` (one commit).

    The repo must exist (it is the model's repo); a previous file for the same layer is replaced.

    Args:
        stats: what :func:`~gan_rewrite.rewrite.stats.compute_stats` returned for the repo's model.
        repo_id: the model repo, ``owner/name``.
        token: a Hub token; defaults to the one the client finds.
        revision: the branch to commit to (default: main).
        commit_message: defaults to "Add key statistics for <layer> (n=<n>)".

    Returns:
        The client's ``CommitInfo`` (``.oid`` is the new commit sha).

    Raises:
        ModelNotFoundError: the repo or branch does not exist.
        HubError: the Hub could not be reached or refused the upload.

    Example:
        >>> stats = gr.compute_stats(G, "layer8", n=1000)
        >>> push_stats(stats, "owner/stylegan2-church")
    """
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    path_in_repo = stats_filename(stats.layer)
    message = commit_message or f"Add key statistics for {stats.layer} (n={stats.n})"
    with tempfile.TemporaryDirectory(prefix="gan-rewrite-stats-") as tmp:
        local = stats.save(Path(tmp) / "stats.safetensors")
        with hub_errors(repo_id, revision):
            info = api.upload_file(
                path_or_fileobj=str(local),
                path_in_repo=path_in_repo,
                repo_id=repo_id,
                revision=revision,
                commit_message=message,
            )
    logger.info("pushed key statistics for %s to %s/%s", stats.layer, repo_id, path_in_repo)
    return info


def fetch_stats(
    repo_id: str,
    layer: str,
    *,
    revision: str | None = None,
    n: int | None = None,
    truncation: float | None | object = _UNSET,
    seed: int | None = None,
    model_sha256: str | None = None,
    token: str | None = None,
) -> KeyStats | None:
    """Download ``stats/<layer>.safetensors`` from a model repo, if present and matching.

    Args:
        repo_id: the model repo, ``owner/name``.
        layer: the layer the statistics are for.
        revision: branch, tag or commit sha (default: main).
        n: required number of samples (``None``: any).
        truncation: required truncation; pass ``None`` to require the model's default. Omitted: any.
        seed: required first seed (``None``: any).
        model_sha256: required :func:`~gan_rewrite.rewrite.stats.model_sha256` (``None``: any).
        token: a Hub token for private repos.

    Returns:
        The statistics, or ``None`` when the repo has no such file or it does not match the request
        (the reason is logged).

    Raises:
        ModelNotFoundError: the repo or revision does not exist.
        HubError: the Hub could not be reached.
        StatsError: the file is not a statistics file.

    Example:
        >>> stats = fetch_stats("owner/stylegan2-church", "layer8", n=1000, model_sha256=model_sha256(G))
    """
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

    filename = stats_filename(layer)
    with hub_errors(repo_id, revision):
        try:
            local = hf_hub_download(repo_id, filename, revision=revision, token=token)
        except EntryNotFoundError as exc:
            if isinstance(exc, LocalEntryNotFoundError):
                raise  # the Hub is unreachable: hub_errors says so
            logger.info("Hub repo %s (revision %s) has no %s", repo_id, revision or "main", filename)
            return None
    stats = KeyStats.load(local)
    wanted: dict[str, object] = {"layer": layer, "model_sha256": model_sha256, "n": n, "seed": seed}
    wanted = {key: value for key, value in wanted.items() if value is not None}
    if truncation is not _UNSET:
        wanted["truncation"] = None if truncation is None else float(truncation)  # type: ignore[arg-type]
    for key, value in wanted.items():
        if getattr(stats, key) != value:
            logger.info(
                "ignoring %s from %s: its %s is %r, wanted %r", filename, repo_id, key, getattr(stats, key), value
            )
            return None
    return stats


def stats_from_source(
    source: HubSource,
    layer: str,
    *,
    model_sha256: str,
    n: int,
    truncation: float | None,
    seed: int,
) -> KeyStats | None:
    """Statistics for a request from the repo a generator was loaded from (``G.hub_source``), or ``None``.

    Looks at the revision the model was loaded by (statistics may have been pushed after the model), then
    at the exact commit it was downloaded at, then at main; the model hash check makes any of them safe.
    Any Hub or file problem is logged and answered with ``None``, so the caller falls back to computing.
    """
    for revision in dict.fromkeys([source.revision, source.commit, None]):
        try:
            stats = fetch_stats(
                source.repo_id,
                layer,
                revision=revision,
                n=n,
                truncation=truncation,
                seed=seed,
                model_sha256=model_sha256,
            )
        except GanRewriteError as err:
            logger.warning("could not use key statistics from Hub repo %s: %s", source.repo_id, err)
            return None
        if stats is not None:
            logger.info("key statistics for %s from Hub repo %s", layer, source.repo_id)
            return stats
    return None
