"""The Rewriter keeps its samples' layer runs between solves, and drops them when the generator changes."""

from __future__ import annotations

import pytest
import torch
from masks import box

from gan_rewrite.models import DCGANConfig, DCGANGenerator
from gan_rewrite.rewrite import Rewriter, compute_stats
from gan_rewrite.rewrite.context import run_layer
from gan_rewrite.rewrite.runcache import RunCache


@pytest.fixture
def G() -> DCGANGenerator:
    torch.manual_seed(0)
    return DCGANGenerator(DCGANConfig(resolution=16, ngf=8, z_dim=8)).eval()


@pytest.fixture
def forwards(G: DCGANGenerator, monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, ...]]:
    """Every seed batch the generator is run on up to a layer."""
    calls: list[tuple[int, ...]] = []
    original = G.make_latents

    def counting(seeds, *args, **kwargs):
        calls.append(tuple(int(s) for s in seeds))
        return original(seeds, *args, **kwargs)

    monkeypatch.setattr(G, "make_latents", counting)
    return calls


def request(G: DCGANGenerator, stats, copy_seed: int = 1) -> Rewriter:
    rw = Rewriter(G, "layer3")
    rw.set_stats(stats)
    rw.add_context(3, box(16, 4, 4, 10, 10))
    rw.add_context(4, box(16, 6, 2, 12, 8))
    rw.set_copy(copy_seed, box(16, 4, 4, 9, 9))
    rw.set_paste(2, box(16, 6, 6, 11, 11))
    return rw


def fresh_lam(G: DCGANGenerator, stats, **solve: object) -> torch.Tensor:
    return request(G, stats).solve(**solve).layers["layer3"].lam


def test_a_second_solve_runs_no_forward_pass_and_gives_the_same_rule(G, forwards) -> None:
    stats = compute_stats(G, "layer3", n=16, use_cache=False, progress=False)
    forwards.clear()
    rw = request(G, stats)
    rw.solve(rank=1)
    # One run per sample, plus (the default image fit) one batch of the goal samples, all reused below.
    assert {(1,), (2,), (3,), (4,)} <= set(forwards) and all(set(f) <= {1, 2, 3, 4} for f in forwards)
    forwards.clear()
    lam2 = rw.solve(rank=2).layers["layer3"].lam  # new rank
    rw.set_paste(2, box(16, 6, 6, 11, 11), region="box")  # new region
    lam_box = rw.solve(rank=1).layers["layer3"].lam
    lam_opt = rw.solve(rank=1, method="optimize", steps=5, progress=False).layers["layer3"].lam  # new method
    assert forwards == []
    # The reused runs give exactly what a new request computes from scratch.
    assert torch.equal(lam2, fresh_lam(G, stats, rank=2))
    fresh = request(G, stats)
    fresh.set_paste(2, box(16, 6, 6, 11, 11), region="box")
    assert torch.equal(lam_box, fresh.solve(rank=1).layers["layer3"].lam)
    fresh_opt = request(G, stats)
    fresh_opt.set_paste(2, box(16, 6, 6, 11, 11), region="box")
    again = fresh_opt.solve(rank=1, method="optimize", steps=5, progress=False)
    assert torch.equal(lam_opt, again.layers["layer3"].lam)


def test_new_seeds_are_run(G, forwards) -> None:
    stats = compute_stats(G, "layer3", n=16, use_cache=False, progress=False)
    rw = request(G, stats)
    rw.solve(method="bounded")
    forwards.clear()
    rw.set_copy(7, box(16, 4, 4, 9, 9))
    rw.add_context(8, box(16, 1, 1, 5, 5))
    lam = rw.solve(method="bounded").layers["layer3"].lam
    assert sorted(set(forwards)) == [(7,), (8,)]
    fresh = request(G, stats, copy_seed=7)
    fresh.add_context(8, box(16, 1, 1, 5, 5))
    assert torch.equal(lam, fresh.solve(method="bounded").layers["layer3"].lam)


def test_loading_a_rule_or_editing_a_weight_drops_the_runs(G, forwards) -> None:
    stats = compute_stats(G, "layer3", n=16, use_cache=False, progress=False)
    rw = request(G, stats)
    delta = rw.solve(method="bounded")
    # A rule at an earlier layer changes the keys at layer3: everything must be run again.
    rule = Rewriter(G, "layer2")
    rule.set_stats(compute_stats(G, "layer2", n=16, use_cache=False, progress=False))
    rule.set_copy(5, box(16, 0, 0, 8, 8))
    rule.set_paste(6, box(16, 8, 8, 16, 16))
    G.load_rule(rule.solve(method="bounded"), name="earlier")
    forwards.clear()
    on_rule = rw.solve(method="bounded").layers["layer3"].lam
    assert sorted(set(forwards)) == [(1,), (2,), (3,), (4,)]
    forwards.clear()
    assert torch.equal(on_rule, fresh_lam(G, stats, method="bounded"))
    assert not torch.equal(on_rule, delta.layers["layer3"].lam)
    G.unload_rules()
    forwards.clear()
    assert torch.equal(rw.solve(method="bounded").layers["layer3"].lam, delta.layers["layer3"].lam)
    assert forwards  # run again after the unload
    # An in-place edit of any weight, outside the rule API.
    forwards.clear()
    with torch.no_grad():
        G.layer_module("layer1").weight.mul_(1.5)
    edited = rw.solve(method="bounded").layers["layer3"].lam
    assert forwards
    assert torch.equal(edited, fresh_lam(G, stats, method="bounded"))


def test_run_layer_outside_a_request_is_not_cached(G, forwards) -> None:
    run_layer(G, "layer3", [1])
    run_layer(G, "layer3", [1])
    assert forwards == [(1,), (1,)]
    forwards.clear()
    cache = RunCache(size=1)
    with cache.active(G):
        first = run_layer(G, "layer3", [1])
        assert run_layer(G, "layer3", [1]) is first
        run_layer(G, "layer3", [2])  # evicts seed 1 (size 1)
        assert run_layer(G, "layer3", [1]) is not first
        assert run_layer(G, "layer3", [1], truncation=0.5) is not first  # truncation is part of the key
    assert forwards == [(1,), (2,), (1,), (1,)]


def test_rewriters_of_one_model_can_share_their_runs(G, forwards) -> None:
    """An app that makes a new Rewriter per click keeps the runs by handing each the same RunCache."""
    stats = compute_stats(G, "layer3", n=16, use_cache=False, progress=False)
    shared = RunCache()
    first = request(G, stats)
    first.runs = shared
    lam = first.solve().layers["layer3"].lam
    forwards.clear()
    second = request(G, stats)
    second.runs = shared
    assert torch.equal(second.solve().layers["layer3"].lam, lam)
    assert forwards == []
