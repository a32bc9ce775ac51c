"""SHA-256 digests that identify a model or a layer weight, cached until a tensor changes.

Rules check the layer weight they were solved on and statistics the model they were computed on, on
every load and solve; hashing a 256px StyleGAN2 costs ~0.1-0.2 s, so digests are remembered on the module.

The cache key must be something that can never be reused by another tensor. A storage pointer can: a
freshly computed tensor may land at the address of a freed one, with the same version counter (0), and
would get its digest. So each tensor object carries a *token* from a process-wide counter (an attribute
set on first use, never reassigned), and the key is the token plus the version counter (bumped by every
in-place change), device, dtype, shape and pointer. A new tensor object always gets a new token. (A
``WeakKeyDictionary`` of tensors is not an option: tensors compare element-wise, not by identity.)
Pass the tensor objects that persist (parameters, ``state_dict(keep_vars=True)``); a ``detach()``-ed copy
is a new object and is hashed again each time.
"""

from __future__ import annotations

import hashlib
import itertools
import os
from collections.abc import Callable, Iterable

import torch
from torch import Tensor

_CACHE_ATTR = "_gan_rewrite_digests"
_CACHE_SIZE = 64
_TOKEN_ATTR = "_gan_rewrite_token"
_tokens = itertools.count(1)


def tensor_sha256(tensor: Tensor) -> str:
    """SHA-256 of a weight as float32, CPU, C order: the digest a rule records as ``base_layer_sha256``."""
    data = tensor.detach().to("cpu", torch.float32).contiguous()
    return hashlib.sha256(data.numpy()).hexdigest()


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of a file's bytes, read in 1 MiB blocks (provenance of checkpoints and rule files)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def state_sha256(tensors: Iterable[tuple[str, Tensor]]) -> str:
    """SHA-256 over named tensors (name, dtype, shape and raw bytes, in name order)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(tensors, key=lambda item: item[0]):
        data = tensor.detach().to("cpu").contiguous().reshape(-1)
        digest.update(f"{name}|{data.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(data.view(torch.uint8).numpy())
    return digest.hexdigest()


def cached_digest(owner: torch.nn.Module, key: str, tensors: list[Tensor], compute: Callable[[], str]) -> str:
    """``compute()``, remembered on ``owner`` until any of ``tensors`` is modified, moved or replaced."""
    fingerprint = (
        key, *((tensor_token(t), t.device, t.dtype, tuple(t.shape), t.data_ptr(), t._version) for t in tensors)
    )
    cache: dict = owner.__dict__.setdefault(_CACHE_ATTR, {})
    if fingerprint not in cache:
        if len(cache) >= _CACHE_SIZE:
            cache.pop(next(iter(cache)))
        cache[fingerprint] = compute()
    return cache[fingerprint]


def tensor_token(tensor: Tensor) -> int:
    """A number that identifies this tensor *object* for the life of the process (never reused)."""
    token = tensor.__dict__.get(_TOKEN_ATTR)
    if token is None:
        token = next(_tokens)
        tensor.__dict__[_TOKEN_ATTR] = token
    return token
