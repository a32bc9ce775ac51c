"""The ``gan-rewrite`` command: a thin layer over the library; each sub-command is one function."""

from __future__ import annotations

import argparse
import logging
import re
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from .errors import GanRewriteError

logger = logging.getLogger("gan_rewrite.cli")


def parse_seeds(text: str) -> list[int]:
    """``"0-7"``, ``"0,3,5"`` or ``"0-3,10"`` → a list of seeds (ranges inclusive)."""
    seeds: list[int] = []
    for part in text.split(","):
        part = part.strip()
        if re.fullmatch(r"\d+-\d+", part):
            low, high = (int(x) for x in part.split("-"))
            seeds.extend(range(low, high + 1))
        elif re.fullmatch(r"\d+", part):
            seeds.append(int(part))
        else:
            seeds = []
            break
    if not seeds:
        raise argparse.ArgumentTypeError(
            f"invalid seeds {text!r}; use a range like 0-7, a list like 0,3,5, or both: 0-3,10"
        )
    return seeds


def _truncation(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"--truncation must be in [0, 1], got {text}")
    return value


# ----- sub-commands ------------------------------------------------------------------------------------
def cmd_convert(args: argparse.Namespace) -> int:
    from .hub.convert import convert_checkpoint

    overrides = {"resolution": args.size} if args.size else {}
    generator = convert_checkpoint(args.src, format=args.format, **overrides)
    generator.save_pretrained(args.out_dir)
    print(f"converted {args.src} ({args.format}, {generator.config.architecture} "
          f"{generator.config.resolution}px, layers {generator.layer_names[0]}..{generator.layer_names[-1]}) "
          f"→ {args.out_dir}")
    return 0


def cmd_sample(args: argparse.Namespace) -> int:
    from .hub.loading import load_generator
    from .imaging import image_grid, save_image

    generator = load_generator(args.model, revision=args.revision, device=args.device)
    start = time.perf_counter()
    images = generator.sample(args.seeds, args.truncation, batch_size=args.batch_size, progress=True)
    elapsed = time.perf_counter() - start
    save_image(image_grid(images, nrow=args.nrow), args.out)
    print(f"wrote {len(args.seeds)} samples of {args.model} to {args.out} "
          f"({1000 * elapsed / len(args.seeds):.1f} ms per image on {generator.device})")
    return 0


def cmd_push(args: argparse.Namespace) -> int:
    from .hub.loading import load_folder

    path = Path(args.path)
    if not path.is_dir():
        raise GanRewriteError(f"{args.path!r} is not a model folder; `push` uploads a folder written by "
                              "`convert` or `apply`.")
    generator = load_folder(path)
    info = generator.push_to_hub(args.repo_id, private=args.private, token=args.token,
                                 commit_message=args.message, revision=args.revision)
    print(f"pushed {args.path} to {args.repo_id} (commit {info.oid})")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from .hub.convert import FORMATS

    parser = argparse.ArgumentParser(prog="gan-rewrite", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    commands = parser.add_subparsers(dest="command", required=True)

    convert = commands.add_parser("convert", help="convert a legacy checkpoint into a model folder")
    convert.add_argument("src", help="the checkpoint file (.pt / .pth / .tar)")
    convert.add_argument("out_dir", help="the model folder to write")
    convert.add_argument("--format", required=True, choices=sorted(FORMATS))
    convert.add_argument("--size", type=int, help="resolution, when it cannot be read off the weights")
    convert.set_defaults(run=cmd_convert)

    sample = commands.add_parser("sample", help="write a grid of samples to an image file")
    sample.add_argument("model", help="Hub repo id, model folder, or known name (e.g. dcgan-faces-64)")
    sample.add_argument("--seeds", type=parse_seeds, default=parse_seeds("0-7"), help="e.g. 0-7 or 0,3,5")
    sample.add_argument("--out", required=True, help="output image, e.g. grid.png")
    sample.add_argument("--truncation", type=_truncation, default=None)
    sample.add_argument("--nrow", type=int, default=None, help="images per row (default ≈ √N)")
    sample.add_argument("--batch-size", type=int, default=16)
    sample.add_argument("--revision", default=None, help="Hub branch, tag or commit sha")
    sample.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: auto)")
    sample.set_defaults(run=cmd_sample)

    push = commands.add_parser("push", help="upload a model folder to a Hub repo")
    push.add_argument("path", help="the model folder")
    push.add_argument("repo_id", help="owner/name")
    push.add_argument("--private", action="store_true", default=None)
    push.add_argument("--token", default=None)
    push.add_argument("--message", default=None, help="commit message")
    push.add_argument("--revision", default=None, help="branch to push to")
    push.set_defaults(run=cmd_push)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``gan-rewrite`` console script; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.run(args)
    except GanRewriteError as exc:
        print(f"gan-rewrite {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
