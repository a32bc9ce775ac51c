"""The Space's app for tests: ``spaces/rewrite/app.py`` is a script beside the package, not part of it."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

APP = Path(__file__).resolve().parents[1] / "spaces" / "rewrite" / "app.py"


def load_app() -> ModuleType:
    """spaces/rewrite/app.py as a module, imported once per test session."""
    if "space_app" in sys.modules:
        return sys.modules["space_app"]
    spec = importlib.util.spec_from_file_location("space_app", APP)
    module = importlib.util.module_from_spec(spec)
    sys.modules["space_app"] = module
    spec.loader.exec_module(module)
    return module
