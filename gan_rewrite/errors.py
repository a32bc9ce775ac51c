"""One family of exceptions for everything gan-rewrite refuses.

Each class also subclasses the builtin a caller would naturally catch (``ValueError``,
``FileNotFoundError``, ...), so ``except ValueError`` keeps working while
``except GanRewriteError`` catches every refusal of this library.
"""

from __future__ import annotations

import reprlib
from typing import Any

_short = reprlib.Repr()
_short.maxlevel, _short.maxstring, _short.maxother, _short.maxlong = 3, 60, 60, 40
_short.maxdict = _short.maxlist = _short.maxtuple = _short.maxset = _short.maxfrozenset = 6


def short_repr(value: Any, limit: int = 300) -> str:
    """A bounded ``repr`` of untrusted data for error messages (at most ``limit`` characters, nesting cut)."""
    try:
        text = _short.repr(value)
    except Exception:  # a repr that fails: say what it is
        text = f"<{type(value).__name__}>"
    return text if len(text) <= limit else text[:limit] + "…"


class GanRewriteError(Exception):
    """Base class of every error raised on purpose by gan-rewrite."""


class ModelNotFoundError(GanRewriteError, FileNotFoundError):
    """A model name, folder or Hub repo could not be found."""


class CheckpointError(GanRewriteError, ValueError):
    """A checkpoint file is unreadable, unsafe, or does not match the architecture."""


class UnsafeCheckpointError(CheckpointError):
    """A pickle asked for code to be imported or run; it was refused, not executed."""


class ConfigError(GanRewriteError, ValueError):
    """A config.json (or config argument) has a missing, unknown or mistyped field."""


class LayerError(GanRewriteError, KeyError):
    """A layer name does not exist in the generator."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable.
        return str(self.args[0]) if self.args else ""


class HubError(GanRewriteError, RuntimeError):
    """The Hub could not be reached or refused the request."""


class RuleError(GanRewriteError, ValueError):
    """A rule (RuleDelta) or a rewrite request is malformed, unknown, or cannot be applied."""


class RuleMismatchError(RuleError):
    """A rule was made for a different base weight (or shape) than the model's layer."""


class RuleNotFoundError(GanRewriteError, FileNotFoundError):
    """A rule file or repo could not be found."""


class StatsError(GanRewriteError, ValueError):
    """Key statistics are missing, malformed, or were computed for another model or layer."""
