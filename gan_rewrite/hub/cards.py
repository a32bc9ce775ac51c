"""Model cards: README.md with the YAML metadata the Hub indexes (library, tags, licence, provenance)."""

from __future__ import annotations

from typing import Any

from huggingface_hub import ModelCard, ModelCardData

LIBRARY_NAME = "gan-rewrite"
PIPELINE_TAG = "unconditional-image-generation"


def model_card(config: dict[str, Any], *, repo_id: str | None = None) -> ModelCard:
    """A card for a generator folder, built from its config.json dict (provenance lives in ``extra``)."""
    extra = config.get("extra") or {}
    provenance = extra.get("provenance") or {}
    license_id = extra.get("license") or "other"
    data = ModelCardData(
        library_name=LIBRARY_NAME,
        pipeline_tag=PIPELINE_TAG,
        license=license_id,
        tags=sorted({"gan", "gan-rewrite", config["architecture"], *extra.get("tags", [])}),
        **({"license_name": extra["license_name"]} if extra.get("license_name") else {}),
        **({"gan_rewrite_provenance": provenance} if provenance else {}),
    )
    name = repo_id or extra.get("name") or f"{config['architecture']}-{config['resolution']}"
    lines = [
        f"# {name}",
        "",
        extra.get("description") or f"A {config['architecture']} generator ({config['resolution']}×"
        f"{config['resolution']}) in the gan-rewrite model format.",
        "",
        "## Use",
        "",
        "```python",
        "import gan_rewrite as gr",
        f'G = gr.load_generator("{repo_id or name}")',
        "images = G.sample(seeds=[0, 1, 2])  # (3, 3, H, W) in [-1, 1]",
        "```",
        "",
        f"Default layer for rewriting: `{config['default_layer']}`.",
    ]
    if provenance:
        lines += ["", "## Provenance", ""]
        lines += [f"- **{key}**: {value}" for key, value in provenance.items()]
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines) + "\n")
