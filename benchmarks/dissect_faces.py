"""What does switching off the "glasses" units of the embedded DCGAN faces do? Dissection with painted masks.

The concept comes from ``benchmarks/faces_glasses_masks.json``: a box over the glasses (rows 20–38, columns
8–56) on 16 samples that wear glasses, and "not here" on 16 that do not (so units firing on every pair of
eyes score low). Units of ``--layer`` are ranked by IoU with it, then the rule switching off the top-``k``
(``ablation_rule``, loaded on the model) is compared with ``k`` random units (three draws) on held-out seeds
picked by eye from 2000–2159: 10 that wear glasses, 10 that do not. Mean |Δimage| (images in [-1, 1]) inside
the glasses band and outside it, for each group.

Then GANPaint: the same top-``k`` units set to their 0.99 quantile inside the glasses band of the faces without
glasses, vs ``k`` random units.

Writes ``<out>/faces_glasses_<layer>.png`` (rows: glasses wearers before, top-k off, random-k off; then the same
for faces without glasses), ``<out>/faces_paint_glasses_<layer>.png`` (rows: faces without glasses, top-k
painted in the band, random-k painted) and ``<out>/dissect_faces_<layer>.json``.

    python benchmarks/dissect_faces.py [--layer layer3] [--k 20] [--out docs/dissect]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import gan_rewrite as gr
from gan_rewrite.dissect import ablation_rule, compute_quantiles, dissect, paint
from gan_rewrite.dissect.concepts import painted_from_json
from gan_rewrite.imaging import image_grid, save_image

MASKS = Path(__file__).with_name("faces_glasses_masks.json")
WEARERS = [2000, 2001, 2015, 2048, 2054, 2065, 2066, 2093, 2133, 2152]
BARE = [2002, 2003, 2004, 2009, 2011, 2019, 2022, 2035, 2036, 2052]
BAND = (slice(20, 38), slice(8, 56))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--layer", default="layer3")
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--n", type=int, default=1000, help="samples of the unit quantiles")
    parser.add_argument("--out", default="docs/dissect")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    G = gr.load_generator("dcgan-faces-64", device="cpu")
    concepts = painted_from_json(json.loads(MASKS.read_text()), G.resolution)
    q = compute_quantiles(G, args.layer, args.n, progress=False)
    result = dissect(G, args.layer, concepts, quantiles=q, progress=False)
    top = [u for u, _ in result.top("glasses", args.k)]
    rng = torch.Generator().manual_seed(1)
    randoms = [torch.randperm(q.units, generator=rng)[: args.k].tolist() for _ in range(3)]
    band = torch.zeros(G.resolution, G.resolution, dtype=torch.bool)
    band[BAND] = True

    def off(units: list[int], seeds: list[int]) -> torch.Tensor:
        G.load_rule(ablation_rule(G, args.layer, units), name="off")
        try:
            return G.sample(seeds)
        finally:
            G.unload_rules()

    rows, report = [], {}
    for group, seeds in (("wearers", WEARERS), ("bare", BARE)):
        before = G.sample(seeds)
        after_top = off(top, seeds)
        after_random = [off(units, seeds) for units in randoms]
        scores = {}
        for label, afters in (("top", [after_top]), ("random", after_random)):
            diffs = [(a - before).abs().mean(1) for a in afters]  # (N, H, W)
            scores[f"{label}_in"] = sum(float(d[:, band].mean()) for d in diffs) / len(diffs)
            scores[f"{label}_out"] = sum(float(d[:, ~band].mean()) for d in diffs) / len(diffs)
        report[group] = scores
        rows += [before, after_top, after_random[0]]
    save_image(image_grid(torch.cat(rows), nrow=len(WEARERS)), out / f"faces_glasses_{args.layer}.png")
    # painting: the same units set to their 0.99 quantile inside the glasses band of the faces without glasses
    before = G.sample(BARE)
    painted_top = paint(G, args.layer, BARE, top, band.float(), value=q.at(0.99))
    painted_random = [paint(G, args.layer, BARE, units, band.float(), value=q.at(0.99)) for units in randoms]
    scores = {}
    for label, afters in (("top", [painted_top]), ("random", painted_random)):
        diffs = [(a - before).abs().mean(1) for a in afters]
        scores[f"{label}_in"] = sum(float(d[:, band].mean()) for d in diffs) / len(diffs)
        scores[f"{label}_out"] = sum(float(d[:, ~band].mean()) for d in diffs) / len(diffs)
    report["paint_bare"] = scores
    grid = torch.cat([before, painted_top, painted_random[0]])
    save_image(image_grid(grid, nrow=len(BARE)), out / f"faces_paint_glasses_{args.layer}.png")
    report.update({"layer": args.layer, "k": args.k, "top_units": top,
                   "top_iou": [round(v, 4) for _, v in result.top("glasses", args.k)],
                   "seconds": round(time.perf_counter() - start, 1)})  # fmt: skip
    (out / f"dissect_faces_{args.layer}.json").write_text(json.dumps(report, indent=1))
    print(f"{args.layer}: top-{args.k} glasses units {top[:8]}… (IoU {report['top_iou'][0]:.3f} … "
          f"{report['top_iou'][-1]:.3f})")  # fmt: skip
    for group in ("wearers", "bare", "paint_bare"):
        s = report[group]
        print(f"  {group:10s} top-{args.k}: |Δ| band {s['top_in']:.3f}, outside {s['top_out']:.3f} | random: band "
              f"{s['random_in']:.3f}, outside {s['random_out']:.3f}")  # fmt: skip
    print(f"done in {report['seconds']} s → {out}")


if __name__ == "__main__":
    main()
