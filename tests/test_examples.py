"""The shipped example rules (examples/*.json): they parse, solve on the real model, and act where they should."""

from __future__ import annotations

import importlib.util
import json
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import gan_rewrite as gr
from gan_rewrite.rewrite import decode_mask, solve_spec
from gan_rewrite.rules import rules_applied

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
SPECS = sorted(EXAMPLES.glob("*.json"))
HELD_OUT = list(range(1000, 1016))  # no example spec uses these seeds


def _load_script():
    spec = importlib.util.spec_from_file_location("make_examples", EXAMPLES / "make_examples.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["make_examples"] = module
    spec.loader.exec_module(module)
    return module


SCRIPT = _load_script()


def _spec_seeds(spec: dict) -> set[int]:
    items = [*spec["context"], spec.get("copy"), spec.get("paste"), spec.get("erase")]
    return {item["seed"] for item in items if item}


def _context_region(spec: dict, grow: int = 4) -> torch.Tensor:
    """Union of the spec's context masks, grown by ``grow`` pixels: where the rule should act on any aligned face."""
    union = torch.stack([decode_mask(item["mask"]) for item in spec["context"]]).amax(0)
    return F.max_pool2d(union[None, None], 2 * grow + 1, stride=1, padding=grow)[0, 0] > 0


def test_examples_are_shipped() -> None:
    names = {path.stem for path in SPECS}
    assert {"glasses", "open-mouth"} <= names
    for name in names:
        assert (EXAMPLES / f"{name}.png").is_file(), f"examples/{name}.png (the result grid) is missing"


@pytest.mark.parametrize("path", SPECS, ids=[p.stem for p in SPECS])
def test_example_spec_solves_and_acts_in_its_region(dcgan_faces: gr.GANGenerator, path: Path) -> None:
    spec = json.loads(path.read_text())
    assert spec["version"] == 1 and spec["layer"] in dcgan_faces.layer_names
    assert spec["context"], "an example names its context explicitly"
    assert not _spec_seeds(spec) & set(HELD_OUT), "held-out seeds must not be part of the request"

    stats = gr.compute_stats(dcgan_faces, spec["layer"], spec["stats"]["n"], seed=spec["stats"]["seed"], progress=False)
    start = time.perf_counter()
    with SCRIPT.one_thread():
        rule = solve_spec(dcgan_faces, spec, stats=stats, progress=False)
    print(f"{path.stem}: solved in {time.perf_counter() - start:.1f} s")  # a few seconds on one thread
    assert rule.spec["layer"] == spec["layer"] and rule.spec["rank"] == spec.get("rank", 1)
    # The spec round-trips: the rule's recorded request is the shipped one.
    assert {k: rule.spec[k] for k in ("context", "copy", "paste", "erase", "region")} == {
        k: spec[k] for k in ("context", "copy", "paste", "erase", "region")
    }

    before = dcgan_faces.sample(HELD_OUT)
    with rules_applied(dcgan_faces, [(rule, 1.0)]):
        after = dcgan_faces.sample(HELD_OUT)
    assert torch.equal(dcgan_faces.sample(HELD_OUT[:2]), before[:2])  # unloaded cleanly

    change = (after - before).abs().mean(1)  # (N, H, W)
    region = _context_region(spec)
    inside, outside = float(change[:, region].mean()), float(change[:, ~region].mean())
    print(f"{path.stem}: inside {inside:.4f}, outside {outside:.4f}")
    assert inside > 0.02, f"the rule barely changes held-out faces in its region ({inside:.4f})"
    assert inside > 2 * outside, f"change inside {inside:.4f} vs outside {outside:.4f}: not local enough"


def test_make_examples_script(dcgan_faces: gr.GANGenerator, tmp_path: Path, monkeypatch, capsys) -> None:
    script = SCRIPT
    monkeypatch.setattr(script.gr, "load_generator", lambda *a, **k: dcgan_faces)
    monkeypatch.setattr(sys, "argv", ["make_examples.py", "--out", str(tmp_path)])
    script.main()
    for path in SPECS:
        rule = gr.RuleDelta.load(tmp_path / f"{path.stem}.safetensors")
        assert rule.spec["layer"] == json.loads(path.read_text())["layer"]
        assert (tmp_path / f"{path.stem}.png").stat().st_size > 1000
    assert "inside" in capsys.readouterr().out
    assert not dcgan_faces.active_rules
