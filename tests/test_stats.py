"""Key statistics: one-matmul accumulation, files, cache, and 2-process gloo all-reduce."""

from __future__ import annotations

import logging

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from gan_rewrite.errors import LayerError, StatsError
from gan_rewrite.models import (
    DCGANConfig,
    DCGANGenerator,
    GANGenerator,
    ProGANConfig,
    ProGANGenerator,
    StyleGAN2Config,
    StyleGAN2Generator,
)
from gan_rewrite.rewrite.stats import BLOCK, GROUP, KeyStats, _share, add_key_moments, compute_stats, model_sha256


def _relative(got: torch.Tensor, want: torch.Tensor) -> float:
    return float(torch.linalg.norm(got - want) / torch.linalg.norm(want))


def make_tiny() -> DCGANGenerator:
    torch.manual_seed(0)
    G = DCGANGenerator(DCGANConfig(resolution=16, ngf=8, z_dim=8))
    for module in G.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.2, 0.2)
    return G.eval()


@pytest.fixture
def tiny() -> DCGANGenerator:
    return make_tiny()


@pytest.mark.parametrize("layer", ["layer1", "layer2", "layer3"])
def test_matches_naive_outer_product_sum(tiny: DCGANGenerator, layer: str) -> None:
    stats = compute_stats(tiny, layer, n=13, batch_size=4, use_cache=False, progress=False)
    outer = torch.zeros(stats.dim, stats.dim, dtype=torch.float64)
    total = torch.zeros(stats.dim, dtype=torch.float64)
    count = 0
    with torch.no_grad():
        for s in range(13):  # one sample, one location at a time
            feats = tiny.forward_to(layer, tiny.make_latents([s])).features[0].double()  # (I, h, w)
            for y in range(feats.shape[1]):
                for x in range(feats.shape[2]):
                    k = feats[:, y, x]
                    outer += torch.outer(k, k)
                    total += k
                    count += 1
    assert stats.count == count
    # float32 products summed in float64 (add_key_moments): within 1e-6 of the float64 sums, relative.
    assert _relative(stats.second_moment, outer / count) <= 1e-6
    assert _relative(stats.mean, total / count) <= 1e-6
    # Batch size does not matter.
    other = compute_stats(tiny, layer, n=13, batch_size=13, use_cache=False, progress=False)
    torch.testing.assert_close(other.second_moment, stats.second_moment, rtol=1e-12, atol=1e-14)


def every_kind() -> dict[str, GANGenerator]:
    """One tiny random generator per layer kind; StyleGAN2 has layers with and without upsampling."""
    torch.manual_seed(1)
    return {
        "dcgan": make_tiny(),
        "progan": ProGANGenerator(
            ProGANConfig(resolution=16, z_dim=8, channels=[12, 12, 10, 10, 8, 8], default_layer="layer4")
        ).eval(),
        "stylegan2": StyleGAN2Generator(
            StyleGAN2Config(resolution=16, z_dim=12, n_mlp=2, channels={"4": 12, "8": 10, "16": 8})
        ).eval(),
    }


KINDS = every_kind()
KIND_LAYERS = [(arch, layer) for arch, G in KINDS.items() for layer in G.layer_names]


def hooked_keys(G: GANGenerator, layer: str, seed: int) -> torch.Tensor:
    """The keys of one sample read off a FULL forward pass: a hook on the edited module forms them from what
    the module itself receives (its input; for a modulated conv, that input times the style ``A(w)``)."""
    module = G.layer_module(layer)
    seen: list[torch.Tensor] = []

    def hook(mod: torch.nn.Module, inputs: tuple, _output: torch.Tensor) -> None:
        if hasattr(mod, "modulation"):  # StyleGAN2: forward(x, w); the key is x·s with s = A(w)
            x, w = inputs
            seen.append(x * mod.modulation(w)[:, :, None, None])
        else:
            seen.append(inputs[0])

    handle = module.register_forward_hook(hook)
    try:
        with torch.no_grad():
            G(G.make_latents([seed]), noise=G.make_noise([seed]))
    finally:
        handle.remove()
    (keys,) = seen
    return keys[0].double()  # (I, h, w)


@pytest.mark.parametrize(("arch", "layer"), KIND_LAYERS, ids=[f"{a}-{lay}" for a, lay in KIND_LAYERS])
def test_every_layer_kind_matches_a_naive_sum_over_hooked_keys(arch: str, layer: str) -> None:
    """C and the mean equal a per-location sum of k kᵀ over keys taken from a full forward pass: for
    StyleGAN2 the keys are x·s, not the raw features (demodulation is recomputed, the key is not)."""
    G = KINDS[arch]
    n = 5
    stats = compute_stats(G, layer, n=n, batch_size=2, use_cache=False, progress=False)
    outer = torch.zeros(stats.dim, stats.dim, dtype=torch.float64)
    total = torch.zeros(stats.dim, dtype=torch.float64)
    count = 0
    for seed in range(n):
        keys = hooked_keys(G, layer, seed)
        assert keys.shape[0] == stats.dim
        for y in range(keys.shape[1]):
            for x in range(keys.shape[2]):
                k = keys[:, y, x]
                outer += torch.outer(k, k)
                total += k
                count += 1
    assert stats.count == count
    # The two paths run the float32 network in different batches, so keys agree to float32 rounding only.
    scale = float((outer / count).abs().max())
    torch.testing.assert_close(stats.second_moment, outer / count, rtol=1e-4, atol=1e-5 * scale)
    torch.testing.assert_close(stats.mean, total / count, rtol=1e-4, atol=1e-5 * scale**0.5)


@pytest.mark.parametrize("shape", [(GROUP + 3, 24, 7, 9), (2, 16, 40, 40)], ids=["samples>group", "locations>block"])
def test_key_moments_agree_with_float64_to_1e_6(shape: tuple[int, ...]) -> None:
    """Keys like a generator's (positive mean, heavy tails, mixed scales), more samples than one batched
    product holds and more locations than one block: float32 products, float64 sums, ≤ 1e-6 off float64."""
    assert shape[2] * shape[3] > BLOCK or shape[0] > GROUP
    torch.manual_seed(0)
    x = torch.randn(*shape)
    keys = (torch.nn.functional.leaky_relu(x + 0.5, 0.2) * torch.rand(shape[1], 1, 1) * 3).exp() - 1  # (N, I, h, w)
    rows = keys.permute(0, 2, 3, 1).reshape(-1, shape[1]).double()
    outer = torch.zeros(shape[1], shape[1], dtype=torch.float64)
    total = torch.zeros(shape[1], dtype=torch.float64)
    count = add_key_moments(outer, total, keys)
    assert count == rows.shape[0]
    assert _relative(outer, rows.T @ rows) <= 1e-6
    assert _relative(total, rows.sum(0)) <= 1e-6
    # Strided maps (a channels-last tensor) give the same sums.
    outer2, total2 = torch.zeros_like(outer), torch.zeros_like(total)
    add_key_moments(outer2, total2, keys.to(memory_format=torch.channels_last))
    assert _relative(outer2, rows.T @ rows) <= 1e-6


def test_save_load_and_solve(tiny: DCGANGenerator, tmp_path) -> None:
    stats = compute_stats(tiny, "layer2", n=8, truncation=0.7, seed=5, use_cache=False, progress=False)
    loaded = KeyStats.load(stats.save(tmp_path / "stats" / "layer2.safetensors"))
    assert torch.equal(loaded.second_moment, stats.second_moment) and torch.equal(loaded.mean, stats.mean)
    assert (loaded.count, loaded.layer, loaded.n, loaded.truncation, loaded.seed) == (stats.count, "layer2", 8, 0.7, 5)
    assert loaded.model_sha256 == model_sha256(tiny)
    rhs = torch.randn(stats.dim, dtype=torch.float64)
    x = stats.solve(rhs)
    system = stats.second_moment + stats.ridge() * torch.eye(stats.dim, dtype=torch.float64)
    torch.testing.assert_close(system @ x, rhs)
    w = stats.inv_sqrt()
    torch.testing.assert_close(w @ system @ w, torch.eye(stats.dim, dtype=torch.float64), atol=1e-8, rtol=0)
    (tmp_path / "junk.safetensors").write_bytes(b"junk")
    with pytest.raises(StatsError):
        KeyStats.load(tmp_path / "junk.safetensors")
    with pytest.raises(StatsError, match="no statistics file"):
        KeyStats.load(tmp_path / "missing.safetensors")


def test_cache_is_keyed_by_model_and_request(tiny: DCGANGenerator, tmp_path, caplog) -> None:
    first = compute_stats(tiny, "layer2", n=6, cache_dir=tmp_path, progress=False)
    with caplog.at_level(logging.INFO, logger="gan_rewrite.rewrite.stats"):
        again = compute_stats(tiny, "layer2", n=6, cache_dir=tmp_path, progress=False)
    assert "from cache" in caplog.text
    assert torch.equal(again.second_moment, first.second_moment)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="gan_rewrite.rewrite.stats"):
        other_seed = compute_stats(tiny, "layer2", n=6, seed=1, cache_dir=tmp_path, progress=False)
    assert "from cache" not in caplog.text
    assert not torch.equal(other_seed.second_moment, first.second_moment)
    with torch.no_grad():
        tiny.layer_module("layer1").weight.mul_(2.0)  # a different model → a different cache entry
    changed = compute_stats(tiny, "layer2", n=6, cache_dir=tmp_path, progress=False)
    assert changed.model_sha256 != first.model_sha256
    assert not torch.allclose(changed.second_moment, first.second_moment)


def test_invalid_requests(tiny: DCGANGenerator) -> None:
    with pytest.raises(LayerError, match="unknown layer 'layer7'"):
        compute_stats(tiny, "layer7", use_cache=False)
    with pytest.raises(ValueError, match="`n`"):
        compute_stats(tiny, "layer2", n=0, use_cache=False)
    with pytest.raises(ValueError, match="`batch_size`"):
        compute_stats(tiny, "layer2", n=3, batch_size=0, use_cache=False)


def test_shares_cover_every_seed_once() -> None:
    for n, world in [(10, 3), (2, 4), (7, 1)]:
        seen = [i for r in range(world) for i in _share(n, r, world)]
        assert seen == list(range(n))


def _worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        stats = compute_stats(make_tiny(), "layer3", n=7, batch_size=2, use_cache=False, progress=False)
        stats.save(f"{out_dir}/rank{rank}.safetensors")
    finally:
        dist.destroy_process_group()


def test_two_gloo_processes_equal_one(tmp_path) -> None:
    mp.spawn(_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    single = compute_stats(make_tiny(), "layer3", n=7, batch_size=2, use_cache=False, progress=False)
    for rank in range(2):
        got = KeyStats.load(tmp_path / f"rank{rank}.safetensors")
        assert got.count == single.count
        torch.testing.assert_close(got.second_moment, single.second_moment, rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(got.mean, single.mean, rtol=1e-12, atol=1e-14)
