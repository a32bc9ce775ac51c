"""The ``gan-rewrite`` command: a thin layer over the library; each sub-command is one function."""

from __future__ import annotations

import argparse
import contextlib
import logging
import math
import os
import re
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import GanRewriteError, RuleError, RuleMismatchError, RuleNotFoundError, short_repr

if TYPE_CHECKING:
    from .models.base import GANGenerator

logger = logging.getLogger("gan_rewrite.cli")


# ----- argument types --------------------------------------------------------------------------------
MAX_SEEDS = 100_000  # seeds in one `--seeds` (images in one grid)
MAX_SEED = 2**63 - 1  # torch.Generator.manual_seed takes 64-bit values
MAX_NROW = 10_000


def parse_seeds(text: str) -> list[int]:
    """``"0-7"``, ``"0,3,5"`` or ``"0-3,10"`` → a list of seeds (ranges inclusive).

    At most :data:`MAX_SEEDS` seeds, each at most :data:`MAX_SEED`; both checked before any list is built.
    """
    seeds: list[int] = []
    count = 0
    for part in text.split(",")[: MAX_SEEDS + 1]:
        part = part.strip()
        if re.fullmatch(r"\d{1,30}-\d{1,30}", part):
            low, high = (int(x) for x in part.split("-"))
            count += max(0, high - low + 1)
            if high > MAX_SEED:
                raise argparse.ArgumentTypeError(f"seeds must be at most 2**63 - 1, got {high}")
            if count > MAX_SEEDS:
                raise argparse.ArgumentTypeError(f"at most {MAX_SEEDS} seeds at a time, got {text[:60]!r}")
            seeds.extend(range(low, high + 1))
        elif re.fullmatch(r"\d{1,30}", part):
            count += 1
            if int(part) > MAX_SEED:
                raise argparse.ArgumentTypeError(f"seeds must be at most 2**63 - 1, got {part}")
            if count > MAX_SEEDS:
                raise argparse.ArgumentTypeError(f"at most {MAX_SEEDS} seeds at a time, got {text[:60]!r}")
            seeds.append(int(part))
        else:
            seeds = []
            break
    if not seeds:
        raise argparse.ArgumentTypeError(
            f"invalid seeds {text[:60]!r}; use a range like 0-7, a list like 0,3,5, or both: 0-3,10"
        )
    return seeds


def parse_rule(text: str) -> tuple[str, float]:
    """``"PATH_OR_REPO[:SCALE]"`` → ``(source, scale)``; the scale defaults to 1.

    The text is split on its *last* ``':'`` only when what follows is a number, so ``C:\\rules\\r.safetensors``
    or ``owner/rule`` keep their colons; a local path that exists is always taken whole.

    Example:
        >>> parse_rule("rules/smile.safetensors:0.5")
        ('rules/smile.safetensors', 0.5)
        >>> parse_rule("owner/smile")
        ('owner/smile', 1.0)
    """
    if not text:
        raise argparse.ArgumentTypeError("empty rule; give a rule file, a folder, or a Hub repo id")
    try:
        if Path(text).expanduser().exists():
            return _not_a_spec(text), 1.0
    except (OSError, ValueError):  # too long or NUL: not a local path; what follows refuses it by name
        pass
    source, sep, tail = text.rpartition(":")
    if sep:
        try:
            scale = float(tail)
        except ValueError:
            repo_id = re.fullmatch(r"[\w.-]+/[\w.-]+", source)  # a Hub repo id holds no ':'
            rule_like = source.endswith(".safetensors") or Path(source).exists() or repo_id
            if "/" in tail or "\\" in tail or not rule_like:
                return _not_a_spec(text), 1.0  # a colon inside a path, e.g. C:\\rules\\r.safetensors
            raise argparse.ArgumentTypeError(
                f"the scale of rule {text!r} must be a number after the last ':' (e.g. {source}:0.5), got {tail!r}"
            ) from None
        if not source:
            raise argparse.ArgumentTypeError(f"rule {text!r} has a scale but no rule before the ':'")
        if not math.isfinite(scale):
            raise argparse.ArgumentTypeError(f"the scale of rule {text!r} must be a finite number, got {tail!r}")
        return _not_a_spec(source), scale
    return _not_a_spec(text), 1.0


def _not_a_spec(source: str) -> str:
    """``source``, unless it names a rule's spec (``rule.json``): that is the request, not the rule."""
    if source.lower().endswith(".json"):
        raise argparse.ArgumentTypeError(
            f"{source!r} is a rule spec (the request that makes a rule), not a rule; solve it into a rule first: "
            f"`gan-rewrite rewrite MODEL --spec {source} --out rule.safetensors`, then pass rule.safetensors"
        )
    return source


def _truncation(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"--truncation must be in [0, 1], got {text}")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _nrow(text: str) -> int:
    value = _positive_int(text)
    if value > MAX_NROW:
        raise argparse.ArgumentTypeError(f"--nrow must be at most {MAX_NROW}, got {text[:30]!r}")
    return value


def _check_output(path: str | None, flag: str, *, folder: bool = False) -> None:
    """Refuse an output path that cannot be written, before any work: a folder where a file is wanted (or the
    reverse), or a parent that is a file."""
    if path is None:
        return
    target = Path(path).expanduser()
    if not folder and target.is_dir():
        raise GanRewriteError(f"`{flag}` {path!r} is a folder; give a file name.")
    if folder and target.exists() and not target.is_dir():
        raise GanRewriteError(f"`{flag}` {path!r} is a file; give a folder.")
    for parent in target.parents:
        if parent.exists():
            if not parent.is_dir():
                raise GanRewriteError(f"`{flag}` {path!r} cannot be written: {str(parent)!r} is a file, not a folder.")
            break


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {text!r}")
    return value


# ----- rules on the command line ----------------------------------------------------------------------
def rule_file(source: str) -> Path:
    """The local ``rule.safetensors`` for a rule source: a file, a folder holding one, or a Hub repo id."""
    from .rewrite.delta import RULE_FILENAME, default_resolver

    path = Path(source).expanduser()
    try:
        if path.is_dir():
            path = path / RULE_FILENAME
        if path.is_file():
            return path
    except (OSError, ValueError):  # too long or NUL: not a local path
        pass
    resolver = default_resolver()
    if resolver is None:
        raise RuleNotFoundError(f"rule {source!r} is not a rule file or a folder holding {RULE_FILENAME}.")
    path = Path(resolver(source, None))
    if path.is_dir():
        path = path / RULE_FILENAME
    if not path.is_file():
        raise RuleNotFoundError(f"rule {source!r} could not be resolved to a file.")
    return path


def load_rules(
    G: GANGenerator, rules: Sequence[tuple[str, float]], *, force: bool, force_flag: str
) -> list[dict[str, Any]]:
    """Load ``(source, scale)`` rules onto ``G``; returns one provenance record per rule.

    Raises:
        RuleMismatchError: a rule was made for another base weight and ``force`` is false (the message names
            ``force_flag``), or does not fit the layer's shape.
    """
    from .hashing import file_sha256, tensor_sha256
    from .rewrite.delta import RULE_FILENAME, RuleDelta

    records: list[dict[str, Any]] = []
    taken: set[str] = {rule.name for rule in G.active_rules}
    for source, scale in rules:
        path = rule_file(source)
        delta = RuleDelta.load(path)
        here = Path(source)
        stem = (here.parent.name if here.name == RULE_FILENAME else here.name).removesuffix(".safetensors") or "rule"
        name, k = stem, 2
        while name in taken:
            name, k = f"{stem}-{k}", k + 1
        taken.add(name)
        mismatched = [
            layer
            for layer, part in delta.layers.items()
            if layer in G.layer_names and tensor_sha256(G.original_layer_weight(layer)) != part.base_layer_sha256
        ]
        if mismatched and not force:
            raise RuleMismatchError(
                f"rule {source!r} was made for another model ({delta.base_model or 'unknown'!r}): the weight "
                f"of {', '.join(mismatched)} it was solved against differs from this model's. Pass `{force_flag}` "
                "to load it anyway."
            )
        G.load_rule(delta, name=name, scale=scale, force=force)
        records.append(
            {
                "name": name,
                "source": source,
                "scale": scale,
                "rule_scale": delta.scale,
                "layers": delta.layer_names,
                "sha256": file_sha256(path),
                "base_model": delta.base_model,
                "method": delta.method,
            }
        )
    return records


# ----- torch.distributed -------------------------------------------------------------------------------
@contextlib.contextmanager
def distributed(device: str | None) -> Iterator[tuple[int, str | None]]:
    """Join the process group a launcher (``torchrun``) describes; yields ``(rank, device)``.

    With ``WORLD_SIZE`` > 1 in the environment and no group yet, the group is initialised (NCCL when the
    ranks run on CUDA, else Gloo) and destroyed on exit. Without it this is a no-op yielding rank 0.
    On CUDA each rank takes the GPU of its ``LOCAL_RANK`` (for ``device`` ``None`` or ``"cuda"``).

    Example:
        ``torchrun --nproc_per_node=2 -m gan_rewrite.cli stats dcgan-faces-64 --layer layer3 -n 1000``
    """
    import torch
    import torch.distributed as dist

    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 or not dist.is_available() or dist.is_initialized():
        yield (dist.get_rank() if dist.is_available() and dist.is_initialized() else 0), device
        return
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    wants_gpu = torch.cuda.is_available() if device is None else torch.device(device) == torch.device("cuda")
    if wants_gpu:  # one GPU per rank; an explicit `cuda:N` is taken as given
        if local_rank >= torch.cuda.device_count():
            raise GanRewriteError(
                f"local rank {local_rank} has no GPU of its own ({torch.cuda.device_count()} visible): start at most "
                "that many processes per node (--nproc_per_node), or pass `--device cpu`."
            )
        device = f"cuda:{local_rank}"
    on_cuda = device is not None and torch.device(device).type == "cuda"
    if on_cuda:
        torch.cuda.set_device(torch.device(device))
    dist.init_process_group(backend="nccl" if on_cuda else "gloo")
    try:
        yield dist.get_rank(), device or "cpu"
    finally:
        dist.destroy_process_group()


# ----- sub-commands ------------------------------------------------------------------------------------
def cmd_convert(args: argparse.Namespace) -> int:
    from .hub.convert import convert_checkpoint

    _check_output(args.out_dir, "OUT_DIR", folder=True)
    overrides = {"resolution": args.size} if args.size else {}
    generator = convert_checkpoint(args.src, format=args.format, **overrides)
    generator.save_pretrained(args.out_dir)
    print(
        f"converted {args.src} ({args.format}, {generator.config.architecture} "
        f"{generator.config.resolution}px, layers {generator.layer_names[0]}..{generator.layer_names[-1]}) "
        f"→ {args.out_dir}"
    )
    return 0


def cmd_sample(args: argparse.Namespace) -> int:
    from .hub.loading import load_generator
    from .imaging import image_format, image_grid, save_image

    _check_output(args.out, "--out")
    try:
        image_format(args.out)  # before any work
    except ValueError as err:
        raise GanRewriteError(f"`--out`: {err}") from None
    generator = load_generator(args.model, revision=args.revision, device=args.device)
    records = load_rules(generator, args.rule, force=args.rule_force, force_flag="--rule-force")
    start = time.perf_counter()
    images = generator.sample(args.seeds, args.truncation, batch_size=args.batch_size, progress=True)
    elapsed = time.perf_counter() - start
    save_image(image_grid(images, nrow=args.nrow), args.out)
    with_rules = "".join(f", rule {r['name']} × {r['scale']:g}" for r in records)
    print(
        f"wrote {len(args.seeds)} samples of {args.model}{with_rules} to {args.out} "
        f"({1000 * elapsed / len(args.seeds):.1f} ms per image on {generator.device})"
    )
    return 0


def cmd_stats(args: argparse.Namespace) -> int:
    from .hub.loading import load_generator
    from .rewrite.rewriter import Rewriter
    from .rewrite.stats import cache_path, default_cache_dir, model_sha256

    _check_output(args.out, "--out")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    with distributed(args.device) as (rank, device):
        generator = load_generator(args.model, revision=args.revision, device=device)
        rewriter = Rewriter(generator, args.layer, truncation=args.truncation)  # LayerError on an unknown layer
        cached = None
        if not args.no_cache and world == 1:  # a distributed run never reads the cache
            cached = cache_path(
                default_cache_dir(), model_sha256(generator), args.layer, args.n, args.truncation, args.seed
            )
            cached = cached if cached.is_file() else None
        start = time.perf_counter()
        # Through the Rewriter: the local cache, then statistics pushed beside a Hub model, then computing.
        stats = rewriter.compute_stats(
            args.n, args.batch_size, seed=args.seed, use_cache=not args.no_cache, progress=True
        )
        elapsed = time.perf_counter() - start
        if rank != 0:
            return 0
        where = "not saved (--no-cache and no --out)" if args.no_cache else "the cache"
        if args.out:
            stats.save(args.out)
            where = args.out
        if cached is not None:
            speed = f"read from the cache {cached}"
        else:
            speed = f"{args.n / elapsed:.1f} samples/s" + (f" on {world} processes" if world > 1 else "")
        print(
            f"key statistics of {args.model} at {stats.layer}: n={stats.n} samples, count={stats.count} keys "
            f"of dim {stats.dim} ({speed}) → {where}"
        )
    return 0


def cmd_rewrite(args: argparse.Namespace) -> int:
    from .hub.loading import load_generator
    from .rewrite.rewriter import solve_spec
    from .rewrite.spec import check_spec, read_spec
    from .rewrite.stats import KeyStats

    _check_output(args.out, "--out")
    spec = read_spec(args.spec)
    stats = KeyStats.load(args.stats) if args.stats else None
    generator = load_generator(args.model, revision=args.revision, device=args.device)
    if spec["layer"] != "auto":
        generator.layer_index(spec["layer"])  # LayerError naming the model's layers, before any work
    try:
        check_spec(spec, resolution=generator.resolution)
    except RuleError as err:
        raise RuleError(f"spec {args.spec!r} does not fit {args.model}: {err}") from err
    planned = spec
    if "method" not in spec:  # a request without a solve gets the library's default for this model
        from .rewrite.rewriter import default_solver

        method, options = default_solver(generator)
        planned = {**spec, "method": method, "solver": options}
    if planned.get("method") in ("optimize", "learn"):
        print(optimize_estimate(generator, planned), file=sys.stderr)
    start = time.perf_counter()
    # A model from the Hub records the exact commit it was loaded at; `--revision` may be a branch or tag.
    from_hub = getattr(generator, "hub_source", None) is not None
    revision = {"base_revision": args.revision} if args.revision and not from_hub else {}
    delta = solve_spec(generator, spec, stats=stats, progress=True, base_model=args.model, **revision)
    elapsed = time.perf_counter() - start
    path = delta.save(args.out)
    layer = delta.layer_names[0]
    part = delta.layers[layer]
    note = "" if stats is not None else " (key statistics included)"
    chosen = " (chosen by layer='auto')" if spec["layer"] == "auto" else ""
    print(
        f"solved a rank-{part.rank} {delta.method} rule at {layer}{chosen} of {args.model} in {elapsed:.2f} s"
        f"{note} → {path}"
    )
    return 0


def optimize_estimate(generator: GANGenerator, spec: dict[str, Any]) -> str:
    """A rough time for solving ``spec`` with the optimiser, from one timed forward pass of its examples.

    A step of the optimiser runs the generator forward and back on the examples (about three forward passes
    with ``loss="image"``, less with the default layer loss); it stops early when the loss settles. A step of
    ``method="learn"`` does the same on one batch of its samples, and runs every step.
    """
    from .rewrite.learn import BATCH_SIZE, PASSES, SAMPLES

    solver = spec.get("solver") or {}
    learn = spec.get("method") == "learn"
    batch = int(solver.get("batch_size", BATCH_SIZE))
    if learn and solver.get("steps") is None:  # every goal sample seen PASSES times
        main = (spec.get("erase") or spec.get("paste") or {}).get("seed")
        contexts = {item.get("seed") for item in spec.get("context") or [] if isinstance(item, dict)} - {main}
        goals = 1 + len(contexts) + int(solver.get("samples", SAMPLES))
        steps = PASSES * math.ceil(goals / batch)
    else:
        steps = int(solver.get("steps") or 1000)
    seeds = [item["seed"] for key in ("copy", "paste", "erase") if isinstance(item := spec.get(key), dict)
             and isinstance(item.get("seed"), int)] or [0]  # fmt: skip
    if solver.get("targets") == "contexts":  # the copy is pasted on every context sample as well
        seeds += [item["seed"] for item in spec.get("context") or [] if isinstance(item, dict)
                  and isinstance(item.get("seed"), int)]  # fmt: skip
    if learn:  # one batch of samples per step
        seeds = list(range(batch))
    generator.sample(seeds[:1])  # warm-up
    start = time.perf_counter()
    generator.sample(seeds)
    forward = time.perf_counter() - start
    total = 3 * forward * steps
    rough = f"{total:.0f} s" if total < 120 else f"{total / 60:.0f} min"
    return (
        f"solving with the optimiser: {'' if learn else 'up to '}{steps} steps, roughly {rough} on {generator.device} "
        f"(one forward pass of {len(seeds)} sample(s) took {1000 * forward:.0f} ms; a step costs about three"
        f"{'' if learn else '; it may stop early'}). "
        "The bounded solve (`\"method\": \"bounded\"`) takes about a second."
    )


def cmd_score(args: argparse.Namespace) -> int:
    """Print the leave-one-out generalisation score of a request's context per layer, and the advice."""
    from .hub.loading import load_generator
    from .rewrite.rewriter import Rewriter
    from .rewrite.spec import check_spec, read_spec

    spec = read_spec(args.spec)
    generator = load_generator(args.model, revision=args.revision, device=args.device)
    try:
        check_spec(spec, resolution=generator.resolution)
    except RuleError as err:
        raise RuleError(f"spec {args.spec!r} does not fit {args.model}: {err}") from err
    rewriter = Rewriter.from_spec(generator, spec)
    wanted = spec.get("stats") or {}
    rewriter.compute_stats(n=args.n or int(wanted.get("n", 1000)), seed=int(wanted.get("seed", 0)), progress=True)
    layers = [name.strip() for name in args.layers.split(",")] if args.layers else None
    print(rewriter.score(layers, progress=True))
    return 0


def cmd_apply(args: argparse.Namespace) -> int:
    from .hub.loading import load_generator

    _check_output(args.out, "--out", folder=True)
    out = Path(args.out)
    model_path = Path(args.model).expanduser()
    if model_path.is_dir() and out.exists() and out.resolve() == model_path.resolve():
        raise GanRewriteError(f"`--out` {args.out!r} is the model folder itself; write the new model elsewhere.")
    generator = load_generator(args.model, revision=args.revision, device=args.device)
    records = load_rules(generator, args.rules, force=args.force, force_flag="--force")
    generator.fuse_rules()
    extra = generator.config.extra
    base_name = extra.get("name") or args.model
    applied = [*extra.get("applied_rules", []), *records]
    extra.update(
        {
            "name": out.resolve().name,
            "derived_from": args.model + (f"@{args.revision}" if args.revision else ""),
            "applied_rules": applied,
            "description": (
                f"{base_name} with the gan-rewrite rule(s) "
                f"{', '.join(r['name'] for r in applied)} fused into its weights."
            ),
        }
    )
    extra["provenance"] = {
        **(extra.get("provenance") or {}),
        "rules applied": "; ".join(
            f"{r['name']} × {r['scale']:g} from {r['source']} (sha256 {r['sha256'][:16]}…)" for r in applied
        ),
    }
    generator.save_pretrained(out)
    summary = ", ".join(f"{r['name']} × {r['scale']:g}" for r in records)
    print(f"fused {len(records)} rule(s) ({summary}) into {args.model} → {out}")
    return 0


def cmd_push(args: argparse.Namespace) -> int:
    from .hub.loading import load_folder, load_generator
    from .hub.mixin import CONFIG_NAME
    from .rewrite.delta import RULE_FILENAME, RuleDelta

    path = Path(args.path)
    is_rule = (path.is_file() and path.suffix == ".safetensors") or (
        path.is_dir() and (path / RULE_FILENAME).is_file() and not (path / CONFIG_NAME).is_file()
    )
    if is_rule:
        delta = RuleDelta.load(path)
        generator = load_generator(args.model, device=args.device, token=args.token) if args.model else None
        preview = {"preview_seeds": None} if args.no_preview else {}
        info = delta.push_to_hub(
            args.repo_id,
            generator=generator,
            private=args.private,
            token=args.token,
            commit_message=args.message,
            revision=args.revision,
            **preview,
        )
        print(f"pushed rule {args.path} ({', '.join(delta.layer_names)}) to {args.repo_id} (commit {info.oid})")
        return 0
    if not path.is_dir():
        raise GanRewriteError(
            f"{args.path!r} is neither a model folder nor a rule; `push` uploads a folder "
            "written by `convert` or `apply`, a rule file, or a folder holding rule.safetensors."
        )
    generator = load_folder(path)
    info = generator.push_to_hub(
        args.repo_id, private=args.private, token=args.token, commit_message=args.message, revision=args.revision
    )
    print(f"pushed {args.path} to {args.repo_id} (commit {info.oid})")
    return 0


MODEL_HELP = "Hub repo id, model folder, or known name (e.g. dcgan-faces-64)"
DEVICE_HELP = "cpu, cuda, cuda:1 ... (default: auto)"
REVISION_HELP = "Hub branch, tag or commit sha of the model"


def cmd_demo(args: argparse.Namespace) -> int:
    """Launch the Gradio Space (``spaces/rewrite/app.py`` of the repository checkout) locally."""
    import importlib.util

    app_path = Path(__file__).resolve().parents[1] / "spaces" / "rewrite" / "app.py"
    if not app_path.is_file():
        print(f"gan-rewrite demo: error: the Space's app is not at {app_path}; run from a checkout of the "
              "repository (pip install -e '.[demo]').", file=sys.stderr)  # fmt: skip
        return 2
    if importlib.util.find_spec("gradio") is None:
        print("gan-rewrite demo: error: gradio is not installed; pip install 'gan-rewrite[demo]'.", file=sys.stderr)
        return 2
    spec = importlib.util.spec_from_file_location("gan_rewrite_space_app", app_path)
    app = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(app)
    # Run on the user's machine: model folders there may be loaded (a hosted Space refuses local paths).
    argv = ["--model", args.model, "--allow-local-models", *(["--port", str(args.port)] if args.port else [])]
    argv += ["--share"] if args.share else []
    app.main(argv)
    return 0


def cmd_rules(args: argparse.Namespace) -> int:
    """List the rule repos on the Hub made for a model, newest first."""
    from .hub.listing import list_rules

    found = list_rules(args.model, limit=args.limit, token=args.token)
    if not found:
        print(f"no rules for {args.model} on the Hub yet; make one and share it with `gan-rewrite push`.")
        return 0
    for rule in found:
        when = rule.last_modified.strftime("%Y-%m-%d %H:%M") if rule.last_modified else "?"
        print(f"{rule.repo_id}  ({when})  {rule.description or '(no description)'}")
        if rule.preview_url:
            print(f"    preview: {rule.preview_url}")
    print(f"load one with: gan-rewrite sample {args.model} --rule OWNER/NAME --out grid.png")
    return 0


def cmd_space_push(args: argparse.Namespace) -> int:
    """Create or update a Hugging Face Space running the rewriting app."""
    from .hub.space_repo import DEFAULT_MODELS, push_space

    models = args.model or list(DEFAULT_MODELS)
    info = push_space(args.repo_id, models=models, hardware=args.hardware, private=args.private, token=args.token)
    print(f"pushed the Space {args.repo_id} offering {', '.join(models)} (commit {info.oid})")
    return 0


def add_rules_and_space_commands(commands: Any) -> None:
    """The ``rules`` and ``space push`` sub-commands."""
    rules = commands.add_parser("rules", help="list the rules shared on the Hub for a model, newest first")
    rules.add_argument("model", help="the base model: a known name (e.g. dcgan-faces-64) or a Hub repo id")
    rules.add_argument("--limit", type=_positive_int, default=20, help="at most this many (default 20)")
    rules.add_argument("--token", default=None, help="Hub token (also lists your private rules)")
    rules.set_defaults(run=cmd_rules)

    space = commands.add_parser("space", help="publish the rewriting app as a Hugging Face Space")
    space_commands = space.add_subparsers(dest="space_command", required=True)
    push = space_commands.add_parser("push", help="create or update a Space with the app and its models")
    push.add_argument("repo_id", help="the Space, owner/name")
    push.add_argument(
        "--model", action="append", default=None, help="a model it offers (repeatable; the first opens; "
        "default dcgan-faces-64 and toyworld-stylegan2-64): a known name or a Hub repo id",
    )  # fmt: skip
    push.add_argument("--hardware", default=None, help="Space hardware, e.g. cpu-basic, t4-small, zero-a10g")
    push.add_argument("--private", action="store_true", default=None, help="make a new Space private")
    push.add_argument("--token", default=None, help="Hub write token (default: the logged-in one)")
    push.set_defaults(run=cmd_space_push)


def cmd_train_toyworld(args: argparse.Namespace) -> int:
    """Train (or resume training) the toy-world StyleGAN2 for a time-boxed slice; export the model folder."""
    from .toyworld.train import TrainConfig, Trainer, export_model

    folder = Path(args.checkpoint)
    if (folder / "state.json").is_file():
        trainer = Trainer.resume(folder, args.device, batch_size=args.batch_size)
        print(f"resuming at step {trainer.step} ({trainer.step * trainer.config.batch_size} images so far)")
    else:
        trainer = Trainer.create(TrainConfig(**({"batch_size": args.batch_size} if args.batch_size else {})),
                                 args.device)
    trainer.train(minutes=args.minutes, steps=args.steps, folder=folder)
    print(f"checkpoint at step {trainer.step} in {folder}")
    if args.out:
        export_model(trainer, args.out)
        print(f"model folder written to {args.out}")
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
    sample.add_argument("model", help=MODEL_HELP)
    sample.add_argument("--seeds", type=parse_seeds, default=parse_seeds("0-7"), help="e.g. 0-7 or 0,3,5")
    sample.add_argument("--out", required=True, help="output image, e.g. grid.png")
    sample.add_argument("--truncation", type=_truncation, default=None)
    sample.add_argument("--nrow", type=_nrow, default=None, help="images per row (default ≈ √N)")
    sample.add_argument("--batch-size", type=_positive_int, default=16)
    sample.add_argument(
        "--rule",
        type=parse_rule,
        action="append",
        default=[],
        metavar="PATH_OR_REPO[:SCALE]",
        help="load a rule before sampling (repeatable); SCALE defaults to 1",
    )
    sample.add_argument(
        "--rule-force", action="store_true", help="load rules even if they were made for a different base weight"
    )
    sample.add_argument("--revision", default=None, help=REVISION_HELP)
    sample.add_argument("--device", default=None, help=DEVICE_HELP)
    sample.set_defaults(run=cmd_sample)

    stats = commands.add_parser(
        "stats",
        help="compute the key statistics of a layer (works under torchrun)",
        epilog="Under torchrun every process takes a share of the seeds, e.g. `torchrun --nproc_per_node=2 -m "
        "gan_rewrite.cli stats MODEL --layer layer3 -n 1000 --out stats.safetensors` (write `-n`: torchrun "
        "rejects `--n` as an abbreviation of its own options); only rank 0 writes and prints.",
    )
    stats.add_argument("model", help=MODEL_HELP)
    stats.add_argument("--layer", required=True, help="the layer, e.g. layer3")
    # `-n` / `--num-samples` for torchrun, whose own parser rejects `--n` as an ambiguous abbreviation.
    stats.add_argument(
        "-n",
        "--n",
        "--num-samples",
        dest="n",
        type=_positive_int,
        default=1000,
        help="number of samples (default 1000)",
    )
    stats.add_argument(
        "--batch-size",
        type=_positive_int,
        default=None,
        help="samples per forward pass (default 64 on the CPU, 256 on CUDA)",
    )
    stats.add_argument("--truncation", type=_truncation, default=None)
    stats.add_argument("--seed", type=_non_negative_int, default=0, help="first seed (default 0)")
    stats.add_argument("--out", default=None, help="also write them to this file (e.g. stats.safetensors)")
    stats.add_argument("--no-cache", action="store_true", help="neither read nor write the statistics cache")
    stats.add_argument("--revision", default=None, help=REVISION_HELP)
    stats.add_argument("--device", default=None, help=DEVICE_HELP)
    stats.set_defaults(run=cmd_stats)

    rewrite = commands.add_parser("rewrite", help="solve a rule from a spec (JSON, see docs/spec.md)")
    rewrite.add_argument("model", help=MODEL_HELP)
    rewrite.add_argument("--spec", required=True, help="the request, e.g. rule.json as the Space saves it")
    rewrite.add_argument("--out", required=True, help="the rule file to write, e.g. rule.safetensors")
    rewrite.add_argument(
        "--stats",
        default=None,
        help="key statistics file to use (default: computed with the spec's n and seed, cached)",
    )
    rewrite.add_argument(
        "--revision",
        default=None,
        help=REVISION_HELP + "; recorded in the rule (for a Hub model: the commit it resolves to)",
    )
    rewrite.add_argument("--device", default=None, help=DEVICE_HELP)
    rewrite.set_defaults(run=cmd_rewrite)

    score = commands.add_parser(
        "score",
        help="how well a request's context generalises, per layer (leave one context example out)",
        description="Leave each context example out in turn, build the rule's direction from the others and "
        "measure (AUC) how well it singles out the left-out example's region among every place of 64 other "
        "samples. Prints the score per layer, the layer `layer=\"auto\"` would pick, and one line of advice.",
    )
    score.add_argument("model", help=MODEL_HELP)
    score.add_argument("--spec", required=True, help="the request (JSON, see docs/spec.md)")
    score.add_argument("--layers", default=None, help="comma-separated layers (default: the auto candidates)")
    score.add_argument("-n", "--num-samples", dest="n", type=_positive_int, default=None, help="statistics samples")
    score.add_argument("--revision", default=None, help=REVISION_HELP)
    score.add_argument("--device", default=None, help=DEVICE_HELP)
    score.set_defaults(run=cmd_score)

    apply = commands.add_parser("apply", help="fuse rules into a new model folder")
    apply.add_argument("model", help=MODEL_HELP)
    apply.add_argument(
        "rules",
        nargs="+",
        type=parse_rule,
        metavar="RULE[:SCALE]",
        help="rule files, folders or Hub repo ids; SCALE defaults to 1",
    )
    apply.add_argument("--out", required=True, help="the model folder to write")
    apply.add_argument(
        "--force", action="store_true", help="apply rules even if they were made for a different base weight"
    )
    apply.add_argument("--revision", default=None, help=REVISION_HELP)
    apply.add_argument("--device", default=None, help=DEVICE_HELP)
    apply.set_defaults(run=cmd_apply)

    push = commands.add_parser("push", help="upload a model folder or a rule to a Hub repo")
    push.add_argument("path", help="a model folder, a rule file, or a folder holding rule.safetensors")
    push.add_argument("repo_id", help="owner/name")
    push.add_argument("--private", action="store_true", default=None)
    push.add_argument("--token", default=None)
    push.add_argument("--message", default=None, help="commit message")
    push.add_argument("--revision", default=None, help="branch to push to")
    push.add_argument(
        "--model", default=None, help="for a rule: the model that renders its preview (default: the rule's base model)"
    )
    push.add_argument("--no-preview", action="store_true", help="for a rule: upload no preview.png")
    push.add_argument("--device", default=None, help=DEVICE_HELP + "; for the preview")
    push.set_defaults(run=cmd_push)

    demo = commands.add_parser("demo", help="open the rewriting app (the Gradio Space) in the browser")
    demo.add_argument("--model", default="dcgan-faces-64", help=MODEL_HELP)
    demo.add_argument("--port", type=_positive_int, default=None, help="port (default: gradio's, 7860)")
    demo.add_argument("--share", action="store_true", help="also open a public gradio.live link")
    demo.set_defaults(run=cmd_demo)
    add_rules_and_space_commands(commands)

    train = commands.add_parser(
        "train-toyworld", help="train or resume the toy-world StyleGAN2 for a time-boxed slice (CPU or CUDA)"
    )
    train.add_argument("checkpoint", help="training checkpoint folder (resumed when it holds state.json)")
    train.add_argument("--minutes", type=float, default=None, help="wall-clock length of this slice")
    train.add_argument("--steps", type=_positive_int, default=None, help="or: number of steps in this slice")
    train.add_argument("--batch-size", type=_positive_int, default=None, help="images per step (default 32)")
    train.add_argument("--out", default=None, help="also export the averaged generator as a model folder here")
    train.add_argument("--device", default=None, help=DEVICE_HELP)
    train.set_defaults(run=cmd_train_toyworld)

    from .dissect.cli import add_commands as add_dissect_commands  # dissect, ablate, paint

    add_dissect_commands(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``gan-rewrite`` console script; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    try:
        return args.run(args)
    except GanRewriteError as exc:
        print(f"gan-rewrite {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # read-only or full disk, a folder where a file goes, a name too long, ...
        where = f" ({short_repr(exc.filename, 200)})" if getattr(exc, "filename", None) else ""
        print(f"gan-rewrite {args.command}: error: {exc.strerror or exc}{where}.", file=sys.stderr)
        return 1
    except (RecursionError, MemoryError) as exc:
        print(f"gan-rewrite {args.command}: error: the input is too large or too deeply nested "
              f"({type(exc).__name__}).", file=sys.stderr)  # fmt: skip
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
