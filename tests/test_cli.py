"""The `gan-rewrite` command: argument parsing, sample grids, errors as messages (exit 2), not tracebacks."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from gan_rewrite.cli import main, parse_seeds


@pytest.mark.parametrize(
    ("text", "seeds"), [("0-3", [0, 1, 2, 3]), ("5", [5]), ("0,3,5", [0, 3, 5]), ("0-2,10", [0, 1, 2, 10])]
)
def test_parse_seeds(text: str, seeds: list[int]) -> None:
    assert parse_seeds(text) == seeds


@pytest.mark.parametrize("text", ["", "a", "3-1", "-2", "1-", "1,,2"])
def test_parse_seeds_rejects(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="invalid seeds"):
        parse_seeds(text)


def test_sample_writes_a_grid_of_the_seeds(dcgan_faces, tmp_path: Path, capsys) -> None:
    out = tmp_path / "grid.png"
    assert (
        main(["sample", "dcgan-faces-64", "--seeds", "0-3", "--out", str(out), "--nrow", "2", "--device", "cpu"]) == 0
    )
    assert "ms per image" in capsys.readouterr().out
    grid = np.asarray(Image.open(out))
    assert grid.shape == (2 * 66 + 2, 2 * 66 + 2, 3)
    # The top-left tile is seed 0's image, exactly as the library renders it.
    expected = ((dcgan_faces.sample([0])[0].permute(1, 2, 0) + 1) * 127.5).round().numpy().astype(np.uint8)
    assert np.array_equal(grid[2:66, 2:66], expected)


def test_errors_are_messages_not_tracebacks(tmp_path: Path, capsys) -> None:
    assert main(["sample", "no-such-model", "--out", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err
    assert "known model name" in err and "Traceback" not in err
    assert not (tmp_path / "x.png").exists()


def test_console_script_runs(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "gan_rewrite.cli",
            "convert",
            str(tmp_path / "none.pt"),
            str(tmp_path / "o"),
            "--format",
            "dcgan",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert "does not exist" in result.stderr
