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


@pytest.fixture(scope="session")
def session_root() -> Path:
    return _SESSION_ROOT
