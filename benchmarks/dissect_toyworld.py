"""Does dissection find the units that draw a concept? Ablation and painting on the toy StyleGAN2, measured
with the toy-world segmenter, against random units.

For one layer of ``toyworld-stylegan2-64``: unit quantiles over ``--n`` samples, IoU of every unit with every
segmenter class over ``--dissect`` samples (seeds 0…), then on held-out seeds (10000…, never dissected) and for
each object class ``c``:

* **ablation**: the rule switching off the top-``k`` units of ``c`` (``ablation_rule``, loaded on the model)
  vs ``k`` random units (three draws, averaged). ``removed`` = share of the pixels labelled ``c`` before that are
  no longer ``c`` after; ``Δ elsewhere`` = mean |Δimage| (images in [-1, 1]) on pixels not labelled ``c`` before,
  ``flip elsewhere`` = share of those whose label changed. ``rt`` columns: the same units zeroed at run time
  (StyleGAN2's demodulation makes the rule differ slightly, see ``gan_rewrite/dissect/units.py``).
* **painting**: the top-``k`` units set to their 0.99 quantile inside a 16×16 box placed where ``c`` is most
  frequent (over the dissected samples), on held-out seeds where ``c`` covers < 50 % of the box; ``created`` =
  share of seeds where ``c`` gains ≥ 10 % of the box's pixels (26 px), vs ``k`` random units.

Writes ``<out>/dissect_toyworld_<layer>.json`` and grids ``<out>/toy_<concept>_<layer>.png`` (rows: before,
top-k ablated, random-k ablated, before with the box outlined, top-k painted, random-k painted).

    python benchmarks/dissect_toyworld.py [--layer layer4] [--segmenter PATH] [--out docs/dissect] [--quick]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import gan_rewrite as gr
from gan_rewrite.dissect import SegmenterConcepts, ablate, ablation_rule, compute_quantiles, dissect, paint
from gan_rewrite.imaging import image_grid, save_image
from gan_rewrite.toyworld import segment as toy
from gan_rewrite.toyworld.render import CLASSES

OBJECTS = ("cloud", "wall", "window", "door", "dome", "spire", "flat-roof", "tree")
BOX = 16


def box_for(labels: torch.Tensor, index: int) -> tuple[int, int]:
    """Top-left corner of the 16×16 box where class ``index`` is most frequent over ``labels`` (N, H, W)."""
    freq = (labels == index).float().mean(0)[None, None]
    window = F.avg_pool2d(freq, BOX, stride=1)[0, 0]
    top, left = divmod(int(window.argmax()), window.shape[1])
    return top, left


def outline(images: torch.Tensor, top: int, left: int) -> torch.Tensor:
    out = images.clone()
    colour = torch.tensor([1.0, -1.0, 1.0]).view(3, 1)
    b, r = top + BOX - 1, left + BOX - 1
    for edge in (out[:, :, top, left : r + 1], out[:, :, b, left : r + 1], out[:, :, top : b + 1, left],
                 out[:, :, top : b + 1, r]):  # fmt: skip
        edge[:] = colour
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--layer", default="layer4")
    parser.add_argument("--segmenter", default=str(toy.SEGMENTER_FILE))
    parser.add_argument("--n", type=int, default=500, help="samples of the unit quantiles")
    parser.add_argument("--dissect", type=int, default=200, help="segmented samples scored")
    parser.add_argument("--held-out", type=int, default=64, help="held-out seeds of the measurements")
    parser.add_argument("--k", type=int, default=20)
    parser.add_argument("--out", default="docs/dissect")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if args.quick:
        args.n, args.dissect, args.held_out = 100, 48, 16
    torch.manual_seed(0)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    G = gr.load_generator("toyworld-stylegan2-64", device="cpu")
    net = toy.load_segmenter(args.segmenter)

    def seg(images: torch.Tensor) -> torch.Tensor:
        return toy.segment(net, images)

    seeds = list(range(args.dissect))
    q = compute_quantiles(G, args.layer, args.n, progress=False)
    concepts = SegmenterConcepts(segment=seg, classes=CLASSES, seeds=seeds)
    result = dissect(G, args.layer, concepts, quantiles=q, progress=False)
    labels_dissect = seg(G.sample(seeds))
    print(f"{args.layer}: {q.units} units; quantiles n={args.n}, dissection {len(seeds)} samples "
          f"({time.perf_counter() - start:.0f} s)")  # fmt: skip
    held = list(range(10_000, 10_000 + args.held_out))
    before = G.sample(held)
    labels_before = seg(before)
    rng = torch.Generator().manual_seed(1)
    randoms = [torch.randperm(q.units, generator=rng)[: args.k].tolist() for _ in range(3)]
    high = q.at(0.99)
    rows = {}

    def ablation_scores(after: torch.Tensor, index: int) -> dict[str, float]:
        labels_after = seg(after)
        was = labels_before == index
        other = ~was
        diff = (after - before).abs().mean(1)  # (N, H, W)
        return {
            "removed": float((was & (labels_after != index)).sum() / was.sum().clamp_min(1)),
            "delta_elsewhere": float(diff[other].mean()),
            "flip_elsewhere": float((labels_after != labels_before)[other].float().mean()),
        }

    def with_rule(units: list[int]) -> torch.Tensor:
        G.load_rule(ablation_rule(G, args.layer, units), name="ablate")
        try:
            return G.sample(held)
        finally:
            G.unload_rules()

    for concept in OBJECTS:
        index = CLASSES.index(concept)
        if int((labels_before == index).sum()) < 50:
            print(f"{concept}: too rare on the held-out seeds, skipped")
            continue
        top = [u for u, _ in result.top(concept, args.k)]
        row: dict[str, float] = {"best_iou": result.top(concept, 1)[0][1], "top_k_mean_iou": sum(
            v for _, v in result.top(concept, args.k)) / args.k}  # fmt: skip
        ablated_top = with_rule(top)
        row.update({f"top_{k}": v for k, v in ablation_scores(ablated_top, index).items()})
        row.update({f"top_rt_{k}": v for k, v in ablation_scores(ablate(G, args.layer, held, top), index).items()})
        random_scores = [ablation_scores(with_rule(units), index) for units in randoms]
        for key in random_scores[0]:
            row[f"random_{key}"] = sum(s[key] for s in random_scores) / len(random_scores)
        # painting
        top_left = box_for(labels_dissect, index)
        mask = torch.zeros(G.resolution, G.resolution)
        mask[top_left[0] : top_left[0] + BOX, top_left[1] : top_left[1] + BOX] = 1
        inside = mask.bool()
        cover_before = (labels_before == index)[:, inside].float().mean(1)
        eligible = cover_before < 0.5

        def created(units: list[int], index: int = index, mask: torch.Tensor = mask, inside: torch.Tensor = inside,
                    cover_before: torch.Tensor = cover_before, eligible: torch.Tensor = eligible):  # fmt: skip
            painted = paint(G, args.layer, held, units, mask, value=high)
            cover_after = (seg(painted) == index)[:, inside].float().mean(1)
            gain = cover_after - cover_before
            return float(((gain >= 0.1) & eligible).sum() / eligible.sum().clamp_min(1)), float(
                gain[eligible].mean()), painted  # fmt: skip

        row["paint_box"] = list(top_left)
        row["paint_seeds"] = int(eligible.sum())
        row["paint_created"], row["paint_gain"], painted_top = created(top)
        random_paint = [created(units) for units in randoms]
        row["random_paint_created"] = sum(r[0] for r in random_paint) / 3
        row["random_paint_gain"] = sum(r[1] for r in random_paint) / 3
        rows[concept] = row
        shown = slice(0, 8)
        grid = torch.cat([before[shown], ablated_top[shown], with_rule(randoms[0])[shown],
                          outline(before[shown], *top_left), painted_top[shown],
                          random_paint[0][2][shown]])  # fmt: skip
        save_image(image_grid(grid, nrow=8), out / f"toy_{concept}_{args.layer}.png")
        print(f"{concept:9s} IoU {row['best_iou']:.2f} | ablate top-{args.k}: removed {row['top_removed']:.0%} "
              f"(run time {row['top_rt_removed']:.0%}), Δ elsewhere {row['top_delta_elsewhere']:.3f}, flips "
              f"{row['top_flip_elsewhere']:.1%} | random: removed {row['random_removed']:.0%}, Δ elsewhere "
              f"{row['random_delta_elsewhere']:.3f} | paint at {tuple(top_left)}: created on "
              f"{row['paint_created']:.0%} of {row['paint_seeds']} seeds "
              f"(random {row['random_paint_created']:.0%})")  # fmt: skip
    summary = {"layer": args.layer, "units": q.units, "n": args.n, "dissect": len(seeds), "held_out": len(held),
               "k": args.k, "segmenter": Path(args.segmenter).name, "concepts": rows,
               "seconds": round(time.perf_counter() - start, 1)}  # fmt: skip
    (out / f"dissect_toyworld_{args.layer}.json").write_text(json.dumps(summary, indent=1))
    print("\n| concept | best IoU | removed: top-k rule (run time) / random | Δ elsewhere: top / random | "
          "label flips elsewhere: top / random | painted: created top / random (seeds) |")
    print("| --- | --- | --- | --- | --- | --- |")
    for concept, r in rows.items():
        print(f"| {concept} | {r['best_iou']:.2f} | {r['top_removed']:.0%} ({r['top_rt_removed']:.0%}) / "
              f"{r['random_removed']:.0%} | {r['top_delta_elsewhere']:.3f} / {r['random_delta_elsewhere']:.3f} | "
              f"{r['top_flip_elsewhere']:.1%} / {r['random_flip_elsewhere']:.1%} | {r['paint_created']:.0%} / "
              f"{r['random_paint_created']:.0%} ({r['paint_seeds']}) |")  # fmt: skip
    print(f"done in {summary['seconds']} s → {out}")


if __name__ == "__main__":
    main()
