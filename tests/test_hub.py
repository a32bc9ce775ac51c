"""Models through the Hub: push → load is bit-exact, revisions pin old weights, errors are ours.

Everything goes through the official huggingface_hub client against the loopback server (`hub` fixture).
"""

from __future__ import annotations

import pytest
import torch
import yaml
from huggingface_hub import hf_hub_download

import gan_rewrite as gr
from gan_rewrite.cli import main
from gan_rewrite.errors import HubError, ModelNotFoundError


def assert_same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key].cpu(), sb[key].cpu()), key


def test_push_then_load_is_bit_exact_with_a_card(hub, tiny_dcgan) -> None:
    repo = hub.repo_id("dcgan")
    info = tiny_dcgan.push_to_hub(repo, commit_message="first upload")
    loaded = gr.load_generator(repo, device="cpu")
    assert_same_weights(loaded, tiny_dcgan)
    torch.testing.assert_close(loaded.sample([0, 1]), tiny_dcgan.sample([0, 1]), rtol=0, atol=0)
    assert hub.api().model_info(repo).sha == info.oid
    card = open(hf_hub_download(repo, "README.md")).read()
    meta = yaml.safe_load(card.split("---")[1])
    assert meta["library_name"] == "gan-rewrite"
    assert meta["pipeline_tag"] == "unconditional-image-generation"
    assert {"gan", "dcgan"} <= set(meta["tags"])
    assert hub.api().list_repo_commits(repo)[0].title == "first upload"


def test_older_revisions_return_older_weights(hub, tiny_dcgan) -> None:
    repo = hub.repo_id("versions")
    first = tiny_dcgan.push_to_hub(repo).oid
    old = {k: v.clone() for k, v in tiny_dcgan.state_dict().items()}
    with torch.no_grad():
        tiny_dcgan.layer_module("layer2").weight.mul_(-1.5)
    second = tiny_dcgan.push_to_hub(repo, commit_message="v2").oid
    assert first != second
    at_first = gr.load_generator(repo, revision=first)
    assert all(torch.equal(at_first.state_dict()[k], old[k]) for k in old)
    assert_same_weights(gr.load_generator(repo, revision="main"), tiny_dcgan)
    assert_same_weights(gr.load_generator(repo, revision=second), tiny_dcgan)


def test_branches_and_private_repos(hub, tiny_dcgan) -> None:
    repo = hub.repo_id("private")
    tiny_dcgan.push_to_hub(repo, private=True, revision="experiment", token=hub.token)
    assert hub.api().model_info(repo).private
    assert_same_weights(gr.load_generator(repo, revision="experiment", token=hub.token), tiny_dcgan)
    with pytest.raises(ModelNotFoundError, match=r"lacks \[.config.json., .model.safetensors.\]"):
        gr.load_generator(repo, revision="main")  # main holds only .gitattributes


def test_missing_repo_and_revision_are_clear(hub, tiny_dcgan) -> None:
    with pytest.raises(ModelNotFoundError, match="Hub repo 'tester/nothing-here' was not found"):
        gr.load_generator("tester/nothing-here")
    repo = hub.repo_id("rev")
    tiny_dcgan.push_to_hub(repo)
    with pytest.raises(ModelNotFoundError, match="revision 'no-such-branch'"):
        gr.load_generator(repo, revision="no-such-branch")


def test_unreachable_hub_is_a_hub_error(hub, tiny_dcgan, monkeypatch) -> None:
    hub.go_away(monkeypatch)
    with pytest.raises(HubError, match="could not reach the Hub"):
        gr.load_generator("tester/unreachable")


def test_cli_push_then_sample_by_revision(hub, tiny_dcgan, tmp_path, capsys) -> None:
    folder = tiny_dcgan.save_pretrained(tmp_path / "model")
    repo = hub.repo_id("cli")
    assert main(["push", str(folder), repo, "--message", "from the cli"]) == 0
    sha = hub.api().model_info(repo).sha
    assert sha in capsys.readouterr().out
    out = tmp_path / "grid.png"
    assert main(["sample", repo, "--revision", sha, "--seeds", "0-3", "--out", str(out)]) == 0
    assert out.stat().st_size > 0


def test_known_model_on_the_hub_is_downloaded_and_converted_once(hub, tiny_dcgan, tmp_path, monkeypatch) -> None:
    from gan_rewrite.hub import known

    repo = hub.repo_id("legacy")
    checkpoint = tmp_path / "netG.pth"
    torch.save({"netG_state_dict": tiny_dcgan.state_dict()}, checkpoint)
    hub.api().create_repo(repo)
    hub.api().upload_file(path_or_fileobj=str(checkpoint), path_in_repo="weights/netG.pth", repo_id=repo)
    configs = tmp_path / "hub_configs"
    configs.mkdir()
    (configs / "tiny.yaml").write_text(yaml.safe_dump({
        "name": "tiny-dcgan-16", "architecture": "dcgan", "format": "dcgan", "resolution": 16,
        "default_layer": "layer2", "license": "mit",
        "source": {"kind": "hub", "repo": repo, "filename": "weights/netG.pth"},
    }))
    monkeypatch.setattr(known, "CONFIG_DIR", configs)
    known.known_models.cache_clear()
    monkeypatch.setenv("GAN_REWRITE_HOME", str(tmp_path / "home"))
    try:
        loaded = gr.load_generator("tiny-dcgan-16")
        assert_same_weights(loaded, tiny_dcgan)
        assert loaded.config.default_layer == "layer2"
        assert loaded.config.extra["provenance"]["source"] == f"Hub repo {repo} (weights/netG.pth)"
        gets = hub.count("GET", "/resolve/")
        gr.load_generator("tiny-dcgan-16")  # second use: from the converted cache, no Hub request
        assert hub.count("GET", "/resolve/") == gets
    finally:
        known.known_models.cache_clear()
