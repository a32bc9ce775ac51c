"""StyleGAN2: rosinality's key layout, equality with rosinality's own outputs, split execution, seeding."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from stylegan2_weights import (
    blur_kernel_2d,
    rosinality_random_state_dict,
    rosinality_shapes,
    state_dict_sha256,
)

from gan_rewrite.errors import CheckpointError, ConfigError, LayerError
from gan_rewrite.models import GeneratorConfig, StyleGAN2Config, StyleGAN2Generator
from gan_rewrite.rewrite.layers import layer_kind

GOLDEN = Path(__file__).parent / "fixtures" / "stylegan2_golden.safetensors"
TINY_CHANNELS = {4: 16, 8: 16, 16: 8, 32: 8}


@pytest.fixture(scope="module")
def tiny() -> StyleGAN2Generator:
    """A 32px StyleGAN2 with 8–16 channels and random rosinality-layout weights, for fast algebra."""
    config = StyleGAN2Config(resolution=32, z_dim=16, n_mlp=2, channels={str(r): c for r, c in TINY_CHANNELS.items()})
    generator = StyleGAN2Generator(config)
    generator.load_weights(rosinality_random_state_dict(32, style_dim=16, n_mlp=2, seed=3, channels=TINY_CHANNELS))
    generator.estimate_latent_avg(n=2000, seed=0)
    return generator.eval()


@pytest.mark.parametrize(("size", "channel_multiplier"), [(32, 2), (64, 1)])
def test_state_dict_is_rosinality_layout(size: int, channel_multiplier: int) -> None:
    generator = StyleGAN2Generator(StyleGAN2Config(resolution=size, channel_multiplier=channel_multiplier))
    state = {k: tuple(v.shape) for k, v in generator.state_dict().items()}
    assert state.pop("latent_avg") == (512,)
    assert state == rosinality_shapes(size, channel_multiplier)
    # Counts read straight off the architecture, not off the helper's table.
    blocks = int(math.log2(size)) - 2  # resolutions 8 … size
    convs = {k.split(".")[1] for k in state if k.startswith("convs.")}
    assert convs == {str(i) for i in range(2 * blocks)}
    upsample_kernels = {f"to_rgbs.{b}.upsample.kernel" for b in range(blocks)}
    assert {k for k in state if k.endswith("upsample.kernel")} == upsample_kernels
    assert {k for k in state if k.endswith("blur.kernel")} == {f"convs.{2 * b}.conv.blur.kernel" for b in range(blocks)}
    assert {k for k in state if k.startswith("noises.")} == {f"noises.noise_{i}" for i in range(2 * blocks + 1)}
    assert "to_rgb1.upsample.kernel" not in state and f"to_rgbs.{blocks}.bias" not in state
    last = 512 if size <= 32 else 256 * channel_multiplier
    assert state[f"convs.{2 * blocks - 1}.conv.weight"] == (1, last, last, 3, 3)
    assert generator.layer_names == [f"layer{j + 1}" for j in range(2 * blocks + 1)]
    assert generator.layer_module("layer1") is generator.conv1.conv
    assert generator.layer_module("layer4") is generator.convs[2].conv
    torch.testing.assert_close(generator.state_dict()["to_rgbs.0.upsample.kernel"], blur_kernel_2d())


def test_matches_rosinality_reference_outputs() -> None:
    """The golden file holds rosinality's own images for weights the test regenerates (no reference code needed)."""
    with safe_open(GOLDEN, "pt") as f:
        meta = f.metadata()
        golden = {key: f.get_tensor(key) for key in f.keys()}  # noqa: SIM118
    spec = json.loads(meta["config"])
    weights = rosinality_random_state_dict(
        spec["size"], spec["channel_multiplier"], spec["style_dim"], spec["n_mlp"], seed=spec["seed"]
    )
    if state_dict_sha256(weights) != meta["weights_sha256"]:
        pytest.fail(
            "tests/stylegan2_weights.py no longer regenerates the weights the golden file was made with "
            f"(sha256 {state_dict_sha256(weights)} vs {meta['weights_sha256']}); torch's randn or the helper "
            "changed. Regenerate with tests/fixtures/make_stylegan2_golden.py and a rosinality checkout."
        )
    reference_shapes = {k: tuple(v) for k, v in json.loads(meta["reference_shapes"]).items()}
    config = StyleGAN2Generator.infer_config(weights)
    assert (config.resolution, config.z_dim, config.n_mlp, config.channels) == (spec["size"], 512, 8, None)
    generator = StyleGAN2Generator(config).eval()
    assert {k: tuple(v.shape) for k, v in generator.state_dict().items() if k != "latent_avg"} == reference_shapes
    generator.load_weights(weights)  # no latent_avg in a rosinality g_ema: optional
    generator.latent_avg.copy_(golden["latent_avg"])
    noise = [golden[f"noise_{i}"] for i in range(generator.config.num_layers)]
    with torch.no_grad():
        truncated = generator(golden["z"], float(meta["truncation"]), noise=noise)
        buffers = generator(golden["z"], 1.0)
    torch.testing.assert_close(truncated, golden["images_truncated"], rtol=0, atol=1e-4)
    torch.testing.assert_close(buffers, golden["images_buffer_noise"], rtol=0, atol=1e-4)


def test_split_execution_matches_forward_and_stops_early(tiny: StyleGAN2Generator) -> None:
    z = tiny.make_latents([3, 4])
    noise = tiny.make_noise([3, 4])
    with torch.no_grad():
        full = tiny(z, 0.8, noise=noise)
        for index, layer in enumerate(tiny.layer_names):
            fired = []
            later = [tiny.layer_module(name) for name in tiny.layer_names[index:]]
            hooks = [m.register_forward_hook(lambda *_, fired=fired: fired.append(1)) for m in later]
            state = tiny.forward_to(layer, z, 0.8, noise=noise)
            for hook in hooks:
                hook.remove()
            assert not fired, f"forward_to({layer}) ran {layer} or a later layer"
            module = tiny.layer_module(layer)
            assert state.features.shape[1] == module.in_channels
            assert state.style.shape == (2, module.in_channels)
            # The rewrite engine's view of the layer (keys x·s, demodulation as gain) is the layer itself.
            own = module(state.features, state.carry["latent"][:, index])
            torch.testing.assert_close(layer_kind(module).output(module, state), own, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(tiny.forward_from(layer, state), full, rtol=0, atol=1e-6)
            torch.testing.assert_close(tiny.forward_from(layer, state), full, rtol=0, atol=0)  # state reusable


def test_sample_is_deterministic_per_seed(tiny: StyleGAN2Generator) -> None:
    alone = tiny.sample([7])
    in_batch = tiny.sample([1, 7, 2], batch_size=2)
    torch.testing.assert_close(alone[0], in_batch[1], rtol=1e-5, atol=1e-5)  # batch size changes conv kernels
    assert not torch.equal(in_batch[0], in_batch[1])
    for a, b in zip(tiny.make_noise([7]), tiny.make_noise([1, 7]), strict=True):
        assert torch.equal(a[0], b[1]) and a.shape[1:] == b.shape[1:]
    assert [n.shape[-1] for n in tiny.make_noise([0])] == [4, 8, 8, 16, 16, 32, 32]
    # Per-seed noise matters: the same latent with another seed's noise gives another image.
    z = tiny.make_latents([7])
    assert not torch.allclose(tiny(z, noise=tiny.make_noise([7])), tiny(z, noise=tiny.make_noise([8])))


def test_truncation_zero_gives_the_average_latent_image(tiny: StyleGAN2Generator) -> None:
    z = tiny.make_latents([0, 1, 2])
    with torch.no_grad():
        images = tiny(z, 0.0)  # fixed buffer noise
        average = tiny.synthesis(tiny.latent_avg[None].expand(3, -1))
        untruncated = tiny(z, 1.0)
    torch.testing.assert_close(images, average, rtol=0, atol=1e-6)
    assert not torch.allclose(untruncated[0], untruncated[1])
    with pytest.raises(ValueError, match="truncation"):
        tiny.sample([0], truncation=1.5)


@pytest.mark.parametrize(
    ("size", "channel_multiplier", "style_dim", "n_mlp"),
    [(32, 2, 512, 8), (64, 1, 64, 2), (128, 2, 32, 4), (256, 2, 512, 8), (1024, 2, 512, 8)],
)
def test_infer_config_reads_the_layout(size: int, channel_multiplier: int, style_dim: int, n_mlp: int) -> None:
    shapes = rosinality_shapes(size, channel_multiplier, style_dim, n_mlp)
    state = {k: blur_kernel_2d() if k.endswith("kernel") else torch.empty(s, device="meta") for k, s in shapes.items()}
    config = StyleGAN2Generator.infer_config(state)
    assert (config.resolution, config.channel_multiplier, config.z_dim, config.n_mlp) == (
        size,
        channel_multiplier,
        style_dim,
        n_mlp,
    )
    assert config.channels is None and config.blur_kernel == [1, 3, 3, 1] and config.lr_mlp == 0.01
    assert config.default_layer == {32: "layer4", 64: "layer6"}.get(size, "layer8")


def test_infer_config_explicit_channels_and_refusals(tiny: StyleGAN2Generator) -> None:
    config = StyleGAN2Generator.infer_config(tiny.state_dict())
    assert config.channels == {str(r): c for r, c in TINY_CHANNELS.items()} and config.z_dim == 16
    StyleGAN2Generator(config).load_weights(tiny.state_dict())
    assert StyleGAN2Generator.infer_config(tiny.state_dict(), lr_mlp=0.1).lr_mlp == 0.1
    with pytest.raises(CheckpointError, match="not a StyleGAN2"):
        StyleGAN2Generator.infer_config({"main.0.weight": torch.zeros(100, 512, 4, 4)})
    with pytest.raises(CheckpointError, match="mapping"):
        StyleGAN2Generator.infer_config({"mapping.fc0.weight": torch.zeros(512, 512)})
    broken = {k: v for k, v in tiny.state_dict().items() if not k.startswith("to_rgbs.2")}
    with pytest.raises(CheckpointError, match="to_rgbs"):
        StyleGAN2Generator.infer_config(broken)
    with pytest.raises(CheckpointError, match="32px"):
        StyleGAN2Generator.infer_config(tiny.state_dict(), resolution=64)
    with pytest.raises(ConfigError, match="unknown"):
        StyleGAN2Generator.infer_config(tiny.state_dict(), ngf=3)


def test_config_round_trips_through_json_and_validates(tiny: StyleGAN2Generator) -> None:
    data = json.loads(json.dumps(tiny.config.to_dict()))
    assert data["architecture"] == "stylegan2" and data["_class_name"] == "StyleGAN2Generator"
    assert StyleGAN2Config.from_dict(data) == tiny.config
    assert isinstance(StyleGAN2Config.from_dict(data), GeneratorConfig)
    assert StyleGAN2Config(resolution=256).default_layer == "layer8"
    with pytest.raises(ConfigError, match="channels"):
        StyleGAN2Config(resolution=16).validate()
    with pytest.raises(ConfigError, match="channels"):
        StyleGAN2Config(resolution=32, channels={"4": 8, "8": 8}).validate()
    with pytest.raises(ConfigError, match="default_layer"):
        StyleGAN2Config(resolution=32, default_layer="layer8").validate()
    with pytest.raises(LayerError, match="valid layers are"):
        tiny.forward_to("layer8", tiny.make_latents([0]))
    with pytest.raises(ValueError, match="noise"):
        tiny(tiny.make_latents([0]), noise=tiny.make_noise([0])[:3])


def test_estimate_latent_avg_is_the_mean_w(tiny: StyleGAN2Generator) -> None:
    before = tiny.latent_avg.clone()
    try:
        estimate = tiny.estimate_latent_avg(n=300, seed=5, batch_size=128).clone()
        z = torch.randn(300, 16, generator=torch.Generator().manual_seed(5))
        with torch.no_grad():
            torch.testing.assert_close(estimate, tiny.mapping(z).mean(0), rtol=1e-5, atol=1e-5)
    finally:
        tiny.latent_avg.copy_(before)


def test_partial_noise_is_a_prefix_and_enough_for_forward_to(tiny: StyleGAN2Generator) -> None:
    seeds, layer = [3, 4], tiny.layer_names[3]
    full = tiny.make_noise(seeds)
    part = tiny.make_noise(seeds, layers=3)
    assert len(part) == 3 and all(torch.equal(a, b) for a, b in zip(part, full[:3], strict=True))
    z = tiny.make_latents(seeds)
    cut = tiny.forward_to(layer, z, noise=part)
    torch.testing.assert_close(cut.features, tiny.forward_to(layer, z, noise=full).features, rtol=0, atol=0)
    with pytest.raises(ValueError, match="covers only the first 3 layers"):
        tiny.forward_from(layer, cut)
