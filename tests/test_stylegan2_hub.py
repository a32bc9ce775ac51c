"""A rosinality-layout 256px StyleGAN2 checkpoint: convert with the CLI, push, load back — same function throughout."""

from __future__ import annotations

import torch
from stylegan2_weights import rosinality_random_state_dict

import gan_rewrite as gr
from gan_rewrite.cli import main
from gan_rewrite.models import StyleGAN2Generator


def test_rosinality_256_converts_round_trips_and_samples_identically(hub, tmp_path) -> None:
    state = rosinality_random_state_dict(256, channel_multiplier=1, seed=3)
    latent_avg = torch.randn(512, generator=torch.Generator().manual_seed(7)) * 0.1
    source = tmp_path / "stylegan2-test-256.pt"
    torch.save({"g_ema": state, "latent_avg": latent_avg, "args": {"size": 256}}, source)

    assert main(["convert", str(source), str(tmp_path / "model"), "--format", "rosinality"]) == 0
    reference = StyleGAN2Generator(StyleGAN2Generator.infer_config(state))
    reference.load_weights(state)
    reference.latent_avg.copy_(latent_avg)
    converted = gr.load_generator(tmp_path / "model")
    assert converted.config.resolution == 256 and converted.config.channel_multiplier == 1
    assert set(converted.state_dict()) == set(state) | {"latent_avg"}

    repo = hub.repo_id("stylegan2-256")
    assert main(["push", str(tmp_path / "model"), repo]) == 0
    pulled = gr.load_generator(repo)
    for key, value in converted.state_dict().items():
        assert torch.equal(pulled.state_dict()[key], value), key
    seeds, truncation = [0, 11], 0.7
    expected = reference.sample(seeds, truncation)
    torch.testing.assert_close(pulled.sample(seeds, truncation), expected, rtol=0, atol=0)
    assert expected.std() > 0.01  # a real image, not a constant
