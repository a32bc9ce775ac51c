"""Digests that identify models and layer weights: cached for speed, but never stale."""

from __future__ import annotations

import torch

from gan_rewrite.hashing import tensor_sha256
from gan_rewrite.rewrite.stats import model_sha256


def test_layer_digest_follows_in_place_edits(tiny_dcgan) -> None:
    layer = tiny_dcgan.layer_names[1]
    before = tiny_dcgan.layer_weight_sha256(layer)
    assert before == tensor_sha256(tiny_dcgan.layer_module(layer).weight)
    assert tiny_dcgan.layer_weight_sha256(layer) == before  # cached, same answer
    with torch.no_grad():
        tiny_dcgan.layer_module(layer).weight[0, 0, 0, 0] += 1e-3
    after = tiny_dcgan.layer_weight_sha256(layer)
    assert after != before and after == tensor_sha256(tiny_dcgan.layer_module(layer).weight)


def test_model_digest_follows_buffers_and_loads(tiny_dcgan) -> None:
    before = model_sha256(tiny_dcgan)
    assert model_sha256(tiny_dcgan) == before
    with torch.no_grad():
        tiny_dcgan.main[1].running_var.mul_(1.01)  # a buffer, not a parameter
    changed = model_sha256(tiny_dcgan)
    assert changed != before
    state = {k: v.clone() for k, v in tiny_dcgan.state_dict().items()}
    state["main.0.weight"].neg_()
    tiny_dcgan.load_state_dict(state)
    assert model_sha256(tiny_dcgan) not in (before, changed)
