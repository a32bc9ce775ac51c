"""The Space's Paint tab (spaces/rewrite/paint_tab.py) through gradio_client: concepts painted in the
browser, dissection, painting equal to the library's, the ablation rule, and per-session isolation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from space_loader import load_app

pytest.importorskip("gradio", reason="the Space tests need the `demo` extra (gradio)")
gradio_client = pytest.importorskip("gradio_client", reason="the Space tests need gradio_client")

from test_space import EYES, GLASSES, MODEL, client, editor_value, free_port, rect, weights  # noqa: E402

from gan_rewrite.dissect import PaintedConcepts, ablation_rule, dissect, paint  # noqa: E402
from gan_rewrite.rewrite.delta import RuleDelta  # noqa: E402
from gan_rewrite.space import SharedModels, preview_picture  # noqa: E402

pytestmark = [
    pytest.mark.filterwarnings("ignore:'future.no_silent_downcasting'"),
    pytest.mark.filterwarnings("ignore:The copy keyword is deprecated"),
]


@pytest.fixture(scope="module")
def space(dcgan_faces, tmp_path_factory):
    app = load_app()
    models = SharedModels(stats_n=300)
    models.add(MODEL, dcgan_faces)
    demo = app.build_demo(MODEL, models=models)
    port = free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    try:
        yield {"url": f"http://127.0.0.1:{port}/", "models": models, "G": dcgan_faces,
               "tmp": tmp_path_factory.mktemp("paint")}  # fmt: skip
    finally:
        demo.close()


def test_paint_tab_dissects_paints_and_builds_the_rule(space) -> None:
    import paint_tab  # imported by the app from beside it

    G = space["G"]
    original = weights(G)
    c = client(space)
    with pytest.raises(gradio_client.exceptions.AppError, match="Dissect first"):
        c.predict(MODEL, "layer3", "glasses", 5, "add", 1, editor_value(EYES, space["tmp"]), api_name="/paint")
    for seed in (35, 4):
        text, *_ = c.predict(MODEL, "glasses", seed, editor_value(GLASSES, space["tmp"]), api_name="/paint_add_example")
    assert "glasses" in text and "35, 4" in text
    pick, table = c.predict(MODEL, "layer3", api_name="/paint_dissect")
    assert "glasses" in table
    picture = c.predict(MODEL, "layer3", "glasses", 5, "add", 1, editor_value(EYES, space["tmp"]), api_name="/paint")
    # the same edit by the library alone
    G_, lock = space["models"].get(MODEL)
    mask = torch.from_numpy(EYES.astype(np.float32))
    with lock:
        from gan_rewrite.dissect.quantiles import compute_quantiles

        q = compute_quantiles(G, "layer3", paint_tab.UnitTables().n, progress=False)
        concepts = PaintedConcepts({"glasses": [(35, GLASSES), (4, GLASSES)]})
        units = [u for u, _ in dissect(G, "layer3", concepts, quantiles=q, progress=False).top("glasses", 5)]
        expected = torch.cat([G.sample([1]), paint(G, "layer3", [1], units, mask, value=q.at(0.99))])
    got = np.asarray(Image.open(picture).convert("RGB"), dtype=np.int16)
    assert np.array_equal(got, np.asarray(preview_picture(expected, zoom=4), dtype=np.int16))
    rule_path = c.predict(MODEL, "layer3", "glasses", 5, api_name="/paint_ablation_rule")
    rule = RuleDelta.load(rule_path)
    assert sorted(rule.spec["units"]) == sorted(units) and rule.spec["concept"] == "glasses"
    torch.testing.assert_close(rule.delta_weight(), ablation_rule(G, "layer3", units).delta_weight())
    for key, value in weights(G).items():  # the shared model is untouched
        assert torch.equal(value, original[key]), key


def test_paint_sessions_are_isolated(space) -> None:
    first, second = client(space), client(space)
    first.predict(MODEL, "hat", 7, editor_value(rect(0, 12, 8, 56), space["tmp"]), api_name="/paint_add_example")
    text, *_ = second.predict(MODEL, "mouth", 1, editor_value(rect(44, 56, 20, 44), space["tmp"]),
                              api_name="/paint_add_example")  # fmt: skip
    assert "mouth" in text and "hat" not in text
    with pytest.raises(gradio_client.exceptions.AppError, match="Nothing painted"):
        second.predict(MODEL, "mouth", 1, editor_value(None, space["tmp"]), api_name="/paint_add_example")
    _, table = first.predict(MODEL, "layer3", api_name="/paint_dissect")
    assert "hat" in table and "mouth" not in table
