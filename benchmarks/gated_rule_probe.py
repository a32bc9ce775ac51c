"""Would a *gated* rank-one rule carry over more cleanly? A diagnostic, not a feature (issue 9).

A rank-one rule changes the layer's output at every key location by ``Λ · Dᵀk``, so every location where
the context direction fires a little moves a little: on the faces most of a rule's change outside the edited
band comes from those weak responses. This probe solves each request with the default settings, then
samples the held-out faces with the rule applied through a forward hook as ``Λ · g(Dᵀk)`` with
``g(p) = strength · p · [p > τ]``, where ``τ`` is a quantile of ``Dᵀk`` over every location of 100 random
samples (label-free); the first row is the plain rule, and the hook is checked against ``load_rule``.
DCGAN and ProGAN layers only (their keys are the layer's input).

A gated rule is no longer a weight delta — it cannot be fused into the weight or shared as a LoRA-like file
as it is — so it is measured here before anything is built on it. Scores as in ``edit_quality.py``.

    python benchmarks/gated_rule_probe.py [--requests blue-cap,dark-glasses] [--layer auto]
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import torch
from edit_quality import build, direction_response, evaluate, load_request
from torch import Tensor

import gan_rewrite as gr

QUANTILES = (0.8, 0.9, 0.95)
STRENGTHS = (1.0, 1.5, 2.0)
RANDOM_SEEDS = list(range(5000, 5100))


def sample_gated(
    G: gr.GANGenerator, rw: gr.Rewriter, delta: gr.RuleDelta, gate: Callable[[Tensor], Tensor], seeds: list[int]
) -> Tensor:
    """Held-out images with the rule's change ``Λ · gate(Dᵀk)`` added to the layer's output."""
    part = delta.layers[rw.layer]
    lam_weight = rw.kind.from_oihw(part.lam)

    def add_gated_change(module: torch.nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> Tensor:
        state = gr.models.base.LayerState(features=inputs[0])
        response = torch.einsum("nihw,ir->nrhw", rw.kind.keys(module, state), part.direction.to(inputs[0]))
        return output + rw.kind.linear(module, gate(response), lam_weight.to(inputs[0]))

    handle = G.layer_module(rw.layer).register_forward_hook(add_gated_change)
    try:
        return G.sample(seeds)
    finally:
        handle.remove()


def response_quantiles(G: gr.GANGenerator, rw: gr.Rewriter, delta: gr.RuleDelta) -> dict[float, float]:
    """Quantiles of ``Dᵀk`` over every key location of random samples: the gate's thresholds."""
    response = direction_response(G, rw, delta.layers[rw.layer].direction[:, 0], RANDOM_SEEDS)
    return {q: float(torch.quantile(response.reshape(-1), q)) for q in QUANTILES}


def probe(G: gr.GANGenerator, name: str, layer: str) -> None:
    req = load_request(name)
    seeds = req["held_out"]
    before = G.sample(seeds)
    rw = build(G, req, layer)
    rw.compute_stats(n=1000, progress=False)
    delta = rw.solve(rank=1, progress=False)
    G.load_rule(delta, name="probe")
    try:
        plain = G.sample(seeds)
    finally:
        G.unload_rules()
    through_hook = sample_gated(G, rw, delta, lambda p: p, seeds)
    print(f"\n{name} at {rw.layer}: hook vs load_rule max |Δ| {float((through_hook - plain).abs().max()):.1e}")
    print("| gate | strength | vis | out | max | max > 4 px |")
    print("|---|---|---|---|---|---|")
    print_row("none (the default rule)", 1.0, evaluate(req, before, plain))
    for q, tau in response_quantiles(G, rw, delta).items():
        for strength in STRENGTHS:
            images = sample_gated(G, rw, delta, lambda p, t=tau, s=strength: s * p * (p > t), seeds)
            print_row(f"Dᵀk > q{q:g} ({tau:.2f})", strength, evaluate(req, before, images))


def print_row(gate: str, strength: float, row: dict[str, float]) -> None:
    print(
        f"| {gate} | {strength:g} | {row['vis']} | {row['out']:.4f} | {row['max']:.2f} | {row['max_beyond']:.2f} |",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", default="blue-cap,dark-glasses,erase-glasses")
    parser.add_argument("--layer", default="auto", help="'auto' (the default) or a layer name")
    args = parser.parse_args()
    torch.set_num_threads(2)
    G = gr.load_generator("dcgan-faces-64")
    for name in args.requests.split(","):
        probe(G, name, args.layer)


if __name__ == "__main__":
    main()
