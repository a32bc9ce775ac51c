"""Atomic writes: a file (or a folder's set of files) is either the old one or the complete new one, never a mix."""

from __future__ import annotations

import contextlib
import ctypes
import glob
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; rename it over ``target`` only if the block succeeds.

    The temporary file lives in the same folder so the final ``os.replace`` is atomic on POSIX and
    Windows. On any exception the temporary file is removed and ``target`` is left untouched.

    Example:
        >>> with atomic_path("model.safetensors") as tmp:
        ...     safetensors.torch.save_file(tensors, tmp)
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.chmod(tmp, usual_mode())  # mkstemp makes 0600 files; give the usual permissions
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def usual_mode(*, folder: bool = False) -> int:
    """The permissions ``open()`` / ``mkdir()`` would give under the current umask (temp files get 0600)."""
    mask = os.umask(0)
    os.umask(mask)
    return (0o777 if folder else 0o666) & ~mask


def write_text_atomic(target: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``target`` atomically."""
    with atomic_path(target) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_bytes_atomic(target: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``target`` atomically."""
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)


# ----- whole folders ---------------------------------------------------------------------------------------
_SAVING, _OLD = ".saving-", ".old-"


@contextlib.contextmanager
def folder_lock(folder: str | os.PathLike) -> Iterator[None]:
    """Hold an exclusive lock for replacing ``folder``: ``flock`` on its parent directory (no lock file is left).

    Where ``fcntl`` is missing (Windows) this is a no-op; saves to one folder must then not race.
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    fd = os.open(Path(folder).parent, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def clean_stale(folder: str | os.PathLike, owned: Iterable[str] = ()) -> None:
    """Remove what interrupted saves of ``folder`` left behind. Call with :func:`folder_lock` held.

    Staging folders ``.<name>.saving-*`` beside it, temporary files ``.<file>.*.tmp`` of the ``owned`` files
    inside it (written by :func:`atomic_path`), and ``.<name>.old-*`` — which, if ``folder`` itself is
    missing (a save died between its two renames), is the complete previous folder and is put back.
    """
    folder = Path(folder)
    if not folder.parent.is_dir():
        return
    for entry in folder.parent.iterdir():
        if entry.name.startswith(f".{folder.name}{_OLD}"):
            if not folder.exists():
                entry.rename(folder)
            else:
                shutil.rmtree(entry, ignore_errors=True)
    for entry in folder.parent.iterdir():
        if entry.name.startswith(f".{folder.name}{_SAVING}"):
            shutil.rmtree(entry, ignore_errors=True)
    if folder.is_dir():
        for name in owned:
            for leftover in folder.glob(f".{glob.escape(name)}.*.tmp"):
                with contextlib.suppress(FileNotFoundError):
                    leftover.unlink()


def write_folder_atomic(
    folder: str | os.PathLike, write: Callable[[Path], None], owned: Iterable[str]
) -> Path:
    """Replace the ``owned`` files of ``folder`` all at once: readers see the old set or the new set, never a mix.

    ``write(staging)`` writes the new files into a sibling staging folder; other entries of an existing
    ``folder`` are hard-linked (copied where links fail) into it; then one ``renameat2(RENAME_EXCHANGE)``
    swaps the two folders atomically (on Linux), or, where that is unavailable, two renames with the old
    folder kept as ``.<name>.old-*`` in between (restored by :func:`clean_stale` if the process dies there).
    The whole save holds :func:`folder_lock`, and first removes what earlier interrupted saves left.

    Returns:
        ``folder``.
    """
    folder = Path(folder)
    owned = set(owned)
    if folder.exists() and not folder.is_dir():
        raise NotADirectoryError(f"{str(folder)!r} exists and is not a folder.")
    folder.parent.mkdir(parents=True, exist_ok=True)
    with folder_lock(folder):
        clean_stale(folder, owned)
        staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}{_SAVING}", dir=folder.parent))
        try:
            write(staging)
            for name in owned:  # some writers (safetensors) make 0600 files: give the usual permissions
                if (staging / name).is_file():
                    os.chmod(staging / name, usual_mode())
            if folder.is_dir():
                for entry in folder.iterdir():
                    if entry.name in owned or (staging / entry.name).exists():
                        continue
                    if entry.is_dir() and not entry.is_symlink():
                        shutil.copytree(entry, staging / entry.name, symlinks=True, copy_function=_link_or_copy)
                    else:
                        _link_or_copy(entry, staging / entry.name)
            os.chmod(staging, usual_mode(folder=True))  # mkdtemp makes a 0700 folder
            _swap_in(staging, folder)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return folder


def _swap_in(staging: Path, folder: Path) -> None:
    """Put ``staging`` at ``folder``: one rename, or one atomic exchange (``staging`` then holds the old one)."""
    if not folder.exists():
        staging.rename(folder)
    elif not _exchange(staging, folder):
        old = Path(tempfile.mkdtemp(prefix=f".{folder.name}{_OLD}", dir=folder.parent))
        old.rmdir()
        folder.rename(old)
        try:
            staging.rename(folder)
        except BaseException:
            old.rename(folder)
            raise
        shutil.rmtree(old, ignore_errors=True)


def _link_or_copy(source: str | os.PathLike, target: str | os.PathLike) -> None:
    try:
        os.link(source, target, follow_symlinks=False)
    except OSError:
        shutil.copy2(source, target, follow_symlinks=False)


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths with Linux's ``renameat2(..., RENAME_EXCHANGE)``; False where unsupported."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    at_fdcwd, rename_exchange = -100, 2
    return renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0
