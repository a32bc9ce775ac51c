"""gan-rewrite: rewrite the rules of pretrained GANs and share the rewrites on the Hugging Face Hub.

Example:
    >>> import gan_rewrite as gr
    >>> G = gr.load_generator("dcgan-faces-64")
    >>> images = G.sample(seeds=[0, 1, 2])   # (3, 3, 64, 64) in [-1, 1]
"""

__version__ = "0.1.0"

from .errors import (  # noqa: E402
    CheckpointError,
    ConfigError,
    GanRewriteError,
    HubError,
    LayerError,
    ModelNotFoundError,
    RuleError,
    RuleMismatchError,
    RuleNotFoundError,
    StatsError,
    UnsafeCheckpointError,
)
from .hub.convert import convert_checkpoint  # noqa: E402
from .hub.known import known_models  # noqa: E402
from .hub.listing import RuleListing, list_rules  # noqa: E402
from .hub.loading import load_generator  # noqa: E402
from .models import GANGenerator  # noqa: E402
from .rewrite import KeyStats, Rewriter, RuleDelta, compute_stats  # noqa: E402

__all__ = [
    "CheckpointError", "ConfigError", "GANGenerator", "GanRewriteError", "HubError", "KeyStats", "LayerError",
    "ModelNotFoundError", "Rewriter", "RuleDelta", "RuleError", "RuleMismatchError", "RuleNotFoundError",
    "RuleListing", "StatsError", "UnsafeCheckpointError", "__version__", "compute_stats", "convert_checkpoint",
    "known_models", "list_rules", "load_generator",
]
