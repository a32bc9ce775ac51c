"""Latency of the Space: from a Rewrite request to the after-grid, through gradio_client, on the embedded DCGAN.

The app (``spaces/rewrite/app.py``) runs in this process on 127.0.0.1; a ``gradio_client.Client`` sends the
three painted masks as RGBA PNG files (as the browser's editor does) and waits for the before / after grids.
Measured:

1. **First Rewrite** of a fresh app: includes the key statistics (``--n`` samples, computed once per model
   and layer, then reused by every session).
2. **Later Rewrites** (median of ``--reps``): statistics cached; mask upload, solve, rendering the before /
   after rows of 8 held-out seeds, PNG encoding, and downloading both grids.

Baseline, same process and same statistics: the library alone — ``Rewriter`` + ``solve()`` (the default solve) +
``load_rule`` / ``sample`` / ``unload_rules`` of the same 8 seeds (and, for the first call, the statistics).
The ratio is app / library. Target: a later Rewrite ≤ 5 s on the CPU.

    python benchmarks/space_latency.py [--n 1000] [--reps 5]
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import socket
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

import gan_rewrite as gr  # noqa: E402
from gan_rewrite.rewrite.stats import compute_stats  # noqa: E402
from gan_rewrite.rules import rules_applied  # noqa: E402
from gan_rewrite.space import SharedModels, preview_picture  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MODEL, LAYER, SIZE = "dcgan-faces-64", "layer3", 64


def rect(top: int, bottom: int, left: int, right: int) -> np.ndarray:
    mask = np.zeros((SIZE, SIZE), bool)
    mask[top:bottom, left:right] = True
    return mask


EYES, GLASSES = rect(24, 36, 12, 52), rect(23, 41, 9, 56)
SEEDS = (1, 35, 1)  # context, copy, paste


def load_app():
    spec = importlib.util.spec_from_file_location("space_app", ROOT / "spaces" / "rewrite" / "app.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def editor_value(mask: np.ndarray, folder: Path) -> dict:
    from gradio_client import handle_file

    big = np.kron(mask, np.ones((4, 4), bool))
    rgba = np.zeros((*big.shape, 4), np.uint8)
    rgba[big] = (255, 0, 255, 255)
    path = folder / f"mask-{uuid.uuid4().hex}.png"
    Image.fromarray(rgba, "RGBA").save(path)
    return {"background": None, "layers": [handle_file(str(path))], "composite": None}


def through_app(client, folder: Path) -> float:
    start = time.perf_counter()
    client.predict(
        MODEL, LAYER,
        SEEDS[0], editor_value(EYES, folder),
        SEEDS[1], editor_value(GLASSES, folder),
        SEEDS[2], editor_value(EYES, folder),
        1.0,
        api_name="/rewrite",
    )  # fmt: skip
    return time.perf_counter() - start


def through_library(G, n: int, preview_seeds: list[int], *, cache_dir: str | None, use_cache: bool) -> float:
    start = time.perf_counter()
    stats = compute_stats(G, LAYER, n, progress=False, cache_dir=cache_dir, use_cache=use_cache)
    rw = gr.Rewriter(G, layer=LAYER)
    rw.set_stats(stats)
    rw.add_context(SEEDS[0], EYES)
    rw.set_copy(SEEDS[1], GLASSES)
    rw.set_paste(SEEDS[2], EYES)
    delta = rw.solve(rank=1)
    before = G.sample(preview_seeds)
    with rules_applied(G, [(delta, 1.0)]):
        after = G.sample(preview_seeds)
    preview_picture(before), preview_picture(after)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1000, help="samples of the key statistics (the app's default)")
    parser.add_argument("--reps", type=int, default=5, help="later Rewrites to time")
    args = parser.parse_args()
    from gradio_client import Client

    work = Path(tempfile.mkdtemp(prefix="space-latency-"))
    os.environ["GAN_REWRITE_HOME"] = str(work / "home")  # a cold statistics cache for the first call
    G = gr.load_generator(MODEL, device="cpu")
    app = load_app()

    # Library baseline: first call computes the statistics (no cache), later calls reuse them.
    lib_first = through_library(G, args.n, app.PREVIEW_SEEDS, cache_dir=str(work / "lib-stats"), use_cache=False)
    through_library(G, args.n, app.PREVIEW_SEEDS, cache_dir=str(work / "lib-stats"), use_cache=True)  # fill it
    lib_later = statistics.median(
        through_library(G, args.n, app.PREVIEW_SEEDS, cache_dir=str(work / "lib-stats"), use_cache=True)
        for _ in range(args.reps)
    )

    models = SharedModels(stats_n=args.n)
    models.add(MODEL, G)
    demo = app.build_demo(MODEL, models=models)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        client = Client(f"http://127.0.0.1:{port}/", verbose=False, download_files=str(work / "downloads"))
        app_first = through_app(client, work)
        app_later = statistics.median(through_app(client, work) for _ in range(args.reps))
    finally:
        demo.close()

    print(f"dcgan-faces-64 {LAYER}, statistics n={args.n}, 8 held-out seeds, CPU ({os.cpu_count()} cores)")
    print(f"{'':28s}{'app (gradio_client)':>22s}{'library':>12s}{'ratio':>8s}")
    print(f"{'first Rewrite (+ stats)':28s}{app_first:21.2f}s{lib_first:11.2f}s{app_first / lib_first:8.2f}")
    print(f"{'later Rewrite (median)':28s}{app_later:21.2f}s{lib_later:11.2f}s{app_later / lib_later:8.2f}")
    verdict = "pass" if app_later <= 5 else "FAIL"
    print(f"target: later Rewrite <= 5 s on the CPU -> {app_later:.2f} s {verdict}")


if __name__ == "__main__":
    sys.exit(main())
