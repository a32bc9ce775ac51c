"""Which rewrite settings give the cleanest edits on the embedded DCGAN faces (docs/method.md, section 7).

Solves the two example requests of ``examples/make_examples.py`` (glasses on everyone; open mouths) under
several settings — layer (layer3: 8×8 keys, layer4: 16×16 keys), rank, number of context images, the copied
region (a band vs the object's own pixels), the goal region (``mask`` vs ``box``) and the solver (closed form;
projected Adam with the L1 loss on the layer output, ``loss="layer"``; projected Adam with the L1 loss on the
final image, ``loss="image"``) — and scores each rule on 64 held-out seeds (1000–1063, used by no request). No
labels are needed because the faces are aligned (the mean face is sharp), so a fixed band says where the rule
should act:

* ``in``: mean |Δimage| inside the band (images in [-1, 1]) — how much the rule does where it should;
* ``out``: mean |Δimage| outside it — collateral change;
* ``sel`` = in / out — selectivity;
* ``toward``: mean decrease of the L1 distance to the copied object (the source sample's pixels under the
  copied object's own mask) at those pixels — whether the change goes towards what was copied;
* ``time``: seconds for ``Rewriter.solve`` on one CPU thread (statistics are computed beforehand and not
  counted; the context keys and the goal are, so even the closed form takes a few hundredths of a second).

Those are at the rule's own strength (scale 1), and a stronger rule also spills more, so the last columns
compare at *equal strength*: the rule's scale is set (bisection with ``G.set_rule_scales``) so that ``in``
is 0.05, and ``out@.05`` / ``toward@.05`` are measured there — collateral and direction at equal success.

Each ratio column divides by the baseline measured in the same run: rank-1 closed form at layer3 with one
context image and a band as the copied region.

    python benchmarks/edit_quality.py [--rules glasses,open-mouth] [--grids DIR] [--n 1000] [--quick]
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

import gan_rewrite as gr
from gan_rewrite.imaging import save_image

ROOT = Path(__file__).resolve().parents[1]


def _load_examples() -> Any:
    spec = importlib.util.spec_from_file_location("make_examples", ROOT / "examples" / "make_examples.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["make_examples"] = module
    spec.loader.exec_module(module)
    return module


ex = _load_examples()


@dataclass
class Setting:
    name: str
    layer: str
    rank: int = 1
    contexts: int = 1
    tight: bool = False  # copy the object's own pixels (True) or a band around it (False)
    region: str = "mask"
    method: str = "closed_form"
    solver: dict[str, Any] = field(default_factory=dict)


IMAGE_LOSS = {"loss": "image"}  # the projected solver with its L1 loss on the final image

SETTINGS = [
    Setting("baseline L3 r1 c1 band", "layer3"),
    Setting("L3 r1 c1 tight/mask", "layer3", tight=True),
    Setting("L3 r1 c1 tight/box", "layer3", tight=True, region="box"),
    Setting("L3 r1 c4 tight/mask", "layer3", contexts=4, tight=True),
    Setting("L3 r1 c8 band", "layer3", contexts=8),
    Setting("L3 r1 c8 tight/mask", "layer3", contexts=8, tight=True),
    Setting("L3 r1 c8 tight/box", "layer3", contexts=8, tight=True, region="box"),
    Setting("L3 r3 c8 tight/mask", "layer3", rank=3, contexts=8, tight=True),
    Setting("L4 r1 c1 band", "layer4"),
    Setting("L4 r1 c4 tight/mask", "layer4", contexts=4, tight=True),
    Setting("L4 r1 c8 tight/mask", "layer4", contexts=8, tight=True),
    Setting("L4 r1 c8 tight/box", "layer4", contexts=8, tight=True, region="box"),
    Setting("L4 r3 c8 tight/mask", "layer4", rank=3, contexts=8, tight=True),
    Setting("L3 r1 c8 tight/mask opt-layer", "layer3", contexts=8, tight=True, method="optimize"),
    Setting("L3 r1 c8 tight/mask opt-image", "layer3", contexts=8, tight=True, method="optimize", solver=IMAGE_LOSS),
    Setting("L4 r1 c8 tight/mask opt-image", "layer4", contexts=8, tight=True, method="optimize", solver=IMAGE_LOSS),
]
QUICK = {
    "baseline L3 r1 c1 band",
    "L3 r1 c8 tight/mask",
    "L4 r1 c1 band",
    "L4 r1 c8 tight/mask",
    "L4 r3 c8 tight/mask",
    "L3 r1 c8 tight/mask opt-image",
}


def score(
    G: gr.GANGenerator,
    rule: gr.RuleDelta,
    before: torch.Tensor,
    region: np.ndarray,
    toward: tuple[torch.Tensor, np.ndarray],
    scale: float = 1.0,
) -> dict[str, Any]:
    """in / out / sel / toward of ``rule`` loaded at ``scale``, on the held-out seeds ``ex.MEASURE``."""
    G.load_rule(rule, name="bench", scale=scale)
    try:
        after = G.sample(ex.MEASURE)
    finally:
        G.unload_rules()
    inside, outside = ex.change_inside_outside(before, after, region)
    source, pixels = toward
    px = torch.from_numpy(pixels)
    d0 = (before - source).abs().mean(1)[:, px].mean()
    d1 = (after - source).abs().mean(1)[:, px].mean()
    return {"in": inside, "out": outside, "sel": inside / max(outside, 1e-12), "toward": float(d0 - d1), "after": after}


MATCH = 0.05
"""The ``in`` change (mean |Δimage| in the band) at which rules are compared at equal strength."""


def matched(
    G: gr.GANGenerator,
    rule: gr.RuleDelta,
    before: torch.Tensor,
    region: np.ndarray,
    toward: tuple[torch.Tensor, np.ndarray],
) -> dict[str, float]:
    """Scale the rule so that ``in`` = :data:`MATCH` (on 32 held-out seeds), then measure on all 64."""
    lo, hi = np.log(1 / 64), np.log(64)
    seeds = ex.MEASURE[:32]
    G.load_rule(rule, name="bench")
    try:
        for _ in range(8):
            mid = (lo + hi) / 2
            G.set_rule_scales({"bench": float(np.exp(mid))})
            inside, _ = ex.change_inside_outside(before[:32], G.sample(seeds), region)
            lo, hi = (mid, hi) if inside < MATCH else (lo, mid)
        scale = float(np.exp((lo + hi) / 2))
    finally:
        G.unload_rules()
    result = score(G, rule, before, region, toward, scale=scale)
    result["scale"] = scale
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rules", default="glasses,open-mouth")
    parser.add_argument("--grids", type=Path, default=None, help="save a before/after grid per setting here")
    parser.add_argument("--n", type=int, default=1000, help="statistics samples")
    parser.add_argument("--steps", type=int, default=1000, help="projected-solver steps")
    parser.add_argument("--quick", action="store_true", help="only the main settings")
    args = parser.parse_args()
    torch.manual_seed(0)
    G = gr.load_generator(ex.MODEL).eval().requires_grad_(False)
    before = G.sample(ex.MEASURE)
    settings = [s for s in SETTINGS if not args.quick or s.name in QUICK]
    print(f"threads {torch.get_num_threads()}, statistics n={args.n}, held-out seeds {ex.MEASURE[0]}-{ex.MEASURE[-1]}")
    for rule_name in args.rules.split(","):
        build = ex.BUILDERS[rule_name]
        region = ex.REGIONS[rule_name]
        probe = build(G, "layer3", tight=True)
        source = G.sample([probe.copy.seed])
        toward = (source, probe.copy.mask.numpy() > 0)
        print(f"\n== {rule_name}: region rows/cols {_extent(region)}")
        header = f"{'setting':34s} {'in':>6s} {'out':>6s} {'sel':>5s} {'toward':>7s} {'time':>6s} | "
        header += f"{'in/base':>7s} {'out/base':>8s} {'sel/base':>8s} | "
        header += f"{'scale':>6s} {'out@.05':>7s} {'toward@.05':>10s}"
        print(header)
        base = None
        for s in settings:
            rw = build(G, s.layer, contexts=s.contexts, region=s.region, tight=s.tight)
            rw.compute_stats(n=args.n, progress=False)
            kwargs = dict(s.solver)
            if s.method == "optimize":
                kwargs.update(steps=args.steps, progress=False)
            with ex.one_thread():  # tiny tensors; see examples/make_examples.py `one_thread`
                start = time.perf_counter()
                rule = rw.solve(rank=s.rank, method=s.method, **kwargs)
                seconds = time.perf_counter() - start
            m = score(G, rule, before, region, toward)
            e = matched(G, rule, before, region, toward)
            base = base or m
            print(
                f"{s.name:34s} {m['in']:6.3f} {m['out']:6.3f} {m['sel']:5.2f} {m['toward']:7.3f} {seconds:6.2f} | "
                f"{m['in'] / base['in']:7.2f} {m['out'] / base['out']:8.2f} {m['sel'] / base['sel']:8.2f} | "
                f"{e['scale']:6.2f} {e['out']:7.4f} {e['toward']:10.4f}",
                flush=True,
            )
            if args.grids is not None:
                args.grids.mkdir(parents=True, exist_ok=True)
                slug = s.name.replace(" ", "_").replace("/", "-")
                save_image(ex.grid(before[:16], m["after"][:16]), args.grids / f"{rule_name}.{slug}.png")


def _extent(mask: np.ndarray) -> str:
    rows, cols = np.nonzero(mask.any(1))[0], np.nonzero(mask.any(0))[0]
    return f"{rows[0]}-{rows[-1] + 1}/{cols[0]}-{cols[-1] + 1}"


if __name__ == "__main__":
    main()
