"""Rewrite a GAN in the browser: paint a context, copy a region of one sample, paste it into another, and
see the rule act on held-out samples; "Find matches" ranks other samples by how well they match the painted
context, with heatmaps. A thin Gradio layer over the ``gan_rewrite`` library (no maths here).

Hostile input: a picture sent to an editor that is not an image, is truncated or is larger than
``MAX_PICTURE_PIXELS`` (checked from its header, before decoding), and a rule file that is not a rule or was
made for another model, are each refused with a ``gr.Error``; the session goes on working.

Isolation: the generator is shared by every session, but a session's rules live only in its ``gr.State``
(``RuleDelta`` objects and strengths). Each request takes the model's lock, loads that session's rules,
samples, and unloads them in ``finally`` (:func:`gan_rewrite.space.rules_applied`), so no session sees
another's rules and the shared weights are bit-identical between requests.

    python spaces/rewrite/app.py [--model dcgan-faces-64] [--port 7860] [--share]     # or: gan-rewrite demo
"""

from __future__ import annotations

import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import json  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import gradio as gr  # noqa: E402

try:
    import gan_rewrite  # noqa: F401
except ImportError:  # running from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import gan_rewrite as gr_lib  # noqa: E402
from gan_rewrite.errors import GanRewriteError  # noqa: E402
from gan_rewrite.space import (  # noqa: E402
    SharedModels,
    check_picture,
    editor_mask,
    heatmap_picture,
    picture_file,
    preview_picture,
    rules_applied,
    sample_picture,
)

try:  # ZeroGPU Spaces: functions that need the GPU are decorated; elsewhere a no-op
    import spaces
except ImportError:
    spaces = None


def gpu(fn):
    """``spaces.GPU(fn)`` where the `spaces` package is installed (not this repo's `spaces/` folder)."""
    decorator = getattr(spaces, "GPU", None)
    return fn if decorator is None else decorator(fn)


DEFAULT_MODEL = "dcgan-faces-64"
PREVIEW_SEEDS = list(range(1000, 1008))
"""Held-out seeds of the before/after rows (never offered for painting: the gallery pages stop below)."""
PAGE = 16
EDITOR_SIZE = 256
SEARCHED, SHOWN = 64, 8
""""Find matches" searches the ``SEARCHED`` seeds after the gallery page and shows the best ``SHOWN``."""
MAX_PICTURE_PIXELS = 2048 * 2048
"""Pictures sent to an editor are refused above this size, from their header, before gradio decodes them."""
HINTS = {
    "context": "paint the context (where the rule should act) on the context sample",
    "copy": "paint the region to copy on the copy sample",
    "paste": "paint where to paste it on the paste sample",
}


def refusing_bad_pictures(editor: gr.ImageEditor) -> gr.ImageEditor:
    """``editor``, made to refuse a picture it cannot read, or a huge one, with a clear ``gr.Error`` instead of
    decoding it (the editors offer no upload, but the API accepts any file). Patched on the instance: a
    subclass of a gradio component would make gradio write a ``.pyi`` stub beside this file."""
    convert = editor.convert_and_format_image

    def checked(file: Any, flatten_on_white: bool = False) -> Any:
        if file is None:
            return None
        try:
            check_picture(getattr(file, "path", file), MAX_PICTURE_PIXELS)
            return convert(file, flatten_on_white)
        except (ValueError, OSError) as err:  # e.g. a truncated image whose header was fine
            raise gr.Error(f"Cannot use the picture sent to the {editor.label or 'editor'}: {err}") from None

    editor.convert_and_format_image = checked
    return editor


def new_session() -> dict[str, Any]:
    """A session's state: its model and its rules, newest last, as ``{"delta", "strength", "label"}``."""
    return {"model": None, "rules": []}


def _session_rules(session: dict[str, Any], model: str) -> list[dict[str, Any]]:
    if session.get("model") != model:  # rules belong to one model; switching model starts afresh
        session["model"], session["rules"] = model, []
    return session["rules"]


def _scaled(rule: dict[str, Any]) -> gr_lib.RuleDelta:
    """The rule with its strength folded into its own scale: what the Space renders and what it saves."""
    return dataclasses.replace(rule["delta"], scale=rule["delta"].scale * rule["strength"])


def _seed(value: Any, what: str) -> int:
    try:
        seed = int(value)
    except (TypeError, ValueError):
        raise gr.Error(f"The {what} seed must be a whole number, got {value!r}.") from None
    if seed < 0 or seed != value:
        raise gr.Error(f"The {what} seed must be a non-negative whole number, got {value!r}.")
    return seed


def build_demo(
    model: str = DEFAULT_MODEL, *, models: SharedModels | None = None, seeds: tuple[int, int, int] = (1, 2, 3)
) -> gr.Blocks:
    """The Space's Blocks.

    Args:
        model: the model shown first.
        models: generators to share (default: a new :class:`SharedModels`), e.g. with one already loaded.
        seeds: the first context, copy and paste seeds.
    """
    models = models or SharedModels()
    pictures = Path(tempfile.mkdtemp(prefix="gan-rewrite-space-"))  # the grids, named by their content
    known = sorted(gr_lib.known_models())
    if model not in known:
        known.insert(0, model)

    def painted(what: str, value: dict | None, size: int):
        mask = editor_mask(value, size)
        if not mask.any():
            raise gr.Error(f"Nothing painted for the {what}: {HINTS[what]}.")
        return mask

    def context_rewriter(G, name: str, layer: str, seed: int, mask):
        """A Rewriter at ``layer`` with the shared statistics and the painted context. Hold the model's lock."""
        rw = gr_lib.Rewriter(G, layer=layer or None)
        rw.set_stats(models.stats(name, rw.layer))
        rw.add_context(seed, mask)
        return rw

    def layers_of(name: str) -> tuple[list[str], str]:
        G, _ = _model(name)
        return list(G.layer_names), G.config.default_layer

    def _model(name: str):
        if not name:
            raise gr.Error("Choose a model.")
        try:
            return models.get(name)
        except GanRewriteError as err:
            raise gr.Error(f"Cannot load model {name!r}: {err}") from None

    def render(name: str, session: dict[str, Any]) -> tuple[Any, Any]:
        """Before and after rows on the held-out seeds, with this session's rules only."""
        G, lock = _model(name)
        rules = _session_rules(session, name)
        with lock:
            before = G.sample(PREVIEW_SEEDS)
            try:
                with rules_applied(G, [(_scaled(r), 1.0) for r in rules]):
                    after = G.sample(PREVIEW_SEEDS)
            except GanRewriteError as err:
                raise gr.Error(str(err)) from None
        return picture_file(preview_picture(before), pictures), picture_file(preview_picture(after), pictures)

    def rules_text(session: dict[str, Any]) -> str:
        rules = session.get("rules") or []
        if not rules:
            return "No rules yet: paint, then **Rewrite**."
        lines = [f"{i + 1}. {r['label']} — strength {r['strength']:g}" for i, r in enumerate(rules)]
        return "Applied rules (the strength slider acts on the last):\n\n" + "\n".join(lines)

    def rule_files(session: dict[str, Any]) -> list[str] | None:
        rules = session.get("rules") or []
        if not rules:
            return None
        folder = Path(tempfile.mkdtemp(prefix="gan-rewrite-rule-"))
        delta = _scaled(rules[-1])
        delta.save(folder / "rule.safetensors")
        (folder / "rule.json").write_text(json.dumps(delta.spec, indent=1) + "\n")
        return [str(folder / "rule.safetensors"), str(folder / "rule.json")]

    # ----- event handlers (each one an API endpoint) -----------------------------------------------
    def change_model(name: str):
        names, default = layers_of(name)
        return gr.Dropdown(choices=names, value=default)

    @gpu
    def show_samples(name: str, page: float):
        G, lock = _model(name)
        page = max(0, int(page or 0))
        seeds = list(range(page * PAGE, (page + 1) * PAGE))
        if seeds[-1] >= PREVIEW_SEEDS[0]:
            raise gr.Error(f"Seeds from {PREVIEW_SEEDS[0]} on are held out for the preview; pick a lower page.")
        with lock:
            images = G.sample(seeds)
        return [
            (picture_file(sample_picture(img, 128), pictures), f"seed {s}")
            for img, s in zip(images, seeds, strict=True)
        ]

    @gpu
    def show_seed(name: str, seed: float):
        G, lock = _model(name)
        seed = _seed(seed, "sample")
        with lock:
            image = G.sample([seed])[0]
        picture = picture_file(sample_picture(image, EDITOR_SIZE), pictures)
        return {"background": picture, "layers": [], "composite": picture}

    @gpu
    def rewrite(
        name: str,
        layer: str,
        context_seed: float,
        context: dict | None,
        copy_seed: float,
        copy: dict | None,
        paste_seed: float,
        paste: dict | None,
        strength: float,
        session: dict[str, Any],
        progress: gr.Progress = gr.Progress(),  # noqa: B008 (gradio's idiom)
    ):
        progress(0.0, desc="loading the model")
        G, lock = _model(name)
        rules = _session_rules(session, name)
        size = G.resolution
        masks = {what: painted(what, v, size) for what, v in (("context", context), ("copy", copy), ("paste", paste))}
        seeds = {
            what: _seed(v, what) for what, v in (("context", context_seed), ("copy", copy_seed), ("paste", paste_seed))
        }
        try:
            with lock:
                progress(0.2, desc="key statistics (first time per layer only)")
                rw = context_rewriter(G, name, layer, seeds["context"], masks["context"])
                progress(0.6, desc="solving")
                rw.set_copy(seeds["copy"], masks["copy"])
                rw.set_paste(seeds["paste"], masks["paste"])
                delta = rw.solve(rank=1, method="closed_form")
        except GanRewriteError as err:
            raise gr.Error(str(err)) from None
        label = f"{rw.layer}: copy seed {seeds['copy']} → paste seed {seeds['paste']}, context seed {seeds['context']}"
        rules.append({"delta": delta, "strength": float(strength), "label": label})
        progress(0.8, desc="rendering")
        try:
            before, after = render(name, session)
        except gr.Error:
            rules.pop()
            raise
        return before, after, rule_files(session), rules_text(session), session

    @gpu
    def find_matches(name: str, layer: str, page: float, context_seed: float, context: dict | None):
        """The seeds after the gallery page whose samples best match the painted context, with heatmaps."""
        G, lock = _model(name)
        mask = painted("context", context, G.resolution)
        seed = _seed(context_seed, "context")
        end = min((max(0, int(page or 0)) + 1) * PAGE + SEARCHED, PREVIEW_SEEDS[0])  # never the held-out seeds
        try:
            with lock:
                found = context_rewriter(G, name, layer, seed, mask).search(range(end - SEARCHED, end))
                images = G.sample(found.seeds[:SHOWN])
        except GanRewriteError as err:
            raise gr.Error(str(err)) from None
        return [
            (picture_file(heatmap_picture(img, heat, 128), pictures), f"seed {s} · match {float(best):.3f}")
            for img, heat, s, best in zip(images, found.heatmaps, found.seeds, found.best, strict=False)
        ]

    def set_strength(name: str, strength: float, session: dict[str, Any]):
        rules = _session_rules(session, name)
        if rules:
            rules[-1]["strength"] = float(strength)
        before, after = render(name, session)
        return before, after, rule_files(session), rules_text(session), session

    def revert(name: str, session: dict[str, Any]):
        rules = _session_rules(session, name)
        if rules:
            rules.pop()
        before, after = render(name, session)
        return before, after, rule_files(session), rules_text(session), session

    def load_rule(name: str, path: str | None, strength: float, session: dict[str, Any]):
        if not path:
            raise gr.Error("Choose a rule file (.safetensors) to load.")
        try:
            delta = gr_lib.RuleDelta.load(path)
        except GanRewriteError as err:
            raise gr.Error(f"Not a usable rule file: {err}") from None
        G, lock = _model(name)
        try:
            with lock, rules_applied(G, [(delta, 1.0)]):  # refuses a rule made for another model
                pass
        except GanRewriteError as err:
            raise gr.Error(f"This rule does not fit {name!r}: {err}") from None
        rules = _session_rules(session, name)
        rules.append({"delta": delta, "strength": float(strength), "label": f"loaded {Path(path).name}"})
        before, after = render(name, session)
        return before, after, rule_files(session), rules_text(session), session

    def push(name: str, repo_id: str, token_text: str, session: dict[str, Any], oauth: gr.OAuthToken | None):
        rules = _session_rules(session, name)
        if not rules:
            raise gr.Error("Nothing to push: make or load a rule first.")
        if not repo_id or "/" not in repo_id:
            raise gr.Error(f"Give the rule repo as owner/name, got {repo_id!r}.")
        token = (token_text or "").strip() or (oauth.token if oauth is not None else None)
        if not token:
            raise gr.Error("Sign in with Hugging Face, or paste a write token.")
        G, lock = _model(name)
        try:
            with lock:
                info = _scaled(rules[-1]).push_to_hub(repo_id.strip(), generator=G, token=token)
        except GanRewriteError as err:
            raise gr.Error(f"Push failed: {err}") from None
        return f"Pushed to [{repo_id}]({getattr(info, 'commit_url', '')})."

    # ----- layout --------------------------------------------------------------------------------
    first_layers, first_layer = layers_of(model)
    with gr.Blocks(title="gan-rewrite: rewrite a GAN") as demo:
        session = gr.State(new_session())
        gr.Markdown(
            "# Rewrite a GAN\n"
            "Paint a **context** (where the rule should act), the region to **copy** on one sample and where to "
            "**paste** it on another, then **Rewrite**: the model's rule changes, and every sample matching the "
            "context follows (Bau et al., *Rewriting a Deep Generative Model*, ECCV 2020)."
        )
        with gr.Row():
            model_box = gr.Dropdown(known, value=model, allow_custom_value=True, label="Model (name or Hub repo id)")
            layer_box = gr.Dropdown(first_layers, value=first_layer, label="Layer")
        with gr.Accordion("Samples", open=True):
            page = gr.Number(0, precision=0, minimum=0, label=f"Page ({PAGE} seeds each)")
            gallery = gr.Gallery(columns=8, height="auto", label="Samples by seed", allow_preview=False)
        editors = []
        with gr.Row():
            for what, seed, tip in zip(
                ("context", "copy", "paste"),
                seeds,
                ("where the rule should act", "what to copy", "where to paste it"),
                strict=True,
            ):
                with gr.Column():
                    seed_box = gr.Number(seed, precision=0, minimum=0, label=f"{what.capitalize()} seed")
                    editor = gr.ImageEditor(
                        type="numpy",
                        image_mode="RGBA",
                        label=f"{what.capitalize()}: paint {tip}",
                        brush=gr.Brush(colors=["#ff00ff"], color_mode="fixed", default_size=12),
                        layers=False,
                        transforms=(),
                        sources=(),
                        canvas_size=(EDITOR_SIZE, EDITOR_SIZE),
                        elem_id=f"{what}-editor",
                    )
                    refusing_bad_pictures(editor)
                    editors.append((seed_box, editor))
        strength = gr.Slider(-1.0, 2.0, value=1.0, step=0.05, label="Strength of the last rule")
        with gr.Row():
            rewrite_button = gr.Button("Rewrite", variant="primary", elem_id="rewrite-button")
            find_button = gr.Button("Find matches", elem_id="find-button")
            revert_button = gr.Button("Revert the last rule")
        matches = gr.Gallery(
            columns=SHOWN, height="auto", allow_preview=False, elem_id="matches",
            label=f"Best matches of the context among the {SEARCHED} seeds after the page (red: where it matches)",
        )  # fmt: skip
        before_image = gr.Image(label="Before (held-out seeds)", format="png", elem_id="before-grid", interactive=False)
        after_image = gr.Image(label="After", format="png", elem_id="after-grid", interactive=False)
        rules_md = gr.Markdown(rules_text(new_session()))
        with gr.Row():
            files = gr.File(label="Download the last rule", file_count="multiple", interactive=False)
            upload = gr.File(label="Load a rule (.safetensors)", file_types=[".safetensors"], type="filepath")
        with gr.Accordion("Share on the Hub", open=False):
            if os.environ.get("SPACE_ID"):  # OAuth works on a Space; locally gradio would need a logged-in machine
                gr.LoginButton()
            repo_box = gr.Textbox(label="Rule repo (owner/name)")
            token_box = gr.Textbox(label="…or a write token", type="password")
            push_button = gr.Button("Push the last rule")
            push_md = gr.Markdown()

        outputs = [before_image, after_image, files, rules_md, session]
        model_box.change(change_model, [model_box], [layer_box], api_name="change_model")
        page.change(show_samples, [model_box, page], [gallery], api_name="samples")
        demo.load(show_samples, [model_box, page], [gallery], api_visibility="private")
        for seed_box, editor in editors:
            seed_box.change(show_seed, [model_box, seed_box], [editor], api_visibility="private")
            demo.load(show_seed, [model_box, seed_box], [editor], api_visibility="private")
        demo.load(gpu(render), [model_box, session], [before_image, after_image], api_visibility="private")
        inputs = [model_box, layer_box]
        for seed_box, editor in editors:
            inputs += [seed_box, editor]
        rewrite_button.click(rewrite, [*inputs, strength, session], outputs, api_name="rewrite")
        context_seed_box, context_editor = editors[0]
        find_inputs = [model_box, layer_box, page, context_seed_box, context_editor]
        find_button.click(find_matches, find_inputs, [matches], api_name="find_matches")
        strength.release(set_strength, [model_box, strength, session], outputs, api_name="set_strength")
        revert_button.click(revert, [model_box, session], outputs, api_name="revert")
        upload.upload(load_rule, [model_box, upload, strength, session], outputs, api_name="load_rule")
        push_button.click(push, [model_box, repo_box, token_box, session], [push_md], api_name="push")
    demo.queue(default_concurrency_limit=4)
    return demo


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="The gan-rewrite Space: rewrite a GAN in the browser.")
    parser.add_argument("--model", default=DEFAULT_MODEL, help="model name, folder or Hub repo id")
    parser.add_argument("--port", type=int, default=None, help="port (default: gradio's, 7860)")
    parser.add_argument("--host", default=None, help="address to listen on (default: gradio's)")
    parser.add_argument("--share", action="store_true", help="also open a public gradio.live link")
    args = parser.parse_args(argv)
    build_demo(args.model).launch(server_name=args.host, server_port=args.port, share=args.share)


if __name__ == "__main__":
    main()
