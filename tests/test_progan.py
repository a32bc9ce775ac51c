"""ProGAN: the GAN-dissection key layout, split execution, truncation, and agreement with the reference code."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from progan_weights import gandissect_channels, gandissect_random_state_dict
from safetensors.torch import load_file

from gan_rewrite.errors import CheckpointError, ConfigError, LayerError
from gan_rewrite.models import ProGANConfig, ProGANGenerator
from gan_rewrite.models.progan import default_layer_for
from gan_rewrite.rewrite.layers import layer_kind

GOLDEN = Path(__file__).parent / "fixtures" / "progan_golden.safetensors"
SMALL = {"fmap_base": 256, "fmap_max": 16}  # 16 channels up to 16×16, 8 at 32×32 ...


def tiny_progan(resolution: int = 32, seed: int = 0) -> ProGANGenerator:
    state = gandissect_random_state_dict(resolution, seed, **SMALL)
    generator = ProGANGenerator(ProGANGenerator.infer_config(state))
    generator.load_weights(state)
    return generator.eval()


@pytest.fixture(scope="module")
def tiny() -> ProGANGenerator:
    return tiny_progan(32)


# ----- layout ---------------------------------------------------------------------------------------
def test_state_dict_layout_for_a_small_model() -> None:
    # 16px, channels 8,8 | 8,8 | 4,4, latent 6: every key of the GAN-dissection file, written out by hand.
    config = ProGANConfig(resolution=16, z_dim=6, channels=[8, 8, 8, 8, 4, 4], default_layer="layer4")
    expected = {
        "layer1.conv.weight": (8, 6, 4, 4),
        "layer1.wscale.b": (8,),
        "layer2.conv.weight": (8, 8, 3, 3),
        "layer2.wscale.b": (8,),
        "layer3.conv.weight": (8, 8, 3, 3),
        "layer3.wscale.b": (8,),
        "layer4.conv.weight": (8, 8, 3, 3),
        "layer4.wscale.b": (8,),
        "layer5.conv.weight": (4, 8, 3, 3),
        "layer5.wscale.b": (4,),
        "layer6.conv.weight": (4, 4, 3, 3),
        "layer6.wscale.b": (4,),
        "output_16x16.conv.weight": (3, 4, 1, 1),
        "output_16x16.wscale.b": (3,),
    }
    generator = ProGANGenerator(config)
    assert {k: tuple(v.shape) for k, v in generator.state_dict().items()} == expected
    assert generator.layer_names == [f"layer{j}" for j in range(1, 7)]
    assert generator.layer_module("layer3").weight is generator.get_parameter("layer3.conv.weight")
    assert isinstance(generator.layer_module("layer1"), torch.nn.Conv2d)


@pytest.mark.parametrize("resolution", [16, 64, 256])
def test_layout_matches_the_checkpoint_helper(resolution: int) -> None:
    state = gandissect_random_state_dict(resolution, **(SMALL if resolution < 256 else {}))
    generator = ProGANGenerator(ProGANGenerator.infer_config(state))
    assert {k: v.shape for k, v in generator.state_dict().items()} == {k: v.shape for k, v in state.items()}


def test_default_config_is_the_lsun_256_model() -> None:
    config = ProGANConfig()
    config.validate()
    assert config.channels == gandissect_channels(256) == [512] * 8 + [256, 256, 128, 128, 64, 64]
    assert (config.resolution, config.z_dim, config.default_layer) == (256, 512, "layer8")
    assert [default_layer_for(r) for r in (8, 16, 32, 64, 128, 1024)] == [
        "layer2",
        "layer4",
        "layer6",
        "layer8",
        "layer8",
        "layer8",
    ]


# ----- agreement with the reference -----------------------------------------------------------------
def test_matches_golden_outputs_of_the_gandissect_reference() -> None:
    # Produced by the GAN-dissection ProgressiveGenerator on the helper's weights (see the file's metadata).
    golden = load_file(GOLDEN)
    generator = tiny_progan(32, seed=0)
    outputs = {}
    hooks = [
        generator.get_submodule(name).register_forward_hook(
            lambda _m, _i, out, name=name: outputs.__setitem__(name, out[0])
        )
        for name in generator.layer_names
    ]
    with torch.no_grad():
        images = generator(golden["z"])
    for hook in hooks:
        hook.remove()
    torch.testing.assert_close(images, golden["images"], rtol=0, atol=1e-5)
    for name in generator.layer_names:
        torch.testing.assert_close(outputs[name], golden[name], rtol=0, atol=1e-5)


# ----- split execution ------------------------------------------------------------------------------
def test_split_execution_matches_forward_and_stops_early(tiny: ProGANGenerator) -> None:
    z = tiny.make_latents([3, 4])
    conv_inputs = {}
    hooks = [
        tiny.layer_module(name).register_forward_pre_hook(
            lambda _m, args, name=name: conv_inputs.__setitem__(name, args[0])
        )
        for name in tiny.layer_names
    ]
    with torch.no_grad():
        full = tiny(z)
    for hook in hooks:
        hook.remove()
    for index, layer in enumerate(tiny.layer_names):
        fired = []
        later = [tiny.get_submodule(name) for name in tiny.layer_names[index:]]
        later.append(tiny.get_submodule("output_32x32"))
        hooks = [m.register_forward_hook(lambda *_, fired=fired: fired.append(1)) for m in later]
        with torch.no_grad():
            state = tiny.forward_to(layer, z)
        for hook in hooks:
            hook.remove()
        assert not fired, f"forward_to({layer}) ran {layer} or a later layer"
        # The state entering a layer is exactly what its conv reads (normalised, upsampled).
        torch.testing.assert_close(state.features, conv_inputs[layer], rtol=0, atol=0)
        side = 1 if index == 0 else 4 * 2 ** (index // 2)  # 1, 4, 8, 8, 16, 16, 32, 32
        assert state.features.shape[1:] == (tiny.layer_module(layer).in_channels, side, side)
        with torch.no_grad():
            torch.testing.assert_close(tiny.forward_from(layer, state), full, rtol=0, atol=1e-6)


def test_rewrite_engine_sees_the_conv_output(tiny: ProGANGenerator) -> None:
    z = tiny.make_latents([0])
    for layer in ("layer1", "layer3", "layer6"):
        module = tiny.layer_module(layer)
        captured = []
        hook = module.register_forward_hook(lambda _m, _i, out, captured=captured: captured.append(out))
        with torch.no_grad():
            state = tiny.forward_to(layer, z)
            tiny.forward_from(layer, state)
            predicted = layer_kind(module).output(module, state)
        hook.remove()
        torch.testing.assert_close(predicted, captured[0], rtol=0, atol=1e-6)


def test_sample_is_deterministic_per_seed(tiny: ProGANGenerator) -> None:
    alone = tiny.sample([7])
    in_batch = tiny.sample([1, 7, 2], batch_size=2)
    assert in_batch.shape == (3, 3, 32, 32)
    assert in_batch.min() >= -1 and in_batch.max() <= 1
    # Equal up to float rounding: CPU conv kernels may block a batch of 1 and of 2 differently.
    torch.testing.assert_close(alone[0], in_batch[1], rtol=0, atol=1e-5)
    assert not torch.equal(in_batch[0], in_batch[1])


def test_truncation_scales_the_normalised_latent(tiny: ProGANGenerator) -> None:
    z = tiny.make_latents([0, 1, 2])
    for truncation in (1.0, 0.5, 0.0):
        features = tiny.forward_to("layer1", z, truncation).features  # (N, z_dim, 1, 1)
        norms = features.flatten(1).norm(dim=1)
        torch.testing.assert_close(norms, torch.full((3,), truncation * tiny.z_dim**0.5), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(tiny.sample([0, 1], truncation=1.0), tiny.sample([0, 1]))
    collapsed = tiny.sample([0, 1, 2], truncation=0.0)
    torch.testing.assert_close(collapsed[0], collapsed[2])
    half = tiny.sample([0, 1], truncation=0.5)
    assert not torch.equal(half[0], half[1]) and not torch.allclose(half, tiny.sample([0, 1]))
    with pytest.raises(ValueError, match="truncation"):
        tiny.sample([0], truncation=1.5)


# ----- config and checkpoints -----------------------------------------------------------------------
@pytest.mark.parametrize(("resolution", "layers"), [(16, 6), (32, 8), (128, 12)])
def test_infer_config_round_trip(resolution: int, layers: int) -> None:
    state = gandissect_random_state_dict(resolution, **SMALL, z_dim=10)
    config = ProGANGenerator.infer_config(state)
    assert (config.resolution, config.z_dim, len(config.channels)) == (resolution, 10, layers)
    assert config.channels == gandissect_channels(resolution, **SMALL)
    assert config.default_layer == default_layer_for(resolution)
    again = ProGANConfig.from_dict(json.loads(json.dumps(config.to_dict())))
    assert again == config
    generator = ProGANGenerator(again)
    generator.load_weights(state)
    assert ProGANGenerator.infer_config(generator.state_dict()) == config
    assert ProGANGenerator.infer_config(state, default_layer="layer2").default_layer == "layer2"
    assert ProGANGenerator.infer_config(state, resolution=resolution).resolution == resolution
    with pytest.raises(CheckpointError, match=f"it is {resolution}px"):
        ProGANGenerator.infer_config(state, resolution=2 * resolution)


def _without(state: dict, *keys: str) -> dict:
    return {k: v for k, v in state.items() if k not in keys}


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (lambda s: {"main.0.weight": torch.zeros(100, 512, 4, 4)}, "not a GAN-dissection ProGAN"),
        (lambda s: {f"features.{k[5:]}": v for k, v in s.items()}, "old `features.N` names"),
        (lambda s: _without(s, "layer8.conv.weight", "layer8.wscale.b"), "even number"),
        (lambda s: {**s, "layer1.conv.weight": torch.zeros(16, 16, 3, 3)}, r"layer1.conv.weight.*4×4 kernel"),
        (lambda s: {**s, "layer5.conv.weight": torch.zeros(16, 12, 3, 3)}, r"layer5.conv.weight.*reads 16 channels"),
        (lambda s: _without(s, "output_32x32.conv.weight"), r"output_32x32.conv.weight.*no such key"),
        (lambda s: {**s, "output_32x32.conv.weight": torch.zeros(3, 16, 3, 3)}, r"shape \(3, 16, 1, 1\)"),
    ],
)
def test_wrong_state_dicts_are_refused(mutate, match: str) -> None:
    state = gandissect_random_state_dict(32, **SMALL)
    with pytest.raises(CheckpointError, match=match):
        ProGANGenerator.infer_config(mutate(state))


def test_strict_loading_names_bad_keys(tiny: ProGANGenerator) -> None:
    broken = dict(tiny.state_dict())
    del broken["layer2.wscale.b"]
    broken["layer3.wscale.scale"] = torch.ones(())
    with pytest.raises(CheckpointError) as info:
        ProGANGenerator(tiny.config).load_weights(broken)
    assert "layer2.wscale.b" in str(info.value) and "layer3.wscale.scale" in str(info.value)


def test_bad_configs_and_layer_names() -> None:
    with pytest.raises(ConfigError, match="channels"):
        ProGANGenerator(ProGANConfig(resolution=16, channels=[8, 8, 8], default_layer="layer2"))
    with pytest.raises(ConfigError, match="default_layer"):
        ProGANGenerator(ProGANConfig(resolution=16, channels=[4] * 6))  # layer8 does not exist at 16px
    with pytest.raises(ConfigError, match="unknown"):
        ProGANGenerator.infer_config(gandissect_random_state_dict(16, **SMALL), ngf=3)
    generator = ProGANGenerator(ProGANConfig(resolution=8, z_dim=4, channels=[4] * 4, default_layer="layer2"))
    with pytest.raises(LayerError, match="valid layers are"):
        generator.layer_module("output_8x8")
    with pytest.raises(ValueError, match=r"shape \(N, 4\)"):
        generator(torch.zeros(2, 5))
