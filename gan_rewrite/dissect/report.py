"""The static HTML report of a dissection: top units per concept, their IoU, and heatmaps over samples.

``write_report`` writes ``<out>/index.html``, one PNG strip per listed unit in ``<out>/units/`` and
``<out>/dissection.json`` (every unit's IoU with every concept, for ``gan-rewrite ablate/paint --dissection``).
A heatmap shows a sample with the unit's upsampled activation in red and the pixels where it does not fire
dimmed.
"""

from __future__ import annotations

import html
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from ..atomic import atomic_path
from ..errors import RuleError
from ..imaging import save_image, to_uint8
from .concepts import Dissection
from .units import next_layer, state_after

if TYPE_CHECKING:
    from ..models.base import GANGenerator
    from .quantiles import UnitQuantiles

DISSECTION_FORMAT = "gan-rewrite.dissection/1"


def dissection_dict(result: Dissection, *, model: str, quantiles: UnitQuantiles) -> dict[str, Any]:
    """A JSON-able record of a dissection: per concept every unit ranked by IoU."""
    return {
        "format": DISSECTION_FORMAT, "model": model, "layer": result.layer, "quantile_samples": quantiles.n,
        "seeds": result.seeds,
        "concepts": {
            name: [
                {"unit": u, "iou": round(v, 6), "level": float(result.levels[u, result.column(name)])}
                for u, v in result.top(name, result.units)
            ]
            for name in result.concepts
        },
    }


def read_dissection(path: str | Path) -> dict[str, Any]:
    """Read ``dissection.json`` (as written by :func:`write_report`). Raises RuleError when it is not one."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as err:
        raise RuleError(f"cannot read the dissection {str(path)!r}: {err}") from err
    if not isinstance(data, dict) or data.get("format") != DISSECTION_FORMAT or not isinstance(
        data.get("concepts"), dict
    ):
        raise RuleError(f"{str(path)!r} is not a dissection written by `gan-rewrite dissect` (dissection.json).")
    return data


def top_units(data: dict[str, Any], concept: str, k: int) -> list[int]:
    """The ``k`` best units of ``concept`` in a dissection record."""
    ranked = data["concepts"].get(concept)
    if ranked is None:
        raise RuleError(f"the dissection has no concept {concept!r}; it has {sorted(data['concepts'])}.")
    return [int(entry["unit"]) for entry in ranked[:k]]


def heatmaps(images: Tensor, acts: Tensor, threshold: float, low: float) -> Tensor:
    """``(N, 3, H, W)`` pictures in [-1, 1]: tinted red by activation (``low`` → none, ``threshold`` → most) where
    the unit fires, dimmed where it does not."""
    size = images.shape[-1]
    up = F.interpolate(acts[:, None].float(), size=(size, size), mode="bilinear", align_corners=False)
    heat = ((up - low) / max(threshold - low, 1e-8)).clamp(0, 1)  # (N, 1, H, W)
    fires = (up > threshold).float()
    pictures = (images.float() + 1) / 2 * (0.3 + 0.7 * fires)
    red = torch.tensor([1.0, 0.0, 0.0]).view(1, 3, 1, 1)
    tint = 0.35 * heat * fires  # a light red where it fires: the sample stays visible
    mixed = pictures * (1 - tint) + red * tint
    return mixed * 2 - 1


def _strip(images: Tensor, zoom: int = 2) -> Image.Image:
    tiles = to_uint8(images)  # (N, H, W, 3)
    pad = np.full((tiles.shape[1], 2, 3), 255, np.uint8)
    row = np.concatenate([part for tile in tiles for part in (tile, pad)][:-1], axis=1)
    picture = Image.fromarray(row)
    return picture.resize((picture.width * zoom, picture.height * zoom), Image.Resampling.NEAREST)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "_", text) or "concept"


@torch.no_grad()
def write_report(
    G: GANGenerator,
    result: Dissection,
    quantiles: UnitQuantiles,
    out: str | Path,
    *,
    model: str = "",
    top_k: int = 8,
    samples: int = 6,
    pool: Sequence[int] | None = None,
    truncation: float | None = None,
) -> Path:
    """Write the report folder and return the path of its ``index.html``.

    Args:
        G: the generator the dissection ran on.
        result: the dissection.
        quantiles: the unit quantiles it used (the heatmaps' scale).
        out: the folder to write (created).
        model: the model's name, for the page.
        top_k: units listed per concept.
        samples: heatmaps per unit: the samples of ``pool`` where the unit fires the most.
        pool: candidate samples for the heatmaps (default: the first 48 dissected seeds).
        truncation: as for sampling.
    """
    out = Path(out)
    (out / "units").mkdir(parents=True, exist_ok=True)
    pool = [int(s) for s in (pool if pool is not None else result.seeds[:48])]
    state = state_after(G, result.layer, pool, truncation)
    acts = state.features.float().cpu()  # (P, C, h, w)
    images = G.forward_from(next_layer(G, result.layer), state).float().clamp(-1, 1).cpu()
    low = quantiles.at(0.5)
    order = sorted(result.concepts, key=lambda c: -result.top(c, 1)[0][1])
    sections = []
    for concept in order:
        rows = []
        for unit, iou in result.top(concept, top_k):
            threshold = float(result.thresholds[unit, result.column(concept)])
            strength = (acts[:, unit] - threshold).clamp_min(0).flatten(1).sum(1)
            picks = torch.argsort(strength, descending=True, stable=True)[:samples]
            picture = _strip(heatmaps(images[picks], acts[picks, unit], threshold, float(low[unit])))
            name = f"units/{_slug(concept)}_{unit}.png"
            save_image(picture, out / name)
            seeds = ", ".join(str(pool[int(i)]) for i in picks)
            rows.append(
                f"<tr><td>{unit}</td><td>{iou:.3f}</td><td>{float(result.levels[unit, result.column(concept)]):g}"
                f"</td><td><img src='{name}' alt='unit {unit} on seeds {seeds}' "
                f"title='seeds {seeds}'></td></tr>"
            )
        pixels = int(result.concept_pixels[result.concepts.index(concept)])
        sections.append(
            f"<h2 id='{_slug(concept)}'>{html.escape(concept)}</h2><p>{pixels} concept pixels over the dissected "
            f"samples.</p><table><tr><th>unit</th><th>IoU</th><th>threshold level</th>"
            f"<th>where it fires (red), on the samples where it fires most</th></tr>{''.join(rows)}</table>"
        )
    summary = "".join(
        f"<tr><td><a href='#{_slug(c)}'>{html.escape(c)}</a></td><td>{result.top(c, 1)[0][0]}</td>"
        f"<td>{result.top(c, 1)[0][1]:.3f}</td></tr>"
        for c in order
    )
    title = f"Dissection of {html.escape(model or 'a generator')} at {html.escape(result.layer)}"
    page = (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>{title}</title><style>body{{font-family:sans-serif;margin:2em}}"
        "td,th{padding:4px 10px;text-align:left;vertical-align:middle}img{image-rendering:pixelated}</style>"
        f"</head><body><h1>{title}</h1>"
        f"<p>{quantiles.units} units; a unit fires where its activation (upsampled to the image) exceeds a "
        f"quantile of it over {quantiles.n} samples (the level that gives the best IoU with the concept; "
        "0.99 means its top 1 %). IoU with each concept over "
        f"{len(result.seeds)} samples. Switch units off with <code>gan-rewrite ablate</code>, paint with them "
        "with <code>gan-rewrite paint</code> (both read <code>dissection.json</code>).</p>"
        f"<table><tr><th>concept</th><th>best unit</th><th>IoU</th></tr>{summary}</table>"
        + "".join(sections)
        + "</body></html>"
    )
    index = out / "index.html"
    with atomic_path(index) as tmp:
        tmp.write_text(page, encoding="utf-8")
    with atomic_path(out / "dissection.json") as tmp:
        tmp.write_text(json.dumps(dissection_dict(result, model=model, quantiles=quantiles), indent=1))
    return index
