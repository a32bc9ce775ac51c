"""Rules that carry over (issue 9): the leave-one-out score, layer="auto", the bounded closed form, the
reference-style erase."""

from __future__ import annotations

import json
from pathlib import Path

import gan_face_generate
import pytest
import torch
from common_fixtures import TINY_ARCHITECTURES
from masks import box

from gan_rewrite.cli import main
from gan_rewrite.errors import RuleError
from gan_rewrite.models import DCGANConfig, DCGANGenerator
from gan_rewrite.rewrite import Rewriter, compute_stats, solve_spec
from gan_rewrite.rewrite.context import (
    DEFAULT_DIRECTION_RIDGE,
    Goal,
    context_directions,
    downsample_mask,
    erase_goal,
    output_for_keys,
    paste_goal,
    run_layer,
    stack_goals,
    weighted_keys,
)
from gan_rewrite.rewrite.rewriter import FIT_CONTEXTS, IMAGE_FIT_MAX_RESOLUTION, default_solver
from gan_rewrite.rewrite.score import DIRECTION_RIDGES, candidate_layers, layer_score
from gan_rewrite.rewrite.solve import bounded_system, image_l1_of_output, key_change, solve_bounded
from gan_rewrite.rewrite.units import rank_units_by_selectivity, switch_off_units


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


# The embedded faces are roughly aligned: eyes around rows 26-34.
EYE_FACES = [1, 41, 57, 66, 7, 22]


def test_score_ranks_a_consistent_context_above_a_random_one(faces: DCGANGenerator, faces_stats) -> None:
    consistent = Rewriter(faces, "layer3")
    consistent.set_stats(faces_stats)
    for seed in EYE_FACES:
        consistent.add_context(seed, box(64, 24, 12, 36, 52))  # the eyes of six faces
    scattered = Rewriter(faces, "layer3")
    scattered.set_stats(faces_stats)
    g = torch.Generator().manual_seed(0)
    for seed in EYE_FACES:  # the same amount of paint, at a random place of each face
        top, left = (int(v) for v in torch.randint(0, 52, (2,), generator=g))
        scattered.add_context(seed, box(64, top, left, top + 12, left + 12))
    good = consistent.score(["layer3"], seeds=range(5000, 5016))
    bad = scattered.score(["layer3"], seeds=range(5000, 5016))
    assert good.layers["layer3"].held_out and len(good.layers["layer3"].per_context) == len(EYE_FACES)
    assert good.layers["layer3"].auc > bad.layers["layer3"].auc + 0.1
    assert good.layers["layer3"].auc > 0.8
    assert "layer3" in good.advice and "AUC" in good.advice
    # One context example cannot be left out: said so, not hidden.
    single = Rewriter(faces, "layer3")
    single.set_stats(faces_stats)
    single.add_context(1, box(64, 24, 12, 36, 52))
    assert "one context example" in single.score(["layer3"], seeds=range(5000, 5004)).advice


def test_advice_names_a_better_layer(tiny: DCGANGenerator) -> None:
    rw = Rewriter(tiny, "layer2")
    rw.compute_stats(n=16, use_cache=False, progress=False)
    for seed in range(3):
        rw.add_context(seed, box(16, 4, 4, 10, 10))
    result = rw.score(["layer2", "layer3"], seeds=range(100, 104))
    assert set(result.layers) == {"layer2", "layer3"} and result.layer == "layer2"
    assert result.best == max(result.layers, key=lambda n: result.layers[n].auc)
    text = str(result)
    assert "layer2" in text and "layer3" in text and result.advice in text


def test_layer_auto_round_trips_through_the_spec(tiny: DCGANGenerator) -> None:
    rw = Rewriter(tiny)  # layer="auto" is the default for new requests
    assert rw.auto and rw.spec()["layer"] == "auto"
    rw.compute_stats(n=24, use_cache=False, progress=False)
    for seed in (2, 3, 4):
        rw.add_context(seed, box(16, 6, 8, 12, 14))
    rw.set_copy(0, box(16, 2, 2, 8, 8))
    rw.set_paste(1, box(16, 6, 8, 12, 14))
    request = rw.spec()
    delta = rw.solve()
    chosen = delta.layer_names[0]
    assert chosen in candidate_layers(tiny) and chosen == rw.layer
    spec = delta.spec
    # The default solve of a small model: the image fit over the contexts, every option recorded.
    assert spec["layer"] == chosen and spec["method"] == "optimize"
    assert FIT_CONTEXTS.items() <= spec["solver"].items()
    assert set(spec["auto_layer"]["scores"]) == set(candidate_layers(tiny))
    assert max(spec["auto_layer"]["scores"], key=spec["auto_layer"]["scores"].get) == chosen
    again = solve_spec(tiny, json.loads(json.dumps(spec)), progress=False)
    assert again.layer_names == [chosen]
    assert torch.equal(again.layers[chosen].lam, delta.layers[chosen].lam)
    assert torch.equal(again.layers[chosen].direction, delta.layers[chosen].direction)
    # The request written before solving is still "auto", and re-solving it chooses the same layer.
    assert request["layer"] == "auto" and "auto_layer" in request and request["auto_layer"] is None
    redo = solve_spec(tiny, request, progress=False)
    assert redo.layer_names == [chosen] and torch.equal(redo.layers[chosen].lam, delta.layers[chosen].lam)


def test_the_score_chooses_the_direction_ridge_and_the_rule_uses_it(faces: DCGANGenerator, faces_stats) -> None:
    """Each ridge of D is scored by leaving context examples out; the best one is kept, goes into the spec
    and builds the rule's direction. On the eyes of six faces the plain C⁻¹k* (1e-3) is not the best."""
    rw = Rewriter(faces, "layer3")
    rw.set_stats(faces_stats)
    for seed in EYE_FACES:
        rw.add_context(seed, box(64, 24, 12, 36, 52))
    ridges = (1e-3, 1.0, 100.0)
    one = rw.score(["layer3"], seeds=range(5000, 5016)).layers["layer3"]
    assert set(one.by_ridge) == set(DIRECTION_RIDGES)
    layer = layer_score(faces, "layer3", faces_stats, [(c.seed, c.mask) for c in rw.context],
                        seeds=range(5000, 5016), ridges=ridges)
    assert list(layer.by_ridge) == list(ridges) and len(set(layer.by_ridge.values())) == 3  # the ridge matters
    assert layer.ridge == max(layer.by_ridge, key=layer.by_ridge.get) and layer.auc == layer.by_ridge[layer.ridge]
    assert layer.ridge != 1e-3 and layer.auc > layer.by_ridge[1e-3]
    # A fixed layer solves with the default ridge (or the one given); "auto" with the score's.
    assert rw.direction_ridge == DEFAULT_DIRECTION_RIDGE and rw.spec()["direction_ridge"] == DEFAULT_DIRECTION_RIDGE
    auto = Rewriter(faces)
    auto.set_stats(faces_stats)  # layer3, the default layer: scoring the other candidates computes theirs
    for seed in EYE_FACES:
        auto.add_context(seed, box(64, 24, 12, 36, 52))
    auto.set_copy(35, box(64, 22, 10, 38, 54))
    auto.set_paste(1, box(64, 22, 10, 38, 54))
    delta = auto.solve()
    chosen = auto.chosen.layers[auto.layer]
    assert auto.direction_ridge == chosen.ridge == delta.spec["direction_ridge"]
    keys, weights = auto.context_keys()
    expected = context_directions(auto.stats, keys, weights, 1, chosen.ridge)
    assert torch.equal(delta.layers[auto.layer].direction, expected.to(delta.layers[auto.layer].direction))
    given = Rewriter(faces, "layer3", direction_ridge=7.0)
    assert given.direction_ridge == 7.0 and given.spec()["direction_ridge"] == 7.0
    with pytest.raises(RuleError, match="direction_ridge"):
        Rewriter(faces, "layer3", direction_ridge=-1.0)
    with pytest.raises(RuleError, match="direction_ridge"):
        Rewriter.from_spec(faces, {**delta.spec, "direction_ridge": "big"})


def test_one_context_example_is_scored_at_the_default_ridge_only(tiny: DCGANGenerator) -> None:
    """In-sample, a smaller ridge always looks better; with nothing to leave out the ridge is not chosen."""
    stats = compute_stats(tiny, "layer2", n=16, use_cache=False, progress=False)
    result = layer_score(tiny, "layer2", stats, [(0, box(16, 4, 4, 10, 10))], seeds=range(100, 104))
    assert not result.held_out and result.by_ridge.keys() == {DEFAULT_DIRECTION_RIDGE}
    assert result.ridge == DEFAULT_DIRECTION_RIDGE


def test_bounded_closed_form_bounds_the_change_on_the_keys(tiny: DCGANGenerator) -> None:
    layer = "layer2"
    rw = Rewriter(tiny, layer)
    stats = rw.compute_stats(n=32, use_cache=False, progress=False)
    for seed in (2, 3, 4):
        rw.add_context(seed, box(16, 4, 4, 10, 10))
    rw.set_copy(0, box(16, 2, 2, 8, 8))
    rw.set_paste(1, box(16, 4, 4, 10, 10))
    direction = rw.directions(1)
    goals = rw.goals()
    assert len(goals) == 4  # the paste sample and the three other context samples
    moment = direction.T @ stats.second_moment @ direction
    module = tiny.layer_module(layer)
    system = bounded_system(rw.kind, module, goals, direction, moment=moment)
    start = sum(system.consts)  # the weighted squared residual of Λ = 0
    previous = float("inf")
    for penalty in (1e-3, 1e-1, 1e1):
        lam = solve_bounded(rw.kind, module, goals, direction, moment=moment, penalty=penalty)
        change = key_change(lam, moment)
        assert change <= start / (penalty * system.scale) * (1 + 1e-4)  # the documented bound
        assert change < previous  # a larger penalty changes the keys less
        previous = change
    # key_change is E_k Σ_t ‖ΔW_t k‖² over the statistics' keys.
    dw = rw.kind.to_oihw(rw.kind.delta_weight(direction.float(), lam)).to(torch.float64)
    second = stats.second_moment
    direct = sum(float(torch.trace(dw[:, :, a, b] @ second @ dw[:, :, a, b].T)) for a in range(4) for b in range(4))
    assert change == pytest.approx(direct, rel=1e-4)
    # The automatic trade-off (leave each goal out) stays within the grid's bound too, and the rule moves
    # the paste sample's layer output towards its goal.
    delta = rw.solve()
    auto = delta.layers[layer].lam
    assert key_change(auto, moment) <= start / (1e-5 * system.scale)
    goal = goals[0]
    with torch.no_grad():
        before = float(((rw.kind.output(module, goal.state) - goal.target).abs() * goal.weight[:, None]).sum())
    tiny.load_rule(delta)
    with torch.no_grad():
        after = float(((rw.kind.output(module, goal.state) - goal.target).abs() * goal.weight[:, None]).sum())
    tiny.unload_rules()
    assert after < before


def test_units_ranked_by_selectivity(tiny: DCGANGenerator) -> None:
    stats = compute_stats(tiny, "layer3", n=32, use_cache=False, progress=False)
    run = run_layer(tiny, "layer3", [0])
    keys = run.keys[0].permute(1, 2, 0).reshape(-1, stats.dim).to(torch.float64)[:5].clone()
    keys[:, 3] += 100 * (torch.diagonal(stats.second_moment)[3] - stats.mean[3] ** 2).sqrt()
    order, z = rank_units_by_selectivity(stats, keys)
    assert int(order[0]) == 3 and bool((z[:-1] >= z[1:]).all())


def test_erase_target_leaves_units_outside_the_selection_untouched(tiny: DCGANGenerator) -> None:
    layer = "layer3"
    stats = compute_stats(tiny, layer, n=32, use_cache=False, progress=False)
    run = run_layer(tiny, layer, [0])
    region = torch.zeros(run.keys.shape[-2:])
    region[2:5, 1:4] = 1.0
    units = [1, 5, 6]
    off = switch_off_units(run.keys, units, region)
    others = [u for u in range(run.keys.shape[1]) if u not in units]
    assert torch.equal(off[:, others], run.keys[:, others])  # bit for bit
    assert torch.equal(off[:, units][..., region == 0], run.keys[:, units][..., region == 0])
    assert bool((off[:, units][..., region == 1] == 0).all())
    # The erase goal's target is the layer's own output on those keys, with the top units of the context.
    mask = torch.zeros(16, 16)
    mask[4:10, 2:8] = 1.0
    goal = erase_goal(tiny, layer, 0, mask, top_units=4, stats=stats)
    module = tiny.layer_module(layer)
    order, _ = rank_units_by_selectivity(stats, *weighted_keys(run.keys, mask))
    kind = Rewriter(tiny, layer).kind
    region = downsample_mask(mask, tuple(run.keys.shape[-2:]))
    expected = output_for_keys(kind, module, run.state, switch_off_units(run.keys, order[:4], region))
    assert torch.equal(goal.target, expected)
    changed = (goal.target - run.output).abs().amax(1) > 0
    assert bool(changed.any()) and bool((goal.weight[changed] > 0).all())


def test_set_erase_defaults_to_the_reference_erase_and_old_specs_keep_theirs(tiny: DCGANGenerator) -> None:
    rw = Rewriter(tiny, "layer2")
    rw.compute_stats(n=16, use_cache=False, progress=False)
    rw.set_erase(0, box(16, 4, 4, 12, 12))
    delta = rw.solve(rank=1)
    dim = rw.kind.shape(tiny.layer_module("layer2").weight)[1]
    assert delta.spec["erase"]["top_units"] == dim // 2 and delta.spec["erase"]["units"] is None
    old = dict(delta.spec)
    old["erase"] = {k: v for k, v in old["erase"].items() if k != "top_units"}  # an older spec
    rebuilt = Rewriter.from_spec(tiny, old)
    assert "top_units" not in rebuilt.spec()["erase"]  # still the output-zeroing erase it was solved with


def test_cli_score_prints_the_table_and_advice(tiny: DCGANGenerator, tmp_path: Path, capsys) -> None:
    folder = tmp_path / "tiny"
    tiny.save_pretrained(folder)
    rw = Rewriter(tiny)
    for seed in (2, 3, 4):
        rw.add_context(seed, box(16, 6, 8, 12, 14))
    rw.set_copy(0, box(16, 2, 2, 8, 8))
    rw.set_paste(1, box(16, 6, 8, 12, 14))
    spec = tmp_path / "request.json"
    spec.write_text(json.dumps(rw.spec()))
    assert main(["score", str(folder), "--spec", str(spec), "-n", "16"]) == 0
    out = capsys.readouterr().out
    assert "AUC" in out and all(name in out for name in candidate_layers(tiny))
    assert "generalise" in out


# ----- the default solve: the image fit over every context sample ------------------------------------------
def _paste_request(G: DCGANGenerator, layer: str = "layer2") -> Rewriter:
    rw = Rewriter(G, layer)
    rw.compute_stats(n=24, use_cache=False, progress=False)
    for seed in (2, 3, 4, 5):
        rw.add_context(seed, box(16, 6, 8, 12, 14))
    rw.set_copy(0, box(16, 2, 2, 8, 8))
    rw.set_paste(1, box(16, 6, 8, 12, 14))
    return rw


def test_default_solver_is_the_image_fit_for_small_models_only(tiny: DCGANGenerator) -> None:
    method, options = default_solver(tiny)
    assert method == "optimize" and options == FIT_CONTEXTS
    big = DCGANGenerator(DCGANConfig(resolution=2 * IMAGE_FIT_MAX_RESOLUTION, ngf=2, z_dim=4)).eval()
    assert default_solver(big) == ("bounded", {})


def test_stacked_goals_are_the_goals_run_as_one_batch(tiny: DCGANGenerator) -> None:
    rw = _paste_request(tiny)
    goals = rw.goals("contexts")
    assert [g.seeds for g in goals] == [(1,), (2,), (3,), (4,), (5,)]
    stacked = stack_goals(tiny, "layer2", goals)
    assert stacked.seeds == (1, 2, 3, 4, 5)
    assert torch.equal(stacked.target, torch.cat([g.target for g in goals]))
    assert torch.equal(stacked.weight, torch.cat([g.weight for g in goals]))
    features = torch.cat([g.state.features for g in goals])
    assert torch.allclose(stacked.state.features, features, atol=1e-6)
    with pytest.raises(RuleError, match="seeds"):
        stack_goals(tiny, "layer2", [Goal(state=goals[0].state, target=goals[0].target, weight=goals[0].weight)] * 2)


def test_the_keep_term_counts_only_pixels_outside_the_goal(tiny: DCGANGenerator) -> None:
    rw = _paste_request(tiny)
    goal = rw.goal()
    render = rw.renderer(goal.state)
    inside_only = image_l1_of_output(goal, render)
    kept = image_l1_of_output(goal, render, keep_weight=2.0)
    with torch.no_grad():
        target = goal.target.clone()
        assert float(kept(target)) == pytest.approx(0.0, abs=1e-6)
        # Change the output far from the goal's region only: the plain loss does not see it, the kept one does.
        region = goal.weight[0] > 0
        far = target.clone()
        rows = torch.nonzero(~region.any(1))[:, 0]
        far[:, :, rows] += 1.0
        assert float(inside_only(far)) < float(kept(far))
        assert float(kept(far)) - float(inside_only(far)) > 0.01


def test_fitting_the_contexts_moves_them_towards_their_goals(tiny: DCGANGenerator) -> None:
    """targets="contexts" fits the copy pasted on every context sample, so the context samples (not only the
    paste sample) move towards their goal images; the keep term holds the rest of those images back."""
    rw = _paste_request(tiny)
    goals = rw.goals("contexts")[1:]
    stacked = stack_goals(tiny, "layer2", goals)
    distance = image_l1_of_output(stacked, rw.renderer(stacked.state))
    module = tiny.layer_module("layer2")

    def after(delta) -> float:
        tiny.load_rule(delta, name="t")
        try:
            with torch.no_grad():
                return float(distance(rw.kind.output(module, stacked.state, module.weight)))
        finally:
            tiny.unload_rules()

    with torch.no_grad():
        before = float(distance(rw.kind.output(module, stacked.state, module.weight)))
    paste_only = after(rw.solve(method="optimize", loss="image", steps=60, lr_factor=3.0, progress=False))
    contexts = after(rw.solve(method="optimize", loss="image", targets="contexts", steps=60, lr_factor=3.0,
                              progress=False))
    assert contexts < paste_only and contexts < before
    with pytest.raises(RuleError, match="loss='image'"):
        rw.solve(method="optimize", keep_weight=1.0, steps=2, progress=False)
    with pytest.raises(RuleError, match="lr_factor"):
        rw.solve(method="optimize", lr=0.1, lr_factor=2.0, steps=2, progress=False)


@pytest.mark.parametrize("arch", ["dcgan", "progan", "stylegan2"])
def test_a_stacked_goal_renders_like_its_goals_one_by_one(arch: str) -> None:
    """The image fit renders every context sample in one batch: the batched state (noise, styles, skip images
    included) must give each sample exactly the image its own goal gives."""
    torch.manual_seed(0)
    G = TINY_ARCHITECTURES[arch]().eval()
    layer = G.config.default_layer
    rw = Rewriter(G, layer)
    goals = [paste_goal(G, layer, 0, box(16, 2, 2, 8, 8), seed, box(16, 6, 6, 12, 12)) for seed in (1, 2, 3)]
    stacked = stack_goals(G, layer, goals)
    with torch.no_grad():
        together = rw.renderer(stacked.state)(stacked.target)
        one_by_one = torch.cat([rw.renderer(g.state)(g.target) for g in goals])
    assert together.shape[0] == 3
    torch.testing.assert_close(together, one_by_one, atol=1e-5, rtol=1e-4)
