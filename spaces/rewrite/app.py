"""Rewrite a GAN in the browser: paint a context, copy a region of one sample, paste it into another, and
see the rule act on held-out samples; "Find matches" ranks other samples by how well they match the painted
context, with heatmaps. Clicking a sample (or a match) puts it into the chosen editor; "Add context", or
clicking the next context sample, saves the painted context as one more example (Rewrite and Find matches use
them all); the session's rules are listed, each can be switched off, rescaled or removed; rules load from a
file or a Hub repo id (at their saved strength, described by their spec), and the rules shared for the model
are listed from the Hub. A thin Gradio layer over the ``gan_rewrite`` library (no maths here).

In the browser: a refused action leaves the page as it was and says why once (a toast; every event hides
gradio's per-output status); Rewrite and Find matches first run a quick check, then show one progress
indicator where their result appears; the session's rules and contexts are kept in the browser
(``gr.BrowserState``, checked like any uploaded rule when they come back) and restored on reload; Hub calls
give up after ``HUB_TIMEOUT_S`` seconds.

Hostile input: a picture sent to an editor that is not an image, is truncated or is larger than
``MAX_PICTURE_PIXELS`` (checked from its header, before decoding), a rule file that is not a rule or was
made for another model, and a Hub rule id that is not ``owner/name`` (never a path on the server), cannot be
found or reached, are each refused with a ``gr.Error``; the session goes on working.

Isolation: the generator is shared by every session, but a session's rules and saved contexts live only in
its ``gr.State`` (``RuleDelta`` objects with their strengths and on/off; ``(seed, mask)`` pairs). Each request
takes the model's lock, loads that session's enabled rules, samples, and unloads them in ``finally``
(:func:`gan_rewrite.space.rules_applied`), so no session sees another's rules and the shared weights are
bit-identical between requests.

    python spaces/rewrite/app.py [--model dcgan-faces-64] [--port 7860] [--share]     # or: gan-rewrite demo
"""

from __future__ import annotations

import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import json  # noqa: E402
import re  # noqa: E402
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
from gan_rewrite.hub.listing import list_rules, rule_description  # noqa: E402
from gan_rewrite.rewrite.rewriter import AUTO  # noqa: E402
from gan_rewrite.space import (  # noqa: E402
    SharedModels,
    check_picture,
    editor_mask,
    heatmap_picture,
    parse_seed,
    picture_file,
    preview_picture,
    rewrite_score_text,
    rules_applied,
    sample_picture,
    session_from_browser,
    session_to_browser,
    within,
)

sys.path.insert(0, str(Path(__file__).resolve().parent))  # paint_tab.py, beside this file
from paint_tab import build_paint_tab  # noqa: E402

try:  # ZeroGPU Spaces: functions that need the GPU are decorated; elsewhere a no-op
    import spaces
except ImportError:
    spaces = None


def gpu(fn):
    """``spaces.GPU(fn)`` where the `spaces` package is installed (not this repo's `spaces/` folder)."""
    decorator = getattr(spaces, "GPU", None)
    return fn if decorator is None else decorator(fn)


MODELS_FILE = Path(__file__).with_name("space_models.json")
"""Written by ``gan-rewrite space push``: the models a published Space offers, the first one shown first."""


def offered_models() -> list[str]:
    """The models this Space offers: those of ``space_models.json`` beside this file, else the embedded one."""
    try:
        models = [str(name) for name in json.loads(MODELS_FILE.read_text(encoding="utf-8"))["models"]]
    except (OSError, ValueError, KeyError, TypeError):
        models = []
    return models or ["dcgan-faces-64"]


DEFAULT_MODEL = offered_models()[0]
PREVIEW_SEEDS = list(range(1000, 1008))
"""Held-out seeds of the before/after rows (never offered for painting: the gallery pages stop below)."""
PAGE = 16
EDITOR_SIZE = 256
SEARCHED, SHOWN = 64, 8
""""Find matches" searches the ``SEARCHED`` seeds after the gallery page and shows the best ``SHOWN``."""
MAX_PICTURE_PIXELS = 2048 * 2048
"""Pictures sent to an editor are refused above this size, from their header, before gradio decodes them."""
HUB_TIMEOUT_S = 5.0
"""Interactive Hub calls (load a rule, list rules, check before a push) give up after this many seconds."""
BRUSH = gr.Brush(colors=[("#ff00ff", 0.45)], color_mode="fixed", default_size=12)
"""Translucent magenta: the sample stays visible under the painted mask (any painted alpha counts)."""
SEED_CAPTION = re.compile(r"seed (\d+)")
HINTS = {
    "context": "paint the context (where the rule should act) on the context sample",
    "copy": "paint the region to copy on the copy sample",
    "paste": "paint where to paste it on the paste sample",
}


CSS = """
/* the galleries are as tall as their pictures (gradio gives them a fixed, mostly empty height) */
#samples .grid-wrap, #matches .grid-wrap { min-height: 0; height: auto; max-height: none; }
/* gallery captions: whole, on one line */
#samples .caption-label, #matches .caption-label { max-width: none; overflow: visible; white-space: nowrap; }
"""
"""Layout fixes, checked in Chromium at 1366×768 and 1920×1080 (tests/test_space_ui.py)."""


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
    """A session's state: its model, its rules, newest last, as ``{"delta", "strength", "label", "enabled"}``,
    and its saved context examples as ``(seed, mask)`` pairs."""
    return {"model": None, "rules": [], "contexts": []}


def _session_rules(session: dict[str, Any], model: str) -> list[dict[str, Any]]:
    if session.get("model") != model:  # rules and contexts belong to one model; switching starts afresh
        session["model"], session["rules"], session["contexts"] = model, [], []
    return session["rules"]


def _session_contexts(session: dict[str, Any], model: str) -> list[tuple[int, Any]]:
    _session_rules(session, model)
    return session.setdefault("contexts", [])


HUB_REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


def _scaled(rule: dict[str, Any]) -> gr_lib.RuleDelta:
    """The rule with its strength folded into its own scale: what the Space renders and what it saves."""
    return dataclasses.replace(rule["delta"], scale=rule["delta"].scale * rule["strength"])


def _seed(value: Any, what: str) -> int:
    try:
        return parse_seed(value, what)
    except GanRewriteError as err:
        raise gr.Error(str(err)) from None


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
    known = list(dict.fromkeys([model, *offered_models(), *sorted(gr_lib.known_models())]))

    def painted(what: str, value: dict | None, size: int):
        mask = editor_mask(value, size)
        if not mask.any():
            raise gr.Error(f"Nothing painted for the {what}: {HINTS[what]}.")
        return mask

    def contexts_of(session: dict[str, Any], name: str, seed: float, value: dict | None, size: int):
        """The session's saved context examples, plus the context editor's painting when there is one."""
        contexts = list(_session_contexts(session, name))
        mask = editor_mask(value, size)
        if mask.any():
            contexts.append((_seed(seed, "context"), mask))
        if not contexts:
            painted("context", value, size)  # raises the "Nothing painted" error
        return contexts

    def context_rewriter(G, name: str, layer: str, contexts):
        """A Rewriter at ``layer`` (``"auto"``: where the context generalises best, chosen here) with the shared
        statistics and the context examples. Hold the model's lock."""
        rw = gr_lib.Rewriter(G, layer=layer or AUTO)
        rw.set_stats(models.stats(name, rw.layer))
        for seed, mask in contexts:
            rw.add_context(seed, mask)
        if rw.auto:
            rw.choose_layer()
        return rw

    def layers_of(name: str) -> tuple[list[str], str]:
        G, _ = _model(name)
        return [AUTO, *G.layer_names], AUTO

    def _model(name: str):
        if not name:
            raise gr.Error("Choose a model.")
        try:
            return models.get(name)
        except GanRewriteError as err:
            raise gr.Error(f"Cannot load model {name[:80]!r}: {err}") from None

    def render(name: str, session: dict[str, Any]) -> tuple[Any, Any]:
        """Before and after rows on the held-out seeds, with this session's rules only."""
        G, lock = _model(name)
        rules = _session_rules(session, name)
        with lock:
            before = G.sample(PREVIEW_SEEDS)
            try:
                with rules_applied(G, [(_scaled(r), 1.0) for r in rules if r.get("enabled", True)]):
                    after = G.sample(PREVIEW_SEEDS)
            except GanRewriteError as err:
                raise gr.Error(str(err)) from None
        return (
            picture_file(preview_picture(before, seeds=PREVIEW_SEEDS), pictures),
            picture_file(preview_picture(after, seeds=PREVIEW_SEEDS), pictures),
        )

    def rules_text(session: dict[str, Any]) -> str:
        rules = session.get("rules") or []
        if not rules:
            return "No rules yet: paint, then **Rewrite**."
        lines = [f"{i + 1}. {rule_name(r)}" for i, r in enumerate(rules)]
        return "Applied rules (the strength slider acts on the last):\n\n" + "\n".join(lines)

    def rule_name(rule: dict[str, Any]) -> str:
        off = "" if rule.get("enabled", True) else " (off)"
        return f"{rule['label']} — strength {rule['strength']:g}{off}"

    def rule_controls(session: dict[str, Any], selected: int | None = None):
        """The dropdown of the session's rules (values are their indices) with ``selected`` (default: the
        newest) chosen, and that rule's enabled box and strength."""
        rules = session.get("rules") or []
        choices = [(f"{i + 1}. {rule_name(r)}", i) for i, r in enumerate(rules)]
        if selected is None or not 0 <= selected < len(rules):
            selected = len(rules) - 1 if rules else None
        rule = rules[selected] if rules else {"enabled": True, "strength": 1.0}
        return gr.Dropdown(choices=choices, value=selected), rule.get("enabled", True), rule["strength"]

    def contexts_text(session: dict[str, Any]) -> str:
        contexts = session.get("contexts") or []
        if not contexts:
            return "No saved contexts: the context editor's painting is the context."
        seeds = ", ".join(str(seed) for seed, _ in contexts)
        return f"{len(contexts)} saved context(s), seeds {seeds} (the editor's painting, if any, is added)."

    def rule_at(session: dict[str, Any], name: str, index: Any) -> dict[str, Any]:
        rules = _session_rules(session, name)
        if index is None or not 0 <= int(index) < len(rules):
            raise gr.Error("Choose one of the applied rules.")
        return rules[int(index)]

    def shown(name: str, session: dict[str, Any], selected: int | None = None):
        """What every rule-changing event returns: the grids, the last rule's files, the rules, the state, the
        per-rule controls, the strength slider (at the last rule's strength) and the copy kept in the browser."""
        before, after = render(name, session)
        rules = session.get("rules") or []
        last = rules[-1]["strength"] if rules else 1.0
        return (before, after, rule_files(session), rules_text(session), session, *rule_controls(session, selected),
                last, session_to_browser(session))  # fmt: skip

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
        G, lock, contexts, masks, seeds = rewrite_request(
            name, context_seed, context, copy_seed, copy, paste_seed, paste, session
        )
        rules = _session_rules(session, name)
        try:
            with lock:
                progress(0.2, desc="key statistics (first time per layer only)")
                rw = context_rewriter(G, name, layer, contexts)
                progress(0.6, desc="solving")
                rw.set_copy(seeds["copy"], masks["copy"])
                rw.set_paste(seeds["paste"], masks["paste"])
                delta = rw.solve(rank=1, progress=False)  # the library's defaults (`default_solver`)
                score = rewrite_score_text(rw, delta)
        except GanRewriteError as err:
            raise gr.Error(str(err)) from None
        label = rule_description(delta.spec) or f"{rw.layer}: copy seed {seeds['copy']} → paste seed {seeds['paste']}"
        rules.append({"delta": delta, "strength": float(strength), "label": label, "enabled": True})
        progress(0.8, desc="rendering")
        try:
            return *shown(name, session), score
        except gr.Error:
            rules.pop()
            raise

    def rewrite_request(name, context_seed, context, copy_seed, copy, paste_seed, paste, session):
        """Everything Rewrite needs, checked (``gr.Error`` saying what is missing): the model, its lock, the
        context examples, the copy / paste masks and seeds."""
        G, lock = _model(name)
        size = G.resolution
        contexts = contexts_of(session, name, context_seed, context, size)
        masks = {what: painted(what, v, size) for what, v in (("copy", copy), ("paste", paste))}
        seeds = {what: _seed(v, what) for what, v in (("copy", copy_seed), ("paste", paste_seed))}
        return G, lock, contexts, masks, seeds

    def check_rewrite(name, layer, context_seed, context, copy_seed, copy, paste_seed, paste, strength, session):
        """The browser's first step of Rewrite: refuse at once (one toast, nothing else changes)."""
        rewrite_request(name, context_seed, context, copy_seed, copy, paste_seed, paste, session)

    def check_find(name: str, layer: str, page: float, context_seed: float, context: dict | None, session):
        G, _ = _model(name)
        contexts_of(session, name, context_seed, context, G.resolution)

    @gpu
    def find_matches(
        name: str, layer: str, page: float, context_seed: float, context: dict | None, session: dict[str, Any]
    ):
        """The seeds after the gallery page whose samples best match the context examples, with heatmaps."""
        G, lock = _model(name)
        contexts = contexts_of(session, name, context_seed, context, G.resolution)
        end = min((max(0, int(page or 0)) + 1) * PAGE + SEARCHED, PREVIEW_SEEDS[0])  # never the held-out seeds
        try:
            with lock:
                found = context_rewriter(G, name, layer, contexts).search(range(end - SEARCHED, end))
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
        return shown(name, session)

    def revert(name: str, session: dict[str, Any]):
        rules = _session_rules(session, name)
        if rules:
            rules.pop()
        return shown(name, session)

    def select_rule(name: str, index: Any, session: dict[str, Any]):
        rule = rule_at(session, name, index)
        return rule.get("enabled", True), rule["strength"]

    def edit_rule(name: str, index: Any, enabled: bool, strength: float, session: dict[str, Any]):
        rule = rule_at(session, name, index)
        rule["enabled"], rule["strength"] = bool(enabled), float(strength)
        return shown(name, session, int(index))

    def remove_rule(name: str, index: Any, session: dict[str, Any]):
        rule_at(session, name, index)  # checks the index
        del session["rules"][int(index)]
        return shown(name, session)

    def add_loaded(name: str, delta, label: str, session: dict[str, Any]):
        """Append a loaded rule to the session at its saved strength (its own scale), described by its spec,
        unless it was made for another model."""
        G, lock = _model(name)
        try:
            with lock, rules_applied(G, [(delta, 1.0)]):  # refuses a rule made for another model
                pass
        except GanRewriteError as err:
            raise gr.Error(f"This rule does not fit {name!r}: {err}") from None
        rules = _session_rules(session, name)
        described = rule_description(delta.spec)
        rules.append({"delta": dataclasses.replace(delta, scale=1.0), "strength": float(delta.scale),
                      "label": f"{label}: {described}" if described else label, "enabled": True})  # fmt: skip
        return shown(name, session)

    def load_rule(name: str, path: str | None, session: dict[str, Any]):
        if not path:
            raise gr.Error("Choose a rule file (.safetensors) to load.")
        try:
            delta = gr_lib.RuleDelta.load(path)
        except GanRewriteError as err:
            raise gr.Error(f"Not a usable rule file: {err}") from None
        return add_loaded(name, delta, f"loaded {Path(path).name}", session)

    def load_hub_rule(name: str, repo_id: str, session: dict[str, Any]):
        repo_id = (repo_id or "").strip()
        # only Hub repo ids: never a path on the server (RuleDelta.load reads local paths first)
        if not HUB_REPO_ID.fullmatch(repo_id) or ".." in repo_id or Path(repo_id).exists():
            raise gr.Error(f"Give the rule's Hub repo as owner/name, got {repo_id!r}.")
        try:
            delta = within(HUB_TIMEOUT_S, lambda: gr_lib.RuleDelta.load(repo_id))
        except GanRewriteError as err:
            raise gr.Error(f"Cannot load the rule {repo_id!r} from the Hub: {err}") from None
        return add_loaded(name, delta, f"loaded {repo_id}", session)

    def find_rules(name: str):
        """The rules shared on the Hub for the model, newest first, as choices of the Hub rule box."""
        try:
            found = within(HUB_TIMEOUT_S, lambda: list_rules(name, limit=30))
        except GanRewriteError as err:
            raise gr.Error(f"Cannot list the rules of {name!r}: {err}") from None
        if not found:
            gr.Info(f"No rules shared for {name} on the Hub yet.")
        choices = [(f"{r.repo_id} — {r.description or 'no description'}", r.repo_id) for r in found]
        return gr.Dropdown(choices=choices, value=found[0].repo_id if found else None)

    def add_context(name: str, context_seed: float, context: dict | None, session: dict[str, Any]):
        G, _ = _model(name)
        mask = painted("context", context, G.resolution)
        _session_contexts(session, name).append((_seed(context_seed, "context"), mask))
        return contexts_text(session), session, session_to_browser(session)

    def clear_contexts(name: str, session: dict[str, Any]):
        _session_contexts(session, name).clear()
        return contexts_text(session), session, session_to_browser(session)

    def pick_sample(target: str, name: str, context_seed: float, context: dict | None, session, evt: gr.SelectData):
        """A sample clicked in a gallery goes into the ``target`` editor (its seed box). Clicking a new context
        sample keeps the context painted so far as one more example: paint the context on several samples."""
        found = SEED_CAPTION.search(str((evt.value or {}).get("caption") or ""))
        if found is None:
            raise gr.Error("That picture carries no seed.")
        seed, out = int(found.group(1)), [gr.skip(), gr.skip(), gr.skip()]
        out[("context", "copy", "paste").index(target)] = seed
        if target == "context" and seed != context_seed:
            G, _ = _model(name)
            mask = editor_mask(context, G.resolution)
            if mask.any():
                _session_contexts(session, name).append((_seed(context_seed, "context"), mask))
                gr.Info(f"Kept the context painted on seed {int(context_seed)}; paint it on seed {seed} too.")
        return *out, contexts_text(session), session, session_to_browser(session)

    def restore(name: str, saved: Any, session: dict[str, Any]):
        """On page load: the rules and contexts this browser kept, when they were made for this model."""
        if not isinstance(saved, dict) or saved.get("model") != name:
            return shown(name, session)
        if not saved.get("rules") and not saved.get("contexts"):
            return shown(name, session)
        try:
            restored = session_from_browser(saved)
        except GanRewriteError as err:
            gr.Warning(str(err))
            return shown(name, session)
        G, lock = _model(name)
        try:
            with lock, rules_applied(G, [(rule["delta"], 1.0) for rule in restored["rules"]]):
                pass
        except GanRewriteError:
            gr.Warning(f"The rules kept in this browser do not fit {name!r}; they were dropped.")
            return shown(name, session)
        session.update(restored)
        return shown(name, session)

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
            from huggingface_hub import HfApi

            from gan_rewrite.hub.loading import hub_errors

            with hub_errors(repo_id.strip()):  # fail fast when the Hub is unreachable, before taking the lock
                within(HUB_TIMEOUT_S, lambda: HfApi(token=token).whoami())
            with lock:
                info = _scaled(rules[-1]).push_to_hub(repo_id.strip(), generator=G, token=token)
        except GanRewriteError as err:
            raise gr.Error(f"Push failed: {err}") from None
        return f"Pushed to [{repo_id}]({getattr(info, 'commit_url', '')})."

    # ----- layout --------------------------------------------------------------------------------
    first_layers, first_layer = layers_of(model)
    with gr.Blocks(title="gan-rewrite: rewrite a GAN") as demo:
        session = gr.State(new_session())
        saved = gr.BrowserState(None, storage_key="gan-rewrite-session")  # the session's rules, kept on reload
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
            with gr.Row(equal_height=True):
                page = gr.Number(0, precision=0, minimum=0, label=f"Page ({PAGE} seeds each)", scale=1)
                target = gr.Radio(
                    ["context", "copy", "paste"], value="context", scale=3, elem_id="gallery-target",
                    label="Click a sample to put it into the editor of",
                    info="A new context sample keeps the context painted so far: paint it on several samples.",
                )  # fmt: skip
            gallery = gr.Gallery(
                columns=8, rows=2, height="auto", label="Samples by seed", allow_preview=False, elem_id="samples"
            )
        editors = []
        with gr.Row():
            for what, seed, tip in zip(
                ("context", "copy", "paste"),
                seeds,
                ("where the rule should act", "what to copy", "where to paste it"),
                strict=True,
            ):
                with gr.Column(min_width=240):
                    seed_box = gr.Number(
                        seed, precision=0, minimum=0, label=f"{what.capitalize()} seed", info=f"Paint {tip}.",
                        elem_id=f"{what}-seed",
                    )  # fmt: skip
                    editor = gr.ImageEditor(
                        type="numpy",
                        image_mode="RGBA",
                        label=what.capitalize(),
                        brush=BRUSH,
                        layers=False,
                        transforms=(),
                        sources=(),
                        canvas_size=(EDITOR_SIZE, EDITOR_SIZE),
                        elem_id=f"{what}-editor",
                    )
                    refusing_bad_pictures(editor)
                    editors.append((seed_box, editor))
        strength = gr.Slider(-1.0, 2.0, value=1.0, step=0.05, label="Strength of the last rule", elem_id="strength")
        with gr.Row():
            add_context_button = gr.Button("Add context")
            clear_contexts_button = gr.Button("Clear contexts")
            contexts_md = gr.Markdown(contexts_text(new_session()), elem_id="contexts")
        with gr.Row():
            rewrite_button = gr.Button("Rewrite", variant="primary", elem_id="rewrite-button")
            find_button = gr.Button("Find matches", elem_id="find-button")
            revert_button = gr.Button("Revert the last rule", elem_id="revert-button")
        score_md = gr.Markdown("", elem_id="rewrite-score")  # what rewrite_score_text says about the new rule
        matches = gr.Gallery(
            columns=SHOWN, rows=1, height="auto", allow_preview=False, elem_id="matches", visible=False,
            label=f"Best matches of the context among the {SEARCHED} seeds after the page (red: where it matches; "
            "click one to put it into an editor)",
        )  # fmt: skip
        preview_label = f"held-out seeds {PREVIEW_SEEDS[0]}–{PREVIEW_SEEDS[-1]}"
        before_image = gr.Image(
            label=f"Before ({preview_label})", format="png", elem_id="before-grid", interactive=False
        )
        after_image = gr.Image(label="After", format="png", elem_id="after-grid", interactive=False)
        rules_md = gr.Markdown(rules_text(new_session()), elem_id="rules")
        with gr.Row():
            rule_pick = gr.Dropdown([], value=None, label="Rule", interactive=True)
            rule_on = gr.Checkbox(True, label="Enabled")
            rule_strength = gr.Slider(-1.0, 2.0, value=1.0, step=0.05, label="Strength of this rule")
            remove_button = gr.Button("Remove")
        with gr.Row():
            files = gr.File(label="Download the last rule", file_count="multiple", interactive=False)
            upload = gr.File(
                label="Load a rule (.safetensors)", file_types=[".safetensors"], type="filepath", elem_id="rule-upload"
            )
            with gr.Column():
                hub_rule_box = gr.Dropdown(
                    [], value=None, allow_custom_value=True, label="…or a rule's Hub repo (owner/name)",
                    elem_id="hub-rule",
                )  # fmt: skip
                with gr.Row():
                    list_button = gr.Button("Rules for this model", elem_id="list-rules")
                    hub_rule_button = gr.Button("Load from the Hub", elem_id="load-hub-rule")
        with gr.Accordion("Share on the Hub", open=False):
            if os.environ.get("SPACE_ID"):  # OAuth works on a Space; locally gradio would need a logged-in machine
                gr.LoginButton()
            repo_box = gr.Textbox(label="Rule repo (owner/name)")
            token_box = gr.Textbox(label="…or a write token", type="password")
            push_button = gr.Button("Push the last rule")
            push_md = gr.Markdown()

        # Refused actions leave the page as it was and say why once (a toast): every event hides gradio's
        # per-output status (whose "Error" badges would cover the outputs); the slow ones first run a quick
        # check, then show one progress indicator where their result appears.
        quiet = {"show_progress": "hidden"}
        outputs = [before_image, after_image, files, rules_md, session, rule_pick, rule_on, rule_strength, strength,
                   saved]  # fmt: skip
        model_box.change(change_model, [model_box], [layer_box], api_name="change_model", **quiet)
        page.change(show_samples, [model_box, page], [gallery], api_name="samples", **quiet)
        demo.load(show_samples, [model_box, page], [gallery], api_visibility="private", **quiet)
        for seed_box, editor in editors:
            seed_box.change(show_seed, [model_box, seed_box], [editor], api_visibility="private", **quiet)
            demo.load(show_seed, [model_box, seed_box], [editor], api_visibility="private", **quiet)
        demo.load(gpu(restore), [model_box, saved, session], outputs, api_visibility="private", **quiet)
        inputs = [model_box, layer_box]
        for seed_box, editor in editors:
            inputs += [seed_box, editor]
        rewrite_inputs = [*inputs, strength, session]
        rewrite_button.click(check_rewrite, rewrite_inputs, None, api_visibility="private", **quiet).success(
            rewrite, rewrite_inputs, [*outputs, score_md], api_name="rewrite", show_progress_on=[after_image]
        )
        context_seed_box, context_editor = editors[0]
        find_inputs = [model_box, layer_box, page, context_seed_box, context_editor, session]
        find_button.click(check_find, find_inputs, None, api_visibility="private", **quiet).success(
            lambda: gr.Gallery(visible=True), None, [matches], api_visibility="private", **quiet
        ).success(find_matches, find_inputs, [matches], api_name="find_matches", show_progress_on=[matches])
        strength.release(set_strength, [model_box, strength, session], outputs, api_name="set_strength", **quiet)
        revert_button.click(revert, [model_box, session], outputs, api_name="revert", **quiet)
        upload.upload(load_rule, [model_box, upload, session], outputs, api_name="load_rule", **quiet)
        hub_inputs = [model_box, hub_rule_box, session]
        hub_rule_button.click(load_hub_rule, hub_inputs, outputs, api_name="load_hub_rule", **quiet)
        list_button.click(find_rules, [model_box], [hub_rule_box], api_name="list_rules", **quiet)
        rule_pick.input(
            select_rule, [model_box, rule_pick, session], [rule_on, rule_strength], api_name="select_rule", **quiet
        )
        edit_inputs = [model_box, rule_pick, rule_on, rule_strength, session]
        rule_on.input(edit_rule, edit_inputs, outputs, api_name="edit_rule", **quiet)
        rule_strength.release(edit_rule, edit_inputs, outputs, api_visibility="private", **quiet)
        remove_button.click(remove_rule, [model_box, rule_pick, session], outputs, api_name="remove_rule", **quiet)
        context_inputs = [model_box, context_seed_box, context_editor, session]
        context_outputs = [contexts_md, session, saved]
        add_context_button.click(add_context, context_inputs, context_outputs, api_name="add_context", **quiet)
        clear_contexts_button.click(
            clear_contexts, [model_box, session], context_outputs, api_name="clear_contexts", **quiet
        )
        seed_boxes = [seed_box for seed_box, _ in editors]
        for shown_gallery in (gallery, matches):
            shown_gallery.select(
                pick_sample, [target, model_box, context_seed_box, context_editor, session],
                [*seed_boxes, *context_outputs], api_visibility="private", **quiet,
            )  # fmt: skip
        push_button.click(push, [model_box, repo_box, token_box, session], [push_md], api_name="push", **quiet)
        build_paint_tab(
            models=models, model_box=model_box, pictures=pictures, first_model=model, guard=refusing_bad_pictures,
            get_model=_model,
        )
    demo.queue(default_concurrency_limit=4)
    launch = demo.launch  # gradio 6 takes the page's CSS at launch: make it this app's default

    def launching(*args: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("css", CSS)
        return launch(*args, **kwargs)

    demo.launch = launching
    return demo


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="The gan-rewrite Space: rewrite a GAN in the browser.")
    parser.add_argument("--model", default=DEFAULT_MODEL, help="model name, folder or Hub repo id")
    parser.add_argument("--port", type=int, default=None, help="port (default: gradio's, 7860)")
    parser.add_argument("--host", default=None, help="address to listen on (default: gradio's)")
    parser.add_argument("--share", action="store_true", help="also open a public gradio.live link")
    parser.add_argument("--allow-local-models", action="store_true", help="also load model folders on this machine")
    args = parser.parse_args(argv)
    models = SharedModels(allow_local=args.allow_local_models)
    build_demo(args.model, models=models).launch(server_name=args.host, server_port=args.port, share=args.share)


if __name__ == "__main__":
    main()
