"""The rewrite engine: keys and statistics at a layer, context directions, goals, solvers, RuleDelta.

Data flows one way: ``forward_to`` → keys / :class:`KeyStats` → context directions ``D`` and a goal
``V*`` → ``Λ`` from a solver → :class:`RuleDelta` → ``G.load_rule``.
"""

from .context import ContextMatches, Goal, decode_mask, encode_mask, search_context
from .delta import LayerDelta, RuleDelta
from .layers import LayerKind, layer_kind
from .learn import solve_learned
from .rewriter import Rewriter, solve_spec
from .score import GeneralisationScore, LayerScore
from .solve import solve_bounded, solve_closed_form, solve_projected
from .stats import KeyStats, compute_stats, model_sha256
from .units import rank_units_by_selectivity

__all__ = [
    "ContextMatches",
    "GeneralisationScore",
    "Goal",
    "KeyStats",
    "LayerDelta",
    "LayerKind",
    "LayerScore",
    "Rewriter",
    "RuleDelta",
    "compute_stats",
    "decode_mask",
    "encode_mask",
    "layer_kind",
    "model_sha256",
    "rank_units_by_selectivity",
    "search_context",
    "solve_bounded",
    "solve_closed_form",
    "solve_learned",
    "solve_projected",
    "solve_spec",
]
