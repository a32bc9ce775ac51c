"""Model cards: README.md with the YAML metadata the Hub indexes (library, tags, licence, provenance)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from huggingface_hub import ModelCard, ModelCardData

if TYPE_CHECKING:
    from ..rewrite.delta import RuleDelta

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


def rule_card(
    delta: RuleDelta,
    *,
    repo_id: str | None = None,
    architecture: str | None = None,
    license_id: str | None = None,
    preview: str | None = None,
) -> ModelCard:
    """A card for a rule repo: YAML pointing at the base model as an adapter, and how to use the rule.

    Args:
        delta: the rule.
        repo_id: the rule's repo (used in the usage snippet).
        architecture: the base model's architecture (``dcgan``, ``stylegan2``, ...), added to the tags.
        license_id: the base model's licence, when known.
        preview: file name of the before/after grid in the repo, to show in the card.

    Returns:
        A ``ModelCard`` whose YAML has ``library_name: gan-rewrite`` and, when the rule's ``base_model`` is a
        Hub repo id, ``base_model: <repo>`` with ``base_model_relation: adapter``.

    Example:
        >>> print(rule_card(delta, repo_id="owner/smile", architecture="stylegan2"))
    """
    from .loading import _REPO_ID

    layouts = sorted({part.weight_layout for part in delta.layers.values()})
    tags = ["gan-rewrite", "rule", *([architecture] if architecture else []), *layouts]
    on_hub = bool(_REPO_ID.match(delta.base_model))
    fields: dict[str, Any] = {
        "library_name": LIBRARY_NAME,
        "pipeline_tag": PIPELINE_TAG,
        "tags": list(dict.fromkeys(tags)),
    }
    if license_id:
        fields["license"] = license_id
    if on_hub:  # the Hub only accepts repo ids here; a known model name stays in the text
        fields["base_model"] = delta.base_model
        fields["base_model_relation"] = "adapter"
    elif delta.base_model:  # a known name: a tag of ours lets `list_rules` find the rule
        from .listing import model_tag

        fields["tags"].append(model_tag(delta.base_model))
    data = ModelCardData(**fields)
    name = repo_id or "rule"
    base = delta.base_model or "<base model>"
    layers = ", ".join(f"`{layer}` (rank {part.rank}, {part.weight_layout})" for layer, part in delta.layers.items())
    lines = [
        f"# {name}",
        "",
        f"A gan-rewrite rule for `{base}`"
        + (f" (revision `{delta.base_revision}`)" if delta.base_revision else "")
        + ": a low-rank change to the weights of "
        + layers
        + f", solved with `{delta.method or 'unknown'}`"
        + (f" at strength {delta.scale:g}." if delta.scale != 1.0 else "."),
        "",
        "It is a rewrite of the generator's rule, shared like a LoRA: the base model is not modified; the rule "
        "loads on top of it and can be rescaled or unloaded (unloading restores the original weights exactly).",
    ]
    if preview:
        lines += ["", f"![before (top) / after (bottom)]({preview})"]
    lines += [
        "",
        "## Use",
        "",
        "```python",
        "import gan_rewrite as gr",
        f'G = gr.load_generator("{base}"'
        + (f', revision="{delta.base_revision}")' if on_hub and delta.base_revision else ")"),
        f'G.load_rule("{name}", name="rule", scale=1.0)  # add revision=... to pin a version',
        "images = G.sample(seeds=[0, 1, 2])",
        'G.unload_rules(["rule"])',
        "```",
    ]
    summary = _spec_summary(delta.spec)
    if summary:
        lines += ["", "## What it does", "", *summary]
        lines += [
            "",
            "The full request is in `rule.json`; `gan_rewrite.rewrite.solve_spec(G, spec)` re-runs the solve.",
        ]
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines) + "\n")


def _spec_summary(spec: dict[str, Any]) -> list[str]:
    """Markdown bullets saying what a rule's request was (seeds, copy / paste / erase, statistics)."""
    lines = []
    if spec.get("layer"):
        lines.append(f"- **layer**: `{spec['layer']}`")
    if spec.get("rank") is not None:
        lines.append(f"- **rank**: {spec['rank']}, **method**: `{spec.get('method', '')}`")
    context = [item.get("seed") for item in spec.get("context") or [] if isinstance(item, dict)]
    if context:
        lines.append(f"- **context seeds**: {context}")
    if isinstance(spec.get("copy"), dict):
        lines.append(f"- **copied** from seed {spec['copy'].get('seed')}")
    paste = spec.get("paste")
    if isinstance(paste, dict):
        where = f"offset {paste['offset']}" if "offset" in paste else "a painted region"
        lines.append(f"- **pasted** into seed {paste.get('seed')} at {where}")
    if isinstance(spec.get("erase"), dict):
        lines.append(f"- **erased** on seed {spec['erase'].get('seed')}")
    if spec.get("truncation") is not None:
        lines.append(f"- **truncation**: {spec['truncation']}")
    stats = spec.get("stats")
    if isinstance(stats, dict):
        lines.append(f"- **key statistics**: n={stats.get('n')}, first seed {stats.get('seed')}")
    return lines
