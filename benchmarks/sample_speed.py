"""Per-image sampling time of each architecture on this machine (random weights in the published layouts).

Prints milliseconds per image for `G.sample`, and each architecture's ratio to the 64px DCGAN measured in
the same process (the baseline), so numbers from different machines can be compared.

    python benchmarks/sample_speed.py [--device cuda] [--images 16]
"""

from __future__ import annotations

import argparse
import time

import torch

from gan_rewrite.models import (
    DCGANConfig,
    DCGANGenerator,
    ProGANConfig,
    ProGANGenerator,
    StyleGAN2Config,
    StyleGAN2Generator,
    pick_device,
)


def time_per_image(generator: torch.nn.Module, images: int, batch_size: int) -> float:
    generator.sample(list(range(batch_size)), batch_size=batch_size)  # warm-up
    if generator.device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    generator.sample(list(range(images)), batch_size=batch_size)
    if generator.device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / images


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default=None)
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args()
    device = pick_device(args.device)
    torch.manual_seed(0)
    models = {
        "dcgan 64px (baseline)": DCGANGenerator(DCGANConfig()),
        "progan 256px": ProGANGenerator(ProGANConfig(resolution=256)),
        "stylegan2 256px cm2": StyleGAN2Generator(StyleGAN2Config(resolution=256, channel_multiplier=2)),
        "stylegan2 1024px cm2": StyleGAN2Generator(StyleGAN2Config(resolution=1024, channel_multiplier=2)),
    }
    baseline = None
    print(f"device: {device}, threads: {torch.get_num_threads()}, {args.images} images, batch {args.batch_size}")
    for name, generator in models.items():
        generator = generator.to(device).eval()
        images = args.images if "1024" not in name or device.type == "cuda" else max(2, args.images // 8)
        seconds = time_per_image(generator, images, min(args.batch_size, images))
        baseline = baseline or seconds
        print(f"{name:24s} {1000 * seconds:9.1f} ms/image   {seconds / baseline:7.1f}× baseline")


if __name__ == "__main__":
    main()
