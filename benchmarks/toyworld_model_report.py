"""How close is the toy StyleGAN2 to its world? Per-class statistics of its samples (through the segmenter)
against renders, the renderer's speed, and grids; writes the model card of ``toyworld-stylegan2-64``.

    python benchmarks/toyworld_model_report.py [--n 512] [--card PATH]

Statistics per class, over ``n`` images each: pixel frequency; how often the class appears at all
(≥ 8 pixels); its mean centroid row and mean height (rows it covers) where present. The same segmenter labels
the renders and the samples, so its own errors affect both columns alike; the renders' exact labels are
given too, which measures the segmenter.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from PIL import Image

import gan_rewrite as gr
from gan_rewrite.toyworld.render import CLASSES, colour_labels, render_antialiased, render_scenes, scene_uniforms
from gan_rewrite.toyworld.segment import evaluate, load_segmenter, segment

ROOT = Path(__file__).resolve().parents[1]
CARD = ROOT / "gan_rewrite" / "toyworld" / "pretrained" / "toyworld-stylegan2-64" / "README.md"
FIGURES = ROOT / "docs" / "toyworld"


def class_statistics(labels: torch.Tensor) -> dict[str, dict[str, float]]:
    """Per class: pixel share, share of images showing it, centroid row and height where shown."""
    n, h, _ = labels.shape
    rows = torch.arange(h, dtype=torch.float32).view(1, h, 1)
    stats = {}
    for index, name in enumerate(CLASSES):
        mask = (labels == index).float()
        area = mask.sum((1, 2))
        shown = area >= 8
        centroid = (mask * rows).sum((1, 2)) / area.clamp(min=1)
        height = (mask.amax(2) > 0).float().sum(1)
        stats[name] = {
            "pixels": mask.mean().item(),
            "shown": shown.float().mean().item(),
            "centroid_row": centroid[shown].mean().item() if shown.any() else float("nan"),
            "height": height[shown].mean().item() if shown.any() else float("nan"),
        }
    return stats


def grid(images: torch.Tensor, nrow: int) -> Image.Image:
    images = ((images.clamp(-1, 1) + 1) * 127.5).round().byte().cpu()
    n, c, h, w = images.shape
    rows = -(-n // nrow)
    canvas = torch.zeros(rows * nrow, c, h, w, dtype=torch.uint8)
    canvas[:n] = images
    picture = canvas.view(rows, nrow, c, h, w).permute(0, 3, 1, 4, 2).reshape(rows * h, nrow * w, c)
    return Image.fromarray(picture.numpy()).resize((nrow * w * 2, rows * h * 2), Image.NEAREST)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=512)
    parser.add_argument("--card", type=Path, default=CARD)
    args = parser.parse_args()
    torch.manual_seed(0)

    start = time.perf_counter()
    render_scenes(range(1000))
    seeded = 1000 / (time.perf_counter() - start)
    start = time.perf_counter()
    render_antialiased(torch.rand(1000, scene_uniforms([0]).shape[1]))
    antialiased = 1000 / (time.perf_counter() - start)

    segmenter = load_segmenter()
    G = gr.load_generator("toyworld-stylegan2-64", device="cpu")
    held_out = range(10**6, 10**6 + args.n)
    renders, exact = render_antialiased(scene_uniforms(held_out))
    samples = torch.cat([G.sample(seeds=range(s, min(s + 128, args.n))) for s in range(0, args.n, 128)])
    render_stats = class_statistics(segment(segmenter, renders))
    exact_stats = class_statistics(exact)
    sample_labels = segment(segmenter, samples)
    sample_stats = class_statistics(sample_labels)
    seg_scores = evaluate(segmenter, held_out)

    FIGURES.mkdir(parents=True, exist_ok=True)
    rows = [samples[:16], colour_labels(sample_labels[:16]), samples[16:32], colour_labels(sample_labels[16:32])]
    grid(torch.cat(rows), 16).save(FIGURES / "samples.png")
    grid(torch.cat([renders[:16], colour_labels(exact[:16])]), 16).save(FIGURES / "renders.png")

    state = json.loads((ROOT / "gan_rewrite" / "toyworld" / "pretrained" / "training.json").read_text())
    lines = [
        "| class | pixels: renders (exact) | renders (segmenter) | samples (segmenter) | shown in: renders | samples "
        "| centroid row: renders | samples | height: renders | samples |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name in CLASSES:
        e, r, s = exact_stats[name], render_stats[name], sample_stats[name]
        lines.append(
            f"| {name} | {e['pixels']:.3f} | {r['pixels']:.3f} | {s['pixels']:.3f} | {r['shown']:.2f} "
            f"| {s['shown']:.2f} "
            f"| {r['centroid_row']:.1f} | {s['centroid_row']:.1f} | {r['height']:.1f} | {s['height']:.1f} |"
        )
    table = "\n".join(lines)
    ious = ", ".join(f"{k[4:]} {v:.2f}" for k, v in seg_scores.items() if k.startswith("iou/"))
    card = CARD_TEMPLATE.format(table=table, n=args.n, acc=seg_scores["pixel_accuracy"], ious=ious,
                                seeded=seeded, antialiased=antialiased, **state)
    args.card.write_text(card, encoding="utf-8")
    print(card)


CARD_TEMPLATE = """---
library_name: gan-rewrite
license: mit
pipeline_tag: unconditional-image-generation
tags:
- gan
- gan-rewrite
- stylegan2
- toyworld
- synthetic
---

# toyworld-stylegan2-64

A StyleGAN2 generator (64×64, rosinality layout, channels 256-256-128-128-64, `z_dim` 256, 4 mapping layers,
{params_m:.1f} M parameters) trained by gan-rewrite on its own procedural **toy world**
(`gan_rewrite.toyworld.render`): sky, clouds, ground, buildings with a dome, spire or flat roof, windows, doors
and trees, every pixel labelled. Because the world's labels are exact, edits on this model are measured
against ground truth (`benchmarks/edit_quality_toyworld.py`).

```python
import gan_rewrite as gr
G = gr.load_generator("toyworld-stylegan2-64")
images = G.sample(seeds=[0, 1, 2])  # (3, 3, 64, 64) in [-1, 1]
```

## Training
`gan-rewrite train-toyworld CHECKPOINT_DIR --minutes M [--out MODEL_DIR]` (resumable; CUDA when present).
This model: {steps} steps at batch {batch_size} ({images} freshly drawn anti-aliased scenes, no dataset),
{seconds:.0f} s on one {hardware}; StyleGAN2's recipe kept small — non-saturating logistic loss,
lazy R1 (γ = {r1_gamma}, every {r1_every} steps), style mixing ({mixing}), Adam (lr {lr}, β = (0, 0.99)),
EMA of the generator over {ema_kimg} k images (the shipped weights). It is an early snapshot: shapes and roof
kinds are recognisable, edges are soft, and some buildings are malformed; more slices of training would sharpen it.

## How close it is to the world
{n} samples against {n} held-out renders, both labelled by the shipped segmenter (pixel accuracy {acc:.3f} on
the renders; IoU {ious}). "shown in" is the share of images with ≥ 8 pixels of the class; centroid row and
height (rows covered) are in pixels, averaged over images that show the class.

{table}

Renderer speed on this CPU: {seeded:.0f} seeded scenes/s, {antialiased:.0f} anti-aliased scenes/s.

A grid of samples with the segmenter's labels is `docs/toyworld/samples.png` in the gan-rewrite repository
(written by `benchmarks/toyworld_model_report.py`, which also writes this card).
"""

if __name__ == "__main__":
    main()
