"""Where Ocula keeps its own data (settings, job queue, imported models).

`OCULA_HOME` overrides everything (tests and portable installs use it); otherwise
the platform's per-user data folder. Model downloads live in the Hugging Face cache
(see engine.hub.model_cache), not here.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path


def app_home() -> Path:
    env = os.environ.get("OCULA_HOME")
    if env:
        base = Path(env).expanduser()
    elif sys.platform == "win32":
        base = Path(os.environ.get("APPDATA", Path.home() / "AppData" / "Roaming")) / "Ocula"
    elif sys.platform == "darwin":
        base = Path.home() / "Library" / "Application Support" / "Ocula"
    else:
        base = Path(os.environ.get("XDG_DATA_HOME", Path.home() / ".local" / "share")) / "ocula"
    base.mkdir(parents=True, exist_ok=True)
    return base


def settings_file() -> Path:
    return app_home() / "settings.toml"


def local_models_dir() -> Path:
    path = app_home() / "models"
    path.mkdir(parents=True, exist_ok=True)
    return path
