"""Key statistics beside a model on the Hub: push / fetch, and a Rewriter that uses them instead of computing.

Everything goes through the official huggingface_hub client against the loopback server (`hub` fixture).
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

import gan_rewrite as gr
from gan_rewrite.errors import ModelNotFoundError
from gan_rewrite.hub.stats import fetch_stats, push_stats
from gan_rewrite.rewrite.stats import KeyStats, compute_stats, model_sha256

N = 12


def assert_same_stats(a: KeyStats, b: KeyStats) -> None:
    assert torch.equal(a.second_moment, b.second_moment)
    assert torch.equal(a.mean, b.mean)
    assert a.metadata() == b.metadata() and a.count == b.count


@pytest.fixture
def model_repo(hub, tiny_dcgan) -> str:
    repo = hub.repo_id("model")
    tiny_dcgan.push_to_hub(repo)
    return repo


@pytest.fixture
def tiny_stats(tiny_dcgan) -> KeyStats:
    return compute_stats(tiny_dcgan, "layer2", n=N, use_cache=False, progress=False)


def count_forward_to(G, monkeypatch) -> list[int]:
    """Count ``G.forward_to`` calls (computing statistics runs the generator up to the layer)."""
    calls = [0]
    original = G.forward_to

    def spy(*args, **kwargs):
        calls[0] += 1
        return original(*args, **kwargs)

    monkeypatch.setattr(G, "forward_to", spy)
    return calls


def test_push_then_fetch_is_bit_exact_and_checked(hub, tiny_dcgan, model_repo, tiny_stats) -> None:
    info = push_stats(tiny_stats, model_repo, commit_message="stats for layer2")
    assert "stats/layer2.safetensors" in hub.api().list_repo_files(model_repo)
    assert hub.api().list_repo_commits(model_repo)[0].title == "stats for layer2"
    assert {"config.json", "model.safetensors"} <= set(hub.api().list_repo_files(model_repo, revision=info.oid))

    digest = model_sha256(tiny_dcgan)
    fetched = fetch_stats(model_repo, "layer2", n=N, seed=0, truncation=None, model_sha256=digest)
    assert fetched is not None
    assert_same_stats(fetched, tiny_stats)
    assert fetch_stats(model_repo, "layer2") is not None  # nothing asked: anything goes
    for wrong in ({"n": N + 1}, {"seed": 1}, {"truncation": 0.5}, {"model_sha256": "0" * 64}):
        assert fetch_stats(model_repo, "layer2", **wrong) is None, wrong
    assert fetch_stats(model_repo, "layer3") is None  # no such file: not an error
    first = hub.api().list_repo_commits(model_repo)[-1].commit_id
    assert fetch_stats(model_repo, "layer2", revision=first) is None
    with pytest.raises(ModelNotFoundError):
        fetch_stats("tester/no-such-model", "layer2")


def test_rewriter_on_a_hub_model_uses_the_repo_stats(hub, tiny_dcgan, model_repo, tiny_stats, tmp_path,
                                                      monkeypatch) -> None:  # fmt: skip
    push_stats(tiny_stats, model_repo)  # pushed after the model was: found on main all the same
    G = gr.load_generator(model_repo, device="cpu")
    calls = count_forward_to(G, monkeypatch)
    gets = hub.count("GET", "/stats/layer2.safetensors")

    stats = gr.Rewriter(G, "layer2").compute_stats(n=N, cache_dir=tmp_path / "cache", progress=False)
    assert calls[0] == 0  # the generator never ran
    assert_same_stats(stats, tiny_stats)
    assert hub.count("GET", "/stats/layer2.safetensors") == gets + 1

    # the local cache comes first: a second Rewriter makes no Hub request
    requests = len(hub.requests)
    again = gr.Rewriter(G, "layer2").compute_stats(n=N, cache_dir=tmp_path / "cache", progress=False)
    assert_same_stats(again, tiny_stats)
    assert len(hub.requests) == requests and calls[0] == 0


@pytest.mark.parametrize("change", [{"model_sha256": "0" * 64}, {"n": N + 1}, {"seed": 3}], ids=["hash", "n", "seed"])
def test_mismatching_repo_stats_fall_back_to_computing(hub, tiny_dcgan, model_repo, tiny_stats, tmp_path,
                                                       monkeypatch, change) -> None:  # fmt: skip
    wrong = dataclasses.replace(tiny_stats, **change)
    wrong.second_moment = tiny_stats.second_moment * 2  # so using it by mistake shows
    push_stats(wrong, model_repo)
    G = gr.load_generator(model_repo, device="cpu")
    calls = count_forward_to(G, monkeypatch)
    gets = hub.count("GET", "/stats/layer2.safetensors")
    stats = gr.Rewriter(G, "layer2").compute_stats(n=N, cache_dir=tmp_path / "cache", progress=False)
    assert calls[0] > 0
    assert hub.count("GET", "/stats/layer2.safetensors") > gets  # the repo stats were looked at
    assert_same_stats(stats, tiny_stats)


def test_local_models_and_unreachable_hubs_compute(hub, tiny_dcgan, model_repo, tiny_stats, tmp_path,
                                                   monkeypatch, caplog) -> None:  # fmt: skip
    push_stats(tiny_stats, model_repo)
    requests = len(hub.requests)
    calls = count_forward_to(tiny_dcgan, monkeypatch)  # not loaded from the Hub: no Hub request
    stats = gr.Rewriter(tiny_dcgan, "layer2").compute_stats(n=N, cache_dir=tmp_path / "a", progress=False)
    assert calls[0] > 0 and len(hub.requests) == requests
    assert_same_stats(stats, tiny_stats)

    G = gr.load_generator(model_repo, device="cpu")
    hub.go_away(monkeypatch)  # then the Hub goes away
    calls = count_forward_to(G, monkeypatch)
    with caplog.at_level("WARNING", logger="gan_rewrite"):
        stats = gr.Rewriter(G, "layer2").compute_stats(n=N, cache_dir=tmp_path / "b", progress=False)
    assert calls[0] > 0 and "could not use key statistics" in caplog.text
    assert_same_stats(stats, tiny_stats)
