"""The toy world: deterministic scenes whose labels match their pixels, the shipped model and segmenter, training."""

from __future__ import annotations

import json

import pytest
import torch

import gan_rewrite as gr
from gan_rewrite.cli import main as cli
from gan_rewrite.rewrite.rewriter import solve_spec
from gan_rewrite.toyworld.render import (
    CLASS_INDEX,
    CLASSES,
    ROOF_KINDS,
    ToyWorldError,
    render_antialiased,
    render_scenes,
    scene_uniforms,
)
from gan_rewrite.toyworld.segment import evaluate, load_segmenter, segment
from gan_rewrite.toyworld.train import TrainConfig, Trainer, export_model


def test_scene_depends_on_its_seed_alone():
    batch, _ = render_scenes([5, 6, 7])
    alone, _ = render_scenes([7])
    assert torch.equal(batch[2], alone[0])
    assert not torch.equal(batch[0], batch[1])
    again, labels = render_scenes([5, 6, 7])
    assert torch.equal(batch, again)
    assert labels.dtype == torch.long and labels.max() < len(CLASSES)


def test_labels_match_pixels():
    images, labels = render_scenes(range(64))
    rgb = (images + 1) / 2  # (N, 3, H, W) in [0, 1]
    r, g, b = rgb.unbind(1)
    # Where the label changes between neighbours, so does the colour: no label edge is invisible.
    edge = labels[:, :, 1:] != labels[:, :, :-1]
    step = (rgb[..., 1:] - rgb[..., :-1]).abs().amax(1)
    assert (step[edge] > 1e-3).float().mean() > 0.99
    # Each class has its own colours.
    sky, ground, tree = (labels == CLASS_INDEX[name] for name in ("sky", "ground", "tree"))
    assert (b[sky] > r[sky]).all() and (b[sky] >= g[sky]).all()
    assert (g[ground] > b[ground]).all() and (g[tree] > b[tree]).all()
    cloud = labels == CLASS_INDEX["cloud"]
    assert (rgb.amin(1)[cloud] > 0.85).all()
    # Co-occurrence: a window or door has wall (or another window) beside it, never sky.
    for name in ("window", "door"):
        rows, cols = torch.nonzero(labels[0] == CLASS_INDEX[name], as_tuple=True)
        if len(rows):
            assert (labels[0, rows.clamp(max=63), cols] != CLASS_INDEX["sky"]).all()
    # Every roof kind appears in 64 scenes.
    assert all((labels == CLASS_INDEX[kind]).any() for kind in ROOF_KINDS)


def test_antialiased_labels_are_the_majority_of_subpixels():
    u = scene_uniforms([3])
    _, fine = render_antialiased(u, factor=1)
    images, labels = render_antialiased(u, size=32, factor=2)
    assert images.shape == (1, 3, 32, 32) and labels.shape == (1, 32, 32)
    flat = (labels == fine[:, ::2, ::2]) | (labels == fine[:, 1::2, 1::2])
    assert flat.float().mean() > 0.97


@pytest.mark.parametrize("seeds", [[-1], [1.5], [True], [2**63]])
def test_bad_seeds_are_refused(seeds):
    with pytest.raises(ToyWorldError, match="seeds"):
        render_scenes(seeds)


@pytest.fixture(scope="module")
def segmenter():
    return load_segmenter()


def test_segmenter_is_accurate_on_held_out_renders(segmenter):
    scores = evaluate(segmenter, range(10**7, 10**7 + 48))
    assert scores["pixel_accuracy"] >= 0.95


def test_shipped_model_draws_every_roof_kind(segmenter):
    G = gr.load_generator("toyworld-stylegan2-64", device="cpu")
    assert G.config.architecture == "stylegan2" and G.config.resolution == 64
    labels = segment(segmenter, G.sample(seeds=range(64)))
    present = {name for index, name in enumerate(CLASSES) if (labels == index).sum() > 20}
    assert set(ROOF_KINDS) <= present
    assert {"sky", "ground", "wall"} <= present


def test_rule_from_spec_reproduces_bit_for_bit():
    G = gr.load_generator("toyworld-stylegan2-64", device="cpu")
    rw = gr.Rewriter(G, layer="layer6")
    rw.compute_stats(n=16, progress=False)
    box = torch.zeros(64, 64)
    box[20:30, 24:40] = 1
    for seed in (1, 2):
        rw.add_context(seed, box)
    rw.set_copy(3, box)
    rw.set_paste(4, box)
    delta = rw.solve(rank=1)
    again = solve_spec(G, rw.spec(), stats=rw.stats)
    assert delta.layers.keys() == again.layers.keys()
    for name, part in delta.layers.items():
        assert torch.equal(part.direction, again.layers[name].direction)
        assert torch.equal(part.lam, again.layers[name].lam)
    assert part.lam.abs().sum() > 0


def _tiny() -> TrainConfig:
    return TrainConfig(resolution=16, z_dim=16, n_mlp=1, channels={"4": 8, "8": 8, "16": 8}, batch_size=4)


def test_training_resumes_exactly_where_it_stopped(tmp_path):
    trainer = Trainer.create(_tiny(), "cpu")
    before = {k: v.clone() for k, v in trainer.G.state_dict().items()}
    trainer.train(steps=2, folder=tmp_path / "ck", progress=False)
    assert any(not torch.equal(before[k], v) for k, v in trainer.G.state_dict().items())
    resumed = Trainer.resume(tmp_path / "ck", "cpu")
    assert (resumed.step, resumed.images) == (2, 8)
    for name in ("G", "G_ema", "D"):
        saved, loaded = getattr(trainer, name).state_dict(), getattr(resumed, name).state_dict()
        assert all(torch.equal(saved[key], loaded[key]) for key in saved), name
    assert resumed.opt_g.state_dict()["state"][0]["step"] == trainer.opt_g.state_dict()["state"][0]["step"]
    resumed.train(steps=1, folder=tmp_path / "ck", progress=False)
    assert json.loads((tmp_path / "ck" / "state.json").read_text())["step"] == 3
    export_model(resumed, tmp_path / "model")
    G = gr.load_generator(tmp_path / "model", device="cpu")
    assert G.sample(seeds=[0]).shape == (1, 3, 16, 16)


def test_cli_trains_a_slice_and_refuses_a_foreign_folder(tmp_path, capsys):
    trainer = Trainer.create(_tiny(), "cpu")
    trainer.save(tmp_path / "ck")
    assert cli(["train-toyworld", str(tmp_path / "ck"), "--steps", "1", "--device", "cpu",
                "--out", str(tmp_path / "model")]) == 0
    assert "resuming at step 0" in capsys.readouterr().out
    assert json.loads((tmp_path / "ck" / "state.json").read_text())["step"] == 1
    assert (tmp_path / "model" / "model.safetensors").is_file()
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "state.json").write_text("{not json")
    assert cli(["train-toyworld", str(tmp_path / "junk"), "--steps", "1"]) == 2
    assert "not a toy-world training checkpoint" in capsys.readouterr().err
