"""DCGAN: the tutorial's key layout, split execution, seeded sampling, and the embedded pretrained weights."""

from __future__ import annotations

import pytest
import torch

from gan_rewrite.errors import CheckpointError, ConfigError, LayerError
from gan_rewrite.models import DCGANConfig, DCGANGenerator


def tutorial_keys(num_layers: int) -> set[str]:
    """The keys the PyTorch tutorial's nn.Sequential produces: conv at 3j, BatchNorm at 3j+1 (not after the last)."""
    keys = set()
    for j in range(num_layers):
        keys.add(f"main.{3 * j}.weight")
        if j < num_layers - 1:
            keys |= {f"main.{3 * j + 1}.{name}" for name in
                     ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")}
    return keys


@pytest.mark.parametrize(("resolution", "ngf", "num_layers"), [(64, 64, 5), (32, 8, 4), (16, 8, 3)])
def test_state_dict_layout(resolution: int, ngf: int, num_layers: int) -> None:
    generator = DCGANGenerator(DCGANConfig(resolution=resolution, ngf=ngf, z_dim=10))
    state = generator.state_dict()
    assert set(state) == tutorial_keys(num_layers)
    assert state["main.0.weight"].shape == (10, ngf * 2 ** (num_layers - 2), 4, 4)
    assert state[f"main.{3 * (num_layers - 1)}.weight"].shape == (ngf, 3, 4, 4)
    assert generator.layer_names == [f"layer{j + 1}" for j in range(num_layers)]


def test_embedded_weights_load_and_make_faces(dcgan_faces: DCGANGenerator) -> None:
    images = dcgan_faces.sample(seeds=[0, 1, 2, 3])
    assert images.shape == (4, 3, 64, 64)
    assert images.min() >= -1 and images.max() <= 1
    # A trained generator makes different, structured images (not noise, not constant).
    assert (images[0] - images[1]).abs().mean() > 0.05
    smoothness = (images[..., 1:, :] - images[..., :-1, :]).abs().mean()
    assert smoothness < 0.5 * images.std()


def test_embedded_model_equals_the_wheels_own_generator(dcgan_faces: DCGANGenerator) -> None:
    """``dcgan-faces-64`` draws exactly what the gan-face-generate wheel's own ``Generator`` draws from its
    ``weights.tar`` on the same latents (its ``models`` module needs only torch)."""
    import importlib.resources

    wheel_models = pytest.importorskip("gan_face_generate.models")
    checkpoint = torch.load(
        importlib.resources.files("gan_face_generate") / "weights.tar", map_location="cpu", weights_only=True
    )
    reference = wheel_models.Generator(ngpu=0, nc=3, nz=100, ngf=64)
    reference.load_state_dict(checkpoint["netG_state_dict"])
    reference.eval()
    seeds = [0, 1, 2, 3, 11, 12, 13, 1000]
    z = dcgan_faces.make_latents(seeds)  # (N, 100)
    with torch.no_grad():
        expected = reference(z[:, :, None, None])  # the wheel takes z as (N, nz, 1, 1)
        assert torch.equal(dcgan_faces(z), expected)
        assert torch.equal(dcgan_faces(z, 1.0), expected)
        in_threes = torch.cat([reference(z[i : i + 3, :, None, None]) for i in range(0, len(seeds), 3)])
    assert torch.equal(dcgan_faces.sample(seeds, batch_size=3), in_threes)  # same batches, same bits
    assert expected.std() > 0.1  # real pictures, not a constant


def test_split_execution_matches_forward_and_stops_early(tiny_dcgan: DCGANGenerator) -> None:
    z = tiny_dcgan.make_latents([3, 4])
    full = tiny_dcgan(z)
    for index, layer in enumerate(tiny_dcgan.layer_names):
        fired = []
        later = [tiny_dcgan.layer_module(name) for name in tiny_dcgan.layer_names[index:]]
        hooks = [m.register_forward_hook(lambda *_, fired=fired: fired.append(1)) for m in later]
        state = tiny_dcgan.forward_to(layer, z)
        for hook in hooks:
            hook.remove()
        assert not fired, f"forward_to({layer}) ran {layer} or a later layer"
        assert state.features.shape[1] == tiny_dcgan.layer_module(layer).in_channels
        torch.testing.assert_close(tiny_dcgan.forward_from(layer, state), full, rtol=0, atol=1e-6)


def test_sample_is_deterministic_per_seed(tiny_dcgan: DCGANGenerator) -> None:
    alone = tiny_dcgan.sample([7])
    in_batch = tiny_dcgan.sample([1, 7, 2], batch_size=2)
    torch.testing.assert_close(alone[0], in_batch[1], rtol=0, atol=1e-6)
    assert not torch.equal(in_batch[0], in_batch[1])


def test_truncation_zero_collapses_to_one_image(tiny_dcgan: DCGANGenerator) -> None:
    images = tiny_dcgan.sample([0, 1, 2], truncation=0.0)
    torch.testing.assert_close(images[0], images[2])
    with pytest.raises(ValueError, match="truncation"):
        tiny_dcgan.sample([0], truncation=1.5)


def test_infer_config_and_strict_loading(tiny_dcgan: DCGANGenerator) -> None:
    state = tiny_dcgan.state_dict()
    config = DCGANGenerator.infer_config(state)
    assert (config.resolution, config.ngf, config.z_dim) == (16, 8, 8)
    with pytest.raises(CheckpointError, match="not a DCGAN"):
        DCGANGenerator.infer_config({"conv.weight": torch.zeros(3, 3)})
    broken = dict(state)
    del broken["main.1.running_mean"]
    broken["extra.weight"] = torch.zeros(1)
    broken["main.3.weight"] = torch.zeros(2, 2, 4, 4)
    with pytest.raises(CheckpointError) as info:
        DCGANGenerator(config).load_weights(broken)
    message = str(info.value)
    assert "main.1.running_mean" in message and "extra.weight" in message and "main.3.weight" in message


def test_bad_config_and_layer_names() -> None:
    with pytest.raises(ConfigError, match="resolution"):
        DCGANGenerator(DCGANConfig(resolution=48))
    with pytest.raises(ConfigError, match="nc"):
        DCGANGenerator(DCGANConfig(nc=1))
    generator = DCGANGenerator(DCGANConfig(resolution=16, ngf=4, z_dim=4))
    with pytest.raises(LayerError, match="valid layers are"):
        generator.forward_to("layer9", generator.make_latents([0]))
    with pytest.raises(ValueError, match=r"shape \(N, 4\)"):
        generator(torch.zeros(2, 5))
