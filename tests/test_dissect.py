"""GAN dissection: unit quantiles (exact, cached, 2-process gloo), IoU ranking, ablation rules, painting, CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from gan_rewrite.cli import main
from gan_rewrite.dissect import (
    PaintedConcepts,
    UnitQuantiles,
    ablate,
    ablation_rule,
    compute_quantiles,
    dissect,
    paint,
    unit_activations,
)
from gan_rewrite.dissect.concepts import painted_from_json, upsample
from gan_rewrite.dissect.quantiles import LEVELS
from gan_rewrite.errors import LayerError, RuleError, StatsError
from gan_rewrite.models import DCGANConfig, DCGANGenerator, StyleGAN2Config, StyleGAN2Generator
from gan_rewrite.models.progan import ProGANConfig, ProGANGenerator
from gan_rewrite.rewrite.delta import RuleDelta
from gan_rewrite.rewrite.layers import layer_kind


def tiny(arch: str = "dcgan"):
    torch.manual_seed(0)
    if arch == "dcgan":
        return DCGANGenerator(DCGANConfig(resolution=16, ngf=8, z_dim=8)).eval()
    if arch == "progan":
        config = ProGANConfig(resolution=16, z_dim=8, channels=[16, 16, 12, 12, 8, 8], default_layer="layer4")
        return ProGANGenerator(config).eval()
    config = StyleGAN2Config(resolution=16, z_dim=16, n_mlp=2, channels={"4": 16, "8": 16, "16": 8})
    return StyleGAN2Generator(config).eval()


def test_quantiles_are_exact_when_every_location_is_kept() -> None:
    G = tiny()
    q = compute_quantiles(G, "layer2", n=6, per_sample=10_000, batch_size=4, use_cache=False, progress=False)
    acts = unit_activations(G, "layer2", range(6))  # (6, C, 8, 8)
    values = acts.permute(1, 0, 2, 3).reshape(acts.shape[1], -1).numpy()
    expected = np.quantile(values, LEVELS, axis=1).T
    np.testing.assert_allclose(q.values.numpy(), expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(q.at(0.99).numpy(), expected[:, LEVELS.index(0.99)], rtol=1e-5, atol=1e-6)
    assert q.units == acts.shape[1]


def test_quantiles_cache_and_file_checks(tmp_path) -> None:
    G = tiny()
    first = compute_quantiles(G, "layer2", n=5, per_sample=7, cache_dir=tmp_path, progress=False)
    files = list(tmp_path.rglob("*.safetensors"))
    assert len(files) == 1
    again = compute_quantiles(G, "layer2", n=5, per_sample=7, cache_dir=tmp_path, progress=False)
    torch.testing.assert_close(again.values, first.values, rtol=0, atol=0)
    saved = UnitQuantiles.load(first.save(tmp_path / "q.safetensors"))
    assert saved.matches(first.model_sha256, "layer2", 5, None, 0, 7)
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a file")
    with pytest.raises(StatsError, match="cannot read"):
        UnitQuantiles.load(bad)
    with pytest.raises(LayerError, match="last layer"):
        compute_quantiles(G, G.layer_names[-1], n=2, use_cache=False)


def _worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        q = compute_quantiles(tiny(), "layer2", n=7, per_sample=5, batch_size=2, use_cache=False, progress=False)
        q.save(f"{out_dir}/rank{rank}.safetensors")
    finally:
        dist.destroy_process_group()


def test_two_gloo_processes_equal_one(tmp_path) -> None:
    mp.spawn(_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    single = compute_quantiles(tiny(), "layer2", n=7, per_sample=5, batch_size=3, use_cache=False, progress=False)
    for rank in range(2):
        got = UnitQuantiles.load(tmp_path / f"rank{rank}.safetensors")
        # Same samples and locations; only the batching differs, and a convolution over a batch of 2 or 3 may round
        # its sums differently in the last bit (seen: 7e-9), so equal means equal to float32 rounding.
        torch.testing.assert_close(got.values, single.values, rtol=1e-6, atol=1e-7)


def test_a_concept_drawn_by_one_unit_ranks_that_unit_first() -> None:
    G = tiny()
    q = compute_quantiles(G, "layer2", n=16, per_sample=64, use_cache=False, progress=False)
    seeds = [0, 1, 2, 3]
    up = upsample(unit_activations(G, "layer2", seeds), G.resolution)
    unit, level = 5, 0.9
    masks = up[:, unit] > q.at(level)[unit]  # the concept is exactly where unit 5 fires at its 0.9 quantile
    concepts = PaintedConcepts({"five": list(zip(seeds, masks, strict=True)), "absent": [(0, masks[0]), (9, masks[0])]})
    result = dissect(G, "layer2", concepts, quantiles=q, levels=(0.8, level, 0.99), progress=False)
    best, iou = result.top("five", 1)[0]
    assert (best, iou) == (unit, pytest.approx(1.0))
    assert float(result.levels[unit, result.column("five")]) == pytest.approx(level)
    assert result.top("five", 2)[1][1] < 1.0
    # the IoU of another unit, recomputed by hand at its chosen level
    other = result.top("five", 3)[2][0]
    fires = up[:, other] > result.thresholds[other, 0]
    expected = (fires & masks).sum() / (fires | masks).sum()
    assert result.iou[other, 0] == pytest.approx(float(expected), rel=1e-6)
    with pytest.raises(RuleError, match="unknown concept"):
        result.top("nope")


def test_painted_concepts_from_json_and_their_errors() -> None:
    concepts = painted_from_json({"hat": [{"seed": 2, "box": [0, 0, 4, 16]}, {"seed": 5}]}, 16)
    masks, known = concepts.batch([2, 5, 7], None, 16)
    assert masks[0, 0].sum() == 64 and masks[1, 0].sum() == 0 and known[:, 0].tolist() == [True, True, False]
    with pytest.raises(RuleError, match="box"):
        painted_from_json({"hat": [{"seed": 2, "box": [0, 0, 40, 16]}]}, 16)
    with pytest.raises(RuleError, match="seed"):
        painted_from_json({"hat": [{"box": [0, 0, 4, 16]}]}, 16)
    with pytest.raises(RuleError, match="no painted pixel"):
        painted_from_json({"hat": [{"seed": 1}]}, 16)


@pytest.mark.parametrize("arch", ["dcgan", "progan"])
def test_ablation_rule_is_switching_the_units_off(arch: str, tmp_path) -> None:
    G = tiny(arch)
    layer = G.layer_names[1]
    units = [3, 1, 3]
    runtime = ablate(G, layer, [0, 1], units)
    before = G.sample([0, 1])
    weight = G.layer_module(G.layer_names[2]).weight.detach().clone()
    delta = RuleDelta.load(ablation_rule(G, layer, units).save(tmp_path / "r.safetensors"))
    assert delta.layer_names == [G.layer_names[2]] and delta.layers[G.layer_names[2]].rank == 2
    G.load_rule(delta, name="off")
    torch.testing.assert_close(G.sample([0, 1]), runtime, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(runtime, before, atol=1e-4)
    G.set_rule_scales({"off": 0.0})
    torch.testing.assert_close(G.sample([0, 1]), before, rtol=1e-6, atol=1e-6)
    G.unload_rules()
    assert torch.equal(G.layer_module(G.layer_names[2]).weight, weight)


def test_stylegan2_ablation_zeroes_the_units_in_key_space() -> None:
    G = tiny("stylegan2")
    layer, target = "layer2", "layer3"
    delta = ablation_rule(G, layer, [0, 4])
    module = G.layer_module(target)
    kind = layer_kind(module)
    state = G.forward_to(target, G.make_latents([0, 1]), noise=G.make_noise([0, 1]))
    keys = kind.keys(module, state)
    zeroed = keys.clone()
    zeroed[:, [0, 4]] = 0
    new_weight = module.weight.detach() + delta.delta_weight()
    torch.testing.assert_close(kind.linear(module, keys, new_weight), kind.linear(module, zeroed, module.weight),
                               rtol=1e-5, atol=1e-6)  # fmt: skip
    assert delta.spec["side_output"] is False and ablation_rule(G, "layer3", [0]).spec["side_output"] is True


def test_paint_changes_the_painted_region() -> None:
    G = tiny()
    q = compute_quantiles(G, "layer2", n=8, use_cache=False, progress=False)
    before = G.sample([0, 1, 2])
    none = paint(G, "layer2", [0, 1, 2], [0, 2], torch.zeros(16, 16), value=q.at(0.99))
    torch.testing.assert_close(none, before, rtol=0, atol=1e-6)
    box = torch.zeros(16, 16)
    box[4:10, 4:10] = 1
    painted = paint(G, "layer2", [0, 1, 2], list(range(8)), box, value=q.at(0.999) * 3)
    change = (painted - before).abs().mean((0, 1))
    assert change[4:10, 4:10].mean() > 3 * change[box == 0].mean()
    with pytest.raises(RuleError, match="units 0"):
        paint(G, "layer2", [0], [99], box)
    with pytest.raises(RuleError, match="mask"):
        paint(G, "layer2", [0], [0], torch.zeros(8, 8))


def test_cli_dissect_ablate_paint(tmp_path, capsys) -> None:
    model = tmp_path / "model"
    tiny().save_pretrained(model)
    masks = tmp_path / "masks.json"
    masks.write_text(json.dumps({"top": [{"seed": s, "box": [0, 0, 6, 16]} for s in range(4)] + [{"seed": 9}]}))
    report = tmp_path / "report"
    args = [str(model), "--layer", "layer2", "--device", "cpu"]
    assert main(["dissect", *args, "-n", "8", "--masks", str(masks), "--out", str(report), "--no-cache"]) == 0
    page = (report / "index.html").read_text()
    data = json.loads((report / "dissection.json").read_text())
    best = data["concepts"]["top"][0]["unit"]
    assert f"units/top_{best}.png" in page and (report / f"units/top_{best}.png").is_file()
    rule = tmp_path / "off.safetensors"
    pick = ["--concept", "top", "--dissection", str(report / "dissection.json"), "--top", "3"]
    assert main(["ablate", *args, *pick, "--out", str(rule)]) == 0
    delta = RuleDelta.load(rule)
    assert sorted(delta.spec["units"]) == sorted(e["unit"] for e in data["concepts"]["top"][:3])
    grid = tmp_path / "paint.png"
    assert main(["paint", *args, *pick, "--seeds", "0-3", "--box", "0,0,8,8", "-n", "8", "--out", str(grid)]) == 0
    assert grid.is_file()
    assert main(["ablate", *args, "--out", str(rule)]) == 2
    assert "choose units" in capsys.readouterr().err
