"""Shared pytest fixtures.

Sections:

1. Model fixtures from ``common_fixtures.py`` (re-exported here so every test file sees them).
2. The loopback Hugging Face Hub (``hub``): the official ``huggingface_hub`` client against ``tests/hub_server.py``.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from common_fixtures import *  # noqa: F403  (section 1)
from hub_server import HubServer

# ======================================================================================================================
# 2. Loopback Hub
# ======================================================================================================================
#
# How the client is pointed at the test server (robust to import order): huggingface_hub reads its environment
# ONCE, at import time, into `huggingface_hub.constants` (ENDPOINT, HUGGINGFACE_CO_URL_TEMPLATE, HF_HUB_CACHE, ...),
# and a few modules copy values further at import: the module-level `huggingface_hub.hf_api.api = HfApi()` behind
# the top-level functions (`huggingface_hub.create_repo`, `model_info`, ...) stores `endpoint`, and the cache
# manager imports `HF_HUB_CACHE` by value. Setting HF_ENDPOINT in conftest before the first import is fragile (any
# plugin or earlier import wins, and the port is only known once the server is up), so the `hub` fixture instead
# monkeypatches, for the duration of one test:
#   * the environment (HF_ENDPOINT, HF_HOME, HF_HUB_CACHE, HF_TOKEN, ...), for code that reads it at call time and
#     for subprocesses (e.g. CLI tests) that import huggingface_hub afresh;
#   * every `constants` string derived from the endpoint or from HF_HOME (found by prefix, so new constants in
#     future client versions follow), plus the offline/telemetry/implicit-token flags and HF_URL_HOSTS;
#   * the copies listed in `_VALUE_COPIES` and `hf_api.api.endpoint`.
# Then it drops the shared HTTP client (`close_session`) so the next request builds one under the patched
# environment (NO_PROXY includes 127.0.0.1). Everything is undone after the test.

_VALUE_COPIES = {  # module -> attribute copied from `constants` at import time
    "huggingface_hub.utils._cache_manager": "HF_HUB_CACHE",
    "huggingface_hub.utils._cache_assets": "HF_ASSETS_CACHE",
    "huggingface_hub.utils._git_credential": "ENDPOINT",
}
_REPO_NUMBERS = itertools.count(1)


@dataclass
class Hub:
    """What a test needs to talk to the loopback Hub (see the `hub` fixture)."""

    server: HubServer
    endpoint: str  # e.g. "http://127.0.0.1:43567"
    token: str  # the token the client sends (any Bearer token is accepted)
    home: Path  # the test's HF_HOME; the client cache is `home / "hub"`

    @property
    def username(self) -> str:
        return self.server.store.username

    @property
    def cache_dir(self) -> Path:
        return self.home / "hub"

    @property
    def requests(self) -> list[tuple[str, str]]:
        """Every request the server received so far, as ``(method, path)``; shared by the whole session."""
        return self.server.store.requests

    def repo_id(self, name: str = "repo") -> str:
        """A repo id no other test uses: ``"tester/<name>-<n>"``."""
        return f"{self.username}/{name}-{next(_REPO_NUMBERS)}"

    def count(self, method: str, path_part: str = "") -> int:
        """How many ``method`` requests whose path contains ``path_part`` the server received."""
        return sum(1 for m, p in list(self.requests) if m == method and path_part in p)

    def api(self, **kwargs):
        """An ``HfApi`` bound explicitly to this Hub and token."""
        from huggingface_hub import HfApi

        return HfApi(endpoint=self.endpoint, token=self.token, **kwargs)

    def go_away(self, monkeypatch: pytest.MonkeyPatch) -> str:
        """From now on (this test only) the client talks to a port nothing listens on; returns that URL.

        The client's retry back-off sleeps are skipped so "unreachable" fails in milliseconds.
        """
        import socket
        from types import SimpleNamespace

        from huggingface_hub import constants
        from huggingface_hub.utils import _http

        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            dead = f"http://127.0.0.1:{probe.getsockname()[1]}"
        monkeypatch.setattr(constants, "ENDPOINT", dead)
        monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", dead + "/{repo_id}/resolve/{revision}/{filename}")
        monkeypatch.setattr(constants, "HF_HUB_ETAG_TIMEOUT", 2)
        monkeypatch.setattr(_http, "time", SimpleNamespace(sleep=lambda seconds: None))
        return dead


@pytest.fixture(scope="session")
def hub_server() -> Iterator[HubServer]:
    """The loopback Hub server, one per test session, on a free port of 127.0.0.1."""
    with HubServer() as server:
        yield server


@pytest.fixture
def hub(hub_server: HubServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Hub]:
    """Point huggingface_hub at the loopback Hub for one test, with a fresh, empty cache and a token."""
    import importlib

    import huggingface_hub.hf_api
    from huggingface_hub import constants
    from huggingface_hub.utils import close_session

    endpoint, home, token = hub_server.endpoint, tmp_path / "hf_home", "hf_test_token"
    home.mkdir()
    env = {
        "HF_ENDPOINT": endpoint,
        "HF_HOME": str(home),
        "HF_HUB_CACHE": str(home / "hub"),
        "HF_ASSETS_CACHE": str(home / "assets"),
        "HF_XET_CACHE": str(home / "xet"),
        "HF_TOKEN_PATH": str(home / "token"),
        "HF_TOKEN": token,
        "HF_HUB_DISABLE_TELEMETRY": "1",
        "NO_PROXY": ",".join(filter(None, [os.environ.get("NO_PROXY"), "127.0.0.1", "localhost"])),
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HUGGING_FACE_HUB_TOKEN", "HUGGINGFACE_HUB_CACHE",
                 "HF_HUB_DISABLE_IMPLICIT_TOKEN", "HF_OIDC_RESOURCE", "HF_HUB_ETAG_TIMEOUT", "no_proxy"):  # fmt: skip
        monkeypatch.delenv(name, raising=False)

    old_endpoint, old_home = constants.ENDPOINT, constants.HF_HOME
    for name, value in list(vars(constants).items()):
        if isinstance(value, str) and name.isupper() and not name.startswith("_"):
            if value.startswith(old_endpoint):
                monkeypatch.setattr(constants, name, endpoint + value[len(old_endpoint) :])
            elif value.startswith(old_home):
                monkeypatch.setattr(constants, name, str(home) + value[len(old_home) :])
    for name, value in {"HF_HUB_CACHE": str(home / "hub"), "HUGGINGFACE_HUB_CACHE": str(home / "hub"),
                        "HF_ASSETS_CACHE": str(home / "assets"), "HUGGINGFACE_ASSETS_CACHE": str(home / "assets"),
                        "HF_XET_CACHE": str(home / "xet"), "HF_TOKEN_PATH": str(home / "token"),
                        "HF_STORED_TOKENS_PATH": str(home / "stored_tokens")}.items():  # fmt: skip
        monkeypatch.setattr(constants, name, value, raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_TELEMETRY", True)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_IMPLICIT_TOKEN", False)
    if isinstance(getattr(constants, "HF_URL_HOSTS", None), frozenset):
        monkeypatch.setattr(constants, "HF_URL_HOSTS", constants.HF_URL_HOSTS | {"127.0.0.1"})
    for module_name, attribute in _VALUE_COPIES.items():
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        monkeypatch.setattr(module, attribute, getattr(constants, attribute), raising=False)
    monkeypatch.setattr(huggingface_hub.hf_api.api, "endpoint", endpoint)

    close_session()  # the next request builds a client under the patched environment
    yield Hub(server=hub_server, endpoint=endpoint, token=token, home=home)
    close_session()
