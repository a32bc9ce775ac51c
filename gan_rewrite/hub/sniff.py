"""A first look at a file someone handed us, before any parser touches it."""

from __future__ import annotations

from pathlib import Path

from ..errors import CheckpointError, ModelNotFoundError

IMAGE_MAGIC = {b"\x89PNG": "a PNG image", b"\xff\xd8\xff": "a JPEG image", b"GIF8": "a GIF image"}


def read_head(path: Path, noun: str) -> bytes:
    """The first 16 bytes of ``path``, refusing a missing, empty or image file by name.

    Args:
        path: the file.
        noun: what the file should be, for the messages ("checkpoint", "network pickle").

    Raises:
        ModelNotFoundError: the path does not exist or is a folder.
        CheckpointError: the file is empty or is a picture.
    """
    if not path.is_file():
        raise ModelNotFoundError(f"{noun} {str(path)!r} does not exist (or is a folder).")
    with path.open("rb") as handle:
        head = handle.read(16)
    if not head:
        raise CheckpointError(f"{str(path)!r} is empty (0 bytes); it is not a {noun}.")
    for magic, kind in IMAGE_MAGIC.items():
        if head.startswith(magic):
            raise CheckpointError(f"{str(path)!r} is {kind}, not a {noun}.")
    return head
