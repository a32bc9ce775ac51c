"""Layer runs kept between solves of one rewrite request, so a new rank, region or method runs no forward pass.

A :class:`RunCache` belongs to one ``Rewriter``. While it is active (``with cache.active(G):``), every
:func:`~gan_rewrite.rewrite.context.run_layer` call for the same generator, layer, seeds and truncation
returns the run it stored, instead of running the generator again. It is emptied whenever the generator
may compute something else: any parameter or buffer modified in place, moved or replaced (a rule loaded,
rescaled, fused or unloaded, ``load_weights``, ``.to()``), or the list of active rules changed. Seeds that
change (a new context, copy or paste sample) are simply new keys; the oldest entries are dropped beyond
``size``.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch import nn

_ACTIVE: ContextVar[RunCache | None] = ContextVar("gan_rewrite_run_cache", default=None)


def model_fingerprint(G: nn.Module) -> tuple[Any, ...]:
    """Cheap identity of everything the generator computes with: each parameter's and buffer's object,
    storage, shape, dtype, device and in-place version counter, and the active rules (names, scales, fused).
    Any weight change through torch bumps a version or swaps a tensor, so the fingerprint changes with it."""
    tensors = [*G.parameters(), *G.buffers()]
    rules = tuple((r.name, r.scale, r.fused) for r in getattr(G, "active_rules", []) or [])
    return (
        id(G),
        rules,
        *((id(t), t.data_ptr(), t._version, tuple(t.shape), t.dtype, t.device) for t in tensors),
    )


class RunCache:
    """Stored layer runs of one request (see the module docstring).

    Args:
        size: at most this many runs are kept (each is the layer's input state, keys and output of one
            sample: about 12 MB for a 256px StyleGAN2 at ``layer8``).
    """

    def __init__(self, size: int = 16) -> None:
        self.size = size
        self.entries: OrderedDict[Hashable, Any] = OrderedDict()
        self.fingerprint: tuple[Any, ...] | None = None
        self.hits = 0
        self.misses = 0

    def clear(self) -> None:
        self.entries.clear()
        self.fingerprint = None

    @contextmanager
    def active(self, G: nn.Module) -> Iterator[RunCache]:
        """Make this cache the one :func:`run_layer` consults, after checking that ``G`` is unchanged."""
        if _ACTIVE.get() is self:  # nested call of the same request: already checked
            yield self
            return
        fingerprint = model_fingerprint(G)
        if fingerprint != self.fingerprint:
            self.entries.clear()
            self.fingerprint = fingerprint
        token = _ACTIVE.set(self)
        try:
            yield self
        finally:
            _ACTIVE.reset(token)

    def get(self, key: Hashable) -> Any | None:
        run = self.entries.get(key)
        if run is None:
            self.misses += 1
            return None
        self.entries.move_to_end(key)
        self.hits += 1
        return run

    def put(self, key: Hashable, run: Any) -> None:
        self.entries[key] = run
        self.entries.move_to_end(key)
        while len(self.entries) > self.size:
            self.entries.popitem(last=False)


def active_cache() -> RunCache | None:
    """The cache :func:`run_layer` should consult now, or ``None`` (outside any ``RunCache.active``)."""
    return _ACTIVE.get()
