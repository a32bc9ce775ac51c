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
image fit over every context sample, ``FIT_CONTEXTS``), the same fit run harder (300 steps at 10× the
step size: does the default underfit?), and the baseline — fine-tuning the whole layer on
the same goal. Then the **oracle**: each held-out sample's own goal at the defaults' layer (the copy pasted
onto every connected piece of that sample's context pixels, or its windows' top units switched off), run
through the rest of the generator — what a perfect rule at that layer could reach (also at the model's
default layer, where the other methods run). Writes a markdown table and a figure.

``--contexts 4,16,64`` asks instead whether more examples make the default rule carry over: the request's
contexts plus exactly labelled ones from seeds 200 on (neither request nor held-out seeds), the
library's defaults solved on each count (``gold-domes`` is left out: no method moves it). ``--responses``
asks why: how strongly the rule's direction fires on the held-out samples' context pixels against everywhere
else, per layer, from 4 or 64 contexts.
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
from gan_rewrite.rewrite.context import decode_mask, downsample_mask, encode_mask, erase_goal, paste_goal
from gan_rewrite.rewrite.rewriter import FIT_CONTEXTS
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


def draw(G: gr.GANGenerator, seeds: list[int]) -> torch.Tensor:
    """Samples for ``seeds``, 100 at a time."""
    return torch.cat([G.sample(seeds=seeds[i: i + 100]) for i in range(0, len(seeds), 100)])


def draw_with_rule(G: gr.GANGenerator, delta: gr.RuleDelta, *seed_lists: list[int]) -> tuple[torch.Tensor, ...]:
    """Samples for each list of seeds with ``delta`` loaded at scale 1; the generator is left as it was."""
    G.load_rule(delta, name="probe")
    try:
        return tuple(draw(G, seeds) for seeds in seed_lists)
    finally:
        G.unload_rules()


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
        "library defaults": ("auto", {"progress": False}),
        "defaults fitted harder": ("auto", {"method": "optimize", **FIT_CONTEXTS, "steps": 300, "lr_factor": 10.0,
                                            "progress": False}),
        "fine-tune (baseline)": (default, {"finetune": steps}),
    }


def _pieces(mask: torch.Tensor, minimum: int = 4) -> list[torch.Tensor]:
    """The 8-connected pieces of a boolean (H, W) mask with at least ``minimum`` pixels."""
    todo = {(int(y), int(x)) for y, x in torch.nonzero(mask)}
    pieces = []
    while todo:
        stack, piece = [todo.pop()], []
        while stack:
            y, x = stack.pop()
            piece.append((y, x))
            for dy in (-1, 0, 1):
                for dx in (-1, 0, 1):
                    if (y + dy, x + dx) in todo:
                        todo.remove((y + dy, x + dx))
                        stack.append((y + dy, x + dx))
        if len(piece) >= minimum:
            out = torch.zeros_like(mask)
            out[tuple(torch.tensor(piece).T)] = True
            pieces.append(out)
    return pieces


@torch.no_grad()
def oracle_images(name: str, req: dict[str, Any], G: gr.GANGenerator, layer: str, seeds: list[int],
                  labels: torch.Tensor, before: torch.Tensor) -> torch.Tensor:
    """Each held-out sample with the request's goal written straight into its own layer output at ``layer``
    (every piece of its context pixels; unchanged where it has none), then rendered."""
    rw = build(G, req, layer)
    if req["kind"] == "erase":  # the erase ranks the units by their selectivity, against the statistics
        rw.compute_stats(n=1000, progress=False)
    context = rw.context_keys() if req["kind"] == "erase" else None
    top = rw._top_units() if req["kind"] == "erase" else None
    copy_mask = None if req["kind"] == "erase" else decode_mask(req["copy"]["mask"])
    out = before.clone()
    for i, (seed, where) in enumerate(zip(seeds, context_pixels(name, labels), strict=True)):
        pieces = _pieces(where)
        if not pieces:
            continue
        if req["kind"] == "erase":
            goals = [erase_goal(G, layer, seed, where.float(), top_units=top, stats=rw.stats, context=context)]
        else:
            goals = [paste_goal(G, layer, req["copy"]["seed"], copy_mask, seed, piece.float()) for piece in pieces]
        target = goals[0].target
        for goal in goals[1:]:
            target = torch.where(goal.weight[:, None] > 0, goal.target, target)
        out[i] = rw.renderer(goals[0].state)(target)[0]
    return out


def run(name: str, G: gr.GANGenerator, segmenter, seeds: list[int], quick: bool) -> tuple[list[dict], dict]:
    from edit_quality import finetune  # the same whole-layer baseline as on the faces

    req = load_request(name)
    before = draw(G, seeds)
    labels_before = segment(segmenter, before)
    own = [item["seed"] for item in req["context"]]  # in-sample: the request's own context samples
    own_before = draw(G, own)
    own_labels = segment(segmenter, own_before)

    def in_sample(own_after: torch.Tensor) -> float:
        return measure(name, req, G, own_before, own_after, own_labels, segment(segmenter, own_after))["success"]

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
                after, own_after = draw(G, seeds), draw(G, own)
            finally:
                module.weight.data.copy_(original)
        else:
            after, own_after = draw_with_rule(G, rw.solve(**options), seeds, own)
        seconds = time.perf_counter() - start
        row = measure(name, req, G, before, after, labels_before, segment(segmenter, after))
        row.update(request=name, method=label, layer=rw.layer, seconds=seconds, in_sample=in_sample(own_after))
        rows.append(row)
        pictures[label] = after[:8]
        print(f"{name:15s} {label:22s} {rw.layer:7s} success {row['success']:.2f} (own {row['in_sample']:.2f}) "
              f"collateral {row['collateral']:.4f} / {row['collateral_no_context']:.4f}  ({seconds:.1f} s)", flush=True)
        if label == "library defaults":
            default_layer = rw.layer
    for layer in dict.fromkeys([default_layer, G.config.default_layer]):  # the defaults' layer first
        start = time.perf_counter()
        after = oracle_images(name, req, G, layer, seeds, labels_before, before)
        row = measure(name, req, G, before, after, labels_before, segment(segmenter, after))
        own_oracle = oracle_images(name, req, G, layer, own, own_labels, own_before)
        row.update(request=name, method="oracle (per-sample goal)", layer=layer, seconds=time.perf_counter() - start,
                   in_sample=in_sample(own_oracle))
        rows.append(row)
        if layer == default_layer:
            pictures["oracle"] = after[:8]
        print(f"{name:15s} {'oracle':22s} {layer:7s} success {row['success']:.2f} (own {row['in_sample']:.2f}) "
              f"collateral {row['collateral']:.4f} / {row['collateral_no_context']:.4f}", flush=True)
    return rows, pictures


MINIMUM_PIXELS = {"tree-on-spires": 10, "erase-windows": 12, "trees-at-feet": 20}
"""A pool sample becomes an extra context when it shows at least this many of the request's context pixels
(the thresholds the requests were defined with)."""


def labelled_contexts(G: gr.GANGenerator, segmenter) -> dict[str, list[tuple[int, torch.Tensor]]]:
    """Per request (not ``gold-domes``), exactly labelled extra contexts from 1000 seeds after the definition
    seeds: ``(seed, mask)`` pairs, in seed order."""
    pool = list(range(len(DEFINE_SEEDS), len(DEFINE_SEEDS) + 1000))
    labels = segment(segmenter, draw(G, pool))
    found = {}
    for name, least in MINIMUM_PIXELS.items():
        masks = context_pixels(name, labels)
        found[name] = [(seed, mask) for seed, mask in zip(pool, masks, strict=True) if mask.sum() >= least]
    return found


@torch.no_grad()
def responses(G: gr.GANGenerator, segmenter, seeds: list[int], counts: tuple[int, ...] = (4, 64)) -> list[dict]:
    """How the rule's context direction ``D`` (rank 1) fires on the held-out samples' own context pixels
    against everywhere else, per layer, from the request's contexts or from more labelled ones — the same
    bound as ``edit_quality.py --responses`` on the faces, with exact labels instead of a fixed band."""
    pool = labelled_contexts(G, segmenter)
    labels = segment(segmenter, draw(G, seeds))
    rows = []
    for name, extra in pool.items():
        req = load_request(name)
        where = context_pixels(name, labels)
        for layer in ("layer5", "layer6", "layer7"):
            module = G.layer_module(layer)
            state = G.forward_to(layer, G.make_latents(seeds), None,
                                 noise=G.make_noise(seeds, layers=G.layer_index(layer)))
            for count in counts:
                rw = build(G, req, layer)
                for seed, mask in extra[: max(0, count - len(req["context"]))]:
                    rw.add_context(seed, mask.float())
                rw.compute_stats(n=1000, progress=False)
                keys, weights = rw.context_keys()
                direction = rw.directions(1)[:, 0].to(torch.float64)
                response = torch.einsum("nihw,i->nhw", rw.kind.keys(module, state).to(torch.float64), direction)
                cover = torch.stack([downsample_mask(m.float(), tuple(response.shape[-2:])) for m in where])
                inside, outside = cover >= 0.5, cover <= 0.01
                has = inside.flatten(1).any(1)
                per_sample = torch.stack([response[i][inside[i]].mean() for i in range(len(seeds)) if has[i]])
                p99 = float(torch.quantile(response[outside], 0.99))
                row = {
                    "request": name, "layer": layer, "contexts": len(rw.context),
                    "in_sample": float((weights * (keys @ direction)).sum() / weights.sum()),
                    "held_out": float(per_sample.median()), "outside_p99": p99,
                    "above_p99": int((per_sample > p99).sum()), "samples": len(per_sample),
                }
                rows.append(row)
                print(f"{name:15s} {layer} {row['contexts']:3d} contexts: in-sample {row['in_sample']:.2f}  held-out "
                      f"{row['held_out']:.2f}  outside p99 {p99:.2f}  above {row['above_p99']}/{row['samples']}",
                      flush=True)
    return rows


def context_sweep(G: gr.GANGenerator, segmenter, seeds: list[int], counts: list[int]) -> list[dict]:
    """The library's defaults with the request's contexts topped up by exactly labelled ones."""
    pool = labelled_contexts(G, segmenter)
    before = draw(G, seeds)
    labels_before = segment(segmenter, before)
    rows = []
    for name, extra in pool.items():
        req = load_request(name)
        for count in counts:
            rw = build(G, req, "auto")
            for seed, mask in extra[: max(0, count - len(req["context"]))]:
                rw.add_context(seed, mask.float())
            rw.compute_stats(n=1000, progress=False)
            start = time.perf_counter()
            delta = rw.solve(progress=False)
            seconds = time.perf_counter() - start
            (after,) = draw_with_rule(G, delta, seeds)
            row = measure(name, req, G, before, after, labels_before, segment(segmenter, after))
            row.update(request=name, contexts=len(rw.context), layer=rw.layer, seconds=seconds)
            rows.append(row)
            print(f"{name:15s} {len(rw.context):3d} contexts {rw.layer:7s} success {row['success']:.2f}  collateral "
                  f"{row['collateral']:.4f} / {row['collateral_no_context']:.4f}  ({seconds:.1f} s)", flush=True)
    return rows


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
    parser.add_argument("--contexts", help="comma-separated context counts: the sweep instead of the table")
    parser.add_argument("--responses", action="store_true", help="how the rule's direction fires, per layer")
    args = parser.parse_args()
    if args.define:
        define_requests()
        return
    torch.manual_seed(0)
    G = gr.load_generator(MODEL, device="cpu")
    segmenter = load_segmenter()
    seeds = list(range(HELD_OUT, HELD_OUT + args.held_out))
    if args.responses:
        rows = responses(G, segmenter, seeds)
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "responses.json").write_text(json.dumps(rows, indent=1), encoding="utf-8")
        return
    if args.contexts:
        rows = context_sweep(G, segmenter, seeds, [int(c) for c in args.contexts.split(",")])
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "contexts.json").write_text(json.dumps(rows, indent=1), encoding="utf-8")
        return
    all_rows, all_pictures = [], {}
    for name in NAMES:
        rows, pictures = run(name, G, segmenter, seeds, args.quick)
        all_rows += rows
        all_pictures[name] = pictures
    args.out.mkdir(parents=True, exist_ok=True)
    figure(all_pictures, args.out / "edits.png")
    lines = ["| request | method | layer | success | success on its own contexts | collateral (with context) "
             "| collateral (without) | s |", "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['request']} | {r['method']} | {r['layer']} | {r['success']:.2f} | {r['in_sample']:.2f} "
              f"| {r['collateral']:.4f} | {r['collateral_no_context']:.4f} | {r['seconds']:.1f} |" for r in all_rows]
    table = "\n".join(lines)
    (args.out / "edits.md").write_text(table + "\n", encoding="utf-8")
    (args.out / "edits.json").write_text(json.dumps(all_rows, indent=1), encoding="utf-8")
    print(table)


if __name__ == "__main__":
    main()
