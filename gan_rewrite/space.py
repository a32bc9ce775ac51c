"""Small helpers for the Gradio Space (``spaces/rewrite/app.py``): no maths, no gradio import.

* :class:`SharedModels` — one generator per model name, shared by every browser session, each with a lock;
  key statistics computed once per (model, layer) and reused.
* :func:`rules_applied` — load a session's rules onto the shared generator, and unload them in ``finally``,
  so the shared model is never left changed (the weights are bit-identical afterwards).
* :func:`editor_mask` — the mask a user painted (the alpha of the editor's brush layers) at model resolution.
* :func:`preview_picture` — the picture of a row of samples the Space shows (and the tests recompute).
* :func:`heatmap_picture` — a sample with its context-match heatmap overlaid (the Space's "Find matches").
* :func:`check_picture` — an uploaded picture's size from its header, refusing unreadable or huge ones.
* :func:`session_to_browser` / :func:`session_from_browser` — a session's rules and contexts as JSON the
  browser keeps (``gr.BrowserState``), and back, refusing anything that is not a rule.
* :func:`within` — run a Hub call with a deadline, so the app answers "the Hub could not be reached" in seconds.
* :func:`rewrite_score_text` — the text shown beside Rewrite about the rule just made.

Example:
    >>> models = SharedModels()
    >>> G, lock = models.get("dcgan-faces-64")
    >>> with lock, rules_applied(G, [(delta, 0.8)]):
    ...     after = G.sample([1000, 1001])
"""

from __future__ import annotations

import base64
import io
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from .atomic import write_bytes_atomic
from .errors import GanRewriteError, HubError, ModelNotFoundError, RuleError
from .imaging import image_grid, save_image
from .rules import rules_applied  # noqa: F401  (re-exported for the app)

if TYPE_CHECKING:
    import torch

    from .models.base import GANGenerator
    from .rewrite.delta import RuleDelta
    from .rewrite.rewriter import Rewriter
    from .rewrite.stats import KeyStats

PREVIEW_ZOOM = 2
"""Preview pictures are upscaled this many times (nearest neighbour, so pixels stay exact)."""


REFUSED_MODEL = (
    "unknown model: choose one of the listed models, or give a Hub repo id 'owner/name' of a gan-rewrite model."
)
"""The one message for every model name the Space refuses (no path, no hint of what exists on the server)."""


class SharedModels:
    """Generators by name, loaded on first use and shared; each comes with the lock that guards it.

    Everything that runs a generator (sampling, statistics, solving) must hold its lock: a session's rules
    are loaded onto the shared generator only for the duration of one locked request.

    Only known model names and Hub repo ids are loaded (a local folder only with ``allow_local``, which
    ``gan-rewrite demo`` sets); every other name is refused with :data:`REFUSED_MODEL`, the same message
    whatever it is, so typed names reveal nothing about the server's files. Loaded models are kept in
    least-recently-used order and evicted when together they hold more than ``max_bytes``.

    Args:
        device: passed to :func:`gan_rewrite.load_generator`.
        stats_n: number of samples of the key statistics.
        allow_local: also load model folders on this machine (each folder once, however it is spelled).
        max_bytes: bound on the parameters and buffers of the loaded models together (the one in use stays).
    """

    def __init__(
        self,
        device: str | None = None,
        stats_n: int = 1000,
        *,
        allow_local: bool = False,
        max_bytes: int = 2 << 30,
    ) -> None:
        self.device = device
        self.stats_n = stats_n
        self.allow_local = allow_local
        self.max_bytes = max_bytes
        self._models: OrderedDict[str, tuple[GANGenerator, threading.Lock]] = OrderedDict()
        self._stats: dict[tuple[str, str], KeyStats] = {}
        self._guard = threading.Lock()

    def key(self, name: str) -> tuple[str, str]:
        """``(kind, key)`` for a name the Space may load: ``known``, ``hub`` or ``local`` (a resolved path).

        Raises:
            ModelNotFoundError: with :data:`REFUSED_MODEL`, for anything else.
        """
        from .hub.known import known_models
        from .hub.loading import _REPO_ID

        if not isinstance(name, str) or not name or len(name) > 200:
            raise ModelNotFoundError(REFUSED_MODEL)
        if name in self._models:
            return "added", name
        if name in known_models():
            return "known", name
        if self.allow_local:
            try:
                path = Path(name).expanduser()
                if path.is_dir():
                    return "local", str(path.resolve())
            except (OSError, ValueError):
                pass
        if _REPO_ID.match(name):
            return "hub", name
        raise ModelNotFoundError(REFUSED_MODEL)

    def get(self, name: str) -> tuple[GANGenerator, threading.Lock]:
        """The generator called ``name`` (known name, Hub repo id, or an allowed folder) and its lock."""
        kind, key = self.key(name)
        with self._guard:
            if key not in self._models:
                self._models[key] = (self._load(kind, key), threading.Lock())
                self._evict(keep=key)
            self._models.move_to_end(key)
            return self._models[key]

    def add(self, name: str, G: GANGenerator) -> None:
        """Offer an already loaded generator under ``name`` (e.g. one a test or a notebook holds)."""
        with self._guard:
            self._models[name] = (G, threading.Lock())
            self._evict(keep=name)

    def loaded(self) -> list[str]:
        """The keys of the models held, least recently used first."""
        with self._guard:
            return list(self._models)

    def _load(self, kind: str, key: str) -> GANGenerator:
        from .hub.convert import ensure_known_model
        from .hub.known import known_model
        from .hub.loading import HubSource, download_model, load_folder
        from .models import pick_device

        device = pick_device(self.device)
        if kind == "known":  # never through a path: a folder named like a known model is not it
            return load_folder(ensure_known_model(known_model(key)), device=device)
        if kind == "local":
            return load_folder(Path(key), device=device)
        folder = download_model(key)  # a Hub repo id, even if a folder of that name exists here
        generator = load_folder(folder, device=device)
        generator.hub_source = HubSource(key, None, folder.name)
        return generator

    def _evict(self, keep: str) -> None:
        """Drop least recently used models (and their statistics) until the rest fit in ``max_bytes``."""
        while len(self._models) > 1 and sum(_model_bytes(G) for G, _ in self._models.values()) > self.max_bytes:
            oldest = next(k for k in self._models if k != keep)
            del self._models[oldest]
            for stats_key in [k for k in self._stats if k[0] == oldest]:
                del self._stats[stats_key]

    def stats(self, name: str, layer: str) -> KeyStats:
        """Key statistics of ``name`` at ``layer`` (computed once, then reused). Call with the model's lock held."""
        _, model_key = self.key(name)
        key = (model_key, layer)
        if key not in self._stats:
            from .rewrite.stats import compute_stats

            G, _ = self.get(name)
            self._stats[key] = compute_stats(G, layer, self.stats_n, progress=False)
        return self._stats[key]


def _model_bytes(G: Any) -> int:
    return sum(t.numel() * t.element_size() for t in (*G.parameters(), *G.buffers()))


def editor_mask(value: dict[str, Any] | None, resolution: int) -> np.ndarray:
    """The painted mask of an image-editor value, ``resolution × resolution`` bool.

    ``value`` is what ``gr.ImageEditor(type="numpy", image_mode="RGBA")`` passes: a dict whose ``layers``
    are RGBA arrays; a pixel is painted where any layer is not transparent. The layer is shrunk to the
    model's resolution by area, and a model pixel is in the mask when at least a quarter of it is painted.
    """
    layers = [] if value is None else [layer for layer in value.get("layers") or [] if layer is not None]
    painted = None
    for layer in layers:
        array = np.asarray(layer)
        alpha = (
            array[..., 3] if array.ndim == 3 and array.shape[2] == 4 else array.reshape(*array.shape[:2], -1).max(-1)
        )
        on = alpha > 0
        if painted is not None and on.shape != painted.shape:  # a layer of another size: fit it to the first
            size = (painted.shape[1], painted.shape[0])
            on = np.asarray(Image.fromarray(on.astype(np.uint8) * 255).resize(size, Image.Resampling.NEAREST)) > 0
        painted = on if painted is None else painted | on
    if painted is None:
        return np.zeros((resolution, resolution), bool)
    small = Image.fromarray(painted.astype(np.uint8) * 255).resize((resolution, resolution), Image.Resampling.BOX)
    return np.asarray(small) >= 64


LABEL_HEIGHT = 14
"""Height in pixels (before the zoom) of the band of seed numbers under a labelled preview row."""


def preview_picture(
    images: torch.Tensor, *, nrow: int | None = None, zoom: int = PREVIEW_ZOOM, seeds: Sequence[int] | None = None
) -> Image.Image:
    """A grid of ``(N, 3, H, W)`` samples in [-1, 1], upscaled ``zoom``× by nearest neighbour.

    With ``seeds`` (one row only), a band under the row names each sample's seed; the samples keep their
    place (the band is added below them).
    """
    picture = image_grid(images, nrow=nrow or len(images))
    if seeds is not None:
        picture = _seed_band(picture, list(seeds), images.shape[-1])
    return picture.resize((picture.width * zoom, picture.height * zoom), Image.Resampling.NEAREST)


def _seed_band(picture: Image.Image, seeds: list[int], size: int, padding: int = 2) -> Image.Image:
    from PIL import ImageDraw

    out = Image.new("RGB", (picture.width, picture.height + LABEL_HEIGHT), "white")
    out.paste(picture, (0, 0))
    draw = ImageDraw.Draw(out)
    for i, seed in enumerate(seeds):
        centre = padding + i * (size + padding) + size / 2
        draw.text((centre, picture.height + LABEL_HEIGHT / 2), str(seed), fill="black", anchor="mm")
    return out


def heatmap_picture(image: torch.Tensor, heatmap: torch.Tensor, size: int, *, opacity: float = 0.6) -> Image.Image:
    """A sample ``(3, H, W)`` in [-1, 1] with a heatmap ``(H, W)`` overlaid in red, ``size × size``.

    The heatmap is clipped to [0, 1] (context-search scores are about 1 on the context itself).
    """
    picture = np.asarray(image_grid(image[None], nrow=1, padding=0), dtype=np.float32)
    heat = heatmap.detach().float().cpu().clamp(0, 1).numpy()[..., None] * opacity
    mixed = picture * (1 - heat) + np.array([255.0, 0.0, 0.0], np.float32) * heat
    return Image.fromarray(mixed.round().astype(np.uint8)).resize((size, size), Image.Resampling.NEAREST)


def check_picture(source: str | Path | bytes, max_pixels: int) -> tuple[int, int]:
    """``(width, height)`` of an uploaded picture, read from its header only (nothing is decoded).

    Raises:
        ValueError: ``source`` is not an image PIL can read, or has more than ``max_pixels`` pixels.
    """
    try:
        with Image.open(io.BytesIO(source) if isinstance(source, bytes | bytearray) else source) as picture:
            width, height = picture.size
    except Image.DecompressionBombError:
        raise ValueError(f"the picture is far too large (more than {max_pixels} pixels allowed)") from None
    except (OSError, SyntaxError, ValueError):  # PIL.UnidentifiedImageError is an OSError
        raise ValueError("not an image (PNG, JPEG or WebP) that can be read") from None
    if width * height > max_pixels:
        raise ValueError(f"the picture is {width}×{height} pixels; at most {max_pixels} pixels are allowed")
    return width, height


def picture_file(picture: Image.Image, folder: str | Path) -> str:
    """Save ``picture`` as ``<folder>/<hash of its pixels>.png`` (atomically, once) and return the path.

    The Space returns its pictures as files rather than PIL images: gradio (6.31) writes a returned PIL
    image into its cache non-atomically under a name derived from its content, so two sessions returning the
    same picture at once (e.g. the "before" grid) can be served a half-written file; a returned file is
    copied into the cache atomically.
    """
    import hashlib

    digest = hashlib.sha256(f"{picture.mode}{picture.size}".encode() + picture.tobytes()).hexdigest()[:32]
    path = Path(folder) / f"{digest}.png"
    if not path.exists():
        save_image(picture, path)
    return str(path)


def sample_picture(images: torch.Tensor, size: int) -> Image.Image:
    """One sample ``(3, H, W)`` as a ``size × size`` picture to paint on (nearest neighbour)."""
    picture = image_grid(images[None], nrow=1, padding=0)
    return picture.resize((size, size), Image.Resampling.NEAREST)


MAX_SAVED_RULES = 32
"""At most this many rules are kept in the browser (and restored from it)."""


def session_to_browser(session: dict[str, Any]) -> dict[str, Any]:
    """A session's model, rules and saved contexts as JSON for ``gr.BrowserState`` (rules as safetensors bytes
    in base64, masks in the spec's run-length code)."""
    from .rewrite.context import encode_mask

    rules = []
    for rule in (session.get("rules") or [])[-MAX_SAVED_RULES:]:
        with tempfile.TemporaryDirectory(prefix="gan-rewrite-browser-") as tmp:
            data = rule["delta"].save(Path(tmp) / "rule.safetensors").read_bytes()
        rules.append({"rule": base64.b64encode(data).decode("ascii"), "strength": float(rule["strength"]),
                      "label": str(rule["label"]), "enabled": bool(rule.get("enabled", True))})  # fmt: skip
    contexts = [{"seed": int(seed), "mask": encode_mask(_tensor(mask))} for seed, mask in session.get("contexts") or []]
    return {"model": session.get("model"), "rules": rules, "contexts": contexts}


def session_from_browser(data: Any, max_bytes: int = 64 << 20) -> dict[str, Any]:
    """The session :func:`session_to_browser` saved. The browser's data is not trusted: rules are read as
    safetensors (never unpickled) and checked like any rule file.

    Raises:
        RuleError: the data is not what :func:`session_to_browser` writes, or a rule in it is not a rule.
    """
    from .rewrite.context import decode_mask
    from .rewrite.delta import RuleDelta

    if not isinstance(data, dict) or not isinstance(data.get("rules", []), list):
        raise RuleError("the rules kept in this browser are not readable; they were dropped.")
    session: dict[str, Any] = {"model": data.get("model"), "rules": [], "contexts": []}
    if session["model"] is not None and not isinstance(session["model"], str):
        raise RuleError("the rules kept in this browser name no model; they were dropped.")
    total = 0
    for item in data.get("rules", [])[-MAX_SAVED_RULES:]:
        try:
            raw = base64.b64decode(item["rule"], validate=True)
            total += len(raw)
            if total > max_bytes:
                raise RuleError("the rules kept in this browser are too large; they were dropped.")
            with tempfile.TemporaryDirectory(prefix="gan-rewrite-browser-") as tmp:
                path = Path(tmp) / "rule.safetensors"
                write_bytes_atomic(path, raw)
                delta = RuleDelta.load(path)
            rule = {"delta": delta, "strength": float(item["strength"]), "label": str(item["label"]),
                    "enabled": bool(item.get("enabled", True))}  # fmt: skip
        except (KeyError, TypeError, ValueError) as err:
            raise RuleError(f"a rule kept in this browser is not readable ({err}); they were dropped.") from None
        if not np.isfinite(rule["strength"]):
            raise RuleError("a rule kept in this browser has no finite strength; they were dropped.")
        session["rules"].append(rule)
    for item in data.get("contexts") or []:
        try:
            session["contexts"].append((int(item["seed"]), decode_mask(str(item["mask"])).numpy().astype(bool)))
        except (KeyError, TypeError, ValueError, GanRewriteError) as err:
            raise RuleError(f"a context kept in this browser is not readable ({err}); they were dropped.") from None
    return session


def _tensor(mask: Any) -> torch.Tensor:
    import torch

    return torch.as_tensor(np.asarray(mask, dtype=bool))


def within(seconds: float, call: Callable[[], Any], what: str = "the Hub") -> Any:
    """``call()``, given up after ``seconds``: a Hub call from the app answers within seconds even when the
    Hub is unreachable (the client itself retries for much longer). The call goes on in a daemon thread.

    Raises:
        HubError: ``call`` did not finish in time.
    """
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["value"] = call()
        except BaseException as err:  # handed to the caller's thread
            box["error"] = err

    thread = threading.Thread(target=run, name="gan-rewrite-hub-call", daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        raise HubError(f"{what} could not be reached within {seconds:g} s; check the connection and try again.")
    if "error" in box:
        raise box["error"]
    return box.get("value")


def parse_seed(value: Any, what: str = "") -> int:
    """A seed from a number box: a non-negative whole number (``12.0`` is accepted, ``12.5`` and ``-1`` are not).

    Raises:
        GanRewriteError: naming the box (``what``: "copy", "paste", "context", ...) and the value.
    """
    name = f"{what} seed" if what else "seed"
    try:
        seed = int(value)
    except (TypeError, ValueError, OverflowError):
        raise GanRewriteError(f"The {name} must be a whole number, got {value!r}.") from None
    if seed < 0 or seed != value:
        raise GanRewriteError(f"The {name} must be a non-negative whole number, got {value!r}.")
    return seed


def rewrite_score_text(rewriter: Rewriter, delta: RuleDelta) -> str:
    """The Markdown shown beside Rewrite: how well the request's context carries over to other samples, per
    layer (the leave-one-out AUC of :meth:`Rewriter.score`), and the one-line advice. Call it with the model's
    lock held; under ``layer="auto"`` it reuses the score that chose the layer."""
    score = rewriter.chosen or rewriter.score()
    aucs = " · ".join(
        f"**{name} {s.auc:.2f}**" if name == delta.layer_names[0] else f"{name} {s.auc:.2f}"
        for name, s in score.layers.items()
    )
    return f"Context carries over (leave-one-out AUC): {aucs}. {score.advice} {solve_summary(delta)}"


def solve_summary(delta: RuleDelta) -> str:
    """One sentence on how the rule was solved, read from its spec (so the user sees what the default did)."""
    spec = delta.spec or {}
    method, solver = spec.get("method"), spec.get("solver") or {}
    if method == "optimize":
        what = "the final images" if solver.get("loss") == "image" else "the layer's output"
        contexts = solver.get("targets") == "contexts"
        where = "the paste sample and of every context sample" if contexts else "the paste sample"
        return f"Solved by fitting {what} of {where}."
    if method == "bounded":
        return "Solved by the bounded closed form."
    if method == "learn":
        from .rewrite.learn import SAMPLES

        samples = solver.get("samples", SAMPLES)
        return f"Learned from the copy pasted onto {samples} random samples as well as the context samples."
    return f"Solved by the {method} solver."
