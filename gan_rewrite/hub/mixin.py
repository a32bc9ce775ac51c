"""``save_pretrained`` / ``push_to_hub`` / ``from_pretrained`` for every generator, in the huggingface_hub manner.

A model folder is ``config.json`` + ``model.safetensors`` (the architecture's published key layout) +
``README.md`` (a model card). The three are written into a sibling staging folder that then replaces the
folder in one atomic swap (:func:`~gan_rewrite.atomic.write_folder_atomic`), so an interrupted save never
leaves a half-written model, nor a new config beside old weights; leftovers of killed saves are removed.
"""

from __future__ import annotations

import json
import tempfile
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..atomic import write_folder_atomic

if TYPE_CHECKING:
    import torch
    from huggingface_hub import CommitInfo

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
CARD_NAME = "README.md"


class HubMixin:
    """Adds the Hub verbs to a generator; relies on ``self.config`` and ``self.state_dict()``."""

    def _tensors_to_save(self) -> dict[str, torch.Tensor]:
        """The tensors written to model.safetensors (the rule mixin narrows this to the base weights)."""
        return self.state_dict()  # type: ignore[attr-defined]

    def save_pretrained(
        self,
        save_directory: str | Path,
        *,
        push_to_hub: bool = False,
        repo_id: str | None = None,
        **push_kwargs: Any,
    ) -> Path:
        """Write the model folder (config.json, model.safetensors, README.md) to ``save_directory``.

        Args:
            save_directory: the folder to write; created if missing. Existing files are replaced atomically.
            push_to_hub: also push the folder to the Hub repo ``repo_id``.
            repo_id: the Hub repo for ``push_to_hub`` (defaults to the folder name).
            **push_kwargs: passed on to :meth:`push_to_hub` (``private``, ``token``, ``commit_message``, ...).

        Returns:
            The folder path.
        """
        from safetensors.torch import save_file

        from ..hub.convert import check_finite_state
        from .cards import model_card

        folder = Path(save_directory)
        if folder.exists() and not folder.is_dir():
            raise NotADirectoryError(f"`save_directory` {str(folder)!r} exists and is not a folder.")
        check_finite_state(self, "the model to save")  # never write a folder that would not load again
        # The same random id in config.json and the weights' metadata: a reader that opens the two files while a
        # save swaps the folder can tell it got one file of each save, and reads them again.
        save_id = uuid.uuid4().hex
        config = {**self.config.to_dict(), "save_id": save_id}  # type: ignore[attr-defined]
        tensors = {k: v.detach().cpu().contiguous() for k, v in self._tensors_to_save().items()}

        def write(staging: Path) -> None:
            save_file(tensors, str(staging / WEIGHTS_NAME), metadata={"format": "pt", "save_id": save_id})
            (staging / CONFIG_NAME).write_text(json.dumps(config, indent=2, sort_keys=False) + "\n", encoding="utf-8")
            (staging / CARD_NAME).write_text(str(model_card(config, repo_id=repo_id)), encoding="utf-8")

        write_folder_atomic(folder, write, owned=(WEIGHTS_NAME, CONFIG_NAME, CARD_NAME))
        if push_to_hub:
            self.push_to_hub(repo_id or folder.name, **push_kwargs)
        return folder

    def push_to_hub(
        self,
        repo_id: str,
        *,
        commit_message: str | None = None,
        private: bool | None = None,
        token: str | None = None,
        revision: str | None = None,
        create_pr: bool = False,
    ) -> CommitInfo:
        """Create ``repo_id`` if needed and upload the model folder to it in one commit.

        Args:
            repo_id: ``owner/name`` on the Hub.
            commit_message: defaults to "Upload <architecture> generator with gan-rewrite".
            private: create the repo as private (ignored when it exists).
            token: a Hub token; defaults to the one the client finds (``HF_TOKEN``, login).
            revision: the branch to commit to (created from main if missing).
            create_pr: open a pull request instead of committing directly.

        Returns:
            The client's ``CommitInfo`` (``.oid`` is the new commit sha).
        """
        from huggingface_hub import HfApi

        from .loading import hub_errors

        api = HfApi(token=token)
        message = commit_message or f"Upload {self.config.architecture} generator with gan-rewrite"  # type: ignore[attr-defined]
        with hub_errors(repo_id, revision):
            api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
            if revision is not None and revision != "main":
                api.create_branch(repo_id, branch=revision, exist_ok=True)
            with tempfile.TemporaryDirectory(prefix="gan-rewrite-push-") as tmp:
                self.save_pretrained(tmp, repo_id=repo_id)
                return api.upload_folder(
                    repo_id=repo_id, folder_path=tmp, commit_message=message, revision=revision,
                    create_pr=create_pr,
                )

    @classmethod
    def from_pretrained(
        cls, pretrained: str | Path, *, revision: str | None = None, device: Any = None,
        token: str | None = None,
    ) -> Any:
        """Load a generator from a Hub repo id, a model folder or a known name (see ``load_generator``)."""
        from .loading import load_generator

        return load_generator(pretrained, revision=revision, device=device, token=token)
