"""Rule specs: the JSON request behind every rule (``Rewriter.spec()``, a rule repo's ``rule.json``).

Checked here, in one place, for the library, the CLI and the Space: fields, types and mask codes, each
error naming the field (``docs/spec.md`` documents the format).
"""

from __future__ import annotations

import inspect
import json
import math
import os
from pathlib import Path
from typing import Any

from ..errors import RuleError, RuleNotFoundError, short_repr

MAX_SEED = 2**63 - 1  # seeds go to torch.Generator.manual_seed, which takes 64-bit values
# Ceilings on every count a spec carries, checked before any work (docs/spec.md lists them).
MAX_STATS_N = 1_000_000  # samples of the key statistics (10k is plenty; 1M takes hours at 256px)
MAX_CONTEXT = 64  # context examples
MAX_RANK = 1024  # rank of a rule (a layer has at most 1024 input channels here)
MAX_UNITS = 4096  # `erase.units` entries (channel indices)
MAX_SOLVER_INT = 100_000  # any integer solver option (`steps`, `project_every`, `patience`, ...)
MAX_MASK_CODE = 4 << 20  # characters in one mask code: a 1024² checkerboard needs ~2 MB
MAX_OFFSET = 8192  # |dy|, |dx| of `paste.offset`, in pixels
MAX_LAYERS = 64  # layers scored in `auto_layer` (a 1024px StyleGAN2 has 17)
MIN_DIRECTION_RIDGE, MAX_DIRECTION_RIDGE = 1e-12, 1e6  # `direction_ridge`: beyond 1e6, D is k* itself

_SPEC_FIELDS = {
    "version",
    "layer",
    "auto_layer",
    "direction_ridge",
    "truncation",
    "context",
    "copy",
    "paste",
    "erase",
    "region",
    "stats",
    "rank",
    "method",
    "solver",
}


def read_spec(path: str | os.PathLike) -> dict[str, Any]:
    """Read and check a rule spec (the JSON of ``Rewriter.spec()`` / a rule's ``rule.json``).

    Only the form is checked here (fields, types, mask codes); whether the layer exists and the masks fit
    the model is checked when the request is rebuilt on the model.

    Raises:
        RuleNotFoundError: there is no such file.
        RuleError: the file is not JSON, or a field is missing, unknown or mistyped (the message names it).
    """
    path = Path(path)
    if not path.is_file():
        raise RuleNotFoundError(f"no spec file {str(path)!r}.")
    try:
        spec = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as err:  # ValueError: JSON, or a 5000-digit int
        raise RuleError(f"spec {str(path)!r} is not valid JSON: {err}") from err
    try:
        check_spec(spec)
    except RuleError as err:
        raise RuleError(f"spec {str(path)!r}: {err}") from err
    return spec


def check_spec(spec: Any, *, resolution: int | None = None) -> None:
    """Check the form of a rule spec (see ``docs/spec.md``); raises :class:`RuleError` naming the field.

    Args:
        spec: the parsed JSON.
        resolution: when given, every mask must be ``resolution × resolution`` (the model's image size).
    """
    from .context import decode_mask
    from .rewriter import SPEC_VERSION
    from .solve import CHOICES, CODE_OPTIONS, SOLVERS

    if not isinstance(spec, dict):
        raise RuleError(f"a spec must be a JSON object, got {type(spec).__name__}.")
    unknown = sorted(set(spec) - _SPEC_FIELDS)
    if unknown:
        raise RuleError(f"unknown field(s) {short_repr(unknown)}; a spec has {sorted(_SPEC_FIELDS)}.")
    if spec.get("version") != SPEC_VERSION:
        raise RuleError(f"field `version` must be {SPEC_VERSION}, got {short_repr(spec.get('version'))}.")
    if not isinstance(spec.get("layer"), str) or not spec["layer"]:
        raise RuleError(f"field `layer` must be a layer name (a string), got {short_repr(spec.get('layer'))}.")
    _check_number(spec, "truncation", "truncation", low=0.0, high=1.0, optional=True)

    def painted(value: Any, where: str, extra: frozenset[str] = frozenset()) -> None:
        if not isinstance(value, dict):
            raise RuleError(f"field `{where}` must be an object with `seed` and `mask`, got {short_repr(value)}.")
        unknown = sorted(set(value) - {"seed", "mask"} - extra)
        if unknown:
            raise RuleError(f"field `{where}` has unknown key(s) {short_repr(unknown)}.")
        _check_int(value, "seed", f"{where}.seed", high=MAX_SEED)
        if "mask" in value or "offset" not in extra:
            if not isinstance(value.get("mask"), str):
                raise RuleError(
                    f"field `{where}.mask` must be a mask code string, got {short_repr(value.get('mask'))}."
                )
            limit = MAX_MASK_CODE if resolution is None else min(MAX_MASK_CODE, 4 * resolution * resolution + 64)
            if len(value["mask"]) > limit:
                raise RuleError(
                    f"field `{where}.mask` is a {len(value['mask'])}-character code; at most {limit} are allowed "
                    "(checked before decoding)."
                )
            try:
                shape = tuple(decode_mask(value["mask"]).shape)
            except RuleError as err:
                raise RuleError(f"field `{where}.mask`: {err}") from err
            if resolution is not None and shape != (resolution, resolution):
                raise RuleError(
                    f"field `{where}.mask` is {shape[0]}×{shape[1]} but the model makes "
                    f"{resolution}×{resolution} images; masks have the image resolution."
                )

    context = spec.get("context") or []
    if not isinstance(context, list):
        raise RuleError(f"field `context` must be a list of {{seed, mask}} objects, got {short_repr(context)}.")
    if len(context) > MAX_CONTEXT:
        raise RuleError(f"field `context` has {len(context)} examples; at most {MAX_CONTEXT} are allowed.")
    for i, item in enumerate(context):
        painted(item, f"context[{i}]")
    if spec.get("copy") is not None:
        painted(spec["copy"], "copy")
    paste = spec.get("paste")
    if paste is not None:
        painted(paste, "paste", frozenset({"offset"}))
        if "mask" in paste and "offset" in paste:
            raise RuleError("field `paste` has both `mask` and `offset`; give one.")
        if "offset" in paste:
            offset = paste["offset"]
            if not (isinstance(offset, list) and len(offset) == 2 and all(_is_int(v) for v in offset)
                    and all(abs(v) <= MAX_OFFSET for v in offset)):
                raise RuleError(
                    f"field `paste.offset` must be two integers [dy, dx] within ±{MAX_OFFSET}, got "
                    f"{short_repr(offset)}."
                )
    erase = spec.get("erase")
    if erase is not None:
        painted(erase, "erase", frozenset({"units", "top_units"}))
        units = erase.get("units")
        if isinstance(units, list) and len(units) > MAX_UNITS:
            raise RuleError(f"field `erase.units` has {len(units)} entries; at most {MAX_UNITS} are allowed.")
        if units is not None and not (
            isinstance(units, list) and all(_is_int(u) and 0 <= u < MAX_UNITS for u in units)
        ):
            raise RuleError(
                f"field `erase.units` must be null or a list of channel indices (0 to {MAX_UNITS - 1}), got "
                f"{short_repr(units)}."
            )
        if erase.get("top_units") is not None:
            _check_int(erase, "top_units", "erase.top_units", low=1, high=MAX_UNITS)
            if units is not None:
                raise RuleError("field `erase` has both `units` and `top_units`; give one.")
    auto = spec.get("auto_layer")
    if auto is not None:
        scores = auto.get("scores") if isinstance(auto, dict) else None
        if (
            not isinstance(auto, dict)
            or set(auto) != {"scores"}
            or not isinstance(scores, dict)
            or len(scores) > MAX_LAYERS
            or not all(
                isinstance(k, str) and isinstance(v, (int, float)) and not isinstance(v, bool)
                for k, v in scores.items()
            )
        ):
            raise RuleError(
                f"field `auto_layer` must be null or {{\"scores\": {{layer: number}}}} (at most {MAX_LAYERS} "
                f"layers), got {short_repr(auto)}."
            )
    _check_number(spec, "direction_ridge", "direction_ridge", low=MIN_DIRECTION_RIDGE, high=MAX_DIRECTION_RIDGE,
                  optional=True)
    if erase is None and (spec.get("copy") is None or paste is None):
        raise RuleError("no goal: give both `copy` and `paste`, or `erase`.")
    if erase is not None and (spec.get("copy") is not None or paste is not None):
        raise RuleError("give either `copy` + `paste` or `erase`, not both.")
    if spec.get("region", "mask") not in ("mask", "box"):
        raise RuleError(f"field `region` must be 'mask' or 'box', got {short_repr(spec.get('region'))}.")
    stats = spec.get("stats")
    if stats is not None:
        if not isinstance(stats, dict):
            raise RuleError(
                f"field `stats` must be null or an object {{n, seed, truncation}}, got {short_repr(stats)}."
            )
        unknown = sorted(set(stats) - {"n", "seed", "truncation"})
        if unknown:
            raise RuleError(f"field `stats` has unknown key(s) {unknown}.")
        if "n" in stats:
            _check_int(stats, "n", "stats.n", low=1, high=MAX_STATS_N)
        if "seed" in stats:
            _check_int(stats, "seed", "stats.seed", high=MAX_SEED)
        _check_number(stats, "truncation", "stats.truncation", low=0.0, high=1.0, optional=True)
    if "rank" in spec:
        _check_int(spec, "rank", "rank", low=1, high=MAX_RANK)
    from .rewriter import DEFAULT_METHOD

    if "method" not in spec and spec.get("solver"):
        raise RuleError("field `solver` needs field `method` (the solver its options are for).")
    method = spec.get("method", DEFAULT_METHOD)
    if not isinstance(method, str) or method not in SOLVERS:
        raise RuleError(f"field `method` must be one of {sorted(SOLVERS)}, got {short_repr(method)}.")
    solver = spec.get("solver") or {}
    if not isinstance(solver, dict):
        raise RuleError(f"field `solver` must be an object of solver options, got {short_repr(solver)}.")
    params = inspect.signature(SOLVERS[method]).parameters
    options = {  # the JSON-able keyword options (a `loss_fn` or `render` is code, not data)
        name: p.default
        for name, p in params.items()
        if p.kind is inspect.Parameter.KEYWORD_ONLY and name not in CODE_OPTIONS
    }
    unknown = sorted(set(solver) - set(options))
    if unknown:
        raise RuleError(
            f"field `solver` has option(s) {short_repr(unknown)} that method {method!r} does not take; it takes "
            f"{sorted(options)}."
        )
    for name, value in solver.items():
        default = options[name]
        if isinstance(default, str):  # a choice among named values, e.g. `loss`
            allowed = CHOICES.get(name, (default,))
            if value not in allowed:
                raise RuleError(f"field `solver.{name}` must be one of {list(allowed)}, got {short_repr(value)}.")
            continue
        if isinstance(default, bool):
            ok = isinstance(value, bool)
        elif _is_int(default):
            ok = _is_int(value) and 0 <= value <= MAX_SOLVER_INT
        else:  # a float, or None for "automatic"
            ok = (value is None and default is None) or (
                isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value < math.inf
            )
        if not ok:
            raise RuleError(
                f"field `solver.{name}` must be like its default {default!r} (non-negative; integers at most "
                f"{MAX_SOLVER_INT}), got {short_repr(value)}."
            )


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_int(obj: dict[str, Any], key: str, where: str, *, low: int = 0, high: int | None = None) -> None:
    value = obj.get(key)
    if not _is_int(value) or value < low or (high is not None and value > high):
        limits = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise RuleError(f"field `{where}` must be an integer {limits}, got {short_repr(value)}.")


def _check_number(obj: dict[str, Any], key: str, where: str, *, low: float, high: float, optional: bool) -> None:
    value = obj.get(key)
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise RuleError(
            f"field `{where}` must be {'null or ' if optional else ''}a number in [{low}, {high}], got "
            f"{short_repr(value)}."
        )
