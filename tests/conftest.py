"""Test-wide environment: isolated app/cache folders, offscreen Qt, one torch thread.

Environment variables that libraries read at import time (HF_*, QT_*) are set here,
at conftest import, before any test module imports huggingface_hub or Qt.
"""
from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

_SESSION_ROOT = Path(tempfile.mkdtemp(prefix="ocula-tests-"))
os.environ["OCULA_HOME"] = str(_SESSION_ROOT / "ocula-home")
os.environ["HF_HOME"] = str(_SESSION_ROOT / "hf-home")
os.environ.pop("HF_HUB_CACHE", None)
os.environ.pop("HF_TOKEN", None)
os.environ.pop("HF_HUB_OFFLINE", None)
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
os.environ.setdefault("OMP_NUM_THREADS", "1")

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import pytest  # noqa: E402

# Shared fixtures: `test_handlers` and `store` for the job tests.
pytest_plugins = ["tests.fixtures.jobs"]


@pytest.fixture(scope="session")
def session_root() -> Path:
    return _SESSION_ROOT


# -- local hub (tests/fixtures/hub_server.py) ---------------------------------------
# huggingface_hub copies HF_ENDPOINT into `constants.ENDPOINT` (and the resolve-URL
# template) when it is first imported, so the server starts here, at conftest import,
# and HF_ENDPOINT is set before any test module can import huggingface_hub. If some
# plugin imported it earlier, its constants are pointed at the server as well.
from tests.fixtures.hub_server import HubServer

_HUB_SERVER = HubServer().start()
os.environ["HF_ENDPOINT"] = _HUB_SERVER.url
if "huggingface_hub" in sys.modules:  # pragma: no cover - depends on plugin load order
    from huggingface_hub import constants as _hf_constants

    _hf_constants.ENDPOINT = _HUB_SERVER.url
    _hf_constants.HUGGINGFACE_CO_URL_TEMPLATE = (
        _HUB_SERVER.url + "/{repo_id}/resolve/{revision}/{filename}"
    )


class HubEnv:
    """What the `hub` fixture gives a test: the server (faults reset) and a fresh cache.

    Attribute access falls through to the server, so `hub.add_repo(...)`,
    `hub.fail(...)`, `hub.ranges(...)` work directly.
    """

    def __init__(self, server: HubServer, cache_dir: Path) -> None:
        self.server = server
        self.cache_dir = cache_dir
        self.url = server.url

    def __getattr__(self, name: str):
        return getattr(self.server, name)


@pytest.fixture(scope="session")
def hub_server() -> HubServer:
    """The session's local hub (already running; HF_ENDPOINT points at it)."""
    return _HUB_SERVER


@pytest.fixture
def hub(hub_server: HubServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> HubEnv:
    """Local hub with faults/log reset and a fresh HF cache for this test.

    The cache is set through HF_HUB_CACHE, which engine.hub.cache_dir() reads at call
    time; huggingface_hub's own import-time default (constants.HF_HUB_CACHE) is pointed
    there too, for code that calls the library with its defaults.
    """
    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    from huggingface_hub import constants as hf_constants

    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(cache))
    hub_server.reset()
    yield HubEnv(hub_server, cache)
    hub_server.reset()
