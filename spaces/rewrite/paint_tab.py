"""The Space's "Paint" tab (GANPaint): find the units that draw a concept, then paint with them.

1. **Concepts**: name a concept, paint it on a few samples ("Add example"), or, on the toy world, use its
   segmenter's classes; **Dissect** ranks the units of a layer by IoU with each concept and fills the concept
   picker.
2. **Paint**: brush a region on a sample, pick a concept and how many of its top units, **add** (units set to
   their 0.99 activation quantile inside the region) or **remove** (set to zero), and see before/after.
3. **Switch off everywhere**: the concept's top units as an ablation rule (a file to download and load anywhere).

Isolation as in the rest of the app: a session's painted concepts and dissection live only in its
``gr.State``; the shared generator is used only under its lock and is never changed (painting is a run-time
edit; the ablation rule is only built, not loaded). Unit quantiles are shared per (model, layer).

Added to the app by ``build_paint_tab(models=..., model_box=..., pictures=..., get_model=...)`` inside its
``gr.Blocks``.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gradio as gr
import numpy as np

from gan_rewrite.dissect import ablation_rule, dissect, paint
from gan_rewrite.dissect.space import UnitTables, default_unit_layer, paint_units, paint_value, session_concepts
from gan_rewrite.errors import GanRewriteError
from gan_rewrite.space import SharedModels, editor_mask, parse_seed, picture_file, preview_picture, sample_picture

EDITOR_SIZE = 256
TOP_SHOWN = 5


def new_paint_session() -> dict[str, Any]:
    """A session's Paint state: its model and layer, painted concepts ``{name: [(seed, mask)]}``, dissection."""
    return {"model": None, "layer": None, "concepts": {}, "dissection": None}


def _session(session: dict[str, Any], model: str, layer: str | None = None) -> dict[str, Any]:
    if session.get("model") != model:  # concepts belong to one model
        session.update(new_paint_session(), model=model)
    if layer is not None and session.get("layer") != layer:  # a dissection belongs to one layer
        session["layer"], session["dissection"] = layer, None
    return session


def _seed(value: Any) -> int:
    try:
        return parse_seed(value)
    except GanRewriteError as err:
        raise gr.Error(str(err)) from None


def concepts_text(session: dict[str, Any]) -> str:
    concepts = session.get("concepts") or {}
    if not concepts:
        return "No painted concepts (on the toy world, Dissect uses its segmenter's classes)."
    return "Painted: " + "; ".join(f"**{n}** on seeds {', '.join(str(s) for s, _ in v)}" for n, v in concepts.items())


def dissection_text(session: dict[str, Any]) -> str:
    result = session.get("dissection")
    if result is None:
        return "Not dissected yet."
    lines = [
        f"* **{c}**: " + ", ".join(f"unit {u} ({v:.2f})" for u, v in result.top(c, TOP_SHOWN))
        for c in result.concepts
    ]
    return f"Top units of {result.layer} by IoU:\n\n" + "\n".join(lines)


def build_paint_tab(*, models: SharedModels, model_box: gr.components.Component, pictures: Path,
                    get_model: Callable[[str], Any], first_model: str | None = None,
                    guard: Callable[[Any], Any] | None = None) -> None:  # fmt: skip
    """Add the "Paint" tab to the enclosing ``gr.Blocks``.

    Args:
        models: the app's shared generators (with their locks).
        model_box: the app's model picker (its value names the model).
        pictures: the folder the app returns pictures from.
        first_model: the model shown first (its layers and first samples).
        guard: applied to each image editor (the app's refusal of unreadable or huge pictures).
        get_model: the app's ``name → (generator, lock)``, with its refusals as ``gr.Error`` (one place
            decides which names a Space loads).
    """
    tables = UnitTables()
    _model = get_model

    def layers_of(name: str):
        G, lock = _model(name)
        with lock:
            default = default_unit_layer(G)
        return gr.Dropdown(choices=list(G.layer_names[:-1]), value=default)

    def show_seed(name: str, seed: float):
        G, lock = _model(name)
        with lock:
            image = G.sample([_seed(seed)])[0]
        picture = picture_file(sample_picture(image, EDITOR_SIZE), pictures)
        return {"background": picture, "layers": [], "composite": picture}

    def add_example(name: str, concept: str, seed: float, value: dict | None, session: dict[str, Any]):
        G, _ = _model(name)
        concept = (concept or "").strip()
        if not concept:
            raise gr.Error("Name the concept first (e.g. glasses).")
        mask = editor_mask(value, G.resolution)
        if not mask.any():
            raise gr.Error(f"Nothing painted: paint where the {concept} is on the sample.")
        session = _session(session, name)
        session["concepts"].setdefault(concept, []).append((_seed(seed), mask))
        session["dissection"] = None
        return concepts_text(session), dissection_text(session), session

    def clear_concepts(name: str, session: dict[str, Any]):
        session = _session(session, name)
        session["concepts"], session["dissection"] = {}, None
        return concepts_text(session), dissection_text(session), session

    def run_dissect(name: str, layer: str, session: dict[str, Any]):
        G, lock = _model(name)
        session = _session(session, name, layer)
        try:
            concepts = session_concepts(name, session["concepts"])
            with lock:
                quantiles = tables.get(name, G, layer)
                result = dissect(G, layer, concepts, quantiles=quantiles, progress=False)
        except GanRewriteError as err:
            raise gr.Error(str(err)) from None
        session["dissection"] = result
        best = max(result.concepts, key=lambda c: result.top(c, 1)[0][1])
        return gr.Dropdown(choices=result.concepts, value=best), dissection_text(session), session

    def dissected(name: str, layer: str, session: dict[str, Any]):
        session = _session(session, name, layer)
        if session.get("dissection") is None:
            raise gr.Error("Dissect first: it finds the units that draw each concept.")
        return session

    def apply_paint(name: str, layer: str, concept: str, k: float, mode: str, seed: float, value: dict | None,
                    session: dict[str, Any]):  # fmt: skip
        G, lock = _model(name)
        session = dissected(name, layer, session)
        mask = editor_mask(value, G.resolution)
        if not mask.any():
            raise gr.Error("Nothing painted: brush the region to paint on the sample.")
        seed = _seed(seed)
        try:
            units = paint_units(session["dissection"], concept, int(k))
            with lock:
                value_ = paint_value(tables.get(name, G, layer), mode)
                before = G.sample([seed])
                after = paint(G, layer, [seed], units, np.asarray(mask, np.float32), value=value_)
        except GanRewriteError as err:
            raise gr.Error(str(err)) from None
        import torch

        return picture_file(preview_picture(torch.cat([before, after]), zoom=4), pictures)

    def ablation_file(name: str, layer: str, concept: str, k: float, session: dict[str, Any]):
        G, lock = _model(name)
        session = dissected(name, layer, session)
        try:
            units = paint_units(session["dissection"], concept, int(k))
            with lock:
                delta = ablation_rule(G, layer, units, base_model=name)
        except GanRewriteError as err:
            raise gr.Error(str(err)) from None
        delta.spec["concept"] = concept
        folder = Path(tempfile.mkdtemp(prefix="gan-rewrite-ablate-"))
        return str(delta.save(folder / f"no-{''.join(ch if ch.isalnum() else '-' for ch in concept)}.safetensors"))

    with gr.Tab("Paint"):
        state = gr.State(new_paint_session())
        gr.Markdown(
            "# Paint with units (GANPaint)\nName a concept and paint it on a few samples (or, on the toy world, "
            "use its segmenter), **Dissect** to find the units that draw it, then brush a region and **Paint** "
            "to add the concept there, or remove it (Bau et al., *GAN Dissection*, ICLR 2019)."
        )
        first_layers: list[str] = []
        first_layer, first_pictures = None, {}
        if first_model:
            G, lock = _model(first_model)
            with lock:
                first_layer = default_unit_layer(G)
            first_layers = list(G.layer_names[:-1])
            first_pictures = {seed: show_seed(first_model, seed) for seed in (35, 1)}
        layer_box = gr.Dropdown(first_layers, value=first_layer, label="Layer (its units)")
        with gr.Row():
            with gr.Column():
                concept_name = gr.Textbox(label="Concept name", placeholder="e.g. glasses")
                example_seed = gr.Number(35, precision=0, minimum=0, label="Sample seed")
                example_editor = gr.ImageEditor(
                    first_pictures.get(35), type="numpy", image_mode="RGBA", label="Paint the concept on this sample",
                    brush=gr.Brush(colors=["#00c000"], color_mode="fixed", default_size=12), layers=False,
                    transforms=(), sources=(), canvas_size=(EDITOR_SIZE, EDITOR_SIZE), elem_id="paint-concept-editor",
                )  # fmt: skip
                with gr.Row():
                    add_button = gr.Button("Add example")
                    clear_button = gr.Button("Clear concepts")
                concepts_md = gr.Markdown(concepts_text(new_paint_session()))
                dissect_button = gr.Button("Dissect", variant="primary")
                dissection_md = gr.Markdown(dissection_text(new_paint_session()))
            with gr.Column():
                concept_pick = gr.Dropdown([], value=None, label="Concept", allow_custom_value=True)
                units_k = gr.Slider(1, 64, value=20, step=1, label="Top units used")
                mode = gr.Radio(["add", "remove"], value="add", label="Paint mode")
                paint_seed = gr.Number(1, precision=0, minimum=0, label="Seed to paint on")
                paint_editor = gr.ImageEditor(
                    first_pictures.get(1), type="numpy", image_mode="RGBA", label="Brush the region",
                    brush=gr.Brush(colors=["#ff00ff"], color_mode="fixed", default_size=16), layers=False,
                    transforms=(), sources=(), canvas_size=(EDITOR_SIZE, EDITOR_SIZE), elem_id="paint-editor",
                )  # fmt: skip
                paint_button = gr.Button("Paint", variant="primary")
                painted = gr.Image(label="Before (top) and after (bottom)", format="png", interactive=False)
                rule_button = gr.Button("Switch these units off everywhere (a rule file)")
                rule_out = gr.File(label="Ablation rule", interactive=False)

        if guard is not None:
            guard(example_editor)
            guard(paint_editor)
        model_box.change(layers_of, [model_box], [layer_box], api_visibility="private")
        for seed_box, editor in ((example_seed, example_editor), (paint_seed, paint_editor)):
            seed_box.change(show_seed, [model_box, seed_box], [editor], api_visibility="private")
        add_button.click(add_example, [model_box, concept_name, example_seed, example_editor, state],
                         [concepts_md, dissection_md, state], api_name="paint_add_example")  # fmt: skip
        clear_button.click(clear_concepts, [model_box, state], [concepts_md, dissection_md, state],
                           api_name="paint_clear_concepts")  # fmt: skip
        dissect_button.click(run_dissect, [model_box, layer_box, state], [concept_pick, dissection_md, state],
                             api_name="paint_dissect")  # fmt: skip
        paint_inputs = [model_box, layer_box, concept_pick, units_k, mode, paint_seed, paint_editor, state]
        paint_button.click(apply_paint, paint_inputs, [painted], api_name="paint")
        rule_button.click(ablation_file, [model_box, layer_box, concept_pick, units_k, state], [rule_out],
                          api_name="paint_ablation_rule")  # fmt: skip
