"""Do rules carry over to the model's other images? Six frozen requests on dcgan-faces-64, 32 held-out faces each.

The requests live in ``benchmarks/requests/*.json`` (committed before any tuning, then frozen; format in
``benchmarks/requests/README.md``). For each request and each setting, the rule is loaded at scale 1 (the
strength a user gets) and the held-out faces are drawn before and after:

* ``vis``: faces (of 32) on which the edit is visible by the request's automatic score (e.g. the upper-lip
  band gets darker by ≥ 0.1, images in [-1, 1]) — target ≥ 20;
* ``out``: mean |Δ| outside the band (all faces, all channels) — target ≤ 0.03;
* ``max``: the largest change of any pixel outside the band on any face (max over channels) — target ≤ 0.5;
* ``max>4px``: the same, more than 4 pixels away from the band (a diagnostic: an edit that bleeds over the
  band's edge fails ``max`` but not this);
* ``Δband``: mean change of the score in the band (its sign says "towards the request");
* ``paste``: on the paste sample, the L1 distance of the image to its goal image (the goal output run
  through the rest of the generator) inside the goal's bounding box, before → after: must go down;
* ``s``: seconds to solve (statistics excluded; the "auto" rows include scoring the layers).

Settings: ``old`` — the first defaults (closed form, layer3, the request's context, fit on the object's
mask: what the Space and CLI did); ``new`` — today's defaults (``Rewriter(G)``: ``layer="auto"``,
``solve()``: for this model the image fit over every context sample, ``FIT_CONTEXTS``); ``bounded@auto`` — the
previous default; ``bounded@L`` — the bounded solver at a fixed layer; ``opt`` — the projected optimiser with
its loss on the paste sample's image (300 steps) at the auto layer; ``learn`` — ``method="learn"`` at rank 4 with
its default samples (``D`` and ``Λ`` learned from the copy pasted at the paste place on many random faces as well as
the contexts); ``finetune`` — plain fine-tuning of the
whole auto layer's weight on the same single goal, same loss, same steps (the baseline); ``oracle`` — each
held-out face's own goal output at the auto layer (the copy pasted into that face's layer output at the
request's place), run through the rest of the generator: what a perfect rule at that layer could show.

    python benchmarks/edit_quality.py [--requests moustache,blue-cap] [--grids examples] [--quick]
    python benchmarks/edit_quality.py --responses   # why: how the rule's direction fires, held out vs in-sample
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

import gan_rewrite as gr
from gan_rewrite.imaging import image_grid, save_image
from gan_rewrite.rewrite.context import DEFAULT_DIRECTION_RIDGE, Goal, erase_goal, paste_goal, stack_goals
from gan_rewrite.rewrite.solve import goal_image_l1

ROOT = Path(__file__).resolve().parents[1]
REQUESTS = ROOT / "benchmarks" / "requests"
GRID_FACES = 8
EDGE = 4
"""A diagnostic beside ``max`` (not a target): the largest change more than this many pixels from the band, which
tells an edit that bleeds over the band's edge from one that moves pixels elsewhere."""


def _load_examples() -> Any:
    spec = importlib.util.spec_from_file_location("make_examples", ROOT / "examples" / "make_examples.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["make_examples"] = module
    spec.loader.exec_module(module)
    return module


ex = _load_examples()


# ----- requests ---------------------------------------------------------------------------------------
def load_request(name: str) -> dict[str, Any]:
    return json.loads((REQUESTS / f"{name}.json").read_text())


def mask_of(G: gr.GANGenerator, item: dict[str, Any]) -> np.ndarray:
    """The boolean 64×64 mask an item of a request describes (see requests/README.md)."""
    if "box" in item:
        return ex.rect(*item["box"])
    if "ellipse" in item:
        return ex.ellipse(*item["ellipse"])
    if "eyes" in item:
        return ex.eyes(cy=item["eyes"])
    return ex.dark_pixels(G, item["seed"], ex.rect(*item["dark_in_box"]), item["quantile"])


def build(
    G: gr.GANGenerator, req: dict[str, Any], layer: str | None, *, old_erase: bool = False,
    direction_ridge: float | None = None,
) -> gr.Rewriter:
    """A Rewriter for the request at ``layer`` (``"auto"`` for the new default)."""
    rw = gr.Rewriter(G, layer=layer, base_model="dcgan-faces-64", direction_ridge=direction_ridge)
    for item in req["context"]:
        rw.add_context(item["seed"], mask_of(G, item))
    if req["kind"] == "erase":
        erase = req["erase"]
        if old_erase:  # the previous erase: zero every output channel under the mask
            out_ch = rw.kind.shape(G.layer_module(rw.layer).weight)[0]
            rw.set_erase(erase["seed"], mask_of(G, erase), units=list(range(out_ch)))
        else:
            rw.set_erase(erase["seed"], mask_of(G, erase))
    else:
        rw.set_copy(req["copy"]["seed"], mask_of(G, req["copy"]))
        rw.set_paste(req["paste"]["seed"], mask_of(G, req["paste"]))
    return rw


# ----- scoring ----------------------------------------------------------------------------------------
def band_mask(req: dict[str, Any], grow: int = 0) -> torch.Tensor:
    """The request's band (``grow`` > 0: widened by that many pixels on every side, for a diagnostic)."""
    top, bottom, left, right = req["band"]
    return torch.from_numpy(ex.rect(max(top - grow, 0), bottom + grow, max(left - grow, 0), right + grow))


def measure_of(images: torch.Tensor, req: dict[str, Any], before: torch.Tensor) -> torch.Tensor:
    """Per face, the request's measure in the band (higher = more of the edit), shape (N,)."""
    band = band_mask(req)
    lum = images.mean(1)[:, band]  # (N, P)
    kind = req["measure"]
    if kind == "darker":
        return -lum.mean(1)
    if kind == "lighter":
        return lum.mean(1)
    if kind == "bluer":
        r, g, b = (images[:, c][:, band] for c in range(3))
        return (b - (r + g) / 2).mean(1)
    if kind == "frames_lighter":
        base = before.mean(1)[:, band]
        cut = torch.quantile(base, 0.3, dim=1, keepdim=True)
        frames = base <= cut
        return (lum * frames).sum(1) / frames.sum(1)
    raise ValueError(kind)


def evaluate(req: dict[str, Any], before: torch.Tensor, after: torch.Tensor) -> dict[str, Any]:
    band = band_mask(req)
    gain = measure_of(after, req, before) - measure_of(before, req, before)
    diff = (after - before).abs()  # (N, 3, H, W)
    outside = ~band
    return {
        "vis": int((gain >= req["visible"]).sum()),
        "out": float(diff.mean(1)[:, outside].mean()),
        "max": float(diff.amax(1)[:, outside].max()),
        "max_beyond": float(diff.amax(1)[:, ~band_mask(req, grow=EDGE)].max()),
        "dband": float(gain.mean()),
    }


def paste_distance(G: gr.GANGenerator, rw: gr.Rewriter, goal_image: torch.Tensor, box: tuple) -> float:
    seed = rw.paste[0] if rw.paste is not None else rw.erase[0].seed
    image = G.sample([seed])[0]
    top, bottom, left, right = box
    return float((image - goal_image)[:, top:bottom, left:right].abs().mean())


def goal_box(goal: gr.rewrite.context.Goal, size: int) -> tuple[int, int, int, int]:
    w = goal.weight[0]
    scale = size // w.shape[0]
    rows = torch.nonzero(w.sum(1) > 0)[:, 0]
    cols = torch.nonzero(w.sum(0) > 0)[:, 0]
    return int(rows[0]) * scale, (int(rows[-1]) + 1) * scale, int(cols[0]) * scale, (int(cols[-1]) + 1) * scale


@contextlib.contextmanager
def layer_weight(G: gr.GANGenerator, layer: str, weight: torch.Tensor) -> Iterator[None]:
    """The layer runs with ``weight`` inside the block; its own weight is put back afterwards."""
    module = G.layer_module(layer)
    original = module.weight.detach().clone()
    with torch.no_grad():
        module.weight.copy_(weight)
    try:
        yield
    finally:
        with torch.no_grad():
            module.weight.copy_(original)


def finetune(G: gr.GANGenerator, rw: gr.Rewriter, steps: int) -> torch.Tensor:
    """The baseline: Adam on the whole layer weight (no rank constraint), same goal and loss as ``opt``."""
    module = G.layer_module(rw.layer)
    goal = rw.goal()
    loss = goal_image_l1(rw.kind, module, goal, rw.renderer(goal.state))
    weight = module.weight.detach().clone().requires_grad_(True)
    optimizer = torch.optim.Adam([weight], lr=0.01 * float(weight.detach().std()))
    for _ in range(steps):
        (weight.grad,) = torch.autograd.grad(loss(weight), [weight])
        optimizer.step()
    return weight.detach()


def oracle_goal(G: gr.GANGenerator, req: dict[str, Any], layer: str, seeds: list[int]) -> tuple[Goal, gr.Rewriter]:
    """Each face's own goal at ``layer``, stacked into one batch (and the request's Rewriter at that layer): the
    copy pasted into that face's layer output at the request's place, or (erase) the same top units switched
    off under the erase box."""
    rw = build(G, req, layer)
    if req["kind"] == "erase":
        rw.compute_stats(n=1000, progress=False)
        region = torch.from_numpy(ex.rect(*req["erase"]["box"])).float()
        context, top = rw.context_keys(), rw._top_units()
        goals = [erase_goal(G, layer, seed, region, top_units=top, stats=rw.stats, context=context) for seed in seeds]
    else:
        copy_mask = torch.from_numpy(mask_of(G, req["copy"])).float()
        paste_mask = torch.from_numpy(mask_of(G, req["paste"])).float()
        goals = [paste_goal(G, layer, req["copy"]["seed"], copy_mask, seed, paste_mask) for seed in seeds]
    return stack_goals(G, layer, goals), rw


def oracle_images(G: gr.GANGenerator, req: dict[str, Any], layer: str, seeds: list[int]) -> torch.Tensor:
    """Each held-out face with its own goal applied straight to its layer output (:func:`oracle_goal`), run
    through the rest of the generator: what a perfect rule at that layer could show."""
    goal, rw = oracle_goal(G, req, layer, seeds)
    with torch.no_grad():
        return rw.renderer(goal.state)(goal.target)


# ----- one request ------------------------------------------------------------------------------------
def run_request(G: gr.GANGenerator, name: str, quick: bool, grids: Path | None) -> list[dict[str, Any]]:
    req = load_request(name)
    seeds = req["held_out"]
    before = G.sample(seeds)
    rows: list[dict[str, Any]] = []
    pictures: dict[str, torch.Tensor] = {"before": before}

    probe = build(G, req, "auto")
    probe.compute_stats(n=1000, progress=False)
    score = probe.score()
    auto_layer = score.best
    settings: list[tuple[str, str | None, str | None, dict[str, Any]]] = [
        ("old (closed form, layer3)", "layer3", "closed_form", {}),
        ("new default (auto, image fit over contexts)", "auto", None, {}),
        ("bounded@auto (the previous default)", "auto", "bounded", {}),
    ]
    if not quick:
        for layer in ("layer2", "layer3", "layer4"):
            settings.append((f"bounded@{layer}", layer, "bounded", {}))
        settings.append(("bounded@auto, paste only", "auto", "bounded", {"targets": "paste"}))
        settings.append(("bounded@auto, keep weight 1", "auto", "bounded", {"keep_weight": 1.0}))
        settings.append(("opt (image loss, 300 steps) @auto", "auto", "optimize", {"loss": "image", "steps": 300}))
        settings.append(("learn (defaults: rank 4, 512 samples) @auto", "auto", "learn", {}))
    for label, layer, method, options in settings:
        rw = build(G, req, layer, old_erase=label.startswith("old"))
        rw.compute_stats(n=1000, progress=False)
        with ex.one_thread():
            start = time.perf_counter()
            opts = dict(options)
            if method in (None, "optimize", "learn"):
                opts["progress"] = False
            delta = rw.solve(rank=opts.pop("rank", 1), method=method, **opts)
            elapsed = time.perf_counter() - start
        goal = rw.goal()
        with torch.no_grad():
            goal_image = rw.renderer(goal.state)(goal.target)[0]
        box = goal_box(goal, G.resolution)
        d0 = paste_distance(G, rw, goal_image, box)
        G.load_rule(delta, name="bench")
        try:
            after = G.sample(seeds)
            d1 = paste_distance(G, rw, goal_image, box)
        finally:
            G.unload_rules()
        row = {"setting": label, "layer": rw.layer, **evaluate(req, before, after), "paste": (d0, d1), "s": elapsed}
        rows.append(row)
        if label.startswith(("old", "new", "bounded@auto (", "learn")):
            pictures[label.split(" ")[0]] = after
        print(_fmt(name, row), flush=True)

    # Baseline: plain fine-tuning of the whole auto layer on the single paste goal.
    rw = build(G, req, auto_layer)
    rw.compute_stats(n=1000, progress=False)
    with ex.one_thread():
        start = time.perf_counter()
        tuned = finetune(G, rw, 300)
        elapsed = time.perf_counter() - start
    goal = rw.goal()
    with torch.no_grad():
        goal_image = rw.renderer(goal.state)(goal.target)[0]
    box = goal_box(goal, G.resolution)
    d0 = paste_distance(G, rw, goal_image, box)
    with layer_weight(G, auto_layer, tuned):
        after = G.sample(seeds)
        d1 = paste_distance(G, rw, goal_image, box)
    row = {"setting": "finetune (whole layer, 300 steps)", "layer": auto_layer, **evaluate(req, before, after)}
    row.update(paste=(d0, d1), s=elapsed)
    rows.append(row)
    pictures["finetune"] = after
    print(_fmt(name, row), flush=True)

    oracle = oracle_images(G, req, auto_layer, seeds)
    row = {"setting": "oracle (per-face goal output)", "layer": auto_layer, **evaluate(req, before, oracle)}
    row.update(paste=(float("nan"), float("nan")), s=0.0)
    rows.append(row)
    pictures["oracle"] = oracle
    print(_fmt(name, row), flush=True)
    for row in rows:
        row["scores"] = score.as_dict()
        row["advice"] = score.advice
    if grids is not None:
        order = ("before", "old", "new", "bounded@auto", "learn", "finetune", "oracle")
        grid = torch.cat([pictures[k][:GRID_FACES] for k in order if k in pictures])
        big = torch.nn.functional.interpolate(grid, scale_factor=2, mode="nearest")
        save_image(image_grid(big, nrow=GRID_FACES), grids / f"quality-{name}.png")
    return rows


# ----- why: how strongly the rule's direction fires where ---------------------------------------------
@torch.no_grad()
def direction_response(G: gr.GANGenerator, rw: gr.Rewriter, direction: torch.Tensor, seeds: list[int]) -> torch.Tensor:
    """``Dᵀk`` at every key location of the given samples at the rewriter's layer, ``(N, h, w)`` float64."""
    layer = rw.layer
    state = G.forward_to(layer, G.make_latents(seeds), None, noise=G.make_noise(seeds, layers=G.layer_index(layer)))
    keys = rw.kind.keys(G.layer_module(layer), state).to(torch.float64)
    return torch.einsum("nihw,i->nhw", keys, direction.to(torch.float64))


@torch.no_grad()
def response_profile(G: gr.GANGenerator, req: dict[str, Any], layer: str, ridge: float) -> dict[str, float]:
    """How strongly the rule's context direction ``D`` (rank 1, from all the request's contexts, with the
    given direction ridge) fires *in-sample* (the context regions it was built from), in the band of the
    held-out faces, and outside it.

    A rank-one rule changes the layer's output at a key location by exactly ``Λ · Dᵀk`` (before the layer's
    activation and everything after it), so these three numbers bound what any ``Λ`` can do at ``D``: the
    held-out band gets ``heldout / insample`` of the change the solve fitted on the contexts, and a rule that
    moves the held-out band by ``x`` moves 1 % of the key locations outside the band by at least
    ``x · outside_p99 / heldout``.
    """
    rw = build(G, req, layer, direction_ridge=ridge)
    rw.compute_stats(n=1000, progress=False)
    keys, weights = rw.context_keys()
    direction = rw.directions(1)[:, 0]
    insample = float((weights * (keys @ direction)).sum() / weights.sum())
    response = direction_response(G, rw, direction, req["held_out"])
    band = gr.rewrite.context.downsample_mask(band_mask(req).float(), tuple(response.shape[-2:]))
    inside, outside = band >= 0.99, band <= 0.01
    if not inside.any():  # a band narrower than one key location: its best-covered locations
        inside = band >= band.max() * 0.99
    per_face = response[:, inside].mean(1)
    p99 = float(torch.quantile(response[:, outside].reshape(-1), 0.99))
    heldout = float(per_face.median())
    return {
        "insample": insample, "heldout": heldout, "outside_p99": p99,
        "faces_above_p99": int((per_face > p99).sum()), "key_side": int(response.shape[-1]),
    }


def _fmt(name: str, row: dict[str, Any]) -> str:
    d0, d1 = row["paste"]
    return (
        f"{name:<22} {row['setting']:<38} {row['layer']:<7} vis {row['vis']:>2}/32  out {row['out']:.4f}  "
        f"max {row['max']:.3f} (>4px {row['max_beyond']:.3f})  Δband {row['dband']:+.3f}  "
        f"paste {d0:.3f}→{d1:.3f}  {row['s']:.2f}s"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    names = sorted(p.stem for p in REQUESTS.glob("*.json") if "model" not in json.loads(p.read_text()))
    parser.add_argument("--requests", default=",".join(names))
    parser.add_argument("--grids", type=Path, default=None, help="write quality-<request>.png grids here")
    parser.add_argument("--json", type=Path, default=None, help="write all rows here")
    parser.add_argument("--quick", action="store_true", help="old and new defaults only (plus baseline, oracle)")
    parser.add_argument("--responses", action="store_true",
                        help="only the response profile of each request's direction at layers 2-4 (the why)")
    args = parser.parse_args()
    torch.set_grad_enabled(True)
    G = gr.load_generator("dcgan-faces-64")
    if args.responses:
        print("| request | layer (keys) | ridge | in-sample | held-out band (median) | outside band, 99th pct | "
              "held-out ÷ in-sample | held-out ÷ outside p99 | faces above outside p99 |")
        print("|---|---|---|---|---|---|---|---|---|")
        for name in args.requests.split(","):
            req = load_request(name)
            for layer in ("layer2", "layer3", "layer4"):
                probe = build(G, req, layer)
                probe.compute_stats(n=1000, progress=False)
                chosen = probe.score([layer]).layers[layer].ridge  # the ridge "auto" would use at this layer
                for ridge in sorted({DEFAULT_DIRECTION_RIDGE, chosen}):
                    r = response_profile(G, req, layer, ridge)
                    mark = " (score's)" if ridge == chosen else ""
                    print(f"| `{name}` | {layer} ({r['key_side']}×{r['key_side']}) | {ridge:g}{mark} | "
                          f"{r['insample']:.2f} | {r['heldout']:.2f} | {r['outside_p99']:.2f} | "
                          f"{r['heldout'] / r['insample']:.2f} | {r['heldout'] / r['outside_p99']:.2f} | "
                          f"{r['faces_above_p99']}/{len(req['held_out'])} |", flush=True)
        return
    everything = {}
    for name in args.requests.split(","):
        everything[name] = run_request(G, name, args.quick, args.grids)
        print(f"  scores {everything[name][0]['scores']}  — {everything[name][0]['advice']}", flush=True)
    if args.json is not None:
        args.json.write_text(json.dumps(everything, indent=1))


if __name__ == "__main__":
    main()
