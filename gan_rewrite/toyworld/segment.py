"""A small segmenter for toy-world images: the measuring stick for edits on the toy StyleGAN2.

The renderer knows every pixel's class, but a GAN sample has no labels, and neither has an edited one. So a
small U-Net learns the renderer's labels, on renders roughed up the way GAN samples differ from them (blur,
noise, colour shifts, soft edges), and then labels GAN samples before and after an edit. Its pixel accuracy
and per-class IoU on held-out renders are measured by :func:`evaluate`; on GAN samples it is judged by eye
on a grid (``benchmarks/toyworld_segmenter.py``).

Example:
    >>> net = load_segmenter()
    >>> labels = segment(net, G.sample(seeds=range(8)))   # (8, 64, 64) indices into CLASSES
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import Tensor, nn
from tqdm.auto import tqdm

from ..atomic import atomic_path
from .render import CLASSES, N_UNIFORMS, render_antialiased, scene_uniforms

logger = logging.getLogger(__name__)

SEGMENTER_FILE = Path(__file__).resolve().parent / "pretrained" / "segmenter.safetensors"


def _block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True),
        nn.Conv2d(c_out, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True),
    )


class Segmenter(nn.Module):
    """A three-level U-Net: images ``(N, 3, H, W)`` in [-1, 1] → class logits ``(N, len(CLASSES), H, W)``."""

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        self.enc1, self.enc2, self.enc3 = _block(3, width), _block(width, 2 * width), _block(2 * width, 4 * width)
        self.dec2 = _block(4 * width + 2 * width, 2 * width)
        self.dec1 = _block(2 * width + width, width)
        self.head = nn.Conv2d(width, len(CLASSES), 1)

    def forward(self, x: Tensor) -> Tensor:
        e1 = self.enc1(x)  # (N, w, H, W)
        e2 = self.enc2(F.max_pool2d(e1, 2))  # (N, 2w, H/2, W/2)
        e3 = self.enc3(F.max_pool2d(e2, 2))  # (N, 4w, H/4, W/4)
        d2 = self.dec2(torch.cat([F.interpolate(e3, scale_factor=2.0), e2], 1))
        d1 = self.dec1(torch.cat([F.interpolate(d2, scale_factor=2.0), e1], 1))
        return self.head(d1)


def roughen(images: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Renders made to look more like GAN samples: random blur, colour gain and offset, pixel noise."""
    n, device = images.shape[0], images.device

    def rand(*shape: int) -> Tensor:
        return torch.rand(*shape, generator=generator, device="cpu").to(device)

    sigma = 1.2 * rand(n, 1, 1, 1)  # per-image blur strength
    blurred = F.avg_pool2d(F.pad(images, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    images = images + sigma.clamp(max=1) * (blurred - images)
    gain = 1 + 0.15 * (rand(n, 3, 1, 1) - 0.5)
    offset = 0.15 * (rand(n, 3, 1, 1) - 0.5)
    noise = 0.06 * rand(n, 1, 1, 1) * torch.randn(images.shape, generator=generator).to(device)
    return (images * gain + offset + noise).clamp(-1, 1)


def train_segmenter(*, steps: int = 2000, batch_size: int = 16, lr: float = 3e-3, seed: int = 0,
                    device: str | torch.device = "cpu", progress: bool = True) -> Segmenter:
    """Train a segmenter on freshly drawn, roughened renders (no dataset: the world is the data)."""
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    net = Segmenter().to(device)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    net.train()
    for step in tqdm(range(steps), disable=not progress, desc="train segmenter"):
        u = torch.rand(batch_size, N_UNIFORMS, generator=generator).to(device)
        images, labels = render_antialiased(u)
        loss = F.cross_entropy(net(roughen(images, generator)), labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        schedule.step()
        if step % 200 == 0:
            logger.info("segmenter step %d: loss %.4f", step, loss.item())
    return net.eval()


def save_segmenter(net: Segmenter, path: str | Path = SEGMENTER_FILE) -> None:
    with atomic_path(path) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}, str(tmp))


def load_segmenter(path: str | Path = SEGMENTER_FILE, device: str | torch.device = "cpu") -> Segmenter:
    """The segmenter shipped with the package (or one saved by :func:`save_segmenter`), in eval mode."""
    net = Segmenter()
    net.load_state_dict(load_file(str(path)))
    return net.to(device).eval()


@torch.no_grad()
def segment(net: Segmenter, images: Tensor, batch_size: int = 256) -> Tensor:
    """Label maps ``(N, H, W)`` (indices into :data:`CLASSES`) for images ``(N, 3, H, W)`` in [-1, 1]."""
    device = next(net.parameters()).device
    parts = [net(images[i: i + batch_size].to(device)).argmax(1).cpu() for i in range(0, len(images), batch_size)]
    return torch.cat(parts) if parts else torch.zeros(0, *images.shape[2:], dtype=torch.long)


@torch.no_grad()
def evaluate(net: Segmenter, seeds: range | list[int]) -> dict[str, float]:
    """Pixel accuracy and per-class IoU on the renders of ``seeds`` (keep them apart from training)."""
    images, labels = render_antialiased(scene_uniforms(list(seeds)))
    predicted = segment(net, images)
    scores = {"pixel_accuracy": (predicted == labels).float().mean().item()}
    for index, name in enumerate(CLASSES):
        inter = ((predicted == index) & (labels == index)).sum().item()
        union = ((predicted == index) | (labels == index)).sum().item()
        scores[f"iou/{name}"] = inter / union if union else float("nan")
    return scores


if __name__ == "__main__":  # python -m gan_rewrite.toyworld.segment [steps]: retrain the shipped segmenter
    import sys

    logging.basicConfig(level=logging.INFO)
    start = time.time()
    segmenter = train_segmenter(steps=int(sys.argv[1]) if len(sys.argv) > 1 else 2000)
    save_segmenter(segmenter)
    print(f"trained in {time.time() - start:.0f} s:", evaluate(segmenter, range(10**6, 10**6 + 500)))
