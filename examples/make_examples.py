"""Solve every example rule spec in ``examples/*.json`` on ``dcgan-faces-64`` and draw before/after grids.

    python examples/make_examples.py [--out examples/out]    # solve the shipped specs
    python examples/make_examples.py --grids-here            # ... and refresh the committed examples/<name>.png
    python examples/make_examples.py --write-specs           # first rebuild the specs from the code below

For each ``<name>.json`` this writes ``<out>/<name>.safetensors`` (the rule) and ``<out>/<name>.png``: 16
held-out seeds (:data:`HELD_OUT`, never used by a spec), rows 1–2 the original model, rows 3–4 the same seeds
with the rule loaded. It prints, per rule, the mean absolute pixel change inside the rule's region
(:data:`REGIONS`, a fixed band: the faces are aligned) and outside it, over 64 held-out seeds.

The specs are written by :func:`build_specs` with the Rewriter API (``json.dump(delta.spec)``); the masks are
painted programmatically (rectangles and ellipses placed by looking at the faces, and a "dark pixels in a box"
mask for the glasses frame). ``benchmarks/edit_quality.py`` imports the builders to compare settings.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import gan_rewrite as gr
from gan_rewrite.imaging import image_grid, save_image
from gan_rewrite.rules import rules_applied

HERE = Path(__file__).resolve().parent
MODEL = "dcgan-faces-64"
SIZE = 64

HELD_OUT = list(range(1000, 1016))
"""The seeds of the before/after grids (no spec uses seeds >= 1000)."""
MEASURE = list(range(1000, 1064))
"""The held-out seeds of the printed numbers and of ``benchmarks/edit_quality.py``."""


# ----- painting masks ----------------------------------------------------------------------------------
def rect(top: int, bottom: int, left: int, right: int) -> np.ndarray:
    """A boolean ``SIZE×SIZE`` mask, True on rows ``top:bottom`` and columns ``left:right``."""
    mask = np.zeros((SIZE, SIZE), bool)
    mask[top:bottom, left:right] = True
    return mask


def ellipse(cy: float, cx: float, ry: float, rx: float) -> np.ndarray:
    """A boolean ``SIZE×SIZE`` ellipse centred at pixel ``(cy, cx)`` with radii ``(ry, rx)``."""
    y, x = np.mgrid[:SIZE, :SIZE] + 0.5
    return ((y - cy) / ry) ** 2 + ((x - cx) / rx) ** 2 <= 1


def eyes(cy: float = 30, left: float = 22, right: float = 42, ry: float = 5, rx: float = 8) -> np.ndarray:
    """Both eyes (and where a glasses frame sits): two ellipses joined over the nose bridge."""
    bridge = rect(int(cy) - 2, int(cy) + 1, int(left), int(right))
    return ellipse(cy, left, ry, rx) | ellipse(cy, right, ry, rx) | bridge


def dark_pixels(G: gr.GANGenerator, seed: int, box: np.ndarray, quantile: float = 0.35) -> np.ndarray:
    """The darkest ``quantile`` of the pixels of sample ``seed`` inside ``box``, grown by one pixel.

    For a dark glasses frame this is the frame itself: the copied object's own mask, not a band.
    """
    image = G.sample([seed])[0].mean(0).numpy()  # (H, W) luminance in [-1, 1]
    threshold = np.quantile(image[box], quantile)
    dark = box & (image <= threshold)
    grown = dark.copy()
    grown[1:] |= dark[:-1]
    grown[:-1] |= dark[1:]
    grown[:, 1:] |= dark[:, :-1]
    grown[:, :-1] |= dark[:, 1:]
    return grown & box


# ----- the example requests ----------------------------------------------------------------------------
# Seeds picked by looking at samples 0-127: 35 wears thick dark glasses; 1, 41, 57, 66, 7, 22, 47, 86 are
# frontal faces without glasses (eyes around row 28-30); 91 smiles with an open mouth (teeth showing);
# 1, 57, 66, 104, 7, 22, 47, 86 have (nearly) closed mouths around row 50.
GLASSES_SOURCE = 35
GLASSES_BOX = rect(23, 41, 9, 56)
BARE_FACES = {1: 30, 41: 30, 57: 29, 66: 28, 7: 28, 22: 28, 47: 30, 86: 30}  # seed -> eye row
MOUTH_SOURCE = 91
MOUTH_BOX = ellipse(51, 31, 6, 10)
CLOSED_MOUTHS = {1: 50, 57: 51, 66: 51, 104: 49, 7: 49, 22: 50, 47: 51, 86: 50}  # seed -> mouth row

REGIONS = {
    "glasses": rect(20, 44, 6, 58),
    "open-mouth": rect(42, 62, 18, 46),
}
"""Where each rule should act on any (aligned) face: the measured 'inside' region on held-out seeds."""


def glasses_rewriter(
    G: gr.GANGenerator, layer: str, *, contexts: int = 4, region: str = "mask", tight: bool = True
) -> gr.Rewriter:
    """Glasses on everyone: copy seed 35's glasses frame, paste it over seed 1's eyes, context = eyes."""
    rw = gr.Rewriter(G, layer=layer, base_model=MODEL)
    for seed, row in list(BARE_FACES.items())[:contexts]:
        rw.add_context(seed, eyes(cy=row))
    copy = dark_pixels(G, GLASSES_SOURCE, GLASSES_BOX) if tight else GLASSES_BOX
    paste_seed = next(iter(BARE_FACES))
    rw.set_copy(GLASSES_SOURCE, copy)
    rw.set_paste(paste_seed, (BARE_FACES[paste_seed] - 31, 0), region=region)  # copied at rows 23-41
    return rw


def mouth_rewriter(
    G: gr.GANGenerator, layer: str, *, contexts: int = 4, region: str = "mask", tight: bool = True
) -> gr.Rewriter:
    """Open mouths: copy seed 91's open smile, paste it over seed 1's closed mouth, context = mouths."""
    del tight  # the mouth mask is an ellipse around it either way
    rw = gr.Rewriter(G, layer=layer, base_model=MODEL)
    for seed, row in list(CLOSED_MOUTHS.items())[:contexts]:
        rw.add_context(seed, ellipse(row, 32, 4, 9))
    paste_seed = next(iter(CLOSED_MOUTHS))
    rw.set_copy(MOUTH_SOURCE, MOUTH_BOX)
    rw.set_paste(paste_seed, (CLOSED_MOUTHS[paste_seed] - 51, 0), region=region)
    return rw


BUILDERS = {"glasses": glasses_rewriter, "open-mouth": mouth_rewriter}

# The settings the shipped specs use: the best of benchmarks/edit_quality.py — the projected solver with its
# L1 loss measured on the final image (`loss="image"`, recorded in the spec, so `solve_spec` reproduces it).
SHIPPED = {
    "layer": "layer3",
    "rank": 1,
    "method": "optimize",
    "solver": {"steps": 1000, "loss": "image"},
    "contexts": 8,
    "region": "mask",
    "n": 1000,
}


def build_specs(G: gr.GANGenerator, folder: Path = HERE) -> list[Path]:
    """Solve each example with :data:`SHIPPED` settings and write its spec to ``<folder>/<name>.json``."""
    paths = []
    for name, build in BUILDERS.items():
        rw = build(G, SHIPPED["layer"], contexts=SHIPPED["contexts"], region=SHIPPED["region"])
        rw.compute_stats(n=SHIPPED["n"], progress=False)
        with one_thread():
            delta = rw.solve(rank=SHIPPED["rank"], method=SHIPPED["method"], progress=False, **SHIPPED["solver"])
        spec = dict(delta.spec)
        spec["solver"] = {k: v for k, v in spec["solver"].items() if k != "progress"}  # a display option
        path = folder / f"{name}.json"
        path.write_text(json.dumps(spec, indent=1) + "\n")
        paths.append(path)
    return paths


@contextmanager
def one_thread() -> Iterator[None]:
    """Run the solve on one CPU thread: its tensors are tiny, and on a busy machine the projected solver's
    thousand small steps are 10× slower with two threads waiting on each other (measured: 4 s vs 40-80 s)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


# ----- measuring and drawing ---------------------------------------------------------------------------
def change_inside_outside(before: torch.Tensor, after: torch.Tensor, region: np.ndarray) -> tuple[float, float]:
    """Mean absolute pixel change (images in [-1, 1]) inside ``region`` and outside it."""
    diff = (after - before).abs().mean(1)  # (N, H, W)
    inside = torch.from_numpy(region)
    return float(diff[:, inside].mean()), float(diff[:, ~inside].mean())


def before_after(G: gr.GANGenerator, rule: gr.RuleDelta, seeds: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """The samples of ``seeds`` without and with ``rule`` (the model is left as it was)."""
    before = G.sample(seeds)
    with rules_applied(G, [(rule, 1.0)]):
        after = G.sample(seeds)
    return before, after


def grid(before: torch.Tensor, after: torch.Tensor, scale: int = 2) -> Image.Image:
    """Rows 1–2: before; rows 3–4: after (8 per row), upscaled ``scale``× for viewing."""
    picture = image_grid(torch.cat([before, after]), nrow=8)
    picture = picture.resize((picture.width * scale, picture.height * scale), Image.Resampling.NEAREST)
    return picture.quantize(256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)  # ~130 kB


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=HERE / "out", help="folder for rules and grids")
    parser.add_argument("--write-specs", action="store_true", help="rebuild examples/*.json first")
    parser.add_argument("--grids-here", action="store_true", help="also copy the grids to examples/<name>.png")
    args = parser.parse_args()
    G = gr.load_generator(MODEL)
    if args.write_specs:
        for path in build_specs(G):
            print(f"wrote {path}")
    args.out.mkdir(parents=True, exist_ok=True)
    for spec_path in sorted(HERE.glob("*.json")):
        name = spec_path.stem
        spec = json.loads(spec_path.read_text())
        start = time.perf_counter()
        wanted = spec.get("stats") or {}
        stats = gr.compute_stats(
            G,
            spec["layer"],
            int(wanted.get("n", 1000)),
            seed=int(wanted.get("seed", 0)),
            truncation=spec.get("truncation"),
            progress=False,
        )  # cached after the first run
        with one_thread():
            rule = gr.rewrite.solve_spec(G, spec, stats=stats, progress=False)
        seconds = time.perf_counter() - start
        rule.save(args.out / f"{name}.safetensors")
        before, after = before_after(G, rule, MEASURE)
        picture = grid(before[: len(HELD_OUT)], after[: len(HELD_OUT)])
        save_image(picture, args.out / f"{name}.png")
        if args.grids_here:
            save_image(picture, HERE / f"{name}.png")
        line = f"{name:12s} {spec['layer']} rank {spec.get('rank', 1)} {spec.get('method', 'closed_form')}: "
        line += f"statistics and solve {seconds:.1f} s"
        if name in REGIONS:
            inside, outside = change_inside_outside(before, after, REGIONS[name])
            line += f", |Δ| inside {inside:.3f}, outside {outside:.3f}, ratio {inside / outside:.1f}"
        print(line)
        print(f"  -> {args.out / (name + '.safetensors')}, {args.out / (name + '.png')}")


if __name__ == "__main__":
    main()
