"""``gan-rewrite dissect``, ``ablate`` and ``paint``: the dissection sub-commands (added by :func:`add_commands`)."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from ..errors import GanRewriteError, RuleError
from .concepts import DEFAULT_LEVELS

MODEL_HELP = "Hub repo id, model folder, or known name (e.g. toyworld-stylegan2-64)"


def _units_arg(text: str) -> list[int]:
    try:
        units = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        units = []
    if not units or min(units) < 0:
        raise argparse.ArgumentTypeError(f"invalid units {text!r}; give unit numbers like 3,17,42")
    return units


def _levels_arg(text: str) -> list[float]:
    try:
        levels = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        levels = []
    if not levels or not all(0.0 <= q < 1.0 for q in levels):
        raise argparse.ArgumentTypeError(f"invalid levels {text!r}; give quantile levels in [0, 1) like 0.9,0.99")
    return levels


def _box_arg(text: str) -> tuple[int, int, int, int]:
    try:
        box = tuple(int(part) for part in text.split(","))
    except ValueError:
        box = ()
    if len(box) != 4:
        raise argparse.ArgumentTypeError(f"invalid box {text!r}; give top,left,bottom,right in pixels")
    return box  # type: ignore[return-value]


def _concepts(args: argparse.Namespace, resolution: int) -> Any:
    from .concepts import painted_from_json, toyworld_concepts

    if args.masks:
        try:
            data = json.loads(Path(args.masks).read_text())
        except (OSError, ValueError) as err:
            raise RuleError(f"cannot read the concept masks {args.masks!r}: {err}") from err
        return painted_from_json(data, resolution)
    return toyworld_concepts(range(args.seed, args.seed + args.samples), device=args.device or "cpu")


def cmd_dissect(args: argparse.Namespace) -> int:
    from ..cli import distributed
    from ..hub.loading import load_generator
    from .concepts import dissect
    from .quantiles import compute_quantiles
    from .report import write_report

    with distributed(args.device) as (rank, device):
        G = load_generator(args.model, revision=args.revision, device=device)
        start = time.perf_counter()
        quantiles = compute_quantiles(G, args.layer, args.n, truncation=args.truncation, use_cache=not args.no_cache,
                                      per_sample=args.per_sample, batch_size=args.batch_size)  # fmt: skip
        if rank != 0:
            return 0
        concepts = _concepts(args, G.resolution)
        result = dissect(G, args.layer, concepts, quantiles=quantiles, levels=args.levels,
                         truncation=args.truncation, batch_size=args.batch_size or 16)  # fmt: skip
        index = write_report(G, result, quantiles, args.out, model=args.model, top_k=args.top,
                             truncation=args.truncation)  # fmt: skip
        best = sorted(((result.top(c, 1)[0][1], c, result.top(c, 1)[0][0]) for c in result.concepts), reverse=True)
        lines = ", ".join(f"{c}: unit {u} IoU {v:.2f}" for v, c, u in best[:5])
        print(f"dissected {args.model} at {args.layer} ({quantiles.units} units, {len(result.seeds)} samples, "
              f"{time.perf_counter() - start:.1f} s); best: {lines} → {index}")  # fmt: skip
    return 0


def _chosen_units(args: argparse.Namespace) -> list[int]:
    from .report import read_dissection, top_units

    if args.units:
        return args.units
    if not (args.concept and args.dissection):
        raise GanRewriteError("choose units with `--units 3,17` or with `--concept NAME --dissection dissection.json`.")
    data = read_dissection(args.dissection)
    if data.get("layer") != args.layer:
        raise RuleError(f"{args.dissection!r} dissects {data.get('layer')!r}, not --layer {args.layer!r}.")
    return top_units(data, args.concept, args.top)


def cmd_ablate(args: argparse.Namespace) -> int:
    from ..hub.loading import load_generator
    from .edits import ablation_rule

    G = load_generator(args.model, revision=args.revision, device=args.device)
    units = _chosen_units(args)
    delta = ablation_rule(G, args.layer, units, base_model=args.model)
    if args.concept:
        delta.spec["concept"] = args.concept
    path = delta.save(args.out)
    (target,) = delta.layer_names
    print(f"rule switching off {len(units)} unit(s) of {args.layer} (a rank-{len(units)} rule on {target}) → {path}")
    return 0


def cmd_paint(args: argparse.Namespace) -> int:
    import torch

    from ..hub.loading import load_generator
    from ..imaging import image_format, image_grid, save_image
    from .edits import paint
    from .quantiles import compute_quantiles

    try:
        image_format(args.out)
    except ValueError as err:
        raise GanRewriteError(f"`--out`: {err}") from None
    G = load_generator(args.model, revision=args.revision, device=args.device)
    units = _chosen_units(args)
    size = G.resolution
    mask = torch.zeros(size, size)
    top, left, bottom, right = args.box or (0, 0, size, size)
    if not (0 <= top < bottom <= size and 0 <= left < right <= size):
        raise GanRewriteError(f"`--box` must be top,left,bottom,right inside {size}×{size}, got {args.box}.")
    mask[top:bottom, left:right] = 1
    if args.mode == "add":
        quantiles = compute_quantiles(G, args.layer, args.n, truncation=args.truncation)
        value: Any = quantiles.at(args.quantile)
    else:
        value = 0.0
    before = G.sample(args.seeds, args.truncation)
    after = paint(G, args.layer, args.seeds, units, mask, value=value, truncation=args.truncation)
    save_image(image_grid(torch.cat([before, after]), nrow=len(args.seeds)), args.out)
    print(f"painted ({args.mode}) {len(units)} unit(s) of {args.layer} in box {top},{left},{bottom},{right} on "
          f"{len(args.seeds)} samples → {args.out} (row 1 before, row 2 after)")  # fmt: skip
    return 0


def _common(parser: argparse.ArgumentParser, positive_int: Any, truncation: Any) -> None:
    parser.add_argument("model", help=MODEL_HELP)
    parser.add_argument("--layer", required=True, help="the layer whose units (output channels) to use, e.g. layer4")
    parser.add_argument("--truncation", type=truncation, default=None)
    parser.add_argument("--revision", default=None, help="Hub branch, tag or commit sha of the model")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: auto)")


def _unit_choice(parser: argparse.ArgumentParser, positive_int: Any) -> None:
    parser.add_argument("--units", type=_units_arg, default=None, help="unit numbers, e.g. 3,17,42")
    parser.add_argument("--concept", default=None, help="…or the top units of this concept in --dissection")
    parser.add_argument("--dissection", default=None, help="dissection.json written by `gan-rewrite dissect`")
    parser.add_argument("--top", type=positive_int, default=20, help="how many top units of --concept (default 20)")


def add_commands(commands: Any) -> None:
    """Add ``dissect``, ``ablate`` and ``paint`` to the ``gan-rewrite`` sub-command parser."""
    from ..cli import _positive_int, _truncation, parse_seeds

    dissect = commands.add_parser(
        "dissect", help="which units of a layer draw which concept: an HTML report (quantiles work under torchrun)",
        epilog="Concepts come from the toy-world segmenter (default) or from --masks, a JSON file of painted masks: "
        '{"glasses": [{"seed": 3, "box": [top, left, bottom, right]}, {"seed": 8, "mask": "rle:64x64:…"}]}.',
    )  # fmt: skip
    _common(dissect, _positive_int, _truncation)
    dissect.add_argument("--out", required=True, help="the report folder (index.html, units/*.png, dissection.json)")
    dissect.add_argument("--masks", default=None, help="painted concept masks (JSON); default: the toy-world segmenter")
    dissect.add_argument("-n", "--n", "--num-samples", dest="n", type=_positive_int, default=1000,
                         help="samples of the activation quantiles (default 1000)")  # fmt: skip
    dissect.add_argument("--per-sample", type=_positive_int, default=64, help="locations kept per sample (default 64)")
    dissect.add_argument("--samples", type=_positive_int, default=200, help="segmented samples to score (default 200)")
    dissect.add_argument("--seed", type=int, default=0, help="first seed of the segmented samples (default 0)")
    dissect.add_argument("--levels", type=_levels_arg, default=DEFAULT_LEVELS,
                         help="firing thresholds tried, as quantile levels (default 0.8,0.9,0.95,0.98,0.99,0.995)")
    dissect.add_argument("--top", type=_positive_int, default=8, help="units listed per concept (default 8)")
    dissect.add_argument("--batch-size", type=_positive_int, default=None)
    dissect.add_argument("--no-cache", action="store_true", help="neither read nor write the quantile cache")
    dissect.set_defaults(run=cmd_dissect)

    ablate = commands.add_parser("ablate", help="a rule that switches units of a layer off (a rule on the next layer)")
    _common(ablate, _positive_int, _truncation)
    _unit_choice(ablate, _positive_int)
    ablate.add_argument("--out", required=True, help="the rule file to write, e.g. no-trees.safetensors")
    ablate.set_defaults(run=cmd_ablate)

    paint = commands.add_parser("paint", help="GANPaint: set units inside a box to a high activation (or zero)")
    _common(paint, _positive_int, _truncation)
    _unit_choice(paint, _positive_int)
    paint.add_argument("--seeds", type=parse_seeds, default=parse_seeds("0-7"), help="e.g. 0-7")
    paint.add_argument("--box", type=_box_arg, default=None, help="top,left,bottom,right in pixels (default: all)")
    paint.add_argument("--mode", choices=("add", "remove"), default="add", help="add the concept or remove it")
    paint.add_argument("--quantile", type=float, default=0.99, help="the activation level painted in (default 0.99)")
    paint.add_argument("-n", "--n", dest="n", type=_positive_int, default=1000, help="samples of the quantiles")
    paint.add_argument("--out", required=True, help="before/after grid, e.g. paint.png")
    paint.set_defaults(run=cmd_paint)


