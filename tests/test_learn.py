"""``method="learn"``: a rule whose directions and values are learned together from many samples (issue 9)."""

from __future__ import annotations

import json

import pytest
import torch
from masks import box
from test_rewriter import tiny_generator

from gan_rewrite.errors import RuleError
from gan_rewrite.rewrite import Rewriter, solve_spec
from gan_rewrite.rewrite.context import paste_goal
from gan_rewrite.rewrite.layers import layer_kind
from gan_rewrite.rewrite.learn import KEEP_WEIGHT, SAMPLE_SEED, image_l1, orthonormal_rule
from gan_rewrite.rewrite.spec import check_spec
from gan_rewrite.space import solve_summary

COPY = box(16, 2, 2, 8, 8)
PASTE = box(16, 6, 8, 12, 14)


def request(arch: str = "dcgan") -> Rewriter:
    rw = Rewriter(tiny_generator(arch), None)
    rw.compute_stats(n=24, use_cache=False, progress=False)
    rw.add_context(3, box(16, 6, 6, 12, 12))
    rw.add_context(4, PASTE)
    rw.set_copy(0, COPY)
    rw.set_paste(1, PASTE)
    return rw


def image_loss(
    rw: Rewriter, weight: torch.Tensor, samples: int, batch_size: int, keep_weight: float = KEEP_WEIGHT
) -> float:
    """The objective of ``method="learn"`` over every sample it fits."""
    module = rw.G.layer_module(rw.layer)
    batches = rw.sample_batches(samples, SAMPLE_SEED, batch_size)
    with torch.no_grad():
        total = 0.0
        for goal in batches:
            loss = image_l1(goal, rw.renderer(goal.state), keep_weight)
            total += float(loss(rw.kind.output(module, goal.state, weight)))
        return total


@pytest.mark.parametrize("arch", ["dcgan", "progan", "stylegan2"])
def test_learned_rule_is_a_rule_file_on_every_architecture(arch: str) -> None:
    rw = request(arch)
    state = {k: v.clone() for k, v in rw.G.state_dict().items()}
    delta = rw.solve(rank=2, method="learn", samples=6, batch_size=4, steps=20, progress=False)
    part = delta.layers[rw.layer]
    assert delta.method == "learn" and part.rank == 2
    torch.testing.assert_close(part.direction.T @ part.direction, torch.eye(2), atol=1e-5, rtol=0)  # a rule file's D
    assert float(part.lam.abs().max()) > 0
    assert all(torch.equal(v, state[k]) for k, v in rw.G.state_dict().items())  # the model itself is untouched
    assert all(p.grad is None for p in rw.G.parameters())


def test_learned_cap_rule_carries_over_to_new_faces(dcgan_faces) -> None:
    """The blue cap of ``benchmarks/requests/blue-cap.json``, learned from 16 random faces: it lowers its own
    image loss, its directions leave the context's span, and it turns unseen faces' crowns bluer, there most."""
    G = dcgan_faces
    rw = Rewriter(G, "layer3")
    rw.compute_stats(n=300, use_cache=False, progress=False)
    for seed in (1, 57):
        rw.add_context(seed, box(64, 0, 16, 14, 50))
    rw.set_copy(106, box(64, 0, 12, 20, 56))
    rw.set_paste(1, box(64, 0, 10, 20, 54))
    options = {"samples": 16, "batch_size": 18, "steps": 30, "lr_factor": 3}  # a short solve for a test
    delta = rw.solve(rank=1, method="learn", progress=False, **options)
    module = G.layer_module("layer3")
    learned = image_loss(rw, module.weight + delta.delta_weight("layer3"), 16, 18)
    assert learned < 0.93 * image_loss(rw, module.weight, 16, 18)
    start = rw.directions(1).float()
    direction = delta.layers["layer3"].direction
    assert float((direction - start @ (start.T @ direction)).norm()) > 0.1
    held_out = list(range(9000, 9008))
    before = G.sample(held_out)
    G.load_rule(delta)
    try:
        after = G.sample(held_out)
    finally:
        G.unload_rules()
    bluer = (after[:, 2] - after[:, :2].mean(1)) - (before[:, 2] - before[:, :2].mean(1))  # (N, H, W)
    band = bluer[:, :20, 8:56].mean((1, 2))
    assert int((band > 0.03).sum()) >= 7
    change = (after - before).abs().mean(1)
    assert float(change[:, 28:].mean()) < 0.3 * float(change[:, :20, 8:56].mean())  # the chin and mouth stay
    # Weighting the pixels outside the pasted object more keeps the rest of the faces closer to how they were.
    kept = rw.solve(rank=1, method="learn", progress=False, keep_weight=3.0, **options)
    G.load_rule(kept)
    try:
        kept_change = (G.sample(held_out) - before).abs().mean(1)
    finally:
        G.unload_rules()
    assert float(kept_change[:, 28:].mean()) < 0.8 * float(change[:, 28:].mean())


def test_sample_batches_put_the_copy_at_the_paste_place() -> None:
    rw = request()
    batches = rw.sample_batches(5, 3, 3)  # seeds from 3: 3 and 4 are contexts already and are skipped
    seeds = [seed for goal in batches for seed in goal.seeds]
    assert seeds == [1, 3, 4, 5, 6, 7, 8, 9]  # the paste sample, the contexts, then five fresh samples
    assert [goal.target.shape[0] for goal in batches] == [3, 3, 2]
    wanted = paste_goal(rw.G, rw.layer, 0, rw.copy.mask, 7, rw.paste[1])
    torch.testing.assert_close(batches[1].target[2:3], wanted.target)
    torch.testing.assert_close(batches[1].weight[2:3], wanted.weight)
    with pytest.raises(RuleError, match=r"solver option `samples` must be an integer >= 0, got -1"):
        rw.sample_batches(-1, 0, 3)
    with pytest.raises(RuleError, match=r"solver option `batch_size` must be an integer >= 1, got 'x'"):
        rw.solve(method="learn", batch_size="x", progress=False)


def test_learn_is_recorded_and_solve_spec_reproduces_it(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("GAN_REWRITE_HOME", str(tmp_path))
    rw = request()
    rw.compute_stats(n=12, progress=False)
    delta = rw.solve(rank=1, method="learn", samples=3, sample_seed=20, batch_size=2, steps=15, progress=False)
    assert delta.spec["method"] == "learn"
    assert delta.spec["solver"] == {"samples": 3, "sample_seed": 20, "batch_size": 2, "steps": 15, "progress": False}
    again = solve_spec(rw.G, json.dumps(delta.spec), progress=False)
    assert again.spec == delta.spec
    for part in ("direction", "lam"):
        assert torch.equal(getattr(again.layers[rw.layer], part), getattr(delta.layers[rw.layer], part))
    other = rw.solve(rank=1, method="learn", samples=3, sample_seed=40, batch_size=2, steps=15, progress=False)
    assert not torch.equal(other.layers[rw.layer].lam, delta.layers[rw.layer].lam)  # the samples matter
    assert "onto 3 random samples" in solve_summary(delta)  # what the Space says of the rule


def test_learn_options_are_checked() -> None:
    rw = request()
    spec = {**rw.spec(), "method": "learn", "solver": {"samples": 64, "steps": 10}}
    check_spec(spec)
    with pytest.raises(RuleError, match=r"option\(s\) \['renderer'\]"):  # code, never data
        check_spec({**spec, "solver": {"renderer": "x"}})
    with pytest.raises(RuleError, match=r"field `solver.samples`"):
        check_spec({**spec, "solver": {"samples": -1}})
    with pytest.raises(RuleError, match=r"solver option `steps` must be an integer >= 1, got 0"):
        rw.solve(method="learn", samples=1, steps=0, progress=False)
    with pytest.raises(RuleError, match=r"solver option `lr_factor` must be a positive number"):
        rw.solve(method="learn", samples=1, lr_factor=0, progress=False)
    with pytest.raises(RuleError, match=r"solver option `keep_weight` must be a positive number, got -1"):
        rw.solve(method="learn", samples=1, keep_weight=-1, progress=False)


def test_orthonormal_rule_keeps_the_weight_change() -> None:
    generator = torch.Generator().manual_seed(0)
    direction = torch.randn(12, 3, generator=generator, dtype=torch.float64)
    lam = torch.randn(5, 3, 4, 4, generator=generator, dtype=torch.float64)
    q, new_lam = orthonormal_rule(direction, lam)
    torch.testing.assert_close(q.T @ q, torch.eye(3, dtype=torch.float64))
    kind = layer_kind(torch.nn.ConvTranspose2d(12, 5, 4))
    torch.testing.assert_close(
        kind.delta_weight(q, new_lam.double()), kind.delta_weight(direction, lam), atol=1e-5, rtol=1e-5
    )
