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


# -- temporary files for atomic writes ------------------------------------------------------

_TEMP_FLAGS = (os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
               | getattr(os, "O_BINARY", 0) | getattr(os, "O_NOINHERIT", 0))


def make_temp_file(folder: str | os.PathLike, *, prefix: str = "", suffix: str = "") -> tuple[int, str]:
    """`tempfile.mkstemp`, but the file gets the mode any newly created file gets (0666
    less the umask) instead of mkstemp's 0600, so an output written atomically (temporary
    file + os.replace) ends up with the same permissions as one written in place.
    Returns (open descriptor, path)."""
    import secrets

    for _ in range(100):
        path = os.path.join(os.fspath(folder), f"{prefix}{secrets.token_hex(4)}{suffix}")
        try:
            return os.open(path, _TEMP_FLAGS, 0o666), path
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temporary file name in {folder}")


def make_temp_dir(folder: str | os.PathLike, *, prefix: str = "", suffix: str = "") -> str:
    """`tempfile.mkdtemp` with the mode a new folder normally gets (0777 less the umask),
    not mkdtemp's 0700, for a folder that is renamed into place once complete."""
    import secrets

    for _ in range(100):
        path = os.path.join(os.fspath(folder), f"{prefix}{secrets.token_hex(4)}{suffix}")
        try:
            os.mkdir(path, 0o777)
            return path
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temporary folder name in {folder}")


def model_cache_dir(cache_dir_setting: str | None = None) -> Path:
    """The Hugging Face model cache: the user's Settings ▸ cache folder if set, else
    HF_HUB_CACHE, else HF_HOME/hub, else huggingface_hub's default. The one place this is
    decided (the hub layer downloads there; the catalog reads cached cards from there)."""
    if cache_dir_setting:
        return Path(cache_dir_setting).expanduser()
    env_cache = os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE")
    if env_cache:
        return Path(os.path.expandvars(env_cache)).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.path.expandvars(os.environ["HF_HOME"])).expanduser() / "hub"
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)
