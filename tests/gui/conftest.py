"""GUI test helpers: a temporary QSettings file, engine settings path and images."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import desktop  # noqa: F401  installs the PySide6 reference-count fix before any Qt use


@pytest.fixture
def qsettings(tmp_path: Path):
    from PySide6.QtCore import QSettings

    qs = QSettings(str(tmp_path / "ui.ini"), QSettings.Format.IniFormat)
    qs.setValue("ui/welcomed", True)  # the welcome dialog has its own test
    return qs


@pytest.fixture
def settings_path(tmp_path: Path) -> Path:
    return tmp_path / "settings.toml"


@pytest.fixture
def photos(tmp_path: Path) -> list[Path]:
    """Two real photos (scikit-image samples), downsized to keep tests fast."""
    from skimage import data

    folder = tmp_path / "photos"
    folder.mkdir()
    out = []
    for name, arr in (("astronaut.png", data.astronaut()), ("cat.jpg", data.chelsea())):
        img = Image.fromarray(np.asarray(arr)).convert("RGB")
        img.thumbnail((160, 160))
        path = folder / name
        img.save(path)
        out.append(path)
    return out


@pytest.fixture(scope="session", autouse=True)
def _unfreeze_gc_at_exit():
    """desktop.workers.load_backend freezes the model libraries' objects (gc.freeze), as
    the app does; give them back to the collector when the session ends, as the app does
    at exit, so later teardown (and native bindings' leak checks) see a normal heap."""
    yield
    import gc

    gc.unfreeze()
