"""The Space as its users meet it (issue 12), in Chromium through Playwright: clicking samples into the editors,
a translucent brush, refusals as one toast, one progress indicator, labelled held-out seeds, strengths that
follow the rules, rules kept across a reload, Hub calls that give up in seconds, rules found on the Hub, and
the layout at 1366×768 and 1920×1080 (screenshots are written to the test's tmp folder).

Needs the `playwright` package and ``/usr/bin/chromium`` (skipped, with the reason, when either is missing).
"""

from __future__ import annotations

import dataclasses
import io
import socket
import time

import numpy as np
import pytest
import test_space_browser
from PIL import Image
from space_loader import load_app
from test_space_browser import ARGS, CHROMIUM, EYE_COLS, EYE_ROWS, GLASSES_COLS, MODEL, wait_idle

sync_api = pytest.importorskip("playwright.sync_api")

import gan_rewrite as gr  # noqa: E402
from gan_rewrite.space import LABEL_HEIGHT, PREVIEW_ZOOM, SharedModels  # noqa: E402

pytestmark = [
    pytest.mark.filterwarnings("ignore:'future.no_silent_downcasting'"),
    pytest.mark.filterwarnings("ignore:The copy keyword is deprecated"),
]
TIMEOUT_MS = 60_000
SIZES = [(1366, 768), (1920, 1080)]


@pytest.fixture(scope="module")
def space(dcgan_faces):
    app = load_app()
    models = SharedModels(stats_n=300)
    models.add(MODEL, dcgan_faces)
    demo = app.build_demo(MODEL, models=models, seeds=(1, 35, 1))
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        yield {"url": f"http://127.0.0.1:{port}/", "app": app, "G": dcgan_faces}
    finally:
        demo.close()


@pytest.fixture(scope="module")
def browser(space):
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        try:
            yield browser
        finally:
            browser.close()


def open_page(browser, space, size=(1366, 768), context=None):
    """A fresh browser context (its own local storage) on the Space, loaded and idle."""
    context = context or browser.new_context(viewport={"width": size[0], "height": size[1]})
    page = context.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    page.goto(space["url"])
    page.locator("#after-grid img").wait_for()
    page.locator("#samples img").first.wait_for()
    for editor in ("context", "copy", "paste"):
        page.locator(f"#{editor}-editor canvas").first.wait_for()
    wait_idle(page)
    return page


def paint(page, editor_id: str, rows=(31,), cols=EYE_COLS) -> None:
    """Strokes on an editor (see test_space_browser.paint; by default one stroke across the eyes), scrolled into
    the viewport first."""
    page.locator(f"#{editor_id}").scroll_into_view_if_needed()
    test_space_browser.paint(page, editor_id, rows, cols)
    page.wait_for_timeout(300)  # the editor hands its layers over after the stroke


def toasts(page) -> list[str]:
    return [text for text in page.locator(".toast-body").all_inner_texts() if text.strip()]


def editor_picture(page, editor: str) -> np.ndarray:
    shot = page.locator(f"#{editor}-editor canvas").first.screenshot()
    return np.asarray(Image.open(io.BytesIO(shot)).convert("RGB"))


def slider_value(page, elem_id: str) -> float:
    return float(page.locator(f"#{elem_id} input[type=number]").input_value())


def rule_file(space, tmp_path, scale: float):
    """A rule solved by the library (copy seed 35 → paste seed 1, context seed 1) saved at ``scale``."""
    from masks import box

    rw = gr.Rewriter(space["G"], layer="layer3")
    rw.compute_stats(n=200, progress=False)
    rw.add_context(1, box(64, 24, 12, 38, 52))
    rw.set_copy(35, box(64, 24, 12, 38, 52))
    rw.set_paste(1, box(64, 24, 12, 38, 52))
    delta = dataclasses.replace(rw.solve(rank=1), scale=scale)
    return delta, delta.save(tmp_path / "glasses.safetensors")


# ----- 1. samples go into the editors; the context is painted on several samples -------------------------
def test_clicking_a_sample_puts_it_into_the_chosen_editor(browser, space):
    page = open_page(browser, space)
    before = editor_picture(page, "copy")
    page.locator("#gallery-target").get_by_label("copy").check()
    page.locator("#samples").get_by_text("seed 5", exact=True).click()
    page.wait_for_function("() => document.querySelector('#copy-seed input').value === '5'")
    wait_idle(page)
    page.wait_for_timeout(500)
    assert np.abs(editor_picture(page, "copy").astype(int) - before).mean() > 5, "the copy editor still shows seed 35"

    # The paper's way: paint the context, click the next sample, paint again; each painting is kept.
    page.locator("#gallery-target").get_by_label("context").check()
    paint(page, "context-editor")
    page.locator("#samples").get_by_text("seed 4", exact=True).click()
    page.wait_for_function("() => document.querySelector('#context-seed input').value === '4'")
    page.locator("#contexts").get_by_text("1 saved context(s), seeds 1").wait_for()
    assert any("Kept the context painted on seed 1" in text for text in toasts(page))
    page.context.close()


# ----- 2. the brush lets the picture show through ---------------------------------------------------------
def test_the_brush_is_translucent(browser, space):
    page = open_page(browser, space)
    clean = editor_picture(page, "paste").astype(int)
    paint(page, "paste-editor", EYE_ROWS)
    painted = editor_picture(page, "paste").astype(int)
    changed = np.abs(painted - clean).sum(-1) > 30
    assert changed.sum() > 100, "the strokes did not reach the canvas"
    under = painted[changed]
    magenta = np.abs(under - np.array([255, 0, 255])).sum(-1)
    # opaque magenta is (255, 0, 255) everywhere under the strokes; translucent strokes keep the face visible
    assert np.median(magenta) > 60, f"the paint hides the picture (median distance to magenta {np.median(magenta)})"
    faces = np.corrcoef(under.sum(-1), clean[changed].sum(-1))[0, 1]
    assert faces > 0.5, f"the picture under the strokes is not visible through them (correlation {faces:.2f})"
    page.context.close()


# ----- 3 and 4. a refusal is one toast; a Rewrite shows one progress indicator ----------------------------
def test_a_refused_action_leaves_the_page_as_it_was(browser, space):
    page = open_page(browser, space)
    src = page.locator("#after-grid img").get_attribute("src")
    page.locator("#rewrite-button").click()
    page.locator(".toast-body").first.wait_for()
    wait_idle(page)
    assert [t for t in toasts(page) if "Nothing painted for the context" in t] and len(toasts(page)) == 1
    page.locator("#revert-button").click()
    wait_idle(page)
    for panel in ("after-grid", "before-grid", "rules"):
        assert page.locator(f"#{panel}").get_by_text("Error", exact=True).count() == 0, f"{panel} shows an error"
    assert page.locator("#after-grid img").get_attribute("src") == src
    page.context.close()


def test_a_rewrite_shows_one_progress_indicator_where_the_result_appears(browser, space):
    page = open_page(browser, space)
    paint(page, "context-editor")
    paint(page, "copy-editor", (30,), GLASSES_COLS)
    paint(page, "paste-editor")
    # the module's first Rewrite also computes the key statistics, so it lasts long enough to watch
    page.locator("#rewrite-button").click()
    seen, where = 0, set()
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        shown = page.evaluate(
            "() => [...document.querySelectorAll('[data-testid=status-tracker]')]"
            ".filter(e => !e.classList.contains('hide') && e.getBoundingClientRect().height > 0)"
            ".map(e => (e.closest('[id]') || {}).id || '?')"
        )
        seen = max(seen, len(shown))
        where.update(shown)
        if page.get_by_text("Applied rules").count():
            break
        page.wait_for_timeout(30)
    wait_idle(page)
    assert page.get_by_text("Applied rules").count(), "the rewrite did not finish"
    assert seen <= 1, f"{seen} progress indicators at once, on {sorted(where)}"
    assert where <= {"after-grid"}, f"progress shown on {sorted(where)}"
    page.context.close()


# ----- 5. the held-out strips name their seeds -------------------------------------------------------------
def test_the_held_out_strips_name_their_seeds(browser, space):
    page = open_page(browser, space)
    seeds = space["app"].PREVIEW_SEEDS
    label = page.locator("#before-grid label").first.inner_text()
    assert f"{seeds[0]}–{seeds[-1]}" in label
    body = page.request.get(page.locator("#after-grid img").get_attribute("src")).body()
    grid = np.asarray(Image.open(io.BytesIO(body)).convert("L"), dtype=np.int16)
    size, padding, z = 64, 2, PREVIEW_ZOOM
    assert grid.shape[0] == (size + 2 * padding + LABEL_HEIGHT) * z, "no band of seed numbers under the samples"
    band = grid[(size + 2 * padding) * z :]
    for i in range(len(seeds)):
        left = (padding + i * (size + padding)) * z
        assert (band[:, left : left + size * z] < 128).sum() > 20, f"no seed number under sample {i}"
    page.context.close()


# ----- 6 and 7. strengths follow the rules; a reload keeps them -------------------------------------------------
def test_loaded_rules_keep_their_strength_and_description_a_reload_and_revert(browser, space, tmp_path):
    _, path = rule_file(space, tmp_path, 0.5)
    page = open_page(browser, space)
    page.locator("#rule-upload input[type=file]").set_input_files(str(path))
    page.locator("#rules").get_by_text("strength 0.5").wait_for()
    wait_idle(page)
    text = page.locator("#rules").inner_text()
    assert "glasses.safetensors: layer3: copy seed 35 → paste seed 1" in text, text  # described by its spec
    assert slider_value(page, "strength") == 0.5
    after = page.locator("#after-grid img").get_attribute("src").rsplit("/", 1)[-1]

    page.reload()  # the rule is kept in the browser and restored
    page.locator("#rules").get_by_text("strength 0.5").wait_for()
    wait_idle(page)
    assert "copy seed 35 → paste seed 1" in page.locator("#rules").inner_text()
    assert page.locator("#after-grid img").get_attribute("src").rsplit("/", 1)[-1] == after

    page.locator("#revert-button").click()
    page.locator("#rules").get_by_text("No rules yet").wait_for()
    wait_idle(page)
    assert slider_value(page, "strength") == 1.0, "Revert left the strength slider at the reverted rule's strength"
    page.context.close()


# ----- 8 and 12. the Hub: rules found for the model; an unreachable Hub answers within seconds --------------
def test_rules_shared_for_the_model_are_offered_and_load(browser, space, hub, tmp_path):
    delta, _ = rule_file(space, tmp_path, 1.0)
    repo = hub.repo_id("glasses")
    delta = dataclasses.replace(delta, base_model=MODEL)
    delta.push_to_hub(repo, preview_seeds=None)
    page = open_page(browser, space)
    page.locator("#list-rules").click()
    wait_idle(page)
    page.locator("#hub-rule input").click()
    option = page.get_by_role("option").filter(has_text=repo)
    assert "copy seed 35 → paste seed 1" in option.inner_text()
    option.click()
    page.locator("#load-hub-rule").click()
    page.locator("#rules").get_by_text(f"loaded {repo}").wait_for()
    page.context.close()


def test_an_unreachable_hub_answers_within_five_seconds(browser, space, hub, monkeypatch):
    from huggingface_hub import constants

    with socket.socket() as hole:  # accepts connections and never answers
        hole.bind(("127.0.0.1", 0))
        hole.listen(16)
        dead = f"http://127.0.0.1:{hole.getsockname()[1]}"
        monkeypatch.setattr(constants, "ENDPOINT", dead)
        monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", dead + "/{repo_id}/resolve/{revision}/{filename}")
        page = open_page(browser, space)
        page.locator("#hub-rule input").fill("someone/a-rule")
        page.locator("#hub-rule input").press("Enter")
        start = time.monotonic()
        page.locator("#load-hub-rule").click()
        page.locator(".toast-body").filter(has_text="could not be reached").wait_for(timeout=15_000)
        elapsed = time.monotonic() - start
        page.context.close()
    assert elapsed < 7, f"the app answered after {elapsed:.1f} s"


# ----- 10. layout at two common screen sizes ---------------------------------------------------------------------
def check_layout(page, where: str) -> None:
    for editor in ("context", "copy", "paste"):
        label = page.locator(f"#{editor}-editor label").first.bounding_box()
        for tool in page.locator(f"#{editor}-editor button").all():
            box = tool.bounding_box() if tool.is_visible() else None
            if box is None:
                continue
            overlap = min(label["x"] + label["width"], box["x"] + box["width"]) - max(label["x"], box["x"])
            vertical = min(label["y"] + label["height"], box["y"] + box["height"]) - max(label["y"], box["y"])
            assert overlap <= 0 or vertical <= 0, f"{where}: the {editor} editor's label is covered by its toolbar"
    for gallery in ("samples", "matches"):
        if not page.locator(f"#{gallery}").is_visible():
            continue
        empty = page.evaluate(
            f"() => {{ const w = document.querySelector('#{gallery} .grid-wrap');"
            " const g = w.querySelector('.grid-container');"
            " return w.getBoundingClientRect().bottom - g.getBoundingClientRect().bottom; }"
        )
        assert empty < 40, f"{where}: the {gallery} gallery leaves {empty:.0f} px empty"
        truncated = page.evaluate(
            f"() => [...document.querySelectorAll('#{gallery} .caption-label')]"
            ".filter(e => e.scrollWidth > e.clientWidth + 1).map(e => e.textContent)"
        )
        assert not truncated, f"{where}: truncated captions {truncated}"


def test_layout_at_1366x768_and_1920x1080(browser, space, tmp_path):
    page = open_page(browser, space, SIZES[0])
    assert not page.locator("#matches").is_visible(), "an empty matches gallery takes room before any search"
    paint(page, "context-editor")
    page.locator("#find-button").click()
    page.locator("#matches img").first.wait_for()
    wait_idle(page)
    for width, height in SIZES:
        page.set_viewport_size({"width": width, "height": height})
        page.wait_for_timeout(300)
        check_layout(page, f"{width}×{height}")
        shot = tmp_path / f"space-{width}x{height}.png"
        page.screenshot(path=str(shot), full_page=True)
        print(f"screenshot: {shot}")
    page.context.close()
