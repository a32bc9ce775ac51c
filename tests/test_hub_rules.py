"""Rules through the Hub: push → pull is bit-exact, spec / preview / card are right, revisions pin rules.

Everything goes through the official huggingface_hub client against the loopback server (`hub` fixture).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml
from huggingface_hub import hf_hub_download
from PIL import Image

import gan_rewrite as gr
from gan_rewrite.errors import HubError, RuleMismatchError, RuleNotFoundError
from gan_rewrite.imaging import image_grid
from gan_rewrite.models import DCGANGenerator
from gan_rewrite.rewrite.delta import LayerDelta, RuleDelta
from gan_rewrite.rewrite.layers import layer_kind

SPEC = {
    "version": 1,
    "layer": "layer2",
    "truncation": None,
    "context": [{"seed": 3, "mask": "rle:16x16:0,256"}],
    "copy": {"seed": 1, "mask": "rle:16x16:0,256"},
    "paste": {"seed": 2, "offset": [1, -2]},
    "erase": None,
    "region": "mask",
    "stats": {"n": 20, "seed": 0, "truncation": None},
    "rank": 2,
    "method": "closed_form",
    "solver": {},
}


def make_rule(G: DCGANGenerator, base_model: str, *, seed: int = 0, layer: str = "layer2") -> RuleDelta:
    """A rank-2 rule far from identity, with a spec, made on ``G``'s current weights."""
    module = G.layer_module(layer)
    kind = layer_kind(module)
    out_ch, in_ch, kh, kw = kind.shape(module.weight)
    g = torch.Generator().manual_seed(seed)
    direction, _ = torch.linalg.qr(torch.randn(in_ch, 2, generator=g))
    lam = torch.randn(out_ch, 2, kh, kw, generator=g) * module.weight.abs().mean() * 3
    part = LayerDelta(direction, lam, kind.layout, G.layer_weight_sha256(layer))
    return RuleDelta(layers={layer: part}, scale=0.9, base_model=base_model, method="closed_form", spec=dict(SPEC))


def snapshot(G: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in G.state_dict().items()}


def assert_same_rule(a: RuleDelta, b: RuleDelta) -> None:
    assert a.metadata() == b.metadata()  # every metadata key, spec included
    assert a.layer_names == b.layer_names
    for name in a.layers:
        assert torch.equal(a.layers[name].direction, b.layers[name].direction)
        assert torch.equal(a.layers[name].lam, b.layers[name].lam)


def card_yaml(repo: str, revision: str | None = None) -> dict:
    text = open(hf_hub_download(repo, "README.md", revision=revision), encoding="utf-8").read()
    return yaml.safe_load(text.split("---")[1])


@pytest.fixture
def base_repo(hub, tiny_dcgan) -> str:
    repo = hub.repo_id("base")
    tiny_dcgan.push_to_hub(repo)
    return repo


def test_push_then_pull_is_bit_exact_with_spec_card_and_preview(hub, tiny_dcgan, base_repo, tmp_path) -> None:
    rule = make_rule(tiny_dcgan, base_repo)
    local = RuleDelta.load(rule.save(tmp_path / "rule.safetensors"))
    before = snapshot(tiny_dcgan)
    seeds = [5, 6, 7]
    repo = hub.repo_id("rule")
    info = local.push_to_hub(repo, generator=tiny_dcgan, preview_seeds=seeds, commit_message="first rule")

    # the generator is left exactly as it was
    after = tiny_dcgan.state_dict()
    assert all(torch.equal(after[k], v) for k, v in before.items())
    assert tiny_dcgan.active_rules == []

    # one commit with the four files
    assert hub.api().model_info(repo).sha == info.oid
    assert hub.api().list_repo_commits(repo)[0].title == "first rule"
    assert {"rule.safetensors", "rule.json", "preview.png", "README.md"} <= set(hub.api().list_repo_files(repo))

    # bit-exact round trip, by repo id
    pulled = RuleDelta.load(repo)
    assert_same_rule(pulled, local)
    assert_same_rule(pulled, rule)

    # rule.json is the spec stored in the metadata
    spec_text = open(hf_hub_download(repo, "rule.json"), encoding="utf-8").read()
    assert json.loads(spec_text) == rule.spec == json.loads(pulled.metadata()["spec"])
    assert "\n  " in spec_text  # pretty-printed

    # card: an adapter of the base model
    meta = card_yaml(repo)
    assert meta["library_name"] == "gan-rewrite"
    assert meta["base_model"] == base_repo
    assert meta["base_model_relation"] == "adapter"
    assert {"gan-rewrite", "rule", "dcgan"} <= set(meta["tags"])
    body = open(hf_hub_download(repo, "README.md"), encoding="utf-8").read()
    assert f'G.load_rule("{repo}"' in body and "layer2" in body and "closed_form" in body

    # preview: row 1 before, row 2 after, one column per seed
    picture = Image.open(hf_hub_download(repo, "preview.png")).convert("RGB")
    tiny_dcgan.load_rule(rule, name="check")
    with_rule = tiny_dcgan.sample(seeds)
    tiny_dcgan.unload_rules()
    expected = image_grid(torch.cat([tiny_dcgan.sample(seeds), with_rule]), nrow=len(seeds))
    assert picture.size == (len(seeds) * (16 + 2) + 2, 2 * (16 + 2) + 2)
    assert np.array_equal(np.asarray(picture), np.asarray(expected))
    assert not torch.equal(with_rule, tiny_dcgan.sample(seeds))  # the rows differ: the preview shows something


def test_load_rule_by_repo_and_revision(hub, tiny_dcgan, base_repo) -> None:
    repo = hub.repo_id("rule-n")
    first_rule, second_rule = make_rule(tiny_dcgan, base_repo, seed=1), make_rule(tiny_dcgan, base_repo, seed=2)
    first = first_rule.push_to_hub(repo, preview_seeds=None).oid
    second_rule.push_to_hub(repo, preview_seeds=None, commit_message="v2")
    before = snapshot(tiny_dcgan)

    G = gr.load_generator(base_repo, device="cpu")
    name = G.load_rule(repo, revision=first)
    assert name == repo.split("/")[1]
    expected = before["main.3.weight"] + first_rule.delta_weight()
    assert torch.equal(G.layer_module("layer2").weight, expected.to(G.layer_module("layer2").weight.dtype))
    G.load_rule(repo, name="latest", force=True)  # main: the second rule (stacks on the first)
    assert_same_rule(RuleDelta.load(repo), second_rule)
    assert_same_rule(RuleDelta.load(repo, revision=first), first_rule)
    G.unload_rules()
    assert torch.equal(G.layer_module("layer2").weight, before["main.3.weight"])


def test_preview_from_the_base_model_on_the_hub(hub, tiny_dcgan, base_repo, caplog) -> None:
    rule = make_rule(tiny_dcgan, base_repo)
    repo = hub.repo_id("auto-preview")
    rule.push_to_hub(repo, preview_seeds=range(4))  # no generator: the base model is loaded from the Hub
    picture = Image.open(hf_hub_download(repo, "preview.png"))
    assert picture.size == (4 * 18 + 2, 2 * 18 + 2)

    orphan = make_rule(tiny_dcgan, "tester/no-such-model")
    repo2 = hub.repo_id("no-preview")
    with caplog.at_level("WARNING", logger="gan_rewrite"):
        orphan.push_to_hub(repo2)
    assert "skipping the preview" in caplog.text
    assert "preview.png" not in hub.api().list_repo_files(repo2)
    assert_same_rule(RuleDelta.load(repo2), orphan)


def test_a_rule_made_on_a_hub_model_records_it(hub, tiny_dcgan, base_repo) -> None:
    G = gr.load_generator(base_repo, device="cpu")
    sha = hub.api().model_info(base_repo).sha
    assert G.hub_source == (base_repo, None, sha)
    rw = gr.Rewriter(G, "layer2")
    assert (rw.base_model, rw.base_revision) == (base_repo, sha)


def test_a_rule_for_another_model_is_refused_and_the_generator_untouched(hub, tiny_dcgan, base_repo) -> None:
    other = gr.load_generator(base_repo, device="cpu")
    with torch.no_grad():
        other.layer_module("layer2").weight.mul_(1.5)
    before = snapshot(other)
    with pytest.raises(RuleMismatchError):
        make_rule(tiny_dcgan, base_repo).push_to_hub(hub.repo_id("mismatch"), generator=other)
    assert all(torch.equal(other.state_dict()[k], v) for k, v in before.items())


def test_missing_rules_are_rule_not_found(hub, tiny_dcgan, base_repo) -> None:
    with pytest.raises(RuleNotFoundError, match="tester/nothing-here"):
        RuleDelta.load("tester/nothing-here")
    with pytest.raises(RuleNotFoundError, match="tester/nothing-here"):
        tiny_dcgan.load_rule("tester/nothing-here")
    with pytest.raises(RuleNotFoundError, match="has no rule.safetensors"):
        RuleDelta.load(base_repo)  # a model repo, not a rule repo
    repo = hub.repo_id("rule")
    make_rule(tiny_dcgan, base_repo).push_to_hub(repo, preview_seeds=None)
    with pytest.raises(RuleNotFoundError, match="revision 'no-such-branch'"):
        RuleDelta.load(repo, revision="no-such-branch")
    with pytest.raises(RuleNotFoundError, match="not a local file"):
        RuleDelta.load("missing/rule.safetensors")  # a path, not a repo id: no Hub request


def test_unreachable_hub_is_a_hub_error(hub, monkeypatch) -> None:
    hub.go_away(monkeypatch)
    with pytest.raises(HubError, match="could not reach the Hub"):
        RuleDelta.load("tester/unreachable")
