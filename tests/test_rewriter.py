"""Rewriter: requests, validation, spec round trips, and a real copy-paste on the embedded DCGAN."""

from __future__ import annotations

import json
from pathlib import Path

import gan_face_generate
import numpy as np
import pytest
import torch
from masks import box

from gan_rewrite.errors import LayerError, RuleError, StatsError
from gan_rewrite.models import (
    DCGANConfig,
    DCGANGenerator,
    GANGenerator,
    ProGANConfig,
    ProGANGenerator,
    StyleGAN2Config,
    StyleGAN2Generator,
)
from gan_rewrite.rewrite import Rewriter, RuleDelta, compute_stats, solve_spec
from gan_rewrite.rewrite.context import decode_mask, encode_mask, quantize_mask
from gan_rewrite.rewrite.solve import goal_image_l1


@pytest.fixture(scope="module")
def faces() -> DCGANGenerator:
    weights = Path(gan_face_generate.__file__).parent / "weights.tar"
    sd = torch.load(weights, weights_only=True, map_location="cpu")["netG_state_dict"]
    G = DCGANGenerator(DCGANGenerator.infer_config(sd))
    G.load_weights(sd)
    return G.eval()


@pytest.fixture(scope="module")
def faces_stats(faces: DCGANGenerator):
    return compute_stats(faces, "layer3", n=300, use_cache=False, progress=False)


@pytest.fixture
def tiny() -> DCGANGenerator:
    torch.manual_seed(0)
    return DCGANGenerator(DCGANConfig(resolution=16, ngf=8, z_dim=8)).eval()



def eye_request(G: DCGANGenerator, stats) -> Rewriter:
    rw = Rewriter(G, "layer3")
    rw.set_stats(stats)
    rw.set_copy(1, box(64, 20, 14, 32, 30))
    rw.set_paste(2, box(64, 20, 34, 32, 50))
    return rw


def test_copy_paste_changes_the_paste_region_most(faces: DCGANGenerator, faces_stats) -> None:
    rw = eye_request(faces, faces_stats)
    before = faces.sample([2])
    weights = {k: v.clone() for k, v in faces.state_dict().items()}
    delta = rw.solve(rank=1)
    assert all(torch.equal(v, faces.state_dict()[k]) for k, v in weights.items())  # solve edits nothing
    faces.load_rule(delta, name="eye")  # base hash matches: no force needed
    try:
        after = faces.sample([2])
    finally:
        faces.unload_rules()
    change = (after - before).abs().mean(1)[0]  # (H, W)
    paste = box(64, 20, 34, 32, 50).bool()
    inside, outside = float(change[paste].mean()), float(change[~paste].mean())
    assert inside > 2.0 * outside, (inside, outside)
    assert torch.equal(faces.sample([2]), before)


def test_rule_carries_a_spec_that_reproduces_the_solve(faces: DCGANGenerator, faces_stats, tmp_path) -> None:
    rw = eye_request(faces, faces_stats)
    rw.add_context(3, box(64, 18, 10, 34, 54) * 0.5)
    delta = rw.solve(rank=2, method="closed_form", ridge=1e-5)
    loaded = RuleDelta.load(delta.save(tmp_path / "rule.safetensors"))
    spec = loaded.spec
    assert spec["layer"] == "layer3" and spec["rank"] == 2 and spec["method"] == "closed_form"
    assert spec["solver"] == {"ridge": 1e-5} and spec["stats"]["n"] == 300
    assert spec["paste"]["seed"] == 2 and spec["copy"]["mask"].startswith("rle:64x64:")
    assert spec["context"][0]["mask"].startswith("u8z:64x64:")  # a soft mask
    again = Rewriter.from_spec(faces, json.dumps(spec))
    again.set_stats(faces_stats)
    redo = again.solve(rank=spec["rank"], method=spec["method"], **spec["solver"])
    assert torch.equal(redo.layers["layer3"].lam, delta.layers["layer3"].lam)
    assert torch.equal(solve_spec(faces, spec, stats=faces_stats).layers["layer3"].lam, delta.layers["layer3"].lam)
    assert torch.equal(redo.layers["layer3"].direction, delta.layers["layer3"].direction)
    assert loaded.layers["layer3"].base_layer_sha256 == faces.layer_weight_sha256("layer3")
    direction = delta.layers["layer3"].direction
    torch.testing.assert_close(direction.T @ direction, torch.eye(2), atol=1e-5, rtol=0)


def test_context_search_finds_the_context_sample(faces: DCGANGenerator, faces_stats) -> None:
    rw = Rewriter(faces, "layer3")
    rw.set_stats(faces_stats)
    rw.add_context(5, box(64, 20, 14, 32, 30))
    found = rw.search(seeds=range(0, 40))
    assert found.heatmaps.shape == (40, 64, 64) and found.matches.dtype == torch.bool
    assert sorted(found.seeds) == list(range(40))
    assert bool((found.best[:-1] >= found.best[1:]).all())
    assert 5 in found.seeds[:3]


def test_projected_solver_and_erase(tiny: DCGANGenerator) -> None:
    rw = Rewriter(tiny, "layer2")
    rw.compute_stats(n=20, use_cache=False, progress=False)
    rw.set_erase(0, box(16, 4, 4, 12, 12))
    delta = rw.solve(rank=1, method="optimize", steps=200, progress=False)
    goal = rw.goal()
    module = tiny.layer_module("layer2")
    before = (rw.kind.output(module, goal.state) - goal.target).abs()
    tiny.load_rule(delta)
    after = (rw.kind.output(module, goal.state) - goal.target).abs()
    mask = goal.weight[:, None] > 0
    assert float(after.detach()[mask.expand_as(after)].mean()) < float(before.detach()[mask.expand_as(before)].mean())
    assert delta.spec["erase"]["units"] is None and delta.method == "optimize"


def test_invalid_requests_raise_clear_errors(tiny: DCGANGenerator) -> None:
    with pytest.raises(LayerError, match="unknown layer 'layer9'"):
        Rewriter(tiny, "layer9")
    rw = Rewriter(tiny, None)  # None: the default layer
    assert rw.layer == tiny.config.default_layer
    with pytest.raises(RuleError, match="empty"):
        rw.add_context(0, torch.zeros(16, 16))
    with pytest.raises(RuleError, match=r"shape \(16, 16\)"):
        rw.add_context(0, torch.ones(64, 64))
    with pytest.raises(RuleError, match=r"\[0, 1\]"):
        rw.set_copy(0, torch.full((16, 16), 2.0))
    with pytest.raises(RuleError, match="seed"):
        rw.set_copy(-1, torch.ones(16, 16))
    with pytest.raises(RuleError, match="offset"):
        rw.set_paste(0, (1.5, 2))
    with pytest.raises(StatsError, match="compute_stats"):
        rw.solve()
    rw.compute_stats(n=8, use_cache=False, progress=False)
    with pytest.raises(RuleError, match="no context"):
        rw.solve()
    rw.add_context(0, box(16, 0, 0, 2, 2))  # one location at the 8×8 keys of layer3
    with pytest.raises(RuleError, match="no goal"):
        rw.solve()
    rw.set_copy(0, box(16, 0, 0, 4, 4))
    rw.set_paste(1, (4, 4))
    with pytest.raises(RuleError, match="larger than the context allows"):
        rw.solve(rank=2)
    far = Rewriter(tiny, None)
    far.compute_stats(n=4, use_cache=False, progress=False)
    far.set_copy(0, box(16, 0, 0, 4, 4))
    far.set_paste(1, (40, 0))
    with pytest.raises(RuleError, match="out of the image"):
        far.solve()
    with pytest.raises(RuleError, match="unknown `method`"):
        rw.solve(method="magic")
    assert rw.solve(rank=1).layers[rw.layer].rank == 1
    with pytest.raises(RuleError, match="version"):
        Rewriter.from_spec(tiny, {"layer": "layer2"})
    with pytest.raises(RuleError, match="field `layer` must be a layer name"):
        Rewriter.from_spec(tiny, {"version": 1})
    spec = rw.spec()
    with pytest.raises(LayerError, match="unknown layer 'layer9'"):
        Rewriter.from_spec(tiny, {**spec, "layer": "layer9"})
    with pytest.raises(RuleError, match=r"field `copy.mask` is 8×8 but the model makes 16×16"):
        Rewriter.from_spec(tiny, {**spec, "copy": {"seed": 0, "mask": encode_mask(torch.ones(8, 8))}})


def test_numpy_masks_and_mask_codes() -> None:
    soft = quantize_mask(torch.rand(16, 16))
    assert torch.equal(decode_mask(encode_mask(soft)), soft)
    hard = torch.from_numpy(np.eye(16, dtype=bool)).float()
    assert torch.equal(decode_mask(encode_mask(hard)), hard)
    with pytest.raises(RuleError, match="malformed mask code"):
        decode_mask("png:xx")
    with pytest.raises(RuleError, match="pixels"):
        decode_mask("rle:4x4:1,2")


def tiny_generator(arch: str) -> GANGenerator:
    torch.manual_seed(0)
    if arch == "dcgan":
        return DCGANGenerator(DCGANConfig(resolution=16, ngf=8, z_dim=8)).eval()
    if arch == "progan":
        config = ProGANConfig(resolution=16, z_dim=8, channels=[16, 16, 12, 12, 8, 8], default_layer="layer4")
        return ProGANGenerator(config).eval()
    config = StyleGAN2Config(resolution=16, z_dim=16, n_mlp=2, channels={"4": 16, "8": 16, "16": 8})
    return StyleGAN2Generator(config).eval()


@pytest.mark.parametrize("arch", ["dcgan", "progan", "stylegan2"])
@pytest.mark.parametrize("method", ["closed_form", "optimize"])
def test_every_architecture_moves_toward_the_goal(arch: str, method: str) -> None:
    G = tiny_generator(arch)
    before = {k: v.clone() for k, v in G.state_dict().items()}
    rw = Rewriter(G, None)  # the default layer
    rw.compute_stats(n=24, use_cache=False, progress=False)
    rw.set_copy(0, box(16, 2, 2, 8, 8))
    rw.set_paste(1, box(16, 6, 8, 12, 14))
    options = {"steps": 150, "progress": False} if method == "optimize" else {}
    delta = rw.solve(rank=2, method=method, **options)
    goal = rw.goal()
    module = G.layer_module(rw.layer)

    def error() -> float:
        with torch.no_grad():
            gap = (rw.kind.output(module, goal.state) - goal.target).abs()
        return float((gap * goal.weight[:, None]).sum())

    start = error()
    G.load_rule(delta, name="paste")
    assert error() < 0.7 * start
    G.unload_rules()
    assert all(torch.equal(v, G.state_dict()[k]) for k, v in before.items())


def test_solve_spec_computes_its_statistics(tiny: DCGANGenerator, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("GAN_REWRITE_HOME", str(tmp_path))
    rw = Rewriter(tiny, "layer2", truncation=0.8)
    rw.compute_stats(n=12, seed=3, progress=False)
    rw.set_copy(0, box(16, 2, 2, 8, 8))
    rw.set_paste(1, (4, 6), region="box")
    delta = rw.solve(rank=1, method="optimize", steps=30, progress=False)
    assert delta.spec["stats"] == {"n": 12, "seed": 3, "truncation": 0.8}
    assert delta.spec["paste"] == {"seed": 1, "offset": [4, 6]} and delta.spec["region"] == "box"
    again = solve_spec(tiny, json.dumps(delta.spec), progress=False)
    assert again.spec == delta.spec
    assert torch.equal(again.layers["layer2"].lam, delta.layers["layer2"].lam)
    assert list((tmp_path / "stats").rglob("*.safetensors"))  # the statistics went to the cache


def test_image_loss_is_recorded_and_solve_spec_reproduces_it(tiny: DCGANGenerator, tmp_path, monkeypatch) -> None:
    """``loss="image"`` (L1 on the final image through the rest of the generator) is a JSON option: it goes
    into the spec, and ``solve_spec`` gives the same rule bit for bit."""
    monkeypatch.setenv("GAN_REWRITE_HOME", str(tmp_path))
    rw = Rewriter(tiny, "layer2")
    rw.compute_stats(n=12, progress=False)
    rw.add_context(0, box(16, 6, 8, 12, 14))
    rw.set_copy(0, box(16, 2, 2, 8, 8))
    rw.set_paste(1, box(16, 6, 8, 12, 14))
    delta = rw.solve(rank=1, method="optimize", loss="image", steps=40, progress=False)
    assert delta.spec["solver"] == {"loss": "image", "steps": 40, "progress": False, "variable": "lambda"}
    assert all(p.grad is None for p in tiny.parameters())  # only the edited copy of the weight gets gradients
    layer = rw.solve(rank=1, method="optimize", steps=40, progress=False)
    assert not torch.equal(layer.layers["layer2"].lam, delta.layers["layer2"].lam)  # the loss matters
    # The image loss went down, and the rule does on the full generator what the solver's renderer measured.
    goal = rw.goal()
    module = tiny.layer_module("layer2")
    loss = goal_image_l1(rw.kind, module, goal, rw.renderer(goal.state))
    edited = module.weight + delta.delta_weight("layer2")
    with torch.no_grad():
        assert float(loss(edited)) < 0.95 * float(loss(module.weight))
        rendered = rw.renderer(goal.state)(rw.kind.output(module, goal.state, edited))
        tiny.load_rule(delta)
        try:
            torch.testing.assert_close(tiny.forward_from("layer2", goal.state), rendered)
        finally:
            tiny.unload_rules()
    again = solve_spec(tiny, json.dumps(delta.spec), progress=False)
    assert again.spec == delta.spec
    assert torch.equal(again.layers["layer2"].lam, delta.layers["layer2"].lam)
    assert torch.equal(again.layers["layer2"].direction, delta.layers["layer2"].direction)


def test_spec_solver_options_are_checked(tiny: DCGANGenerator) -> None:
    from gan_rewrite.rewrite.spec import check_spec

    rw = Rewriter(tiny, "layer2")
    rw.set_copy(0, box(16, 2, 2, 8, 8))
    rw.set_paste(1, (2, 2))
    spec = {**rw.spec(), "method": "optimize", "solver": {"loss": "image", "steps": 10}}
    check_spec(spec)
    with pytest.raises(RuleError, match=r"field `solver.loss` must be one of \['layer', 'image'\], got 'pixel'"):
        check_spec({**spec, "solver": {"loss": "pixel"}})
    with pytest.raises(RuleError, match=r"field `solver.loss` must be one of"):
        check_spec({**spec, "solver": {"loss": 1}})
    with pytest.raises(RuleError, match=r"option\(s\) \['render'\]"):  # code, never data
        check_spec({**spec, "solver": {"render": "x"}})
    with pytest.raises(RuleError, match=r"option\(s\) \['loss', 'steps'\] that method 'closed_form' does not take"):
        check_spec({**spec, "method": "closed_form"})


@pytest.mark.parametrize("arch", ["dcgan", "progan", "stylegan2"])
def test_renderer_runs_the_rest_of_the_generator(arch: str) -> None:
    """``Rewriter.renderer`` replaces the layer's output and runs the rest: with the layer's own output it is
    the generator itself, and ``loss="image"`` lowers the image loss on every architecture."""
    G = tiny_generator(arch)
    rw = Rewriter(G, None)
    rw.compute_stats(n=24, use_cache=False, progress=False)
    rw.set_copy(0, box(16, 2, 2, 8, 8))
    rw.set_paste(1, box(16, 6, 8, 12, 14))
    goal = rw.goal()
    module = G.layer_module(rw.layer)
    render = rw.renderer(goal.state)
    with torch.no_grad():
        torch.testing.assert_close(render(rw.kind.output(module, goal.state)), G.forward_from(rw.layer, goal.state))
    delta = rw.solve(rank=1, method="optimize", loss="image", steps=60, progress=False)
    loss = goal_image_l1(rw.kind, module, goal, render)
    with torch.no_grad():
        assert float(loss(module.weight + delta.delta_weight(rw.layer))) < float(loss(module.weight))
