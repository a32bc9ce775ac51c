"""Rule specs round-trip: every field survives spec → Rewriter → spec, and spec → solve → rule.spec.

Generated specs (hypothesis, derandomised) cover every field the request and the solve write: layer,
truncation, any number of context examples, binary and soft masks, copy + paste by mask or by offset, region,
erase with and without explicit units, statistics, rank, method and each solver's JSON options.
"""

from __future__ import annotations

import copy
import functools
import json
from typing import Any

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from masks import box

from gan_rewrite.models import DCGANConfig, DCGANGenerator
from gan_rewrite.rewrite.context import DEFAULT_DIRECTION_RIDGE, encode_mask, quantize_mask
from gan_rewrite.rewrite.layers import layer_kind
from gan_rewrite.rewrite.rewriter import SPEC_VERSION, Rewriter, solve_spec

SIZE = 16
ROUND_TRIP = settings(
    max_examples=120,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@functools.cache
def tiny() -> DCGANGenerator:
    torch.manual_seed(0)
    return DCGANGenerator(DCGANConfig(resolution=SIZE, ngf=8, z_dim=8)).eval()


def out_channels(layer: str) -> int:
    module = tiny().layer_module(layer)
    return layer_kind(module).shape(module.weight)[0]


# ----- strategies -----------------------------------------------------------------------------------------
@st.composite
def mask_codes(draw: st.DrawFn) -> str:
    """A non-empty mask code: a box, random binary pixels or a soft (8-bit) mask."""
    kind = draw(st.sampled_from(["box", "binary", "soft"]))
    if kind == "box":
        top, left = draw(st.integers(0, SIZE - 1)), draw(st.integers(0, SIZE - 1))
        mask = box(SIZE, top, left, draw(st.integers(top + 1, SIZE)), draw(st.integers(left + 1, SIZE)))
    else:
        g = torch.Generator().manual_seed(draw(st.integers(0, 2**32 - 1)))
        mask = torch.rand(SIZE, SIZE, generator=g)
        mask = (mask > draw(st.sampled_from([0.5, 0.9]))).float() if kind == "binary" else quantize_mask(mask)
        mask[draw(st.integers(0, SIZE - 1)), draw(st.integers(0, SIZE - 1))] = 1.0  # never empty
    return encode_mask(mask)


seeds = st.integers(0, 2**63 - 1)
painted = st.fixed_dictionaries({"seed": seeds, "mask": mask_codes()})


@st.composite
def request_specs(draw: st.DrawFn) -> dict[str, Any]:
    """What ``Rewriter.spec()`` writes before a solve (no statistics, rank, method or solver yet)."""
    layer = draw(st.sampled_from(tiny().layer_names))
    spec: dict[str, Any] = {
        "version": SPEC_VERSION,
        "layer": layer,
        "truncation": draw(st.none() | st.floats(0.0, 1.0)),
        "context": draw(st.lists(painted, max_size=3)),
        "copy": None,
        "paste": None,
        "erase": None,
        "region": "mask",
        "stats": None,
        "auto_layer": None,
        # the Rewriter writes the ridge of D for a fixed layer (1e-3 when none was given)
        "direction_ridge": draw(st.sampled_from([1e-3, 0.5, 10.0])),
    }
    if draw(st.booleans()):
        units = draw(st.none() | st.lists(st.integers(0, out_channels(layer) - 1), min_size=1, max_size=4, unique=True))
        spec["erase"] = {**draw(painted), "units": units}
    else:
        spec["copy"] = draw(painted)
        if draw(st.booleans()):
            spec["paste"] = draw(painted)
        else:
            spec["paste"] = {"seed": draw(seeds), "offset": [draw(st.integers(-8, 8)), draw(st.integers(-8, 8))]}
        spec["region"] = draw(st.sampled_from(["mask", "box"]))
    return spec


# ----- spec → Rewriter → spec ---------------------------------------------------------------------------------
@ROUND_TRIP
@given(request_specs())
def test_every_request_field_survives_the_rewriter(spec: dict[str, Any]) -> None:
    for given_as in (copy.deepcopy(spec), json.dumps(spec)):  # a dict, and its JSON text
        rebuilt = Rewriter.from_spec(tiny(), given_as).spec()
        assert rebuilt == spec
        assert json.loads(json.dumps(rebuilt)) == spec  # and it is plain JSON


# ----- spec → solve → rule.spec ----------------------------------------------------------------------------------
CONTEXT = [
    {"seed": 1, "mask": encode_mask(box(SIZE, 4, 4, 14, 14))},
    {"seed": 2, "mask": encode_mask(box(SIZE, 0, 6, 12, 16))},
]


@st.composite
def solvable_specs(draw: st.DrawFn) -> dict[str, Any]:
    """Complete specs (statistics, rank, method and solver options included) that solve in milliseconds."""
    layer = draw(st.sampled_from(["layer2", "layer3"]))
    truncation = draw(st.none() | st.sampled_from([0.5, 0.8, 1.0]))
    spec: dict[str, Any] = {
        "version": SPEC_VERSION,
        "layer": layer,
        "truncation": truncation,
        "context": CONTEXT[: draw(st.integers(1, 2))],
        "copy": None,
        "paste": None,
        "erase": None,
        "region": "mask",
        "stats": {"n": draw(st.integers(2, 6)), "seed": draw(st.integers(0, 5)), "truncation": truncation},
        "auto_layer": None,
        "rank": draw(st.integers(1, 2)),
    }
    ridge = draw(st.none() | st.sampled_from([1e-3, 0.5, 10.0]))
    if ridge is not None:  # else a spec from before the field existed
        spec["direction_ridge"] = ridge
    if draw(st.booleans()):
        units = draw(st.none() | st.lists(st.integers(0, out_channels(layer) - 1), min_size=1, max_size=3, unique=True))
        spec["erase"] = {"seed": 3, "mask": encode_mask(box(SIZE, 2, 2, 10, 10)), "units": units}
    else:
        spec["copy"] = {"seed": 0, "mask": encode_mask(box(SIZE, 2, 2, 8, 8))}
        spec["paste"] = draw(
            st.sampled_from([{"seed": 1, "mask": encode_mask(box(SIZE, 8, 8, 14, 14))}, {"seed": 1, "offset": [5, 4]}])
        )
        spec["region"] = draw(st.sampled_from(["mask", "box"]))
    method = draw(st.sampled_from(["closed_form", "optimize", "bounded", "learn"]))
    if method == "learn":
        spec["method"] = "learn"
        spec["solver"] = draw(
            st.fixed_dictionaries(
                {"samples": st.integers(0, 3), "steps": st.integers(1, 3), "progress": st.just(False)},
                optional={
                    "sample_seed": st.integers(0, 20),
                    "batch_size": st.integers(1, 4),
                    "lr_factor": st.sampled_from([0.5, 2.0]),
                    "keep_weight": st.sampled_from([1.0, 3.0]),
                },
            )
        )
    elif method == "bounded":
        spec["method"] = "bounded"
        spec["solver"] = draw(
            st.fixed_dictionaries(
                {},
                optional={
                    "keep": st.sampled_from(["image", "box", "none"]),
                    "keep_weight": st.sampled_from([0.1, 1.0]),
                    "penalty": st.sampled_from([None, 0.01, 1.0]),
                    "targets": st.sampled_from(["contexts", "paste"]),
                },
            )
        )
    elif method == "closed_form":
        spec["method"] = "closed_form"
        spec["solver"] = draw(
            st.fixed_dictionaries(
                {}, optional={"ridge": st.sampled_from([1e-6, 1e-3, 0.5]), "refine": st.integers(0, 3)}
            )
        )
    else:
        spec["method"] = "optimize"
        spec["solver"] = draw(
            st.fixed_dictionaries(
                {"steps": st.integers(1, 3), "progress": st.just(False)},
                optional={
                    "loss": st.sampled_from(["layer", "image"]),
                    "lr": st.none() | st.sampled_from([1e-3, 0.05]),
                    "project_every": st.integers(1, 3),
                    "variable": st.sampled_from(["lambda", "weight"]),
                    "patience": st.integers(1, 50),
                    "tol": st.sampled_from([0.0, 1e-4]),
                },
            )
        )
    return spec


@settings(ROUND_TRIP, max_examples=30)
@given(solvable_specs())
def test_every_field_survives_a_solve_and_the_rule_is_reproduced(spec: dict[str, Any]) -> None:
    rule = solve_spec(tiny(), copy.deepcopy(spec), progress=False)
    if spec["method"] == "optimize":  # a spec from before `variable` existed was solved on the weight
        spec["solver"].setdefault("variable", "weight")
    spec.setdefault("direction_ridge", DEFAULT_DIRECTION_RIDGE)  # and with the ridge D always had before
    assert rule.spec == spec
    assert rule.method == spec["method"] and rule.layer_names == [spec["layer"]]
    assert rule.layers[spec["layer"]].direction.shape[1] == spec["rank"]
    again = solve_spec(tiny(), json.dumps(rule.spec), progress=False)
    assert again.spec == spec
    assert torch.equal(again.layers[spec["layer"]].lam, rule.layers[spec["layer"]].lam)
    assert torch.equal(again.layers[spec["layer"]].direction, rule.layers[spec["layer"]].direction)


# ----- erase with explicit units ---------------------------------------------------------------------------------
def erase_rewriter(units: list[int] | None) -> Rewriter:
    rw = Rewriter(tiny(), "layer2")
    rw.compute_stats(n=6, progress=False)
    rw.add_context(3, box(SIZE, 2, 2, 10, 10))
    rw.set_erase(3, box(SIZE, 2, 2, 10, 10), units=units)
    return rw


def test_erase_with_explicit_units() -> None:
    """The units reach the goal, the rule and its spec; a re-solve from the spec gives the same rule."""
    chosen, others = [0, 2], [1, 3]
    rw = erase_rewriter(chosen)
    target = rw.goal().target
    assert not torch.equal(target, erase_rewriter(None).goal().target)
    assert not torch.equal(target, erase_rewriter(others).goal().target)
    rule = rw.solve(rank=1)
    assert rule.spec["erase"]["units"] == chosen
    assert not torch.equal(rule.layers["layer2"].lam, erase_rewriter(others).solve(rank=1).layers["layer2"].lam)
    again = solve_spec(tiny(), rule.spec, progress=False)
    assert again.spec["erase"]["units"] == chosen
    assert torch.equal(again.layers["layer2"].lam, rule.layers["layer2"].lam)
