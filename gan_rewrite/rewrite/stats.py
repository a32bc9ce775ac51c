"""Second-moment statistics of the keys at a layer: ``C = E[k kᵀ]`` over every location of n samples.

``C`` tells the solver which key directions are common (changing them would disturb many images) and
which are rare; the rule direction ``C⁻¹k*`` is the update that disturbs other keys least.

Only the generator up to the layer is run. Each batch adds ``KᵀK`` to a running float64 sum (float32
products over blocks of locations, :func:`add_key_moments`); the sum, the key sum and the count are all
that is kept. Under
``torch.distributed`` every rank takes a contiguous share of the seeds and the sums are all-reduced.
Results save to ``stats/<layer>.safetensors`` and are cached by (model hash, layer, n, truncation, seed).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from ..atomic import atomic_path
from ..errors import StatsError
from ..hashing import cached_digest, state_sha256
from .layers import layer_kind

if TYPE_CHECKING:
    from ..models.base import GANGenerator

logger = logging.getLogger(__name__)

STATS_FORMAT = "gan-rewrite.stats/1"


def model_sha256(G: torch.nn.Module) -> str:
    """SHA-256 over the whole state dict (names, dtypes, shapes and bytes, in name order).

    Identifies "the same model" for caching statistics; loaded (unfused or fused) rules change it,
    as they should, since they change the keys of later layers. Cached until a tensor changes.
    """
    state = G.state_dict(keep_vars=True)  # the live tensors: their cache tokens persist (see hashing.py)
    return cached_digest(G, "model", list(state.values()), lambda: state_sha256(state.items()))


@dataclass
class KeyStats:
    """Statistics of the keys at one layer.

    Attributes:
        second_moment: ``C = E[k kᵀ]`` ``(I, I)`` float64 (uncentred).
        mean: ``E[k]`` ``(I,)`` float64.
        count: number of key vectors (locations × samples) averaged.
        layer: the layer name.
        model_sha256: :func:`model_sha256` of the generator they were computed on.
        n: number of samples; seeds ``seed, seed+1, …, seed+n-1``.
        truncation: the truncation used (``None``: the model's default).
        seed: the first seed.
    """

    second_moment: Tensor
    mean: Tensor
    count: int
    layer: str
    model_sha256: str
    n: int
    truncation: float | None
    seed: int
    _factors: dict[tuple[str, float], Tensor] = field(default_factory=dict, init=False, repr=False, compare=False)

    @property
    def dim(self) -> int:
        return int(self.mean.shape[0])

    def ridge(self, eps: float = 1e-3) -> float:
        """``ε·tr(C)/I``: the diagonal loading added before every solve with ``C``."""
        return float(eps * torch.trace(self.second_moment) / self.dim)

    def solve(self, rhs: Tensor, eps: float = 1e-3) -> Tensor:
        """``(C + ridge·I)⁻¹ rhs`` by a Cholesky solve (``C`` is never inverted).

        Args:
            rhs: ``(I,)`` or ``(I, m)``.

        Returns:
            Same shape as ``rhs``, float64.
        """
        vector = rhs.ndim == 1
        b = rhs.to("cpu", torch.float64).reshape(self.dim, -1)
        x = torch.cholesky_solve(b, self._factor("cholesky", eps))
        return x[:, 0] if vector else x

    def inv_sqrt(self, eps: float = 1e-3) -> Tensor:
        """``(C + ridge·I)^-½`` ``(I, I)`` float64, the ZCA whitening map (symmetric)."""
        return self._factor("inv_sqrt", eps)

    def _factor(self, name: str, eps: float) -> Tensor:
        """Cholesky factor / inverse square root of ``C + ridge·I``, computed once per ``eps``."""
        key = (name, float(eps))
        if key not in self._factors:
            system = self.second_moment + self.ridge(eps) * torch.eye(self.dim, dtype=torch.float64)
            try:
                if name == "cholesky":
                    self._factors[key] = torch.linalg.cholesky(system)
                else:
                    values, vectors = torch.linalg.eigh(system)
                    self._factors[key] = (vectors * values.clamp_min(1e-30).rsqrt()) @ vectors.T
            except torch.linalg.LinAlgError as err:
                raise StatsError(
                    f"the key statistics of {self.layer!r} are not a second-moment matrix (not positive "
                    f"semi-definite): {err}"
                ) from err
        return self._factors[key]

    # ----- files -------------------------------------------------------------------------------
    def metadata(self) -> dict[str, str]:
        return {
            "format": STATS_FORMAT,
            "model_sha256": self.model_sha256,
            "layer": self.layer,
            "n": str(self.n),
            "truncation": "" if self.truncation is None else repr(float(self.truncation)),
            "seed": str(self.seed),
        }

    def save(self, path: str | os.PathLike) -> Path:
        """Write ``second_moment``, ``mean``, ``count`` and the metadata to a safetensors file, atomically."""
        from safetensors.torch import save_file

        path = Path(path)
        tensors = {
            "second_moment": self.second_moment.to(torch.float64).contiguous(),
            "mean": self.mean.to(torch.float64).contiguous(),
            "count": torch.tensor([self.count], dtype=torch.int64),
        }
        with atomic_path(path) as tmp:
            save_file(tensors, str(tmp), metadata=self.metadata())
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> KeyStats:
        """Read statistics written by :meth:`save`.

        Raises:
            StatsError: the file is missing, unreadable, or not a statistics file: wrong shapes or dtypes,
                NaN / infinite values, a matrix that is not symmetric with a non-negative diagonal, or
                out-of-range metadata.
        """
        from safetensors import SafetensorError, safe_open

        path = Path(path)
        if not path.is_file():
            raise StatsError(f"no statistics file at {str(path)!r}.")
        try:
            with safe_open(str(path), framework="pt") as handle:
                meta = handle.metadata() or {}
                tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
        except (SafetensorError, OSError) as err:
            raise StatsError(f"cannot read statistics file {str(path)!r}: {err}") from err
        if meta.get("format") != STATS_FORMAT or set(tensors) != {"second_moment", "mean", "count"}:
            raise StatsError(f"{str(path)!r} is not a gan-rewrite statistics file.")
        second_moment, mean, count = tensors["second_moment"], tensors["mean"], tensors["count"]
        dim = mean.shape[0] if mean.ndim == 1 else 0
        layout_ok = (
            dim >= 1
            and second_moment.shape == (dim, dim)
            and count.shape == (1,)
            and second_moment.dtype == mean.dtype == torch.float64
            and count.dtype == torch.int64
        )
        if not layout_ok:
            raise StatsError(
                f"statistics file {str(path)!r} needs `second_moment` float64 (I, I), `mean` float64 (I,) and "
                f"`count` int64 (1,); got {second_moment.dtype} {tuple(second_moment.shape)}, {mean.dtype} "
                f"{tuple(mean.shape)} and {count.dtype} {tuple(count.shape)}."
            )
        if not (bool(torch.isfinite(second_moment).all()) and bool(torch.isfinite(mean).all())):
            raise StatsError(f"statistics file {str(path)!r} holds NaN or infinite values.")
        asymmetry = float((second_moment - second_moment.T).abs().max())
        if asymmetry > 1e-6 * float(second_moment.abs().max()) or bool((second_moment.diagonal() < 0).any()):
            raise StatsError(f"statistics file {str(path)!r}: `second_moment` is not a second-moment matrix.")
        try:
            truncation = float(meta["truncation"]) if meta.get("truncation") else None
            stats = cls(
                second_moment=second_moment,
                mean=mean,
                count=int(count[0]),
                layer=meta["layer"],
                model_sha256=meta["model_sha256"],
                n=int(meta["n"]),
                truncation=truncation,
                seed=int(meta["seed"]),
            )
        except (KeyError, ValueError) as err:
            raise StatsError(f"statistics file {str(path)!r} has malformed metadata: {err}") from err
        if stats.count < 1 or stats.n < 1 or stats.seed < 0:
            raise StatsError(
                f"statistics file {str(path)!r}: `count`, `n` must be positive and `seed` non-negative, got "
                f"{stats.count}, {stats.n}, {stats.seed}."
            )
        if stats.truncation is not None and not 0.0 <= stats.truncation <= 1.0:
            raise StatsError(f"statistics file {str(path)!r}: `truncation` must be in [0, 1], got {stats.truncation}.")
        return stats

    def matches(self, model_hash: str, layer: str, n: int, truncation: float | None, seed: int) -> bool:
        """Whether these statistics answer the request (used by the cache)."""
        return (self.model_sha256, self.layer, self.n, self.truncation, self.seed) == (
            model_hash,
            layer,
            n,
            None if truncation is None else float(truncation),
            seed,
        )


def stats_filename(layer: str) -> str:
    """``stats/<layer>.safetensors``: where statistics live in a model folder."""
    return f"stats/{layer}.safetensors"


def default_cache_dir() -> Path:
    """``<gan-rewrite home>/stats``."""
    from ..hub.known import cache_home

    return cache_home() / "stats"


def cache_path(
    cache_dir: str | os.PathLike, model_hash: str, layer: str, n: int, truncation: float | None, seed: int
) -> Path:
    """The cache file for one request: ``<cache_dir>/<model hash>/<layer>.n<n>.t<trunc>.s<seed>.safetensors``."""
    trunc = "default" if truncation is None else repr(float(truncation))
    return Path(cache_dir) / model_hash / f"{layer}.n{n}.t{trunc}.s{seed}.safetensors"


BLOCK = 1024
"""Locations per float32 product in :func:`add_key_moments` (each product is summed in float64)."""

GROUP = 8
"""Samples per batched product in :func:`add_key_moments` (bounds its ``(GROUP, I, I)`` buffer)."""


@torch.no_grad()
def accumulate_keys(
    G: GANGenerator,
    layer: str,
    seeds: Sequence[int],
    *,
    batch_size: int,
    truncation: float | None,
    progress: bool = True,
) -> tuple[Tensor, Tensor, int]:
    """``(Σ k kᵀ, Σ k, count)`` in float64 over every location of the samples of ``seeds``.

    See :func:`add_key_moments` for how each batch is added.
    """
    from tqdm.auto import tqdm

    module = G.layer_module(layer)
    kind = layer_kind(module)
    in_ch = kind.shape(module.weight)[1]
    device = G.device
    acc_device = device if device.type == "cuda" else torch.device("cpu")
    outer = torch.zeros(in_ch, in_ch, dtype=torch.float64, device=acc_device)
    total = torch.zeros(in_ch, dtype=torch.float64, device=acc_device)
    count = 0
    starts = range(0, len(seeds), batch_size)
    for start in tqdm(starts, desc=f"key stats {layer}", unit="batch", disable=not progress):
        chunk = list(seeds[start : start + batch_size])
        noise = G.make_noise(chunk, layers=G.layer_index(layer))  # only what forward_to needs
        state = G.forward_to(layer, G.make_latents(chunk), truncation, noise=noise)
        count += add_key_moments(outer, total, kind.keys(module, state).to(acc_device))
    return outer.cpu(), total.cpu(), count


def add_key_moments(outer: Tensor, total: Tensor, keys: Tensor, block: int = BLOCK, group: int = GROUP) -> int:
    """Add ``Σ k kᵀ`` and ``Σ k`` over every location of a key map ``(N, I, h, w)`` to float64 sums in place.

    Each sample's keys are read as they lie, an ``(I, h·w)`` matrix (no transposed or float64 copy of the
    key tensor): one batched float32 product ``K Kᵀ`` per ``group`` samples and ``block`` locations, whose
    per-sample results are summed in float64. The float32 rounding of one product is about
    ``√block · 2⁻²⁴`` relative and products do not compound, so the result agrees with a float64 ``KᵀK``
    to about 1e-7 (relative Frobenius; ``tests/test_stats.py`` holds it to 1e-6), at about half its cost on
    a CPU.

    Returns:
        The number of locations added.
    """
    samples, channels = keys.shape[:2]
    flat = keys.reshape(samples, channels, -1)  # a view for a contiguous map
    if flat.dtype not in (torch.float32, torch.float64):
        flat = flat.float()
    locations = flat.shape[-1]
    for first in range(0, samples, group):
        for start in range(0, locations, block):
            part = flat[first : first + group, :, start : start + block]  # (g, I, b)
            for product in torch.bmm(part, part.transpose(1, 2)):  # (I, I) float32 per sample
                outer.add_(product)  # float64 sum (a cast float64 reduction is several times slower)
    total.add_(flat.sum(2).to(torch.float64).sum(0))  # float32 (pairwise) per sample, float64 across
    return samples * locations


def compute_stats(
    G: GANGenerator,
    layer: str,
    n: int = 1000,
    *,
    batch_size: int | None = None,
    truncation: float | None = None,
    seed: int = 0,
    cache_dir: str | os.PathLike | None = None,
    use_cache: bool = True,
    progress: bool = True,
    remote: Callable[[str], KeyStats | None] | None = None,
) -> KeyStats:
    """Compute (or fetch from the cache) ``C = E[k kᵀ]`` at ``layer`` over ``n`` seeded samples.

    Under an initialised ``torch.distributed`` group each rank runs its share of the seeds and the sums
    are all-reduced, so every rank returns the same statistics (the cache is not read; rank 0 writes it).

    Args:
        G: the generator (put into eval mode for the duration).
        layer: a name from ``G.layer_names``.
        n: samples, seeds ``seed … seed+n-1``.
        batch_size: samples per forward pass (default 64 on the CPU, 256 on CUDA).
        truncation: ``None`` for the model's default.
        seed: first seed.
        cache_dir: cache folder (default ``<gan-rewrite home>/stats``).
        use_cache: read and write the cache.
        progress: show a tqdm bar.
        remote: asked after a cache miss, before computing: ``model_hash -> KeyStats | None`` (e.g. the
            statistics pushed beside the model on the Hub). Used, and cached, only when they match the request;
            not asked under ``torch.distributed``.

    Returns:
        :class:`KeyStats`.

    Raises:
        LayerError: ``layer`` is unknown.
        ValueError: ``n`` or ``batch_size`` is not positive.

    Example:
        >>> stats = compute_stats(G, "layer3", n=1000)
        >>> stats.save("stats/layer3.safetensors")
    """
    G.layer_index(layer)
    if n < 1:
        raise ValueError(f"`n` must be >= 1, got {n}.")
    if batch_size is None:
        batch_size = 256 if G.device.type == "cuda" else 64
    if batch_size < 1:
        raise ValueError(f"`batch_size` must be >= 1, got {batch_size}.")
    model_hash = model_sha256(G)
    rank, world = _distributed()
    path = None
    if use_cache:
        path = cache_path(cache_dir or default_cache_dir(), model_hash, layer, n, truncation, seed)
        # Ranks must agree on computing, so a distributed run never reads the cache (rank 0 writes it).
        if world == 1 and path.is_file():
            try:
                cached = KeyStats.load(path)
            except StatsError as err:
                logger.warning("ignoring unreadable statistics cache %s: %s", path, err)
            else:
                if cached.matches(model_hash, layer, n, truncation, seed):
                    logger.info("key statistics for %s from cache %s", layer, path)
                    return cached
    if remote is not None and world == 1:
        fetched = remote(model_hash)
        if fetched is not None and fetched.matches(model_hash, layer, n, truncation, seed):
            if path is not None:
                fetched.save(path)
            return fetched
    share = _share(n, rank, world)
    seeds = [seed + i for i in share]
    was_training = G.training
    G.eval()
    try:
        outer, total, count = accumulate_keys(
            G, layer, seeds, batch_size=batch_size, truncation=truncation, progress=progress and rank == 0
        )
    finally:
        G.train(was_training)
    if world > 1:
        outer, total, count = _all_reduce(outer, total, count)
    stats = KeyStats(
        second_moment=outer / count,
        mean=total / count,
        count=count,
        layer=layer,
        model_sha256=model_hash,
        n=n,
        truncation=None if truncation is None else float(truncation),
        seed=seed,
    )
    if path is not None and rank == 0:
        stats.save(path)
    return stats


def _distributed() -> tuple[int, int]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _share(n: int, rank: int, world: int) -> range:
    """Rank ``rank``'s contiguous share of ``range(n)``; shares differ in size by at most one."""
    base, extra = divmod(n, world)
    start = rank * base + min(rank, extra)
    return range(start, start + base + (1 if rank < extra else 0))


def _all_reduce(outer: Tensor, total: Tensor, count: int) -> tuple[Tensor, Tensor, int]:
    import torch.distributed as dist

    dim = total.shape[0]
    packed = torch.cat([outer.reshape(-1), total, torch.tensor([float(count)], dtype=torch.float64)])
    if dist.get_backend() == "nccl":
        packed = packed.cuda()
    dist.all_reduce(packed, op=dist.ReduceOp.SUM)
    packed = packed.cpu()
    return packed[: dim * dim].reshape(dim, dim), packed[dim * dim : dim * dim + dim], int(packed[-1].item())
