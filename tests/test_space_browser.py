"""The Gradio Space in a real browser: Playwright drives Debian's Chromium (headless) to paint the context,
copy and paste strokes with the mouse, click Rewrite, and read the before / after grids back.

Needs the `playwright` Python package and ``/usr/bin/chromium`` (``apt-get install chromium``); playwright's
own browser download is never used. Skipped, with the reason, only when one of the two is missing.
"""

from __future__ import annotations

import io
import shutil
import socket

import numpy as np
import pytest
from PIL import Image
from space_loader import load_app

CHROMIUM = "/usr/bin/chromium"
if shutil.which(CHROMIUM) is None:
    pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium)", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="the browser test needs `pip install playwright`")
pytest.importorskip("gradio", reason="the Space tests need the `demo` extra (gradio)")

from gan_rewrite.space import PREVIEW_ZOOM, SharedModels  # noqa: E402

pytestmark = [
    pytest.mark.filterwarnings("ignore:'future.no_silent_downcasting'"),  # gradio's own pandas calls
    pytest.mark.filterwarnings("ignore:The copy keyword is deprecated"),
]

MODEL = "dcgan-faces-64"
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
]
TIMEOUT_MS = 60_000
# Where the strokes go, in model pixels (64×64 faces, aligned): rows of horizontal strokes over the eyes.
EYE_ROWS, EYE_COLS = (27, 31, 35), (14, 50)
GLASSES_ROWS, GLASSES_COLS = (26, 30, 34, 38), (11, 54)  # seed 35 wears dark glasses there
EYES = (slice(24, 38), slice(12, 52))  # the region the after-grid must change in



@pytest.fixture(scope="module")
def space_url(dcgan_faces):
    app = load_app()
    models = SharedModels(stats_n=300)
    models.add(MODEL, dcgan_faces)
    demo = app.build_demo(MODEL, models=models, seeds=(1, 35, 1))
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        demo.close()


IDLE = "() => [...document.querySelectorAll('[data-testid=status-tracker]')].every(e => e.classList.contains('hide'))"


def wait_idle(page) -> None:
    """Until no component shows a pending or running event (gradio hides every status tracker)."""
    page.wait_for_timeout(200)
    page.wait_for_function(IDLE)


def paint(page, editor_id: str, rows, cols, size: int = 64) -> None:
    """Drag the brush across the editor's canvas along ``rows`` from ``cols[0]`` to ``cols[1]`` (model pixels).

    The sample is shown centred in the canvas; its on-screen size is read from the canvas box and the zoom
    the editor reports (the picture is EDITOR_SIZE pixels at that zoom).
    """
    editor = page.locator(f"#{editor_id}")
    brush = editor.get_by_role("button", name="Brush", exact=True)
    if "highlight" not in (brush.get_attribute("class") or ""):  # the brush is the default tool
        brush.click()
    canvas = editor.locator("canvas").first
    box = canvas.bounding_box()
    zoom = float(editor.locator(".zoom-number span").inner_text().strip("%")) / 100
    shown = load_app().EDITOR_SIZE * zoom
    left = box["x"] + (box["width"] - shown) / 2
    top = box["y"] + (box["height"] - shown) / 2
    for row in rows:
        y = top + (row + 0.5) / size * shown
        page.mouse.move(left + cols[0] / size * shown, y)
        page.mouse.down()
        for step in range(1, 11):
            x = cols[0] + (cols[1] - cols[0]) * step / 10
            page.mouse.move(left + x / size * shown, y)
        page.mouse.up()


def grid_pixels(page, element_id: str) -> np.ndarray:
    src = page.locator(f"#{element_id} img").get_attribute("src")
    body = page.request.get(src).body() if not src.startswith("data:") else None
    if body is None:
        import base64

        body = base64.b64decode(src.split(",", 1)[1])
    return np.asarray(Image.open(io.BytesIO(body)).convert("RGB"), dtype=np.int16)


def tiles(grid: np.ndarray, count: int = 8, size: int = 64, padding: int = 2) -> np.ndarray:
    """The ``count`` samples of a preview row, ``(count, size, size, 3)`` at model resolution."""
    z = PREVIEW_ZOOM
    out = []
    for i in range(count):
        top, left = padding * z, (padding + i * (size + padding)) * z
        out.append(grid[top : top + size * z : z, left : left + size * z : z])
    return np.stack(out)


def test_paint_and_rewrite_in_chromium(space_url, tmp_path):
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1800})
            page.set_default_timeout(TIMEOUT_MS)
            page.goto(space_url)
            page.locator("#after-grid img").wait_for()  # the load events have rendered the grids
            for editor_id in ("context-editor", "copy-editor", "paste-editor"):
                page.locator(f"#{editor_id} canvas").first.wait_for()
            wait_idle(page)
            before = grid_pixels(page, "before-grid")

            paint(page, "context-editor", EYE_ROWS, EYE_COLS)
            paint(page, "copy-editor", GLASSES_ROWS, GLASSES_COLS)
            paint(page, "paste-editor", EYE_ROWS, EYE_COLS)
            page.locator("#rewrite-button").click()
            page.get_by_text("Applied rules").wait_for()
            wait_idle(page)
            after = grid_pixels(page, "after-grid")
            screenshot = tmp_path / "space.png"
            page.screenshot(path=str(screenshot), full_page=True)
            print(f"screenshot: {screenshot}")
        finally:
            browser.close()

    assert before.shape == after.shape
    change = np.abs(tiles(after) - tiles(before)).mean(-1)  # (8, 64, 64)
    inside = change[:, EYES[0], EYES[1]].mean()
    outside_mask = np.ones((64, 64), bool)
    outside_mask[EYES] = False
    outside = change[:, outside_mask].mean()
    print(f"mean |change| in the eyes {inside:.1f}/255, elsewhere {outside:.1f}/255")
    assert inside > 4, "the rule painted in the browser changed nothing where it was pasted"
    assert inside > 1.25 * outside, "the change is not concentrated where the rule was pasted"
