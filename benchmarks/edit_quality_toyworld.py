"""Edit quality on the toy StyleGAN2, measured the way the paper does: with labels.

    python benchmarks/edit_quality_toyworld.py [--held-out 200] [--quick] [--out docs/toyworld]

Four requests, each a committed spec in ``benchmarks/requests/toyworld-*.json`` (written once by
``--define`` from the segmenter's labels of fixed seeds, before any method was tuned on them, then frozen):

* ``tree-on-spires``: copy a tree onto the top of a spire; context: spire tops of four samples.
* ``erase-windows``: erase the windows of a wall; context: windows of four samples.
* ``gold-domes``: paste a gold dome over a blue/teal dome; context: domes of four samples (appearance).
* ``trees-at-feet``: copy a tree onto the ground at a building's foot; context: the strip of ground under
  walls of four samples — a place, not a class.

On held-out seeds (never used by a request) the shipped segmenter labels the sample before and after:

* **success**: for pastes, the share of the context pixels (the context class, or the strip, in the
  original sample) that take the pasted class (``gold-domes``: that stay a dome and move at least half-way
  to the copied colour); for the erase, the share of window pixels no longer windows;
* **collateral**: mean |Δ pixel| (images in [-1, 1]) outside the context pixels (dilated by 2 px) on
  samples that have the context, and over whole samples that have none.

Methods: the rank-1 closed form at the model's default layer, rank 3, the projected optimiser (image
loss), the library's defaults (``Rewriter(G)`` + ``solve()``: automatic layer, and for this 64 px model the
image fit over every context sample, ``FIT_CONTEXTS``), and the baseline — fine-tuning the whole layer on
the same goal. Writes a markdown table and a figure.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from PIL import Image

import gan_rewrite as gr
from gan_rewrite.rewrite.context import decode_mask, encode_mask
from gan_rewrite.toyworld.render import CLASS_INDEX
from gan_rewrite.toyworld.segment import load_segmenter, segment

sys.path.insert(0, str(Path(__file__).resolve().parent))

ROOT = Path(__file__).resolve().parents[1]
REQUESTS = ROOT / "benchmarks" / "requests"
MODEL = "toyworld-stylegan2-64"
NAMES = ("tree-on-spires", "erase-windows", "gold-domes", "trees-at-feet")
DEFINE_SEEDS = range(0, 200)  # requests are built from these; held-out seeds start at HELD_OUT
HELD_OUT = 100_000


# ----- defining the requests (run once, then frozen) ----------------------------------------------------
def _mask_code(mask: torch.Tensor) -> str:
    return encode_mask(mask.float())


def _top_band(mask: torch.Tensor, rows: int) -> torch.Tensor:
    """The top ``rows`` rows of each column of ``mask``'s region (a roof's tip)."""
    ys = torch.nonzero(mask.any(1))[:, 0]
    band = torch.zeros_like(mask)
    if len(ys):
        band[ys[0]: ys[0] + rows] = mask[ys[0]: ys[0] + rows]
    return band


def _under_walls(labels: torch.Tensor) -> torch.Tensor:
    """Ground pixels within 4 rows below a wall pixel: the strip at the buildings' feet."""
    wall = (labels == CLASS_INDEX["wall"]) | (labels == CLASS_INDEX["door"])
    below = torch.zeros_like(wall)
    for shift in range(1, 5):
        below[shift:] |= wall[:-shift]
    return below & (labels == CLASS_INDEX["ground"])


def _biggest_box(mask: torch.Tensor) -> torch.Tensor:
    ys, xs = torch.nonzero(mask, as_tuple=True)
    box = torch.zeros_like(mask)
    box[ys.min(): ys.max() + 1, xs.min(): xs.max() + 1] = True
    return box & mask


def define_requests() -> None:
    """Build the four requests from the segmenter's labels of fixed seeds and write their specs."""
    G = gr.load_generator(MODEL, device="cpu")
    labels = segment(load_segmenter(), G.sample(seeds=list(DEFINE_SEEDS)))
    images = G.sample(seeds=list(DEFINE_SEEDS))

    def seeds_with(mask_of, minimum: int, count: int, skip: set[int] = frozenset()) -> list[tuple[int, torch.Tensor]]:
        found = []
        for seed in DEFINE_SEEDS:
            mask = mask_of(labels[seed])
            if seed not in skip and mask.sum() >= minimum:
                found.append((seed, mask))
            if len(found) == count:
                break
        return found

    def cls(name: str):
        return lambda lab: lab == CLASS_INDEX[name]

    tree = seeds_with(lambda lab: _biggest_box(cls("tree")(lab)) if cls("tree")(lab).any() else cls("tree")(lab), 25, 1)
    spires = seeds_with(lambda lab: _top_band(cls("spire")(lab), 6), 10, 4)
    windows = seeds_with(cls("window"), 12, 4)
    domes = seeds_with(cls("dome"), 10, 60)
    dome_colour = {seed: images[seed][:, mask].mean(1) for seed, mask in domes}
    gold = [(s, m) for s, m in domes if dome_colour[s][0] > dome_colour[s][2] + 0.3]  # red ≫ blue: gold
    other = [(s, m) for s, m in domes if dome_colour[s][2] > dome_colour[s][0]][:4]
    feet = seeds_with(_under_walls, 20, 4)

    def spec(kind: str, contexts: list[tuple[int, torch.Tensor]], copy: tuple[int, torch.Tensor] | None,
             paste: tuple[int, torch.Tensor] | None, description: str) -> dict[str, Any]:
        data: dict[str, Any] = {
            "description": description, "model": MODEL, "kind": kind,
            "context": [{"seed": s, "mask": _mask_code(m)} for s, m in contexts],
        }
        if kind == "erase":
            data["erase"] = {"seed": contexts[0][0], "mask": _mask_code(contexts[0][1])}
        else:
            data["copy"] = {"seed": copy[0], "mask": _mask_code(copy[1])}
            data["paste"] = {"seed": paste[0], "mask": _mask_code(paste[1])}
        return data

    requests = {
        "tree-on-spires": spec("paste", spires, tree[0], spires[0], "a tree on top of every spire"),
        "erase-windows": spec("erase", windows, None, None, "walls without windows"),
        "gold-domes": spec("paste", other, gold[0], other[0], "every dome gold"),
        "trees-at-feet": spec("paste", feet, tree[0], feet[0], "a tree at the foot of every building"),
    }
    REQUESTS.mkdir(parents=True, exist_ok=True)
    for name, data in requests.items():
        (REQUESTS / f"toyworld-{name}.json").write_text(json.dumps(data, indent=1) + "\n", encoding="utf-8")
        print(f"wrote {name}: contexts {[c['seed'] for c in data['context']]}")


# ----- running one request -------------------------------------------------------------------------------
def load_request(name: str) -> dict[str, Any]:
    return json.loads((REQUESTS / f"toyworld-{name}.json").read_text(encoding="utf-8"))


def build(G: gr.GANGenerator, req: dict[str, Any], layer: str | None) -> gr.Rewriter:
    rw = gr.Rewriter(G, layer)
    for item in req["context"]:
        rw.add_context(item["seed"], decode_mask(item["mask"]))
    if req["kind"] == "erase":
        rw.set_erase(req["erase"]["seed"], decode_mask(req["erase"]["mask"]))
    else:
        rw.set_copy(req["copy"]["seed"], decode_mask(req["copy"]["mask"]))
        rw.set_paste(req["paste"]["seed"], decode_mask(req["paste"]["mask"]))
    return rw


def context_pixels(name: str, labels: torch.Tensor) -> torch.Tensor:
    """Where the rule should act on each held-out sample (N, H, W), from its labels before the edit."""
    if name == "tree-on-spires":
        return torch.stack([_top_band(lab == CLASS_INDEX["spire"], 6) for lab in labels])
    if name == "erase-windows":
        return labels == CLASS_INDEX["window"]
    if name == "gold-domes":
        return labels == CLASS_INDEX["dome"]
    return torch.stack([_under_walls(lab) for lab in labels])


def measure(name: str, req: dict[str, Any], G: gr.GANGenerator, before: torch.Tensor, after: torch.Tensor,
            labels_before: torch.Tensor, labels_after: torch.Tensor) -> dict[str, float]:
    ctx = context_pixels(name, labels_before)  # (N, H, W)
    has = ctx.flatten(1).sum(1) >= 4
    if name == "erase-windows":
        hit = labels_after != CLASS_INDEX["window"]
    elif name == "gold-domes":
        copy = G.sample(seeds=[req["copy"]["seed"]])[0]
        target = copy[:, decode_mask(req["copy"]["mask"]) > 0.5].mean(1).view(1, 3, 1, 1)
        moved = (after - target).norm(dim=1) <= 0.5 * (before - target).norm(dim=1)
        hit = moved & (labels_after == CLASS_INDEX["dome"])
    else:
        hit = labels_after == CLASS_INDEX["tree"]
    success = (hit & ctx)[has].sum().item() / max(1, ctx[has].sum().item())
    grown = F.max_pool2d(ctx.float()[:, None], 5, stride=1, padding=2)[:, 0] > 0
    change = (after - before).abs().mean(1)  # (N, H, W)
    outside = change[has][~grown[has]].mean().item() if has.any() else float("nan")
    without = change[~has].mean().item() if (~has).any() else float("nan")
    return {"success": success, "collateral": outside, "collateral_no_context": without,
            "with_context": int(has.sum())}


def methods(G: gr.GANGenerator, quick: bool) -> dict[str, tuple[str | None, dict[str, Any]]]:
    default = G.config.default_layer
    steps = 150 if quick else 400
    return {
        "closed form, rank 1": (default, {"rank": 1, "method": "closed_form"}),
        "closed form, rank 3": (default, {"rank": 3, "method": "closed_form"}),
        "projected optimiser": (default, {"rank": 1, "method": "optimize", "loss": "image", "steps": steps,
                                          "progress": False}),
        "library defaults": ("auto", {}),
        "fine-tune (baseline)": (default, {"finetune": steps}),
    }


def run(name: str, G: gr.GANGenerator, segmenter, seeds: list[int], quick: bool) -> tuple[list[dict], dict]:
    from edit_quality import finetune  # the same whole-layer baseline as on the faces

    req = load_request(name)
    before = torch.cat([G.sample(seeds=seeds[i: i + 100]) for i in range(0, len(seeds), 100)])
    labels_before = segment(segmenter, before)
    rows, pictures = [], {"before": before[:8]}
    for label, (layer, options) in methods(G, quick).items():
        rw = build(G, req, layer)
        rw.compute_stats(n=200 if quick else 1000, progress=False)
        start = time.perf_counter()
        if "finetune" in options:
            weight = finetune(G, rw, options["finetune"])
            module = G.layer_module(rw.layer)
            original = module.weight.detach().clone()
            module.weight.data.copy_(weight)
            try:
                after = torch.cat([G.sample(seeds=seeds[i: i + 100]) for i in range(0, len(seeds), 100)])
            finally:
                module.weight.data.copy_(original)
        else:
            delta = rw.solve(**options)
            G.load_rule(delta, name="probe")
            try:
                after = torch.cat([G.sample(seeds=seeds[i: i + 100]) for i in range(0, len(seeds), 100)])
            finally:
                G.unload_rules()
        seconds = time.perf_counter() - start
        row = measure(name, req, G, before, after, labels_before, segment(segmenter, after))
        row.update(request=name, method=label, layer=rw.layer, seconds=seconds)
        rows.append(row)
        pictures[label] = after[:8]
        print(f"{name:15s} {label:22s} {rw.layer:7s} success {row['success']:.2f}  collateral "
              f"{row['collateral']:.4f} / {row['collateral_no_context']:.4f}  ({seconds:.1f} s)", flush=True)
    return rows, pictures


def figure(all_pictures: dict[str, dict[str, torch.Tensor]], path: Path) -> None:
    """One block per request: rows = before, then each method; 8 held-out samples per row."""
    blocks = []
    for pictures in all_pictures.values():
        blocks.extend(pictures.values())
    images = ((torch.cat(blocks).clamp(-1, 1) + 1) * 127.5).round().byte()
    n, c, h, w = images.shape
    rows = n // 8
    canvas = images.view(rows, 8, c, h, w).permute(0, 3, 1, 4, 2).reshape(rows * h, 8 * w, c)
    Image.fromarray(canvas.numpy()).resize((8 * w * 2, rows * h * 2), Image.NEAREST).save(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--define", action="store_true", help="(re)write the request specs — only before tuning")
    parser.add_argument("--held-out", type=int, default=200)
    parser.add_argument("--quick", action="store_true", help="fewer steps and statistics (a smoke run)")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "toyworld")
    args = parser.parse_args()
    if args.define:
        define_requests()
        return
    torch.manual_seed(0)
    G = gr.load_generator(MODEL, device="cpu")
    segmenter = load_segmenter()
    seeds = list(range(HELD_OUT, HELD_OUT + args.held_out))
    all_rows, all_pictures = [], {}
    for name in NAMES:
        rows, pictures = run(name, G, segmenter, seeds, args.quick)
        all_rows += rows
        all_pictures[name] = pictures
    args.out.mkdir(parents=True, exist_ok=True)
    figure(all_pictures, args.out / "edits.png")
    lines = ["| request | method | layer | success | collateral (with context) | collateral (without) | s |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['request']} | {r['method']} | {r['layer']} | {r['success']:.2f} | {r['collateral']:.4f} "
              f"| {r['collateral_no_context']:.4f} | {r['seconds']:.1f} |" for r in all_rows]
    table = "\n".join(lines)
    (args.out / "edits.md").write_text(table + "\n", encoding="utf-8")
    (args.out / "edits.json").write_text(json.dumps(all_rows, indent=1), encoding="utf-8")
    print(table)


if __name__ == "__main__":
    main()
