"""Per-unit activation quantiles of a layer over ``n`` seeded samples, streamed, cached and torchrun-aware.

Each sample contributes the same ``per_sample`` locations of every unit (a fixed pseudo-random pick that
depends on the seed alone), so the values kept are a function of the seeds only: a run split over ranks by
``torch.distributed`` (each rank a contiguous share of the seeds, gathered at the end) gives bit-identical
quantiles to a single process. Memory is ``n · per_sample · units`` floats while computing; only the
``(units, levels)`` table is kept. Results are cached like the key statistics
(``<gan-rewrite home>/dissect/<model hash>/<layer>.n<n>.t<trunc>.s<seed>.p<per_sample>.quantiles.safetensors``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from ..atomic import atomic_path
from ..errors import StatsError
from ..rewrite.stats import _distributed, _share, model_sha256
from .units import next_layer

if TYPE_CHECKING:
    from ..models.base import GANGenerator

logger = logging.getLogger(__name__)

QUANTILES_FORMAT = "gan-rewrite.unit-quantiles/1"
LEVELS: tuple[float, ...] = (0.0, 0.01, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.98, 0.99, 0.995, 0.999, 1.0)
"""The quantile levels stored; :meth:`UnitQuantiles.at` interpolates between them."""


@dataclass
class UnitQuantiles:
    """Quantiles of every unit's activation over the locations of ``n`` samples.

    Attributes:
        levels: ``(Q,)`` float64 quantile levels in [0, 1], increasing.
        values: ``(C, Q)`` float32; ``values[u, j]`` is unit ``u``'s ``levels[j]`` quantile.
        layer: the dissected layer (units are its output channels).
        model_sha256: the generator's :func:`~gan_rewrite.rewrite.stats.model_sha256`.
        n: samples (seeds ``seed … seed+n-1``); truncation and seed as for the key statistics.
        per_sample: locations kept per sample and unit.
    """

    levels: Tensor
    values: Tensor
    layer: str
    model_sha256: str
    n: int
    truncation: float | None
    seed: int
    per_sample: int

    @property
    def units(self) -> int:
        return int(self.values.shape[0])

    def at(self, q: float) -> Tensor:
        """Every unit's ``q`` quantile ``(C,)`` (linear between stored levels)."""
        if not 0.0 <= q <= 1.0:
            raise ValueError(f"a quantile level must lie in [0, 1], got {q!r}.")
        levels = self.levels.to(torch.float64)
        j = int(torch.searchsorted(levels, torch.tensor([q], dtype=torch.float64)).clamp(1, len(levels) - 1))
        lo, hi = float(levels[j - 1]), float(levels[j])
        t = 0.0 if hi == lo else (q - lo) / (hi - lo)
        return (self.values[:, j - 1] * (1 - t) + self.values[:, j] * t).float()

    def metadata(self) -> dict[str, str]:
        return {
            "format": QUANTILES_FORMAT, "layer": self.layer, "model_sha256": self.model_sha256, "n": str(self.n),
            "truncation": "" if self.truncation is None else repr(float(self.truncation)), "seed": str(self.seed),
            "per_sample": str(self.per_sample),
        }

    def save(self, path: str | os.PathLike) -> Path:
        """Write the table atomically to a safetensors file."""
        from safetensors.torch import save_file

        path = Path(path)
        tensors = {"levels": self.levels.to(torch.float64).contiguous(), "values": self.values.float().contiguous()}
        with atomic_path(path) as tmp:
            save_file(tensors, str(tmp), metadata=self.metadata())
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> UnitQuantiles:
        """Read a table written by :meth:`save`.

        Raises:
            StatsError: missing or unreadable file, wrong format, shapes, NaN values or non-increasing quantiles.
        """
        from safetensors import SafetensorError, safe_open

        path = Path(path)
        if not path.is_file():
            raise StatsError(f"no unit-quantile file at {str(path)!r}.")
        try:
            with safe_open(str(path), framework="pt") as handle:
                meta = handle.metadata() or {}
                tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
        except (SafetensorError, OSError) as err:
            raise StatsError(f"cannot read unit-quantile file {str(path)!r}: {err}") from err
        if meta.get("format") != QUANTILES_FORMAT or set(tensors) != {"levels", "values"}:
            raise StatsError(f"{str(path)!r} is not a gan-rewrite unit-quantile file.")
        levels, values = tensors["levels"], tensors["values"]
        ok = levels.ndim == 1 and values.ndim == 2 and values.shape[1] == levels.shape[0] >= 2
        if not ok or not (torch.isfinite(levels).all() and torch.isfinite(values).all()):
            raise StatsError(
                f"unit-quantile file {str(path)!r} needs finite `levels` (Q,) and `values` (C, Q); got "
                f"{tuple(levels.shape)} and {tuple(values.shape)}."
            )
        if bool((levels.diff() <= 0).any()) or bool((values.diff(dim=1) < 0).any()):
            raise StatsError(f"unit-quantile file {str(path)!r}: levels or quantiles are not increasing.")
        try:
            return cls(
                levels=levels, values=values, layer=meta["layer"], model_sha256=meta["model_sha256"],
                n=int(meta["n"]), truncation=float(meta["truncation"]) if meta.get("truncation") else None,
                seed=int(meta["seed"]), per_sample=int(meta["per_sample"]),
            )
        except (KeyError, ValueError) as err:
            raise StatsError(f"unit-quantile file {str(path)!r} has malformed metadata: {err}") from err

    def matches(
        self, model_hash: str, layer: str, n: int, truncation: float | None, seed: int, per_sample: int
    ) -> bool:
        want = (model_hash, layer, n, None if truncation is None else float(truncation), seed, per_sample)
        return (self.model_sha256, self.layer, self.n, self.truncation, self.seed, self.per_sample) == want


def default_cache_dir() -> Path:
    """``<gan-rewrite home>/dissect``."""
    from ..hub.known import cache_home

    return cache_home() / "dissect"


def cache_path(cache_dir: str | os.PathLike, model_hash: str, layer: str, n: int, truncation: float | None,
               seed: int, per_sample: int) -> Path:  # fmt: skip
    trunc = "default" if truncation is None else repr(float(truncation))
    name = f"{layer}.n{n}.t{trunc}.s{seed}.p{per_sample}.quantiles.safetensors"
    return Path(cache_dir) / model_hash / name


def _picks(seed: int, locations: int, per_sample: int) -> Tensor:
    """The locations a sample contributes: a fixed function of its seed (all of them when few)."""
    if per_sample >= locations:
        return torch.arange(locations)
    generator = torch.Generator().manual_seed(int(seed) ^ 0x5EED)
    return torch.randperm(locations, generator=generator)[:per_sample]


@torch.no_grad()
def gather_values(G: GANGenerator, layer: str, seeds: Sequence[int], *, per_sample: int, batch_size: int,
                  truncation: float | None, progress: bool = True) -> Tensor:  # fmt: skip
    """``(len(seeds)·k, C)`` float32 on the CPU: each seed's kept locations of every unit, in seed order."""
    from tqdm.auto import tqdm

    nxt = next_layer(G, layer)
    depth = G.layer_index(nxt)
    rows = []
    for start in tqdm(range(0, len(seeds), batch_size), desc=f"unit quantiles {layer}", unit="batch",
                      disable=not progress):  # fmt: skip
        chunk = [int(s) for s in seeds[start : start + batch_size]]
        state = G.forward_to(nxt, G.make_latents(chunk), truncation, noise=G.make_noise(chunk, layers=depth))
        feats = state.features.float().flatten(2).cpu()  # (B, C, h·w)
        for row, seed in zip(feats, chunk, strict=True):
            rows.append(row[:, _picks(seed, row.shape[1], per_sample)].T)  # (k, C)
    return torch.cat(rows)


def compute_quantiles(
    G: GANGenerator,
    layer: str,
    n: int = 1000,
    *,
    per_sample: int = 64,
    batch_size: int | None = None,
    truncation: float | None = None,
    seed: int = 0,
    cache_dir: str | os.PathLike | None = None,
    use_cache: bool = True,
    progress: bool = True,
) -> UnitQuantiles:
    """Compute (or read from the cache) every unit's activation quantiles at ``layer`` over ``n`` samples.

    Under an initialised ``torch.distributed`` group each rank runs its share of the seeds and the kept values
    are all-gathered, so every rank returns the same table (the cache is not read; rank 0 writes it).

    Args:
        G: the generator.
        layer: the dissected layer (not the last one).
        n: samples, seeds ``seed … seed+n-1``.
        per_sample: locations kept per sample (all when the map is smaller).
        batch_size: samples per forward pass (default 32 on the CPU, 256 on CUDA).
        truncation: ``None`` for the model's default.
        seed: first seed.
        cache_dir: default ``<gan-rewrite home>/dissect``.
        use_cache: read and write the cache.
        progress: show a tqdm bar.

    Returns:
        :class:`UnitQuantiles` at :data:`LEVELS`.

    Example:
        >>> q = compute_quantiles(G, "layer4", n=1000)
        >>> q.at(0.99)[:3]
    """
    next_layer(G, layer)  # LayerError on an unknown or last layer
    if n < 1 or per_sample < 1:
        raise ValueError(f"`n` and `per_sample` must be >= 1, got {n} and {per_sample}.")
    batch_size = batch_size or (256 if G.device.type == "cuda" else 32)
    model_hash = model_sha256(G)
    rank, world = _distributed()
    path = None
    if use_cache:
        path = cache_path(cache_dir or default_cache_dir(), model_hash, layer, n, truncation, seed, per_sample)
        if world == 1 and path.is_file():
            try:
                cached = UnitQuantiles.load(path)
            except StatsError as err:
                logger.warning("ignoring unreadable unit-quantile cache %s: %s", path, err)
            else:
                if cached.matches(model_hash, layer, n, truncation, seed, per_sample):
                    return cached
    seeds = [seed + i for i in _share(n, rank, world)]
    was_training = G.training
    G.eval()
    try:
        values = gather_values(G, layer, seeds, per_sample=per_sample, batch_size=batch_size,
                               truncation=truncation, progress=progress and rank == 0)  # fmt: skip
    finally:
        G.train(was_training)
    if world > 1:
        values = _all_gather_rows(values)
    levels = torch.tensor(LEVELS, dtype=torch.float64)
    table = _quantiles(values, levels)
    result = UnitQuantiles(
        levels=levels, values=table, layer=layer, model_sha256=model_hash, n=n,
        truncation=None if truncation is None else float(truncation), seed=seed, per_sample=per_sample,
    )
    if path is not None and rank == 0:
        result.save(path)
    return result


def _quantiles(values: Tensor, levels: Tensor) -> Tensor:
    """``(C, Q)`` quantiles of the columns of ``values`` ``(M, C)`` (linear interpolation, as numpy's default)."""
    ordered = values.T.sort(dim=1).values.double()  # (C, M)
    m = ordered.shape[1]
    position = levels * (m - 1)
    lo = position.floor().long().clamp(0, m - 1)
    hi = (lo + 1).clamp(max=m - 1)
    frac = (position - lo.double())[None]
    return (ordered[:, lo] * (1 - frac) + ordered[:, hi] * frac).float()


def _all_gather_rows(values: Tensor) -> Tensor:
    """Concatenate every rank's rows, in rank order (shares differ in length by at most one sample)."""
    import torch.distributed as dist

    world = dist.get_world_size()
    device = torch.device("cuda") if dist.get_backend() == "nccl" else torch.device("cpu")
    length = torch.tensor([values.shape[0]], device=device)
    lengths = [torch.zeros_like(length) for _ in range(world)]
    dist.all_gather(lengths, length)
    longest = int(max(int(x) for x in lengths))
    padded = torch.zeros(longest, values.shape[1], device=device)
    padded[: values.shape[0]] = values.to(device)
    parts = [torch.zeros_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded)
    return torch.cat([part[: int(k)] for part, k in zip(parts, lengths, strict=True)]).cpu()
