"""How good can a rule at one layer be for a request? Fit one knowing the answer (issue 9).

The per-face oracle of ``edit_quality.py`` (each held-out face's own goal output) is not a rule: it edits every
face separately. This fits a *rule* — one weight change ``ΔW = Λ Dᵀ`` of rank ``r`` at the layer, ``D`` and
``Λ`` both free — by Adam on the L1 distance of the final images to the per-face oracle images:

* fitted **on the held-out faces themselves**: the answer is known on exactly the faces it is scored on, so a
  rank-``r`` rule that meets the targets, if the fit finds one, shows such a rule exists; one that misses them
  is strong evidence that none does (by this loss; the fit is not a proof of optimality);
* fitted **on 32 other faces** (seeds 4000–4031, ``--train-faces`` for more; paste requests only: the erase's
  wearers are picked by eye and no labelled wearers are left over): perfect labels on more faces than any
  request has, then carried over to the held-out faces — the best any way of choosing the rule from examples
  could hope for.

The rule is added to the layer's weight and the held-out faces are sampled with it, as a rule file would do — at
full strength, and at the strongest strength at which it meets both cleanliness targets (a rule that spills at
full strength may be clean, and still visible, weaker). That strength is found on the held-out faces for a rule
fitted on them (if it is not visible on 20 faces there, no strength of it meets all three targets), and on 32
validation faces (seeds 6000–6031) for a rule fitted on other faces, so that nothing about it is tuned on the
faces it is scored on.
Scores as in ``edit_quality.py`` (targets: vis ≥ 20 of 32, out ≤ 0.03, max ≤ 0.5).

    python benchmarks/rule_oracle.py [--requests blue-cap,erase-glasses] [--layer layer3] [--ranks 1,2,4,8]
                                     [--train-faces 32] [--fit-on both|held-out|other] [--grids DIR]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import torch
from edit_quality import GRID_FACES, build, evaluate, layer_weight, load_request, oracle_goal, oracle_images
from torch import Tensor

import gan_rewrite as gr
from gan_rewrite.imaging import image_grid, save_image

RANKS = (1, 2, 4, 8)
STRENGTHS = [step / 32 for step in range(32, 0, -1)]
"""The strengths tried, strongest first, for a rule's strongest clean strength (:func:`strongest_clean_scale`): a
scan, not a bisection, because the largest pixel change need not grow monotonically with the strength."""
TRAIN_FIRST_SEED = 4000
TRAIN_FACES = 32
VALIDATION_SEEDS = list(range(6000, 6032))
"""Where a rule fitted on other faces gets its strength: faces neither fitted on nor scored."""
STEPS = 400
LEARNING_RATE = 0.003


def fit_rule(G: gr.GANGenerator, req: dict[str, Any], layer: str, seeds: list[int], rank: int, steps: int) -> Tensor:
    """The weight change ``Λ Dᵀ`` of rank ``rank`` at ``layer`` whose images of ``seeds`` come closest (L1) to
    those faces' oracle images. ``D`` starts at the request's context directions, ``Λ`` at zero."""
    goal, rw = oracle_goal(G, req, layer, seeds)
    render = rw.renderer(goal.state)
    module = G.layer_module(layer)
    weight = module.weight.detach()
    with torch.no_grad():
        wanted = render(goal.target)
    out_channels, _, kh, kw = rw.kind.shape(weight)
    rw.compute_stats(n=1000, progress=False)  # cached after the first call
    direction = rw.directions(rank).to(weight).requires_grad_(True)
    lam = torch.zeros(out_channels, rank, kh, kw, dtype=weight.dtype, requires_grad=True)
    optimizer = torch.optim.Adam([direction, lam], lr=LEARNING_RATE)
    for _ in range(steps):
        change = rw.kind.delta_weight(direction, lam)
        images = render(rw.kind.output(module, goal.state, weight + change))
        loss = (images - wanted).abs().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return rw.kind.delta_weight(direction, lam).detach()


def sample_with(G: gr.GANGenerator, layer: str, change: Tensor, seeds: list[int]) -> Tensor:
    """The faces drawn with ``change`` added to the layer's weight (restored afterwards)."""
    with layer_weight(G, layer, G.layer_module(layer).weight.detach() + change):
        return G.sample(seeds)


def strongest_clean_scale(
    G: gr.GANGenerator, req: dict[str, Any], layer: str, change: Tensor, seeds: list[int]
) -> float:
    """The largest strength of :data:`STRENGTHS` at which the rule meets the request's two cleanliness targets
    (mean change outside the band, largest pixel change there) on the faces ``seeds`` (0 if none)."""
    targets = req["targets"]
    before = G.sample(seeds)
    for scale in STRENGTHS:
        row = evaluate(req, before, sample_with(G, layer, scale * change, seeds))
        if row["out"] <= targets["mean_outside_max"] and row["max"] <= targets["pixel_outside_max"]:
            return scale
    return 0.0


def run_request(
    G: gr.GANGenerator, name: str, layer: str, ranks: list[int], steps: int, train_faces: int, fit_on: str,
    grids: Path | None,
) -> None:
    req = load_request(name)
    held = req["held_out"]
    if layer == "auto":
        probe = build(G, req, "auto")
        probe.compute_stats(n=1000, progress=False)
        layer = probe.score().best
    before = G.sample(held)
    oracle = oracle_images(G, req, layer, held)
    _print_row(name, layer, "per-face oracle (not a rule)", evaluate(req, before, oracle), 0.0)
    pictures = [before[:GRID_FACES], oracle[:GRID_FACES]]
    # (fitted on, the faces fitted on, the faces its strength is chosen on, what that strength is called)
    fits = [("held-out faces", held, held, "its strongest clean strength on the held-out faces")]
    if req["kind"] != "erase" and fit_on != "held-out":
        train = list(range(TRAIN_FIRST_SEED, TRAIN_FIRST_SEED + train_faces))
        strength = "the strongest clean strength on 32 validation faces"
        fits.append((f"{train_faces} other faces", train, VALIDATION_SEEDS, strength))
    if fit_on == "other":
        fits = fits[1:]
    for fitted_on, seeds, choose_on, strength in fits:
        for rank in ranks:
            start = time.perf_counter()
            change = fit_rule(G, req, layer, seeds, rank, steps)
            seconds = time.perf_counter() - start
            after = sample_with(G, layer, change, held)
            _print_row(name, layer, f"rank {rank}, fitted on the {fitted_on}", evaluate(req, before, after), seconds)
            scale = strongest_clean_scale(G, req, layer, change, choose_on)
            clean = sample_with(G, layer, scale * change, held)
            _print_row(name, layer, f"… at {strength}, {scale:.2f}×", evaluate(req, before, clean), seconds)
            if rank == ranks[0]:
                pictures += [after[:GRID_FACES], clean[:GRID_FACES]]
    if grids is not None:
        big = torch.nn.functional.interpolate(torch.cat(pictures), scale_factor=2, mode="nearest")
        save_image(image_grid(big, nrow=GRID_FACES), grids / f"rule-oracle-{name}.png")


def _print_row(name: str, layer: str, setting: str, row: dict[str, Any], seconds: float) -> None:
    print(f"| `{name}` | {layer} | {setting} | {row['vis']} | {row['out']:.4f} | {row['max']:.2f} | "
          f"{row['max_beyond']:.2f} | {row['dband']:+.3f} | {seconds:.0f} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", default="blue-cap,erase-glasses")
    parser.add_argument("--layer", default="auto", help="the layer to fit at (default: the one the score picks)")
    parser.add_argument("--ranks", default=",".join(map(str, RANKS)))
    parser.add_argument("--steps", type=int, default=STEPS)
    parser.add_argument("--train-faces", type=int, default=TRAIN_FACES,
                        help="how many other faces (seeds from 4000) the carried-over rules are fitted on")
    parser.add_argument("--fit-on", choices=("both", "held-out", "other"), default="both",
                        help="fit on the held-out faces, on the other faces, or both (the default)")
    parser.add_argument("--grids", type=Path, default=None,
                        help="write rule-oracle-<request>.png (rows: before, per-face oracle, then the lowest rank's "
                             "rule fitted on the held-out faces at full and at its strongest clean strength, and the "
                             "same fitted on the other faces)")
    args = parser.parse_args()
    torch.set_grad_enabled(True)
    G = gr.load_generator("dcgan-faces-64")
    print("| request | layer | rule | visible /32 | out (≤0.03) | max (≤0.5) | max > 4 px from the band | Δband | s |")
    print("|---|---|---|---|---|---|---|---|---|")
    ranks = [int(r) for r in args.ranks.split(",")]
    for name in args.requests.split(","):
        run_request(G, name, args.layer, ranks, args.steps, args.train_faces, args.fit_on, args.grids)


if __name__ == "__main__":
    main()
