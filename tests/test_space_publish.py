"""Publishing and finding: `gan-rewrite space push` makes a Space that starts from what was pushed alone,
`gr.list_rules` / `gan-rewrite rules` find the rules made for a model (newest first), the wheel carries the
top-level hub_configs/, and the CLI's messages of issue 12 (scale, spec, misspelled model, optimiser time).

Hub tests use the official huggingface_hub client against the loopback server (`hub` fixture).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
import yaml
from huggingface_hub import snapshot_download
from test_cli_rules import home, spec, tiny_folder, write_spec  # noqa: F401  (fixtures)
from test_hub_rules import make_rule

import gan_rewrite as gr
from gan_rewrite.cli import main
from gan_rewrite.hub.known import CONFIG_DIR
from gan_rewrite.rewrite import RuleDelta

ROOT = Path(__file__).resolve().parents[1]


# ----- finding rules -------------------------------------------------------------------------------------
def test_list_rules_finds_the_rules_of_one_model_newest_first(hub, tiny_dcgan, capsys) -> None:
    base = hub.repo_id("base")
    tiny_dcgan.push_to_hub(base)
    older, newer, other = hub.repo_id("older"), hub.repo_id("newer"), hub.repo_id("other")
    make_rule(tiny_dcgan, base, seed=1).push_to_hub(older, generator=tiny_dcgan, preview_seeds=[0, 1])
    time.sleep(0.01)  # distinct lastModified (milliseconds)
    make_rule(tiny_dcgan, base, seed=2).push_to_hub(newer, preview_seeds=None)
    make_rule(tiny_dcgan, "someone/another-model").push_to_hub(other, preview_seeds=None)

    found = gr.list_rules(base)
    assert [rule.repo_id for rule in found] == [newer, older]
    assert found[0].description == "layer2: copy seed 1 → paste seed 2, context seed 3"  # from rule.json's spec
    assert found[0].preview_url is None and found[1].preview_url.endswith("/preview.png")
    assert found[0].last_modified > found[1].last_modified
    assert [rule.repo_id for rule in gr.list_rules(base, limit=1)] == [newer]

    assert main(["rules", base]) == 0
    out = capsys.readouterr().out
    assert out.index(newer) < out.index(older) and other not in out
    assert "copy seed 1 → paste seed 2" in out


def test_rules_of_a_known_name_are_found_by_their_tag(hub, tiny_dcgan, capsys) -> None:
    repo = hub.repo_id("known")
    make_rule(tiny_dcgan, "dcgan-faces-64").push_to_hub(repo, preview_seeds=None)
    assert repo in [rule.repo_id for rule in gr.list_rules("dcgan-faces-64")]
    assert main(["rules", "stylegan2-cat-256"]) == 0
    assert "no rules for stylegan2-cat-256" in capsys.readouterr().out


def test_list_rules_unreachable_hub_is_a_hub_error(hub, monkeypatch) -> None:
    hub.go_away(monkeypatch)
    with pytest.raises(gr.HubError, match="could not reach the Hub"):
        gr.list_rules("dcgan-faces-64")


# ----- publishing a Space --------------------------------------------------------------------------------
def test_space_push_makes_a_space_that_starts_from_its_own_files(hub, tmp_path, capsys) -> None:
    repo = hub.repo_id("space")
    code = main(["space", "push", repo, "--model", "dcgan-faces-64", "--model", "stylegan2-cat-256",
                 "--hardware", "cpu-upgrade"])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    assert repo in capsys.readouterr().out
    stored = hub.server.store.repos[("space", repo)]
    assert stored.space == {"sdk": "gradio", "hardware": "cpu-upgrade"}
    info = hub.api().space_info(repo)
    assert info.sdk == "gradio"

    folder = Path(snapshot_download(repo, repo_type="space", local_dir=tmp_path / "fresh"))
    meta = yaml.safe_load((folder / "README.md").read_text().split("---")[1])
    assert meta["sdk"] == "gradio" and meta["app_file"] == "app.py" and meta["suggested_hardware"] == "cpu-upgrade"
    assert meta["models"] == ["aaronb/StyleGAN2"]  # the cat model's Hub repo; the DCGAN ships in a package
    requirements = (folder / "requirements.txt").read_text().split()
    assert "gan-face-generate" in requirements and "spaces" in requirements
    assert not any(line.startswith(("gan-rewrite", "gan_rewrite")) for line in requirements)  # vendored instead
    assert json.loads((folder / "space_models.json").read_text())["models"] == ["dcgan-faces-64", "stylegan2-cat-256"]
    assert (folder / "gan_rewrite" / "hub_configs" / "dcgan-faces-64.yaml").is_file()

    # Import the app from the fresh folder alone, in a clean interpreter: it must use the vendored library.
    script = (
        "import sys, gradio; sys.path.insert(0, sys.argv[1]); import app, gan_rewrite;"
        "assert gan_rewrite.__file__.startswith(sys.argv[1]), gan_rewrite.__file__;"
        "assert app.DEFAULT_MODEL == 'dcgan-faces-64', app.DEFAULT_MODEL;"
        "assert app.offered_models() == ['dcgan-faces-64', 'stylegan2-cat-256'];"
        "assert 'stylegan2-cat-256' in gan_rewrite.known_models(); print('ok')"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(GRADIO_ANALYTICS_ENABLED="False", HF_HUB_OFFLINE="1")
    run = subprocess.run([sys.executable, "-c", script, str(folder)], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=120)  # fmt: skip
    assert run.returncode == 0 and run.stdout.strip() == "ok", run.stderr[-2000:]


def test_space_push_refuses_unknown_models_and_hardware(hub, capsys) -> None:
    repo = hub.repo_id("bad-space")
    assert main(["space", "push", repo, "--model", "dcgan-face-64"]) == 2
    assert "did you mean 'dcgan-faces-64'" in capsys.readouterr().err
    assert main(["space", "push", repo, "--hardware", "t4-huge"]) == 2
    assert "unknown Space hardware 't4-huge'" in capsys.readouterr().err
    assert ("space", repo) not in hub.server.store.repos


# ----- the wheel carries hub_configs/ ---------------------------------------------------------------------
def test_hub_configs_live_at_the_top_and_ship_in_the_wheel(tmp_path) -> None:
    assert CONFIG_DIR == ROOT / "hub_configs" and not (ROOT / "gan_rewrite" / "hub_configs").exists()
    source = tmp_path / "src"  # build from a copy: an in-tree build would leave build/ in the checkout
    source.mkdir()
    for name in ("pyproject.toml", "setup.py", "README.md"):
        shutil.copy(ROOT / name, source / name)
    for name in ("gan_rewrite", "hub_configs"):
        shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", str(source),
                    "-w", str(tmp_path / "dist")], check=True, timeout=300)  # fmt: skip
    (wheel,) = (tmp_path / "dist").glob("gan_rewrite-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        archive.extractall(tmp_path / "unpacked")
    wanted = {f"gan_rewrite/hub_configs/{path.name}" for path in (ROOT / "hub_configs").glob("*.yaml")}
    assert wanted and wanted <= set(names)
    script = "import gan_rewrite as gr, sys; from gan_rewrite.hub.known import CONFIG_DIR; " \
             "print(CONFIG_DIR); print(sorted(gr.known_models()))"  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(tmp_path / "unpacked")
    run = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=120)  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    config_dir, names_printed = run.stdout.strip().splitlines()
    assert Path(config_dir) == tmp_path / "unpacked" / "gan_rewrite" / "hub_configs"
    assert "dcgan-faces-64" in names_printed and "stylegan2-ffhq-1024" in names_printed


# ----- the CLI's messages -----------------------------------------------------------------------------------
def test_rule_scale_that_is_not_a_number_says_so(tmp_path, capsys) -> None:
    with pytest.raises(SystemExit):
        main(["sample", "dcgan-faces-64", "--out", str(tmp_path / "g.png"), "--rule", "glasses.safetensors:abc"])
    assert "must be a number after the last ':'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["sample", "dcgan-faces-64", "--out", str(tmp_path / "g.png"), "--rule", "owner/glasses:x"])
    assert "must be a number after the last ':'" in capsys.readouterr().err


def test_a_spec_passed_as_a_rule_points_to_rewrite_spec(tmp_path, capsys) -> None:
    spec_file = tmp_path / "rule.json"
    spec_file.write_text("{}")
    for rule in (str(spec_file), f"{spec_file}:0.5"):
        with pytest.raises(SystemExit):
            main(["sample", "dcgan-faces-64", "--out", str(tmp_path / "g.png"), "--rule", rule])
        err = capsys.readouterr().err
        assert "is a rule spec" in err and "rewrite MODEL --spec" in err


def test_a_misspelled_model_suggests_the_nearest_name(tmp_path, capsys) -> None:
    assert main(["sample", "dcgan-face-64", "--out", str(tmp_path / "g.png")]) == 2
    assert "did you mean 'dcgan-faces-64'" in capsys.readouterr().err


def test_rewrite_with_the_optimiser_says_roughly_how_long(spec, tiny_folder, tmp_path, capsys) -> None:  # noqa: F811
    spec = {**spec, "method": "optimize", "solver": {"steps": 3}}
    out = tmp_path / "rule.safetensors"
    assert main(["rewrite", str(tiny_folder), "--spec", str(write_spec(tmp_path / "r.json", spec)),
                 "--out", str(out)]) == 0  # fmt: skip
    err = capsys.readouterr().err
    assert "solving with the optimiser: up to 3 steps, roughly" in err and out.is_file()
    closed = tmp_path / "closed.safetensors"
    assert main(["rewrite", str(tiny_folder), "--spec", str(write_spec(tmp_path / "c.json", {**spec,
                 "method": "closed_form", "solver": {}})), "--out", str(closed)]) == 0  # fmt: skip
    assert "optimiser" not in capsys.readouterr().err


def test_rewrite_with_learn_counts_its_steps_from_its_samples(spec, tiny_folder, tmp_path, capsys) -> None:  # noqa: F811
    """``method="learn"`` without ``steps`` takes ``PASSES`` passes over its batches; the CLI says how many."""
    spec = {**spec, "method": "learn", "solver": {"samples": 5, "batch_size": 4}}
    out = tmp_path / "rule.safetensors"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("gan_rewrite.rewrite.learn.PASSES", 2)  # keep the test short; the count is what is checked
        assert main(["rewrite", str(tiny_folder), "--spec", str(write_spec(tmp_path / "r.json", spec)),
                     "--out", str(out)]) == 0  # fmt: skip
    # 6 goal samples (the paste sample, also the context's, and 5 random ones): 2 batches of 4, seen twice.
    err = capsys.readouterr().err
    assert "solving with the optimiser: 4 steps, roughly" in err and out.is_file()
    assert RuleDelta.load(out).method == "learn"
