"""The Space's helpers without a browser: the session kept in the browser round-trips bit for bit and refuses
what is not a rule; `within` gives up on a slow call in time; preview rows name their seeds."""

from __future__ import annotations

import base64
import threading
import time

import numpy as np
import pytest
import torch
from test_hub_rules import make_rule

from gan_rewrite.errors import HubError, RuleError
from gan_rewrite.space import LABEL_HEIGHT, preview_picture, session_from_browser, session_to_browser, within


def test_the_session_kept_in_the_browser_round_trips(tiny_dcgan) -> None:
    mask = np.zeros((16, 16), bool)
    mask[4:9, 2:12] = True
    rule = make_rule(tiny_dcgan, "tester/base")
    session = {"model": "m", "rules": [{"delta": rule, "strength": 0.7, "label": "a rule", "enabled": False}],
               "contexts": [(3, mask)]}  # fmt: skip
    restored = session_from_browser(session_to_browser(session))
    assert restored["model"] == "m" and len(restored["rules"]) == 1
    got = restored["rules"][0]
    assert (got["strength"], got["label"], got["enabled"]) == (0.7, "a rule", False)
    assert got["delta"].metadata() == rule.metadata()
    assert torch.equal(got["delta"].layers["layer2"].lam, rule.layers["layer2"].lam)
    (seed, back), = restored["contexts"]
    assert seed == 3 and np.array_equal(back, mask)


@pytest.mark.parametrize(
    "data",
    [
        "not a dict",
        {"rules": "nope"},
        {"model": 3, "rules": []},
        {"model": "m", "rules": [{"rule": "!!!", "strength": 1, "label": "x"}]},
        {"model": "m", "rules": [{"rule": base64.b64encode(b"not safetensors").decode(), "strength": 1, "label": "x"}]},
        {"model": "m", "rules": [], "contexts": [{"seed": 1, "mask": "rle:99999x99999:0"}]},
    ],
)
def test_what_the_browser_sends_back_is_not_trusted(data) -> None:
    with pytest.raises(RuleError):
        session_from_browser(data)


def test_a_rule_with_a_bad_strength_or_too_many_bytes_is_refused(tiny_dcgan) -> None:
    saved = session_to_browser({"model": "m", "rules": [{"delta": make_rule(tiny_dcgan, "b"), "strength": 1.0,
                                                         "label": "x", "enabled": True}]})  # fmt: skip
    saved["rules"][0]["strength"] = float("nan")
    with pytest.raises(RuleError, match="finite"):
        session_from_browser(saved)
    saved["rules"][0]["strength"] = 1.0
    with pytest.raises(RuleError, match="too large"):
        session_from_browser(saved, max_bytes=100)


def test_within_gives_up_in_time_and_passes_results_and_errors() -> None:
    release = threading.Event()
    start = time.monotonic()
    with pytest.raises(HubError, match="could not be reached within 0.2 s"):
        within(0.2, lambda: release.wait(5))
    assert time.monotonic() - start < 1
    release.set()
    assert within(1, lambda: 42) == 42
    with pytest.raises(KeyError):
        within(1, lambda: {}["missing"])


def test_preview_rows_name_their_seeds(tiny_dcgan) -> None:
    images = tiny_dcgan.sample([0, 1, 2])
    plain, labelled = preview_picture(images), preview_picture(images, seeds=[10, 11, 12])
    assert labelled.height == plain.height + LABEL_HEIGHT * 2 and labelled.width == plain.width
    assert np.array_equal(np.asarray(labelled)[: plain.height], np.asarray(plain))  # the samples stay in place
    band = np.asarray(labelled.convert("L"))[plain.height :]
    assert (band < 128).sum() > 30  # the seed numbers are written
