"""Screenshots of each main view, for review and for the README.

Run by tests/gui/test_screenshots.py in a subprocess on an Xvfb display (the Qt
platform is chosen once per process, and the test suite's is offscreen):

    python -m tests.gui.shots OUT_DIR

Every picture shows real engine output: tiny models built here, run through the
same workers and jobs as the app (their weights are random, so their boxes and
maps are not meaningful — the screenshots check layout and drawing, not models).
"""
from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image


def wait_until(app, predicate: Callable[[], bool], timeout_s: float = 120.0) -> None:
    end = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > end:
            raise TimeoutError("the view did not reach the expected state in time")
        app.processEvents()
        time.sleep(0.01)


def settle(app, seconds: float = 0.3) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        app.processEvents()
        time.sleep(0.01)


def photos(folder: Path) -> list[Path]:
    from skimage import data

    folder.mkdir(parents=True, exist_ok=True)
    out = []
    samples = (("astronaut.png", data.astronaut()), ("chelsea.jpg", data.chelsea()),
               ("coffee.jpg", data.coffee()), ("motorcycle.png", data.stereo_motorcycle()[0]))
    for name, arr in samples:
        path = folder / name
        Image.fromarray(np.asarray(arr)).convert("RGB").save(path)
        out.append(path)
    return out


def save(widget, out: Path, name: str) -> Path:
    path = out / name
    widget.grab().save(str(path))
    print(f"saved {path}", flush=True)
    return path


def main(out_dir: str) -> int:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="ocula-shots-"))
    os.environ["OCULA_HOME"] = str(scratch / "home")
    os.environ.setdefault("HF_HOME", str(scratch / "hf"))

    from PySide6.QtCore import QSettings
    from PySide6.QtWidgets import QApplication

    import desktop  # noqa: F401  (reference-count fix first)

    app = QApplication([sys.argv[0]])
    from desktop.main_window import MainWindow
    from desktop.theme import apply_theme
    from desktop.views.error_dialogs import ErrorDialog
    from engine.catalog.local_import import import_model
    from engine.errors import OfflineError
    from tests.fixtures.repos import tiny_vit_classifier

    qs = QSettings(str(scratch / "ui.ini"), QSettings.Format.IniFormat)
    qs.setValue("ui/welcomed", True)
    apply_theme(app, "light")
    vit = import_model(tiny_vit_classifier(scratch / "tiny-vit"), name="Tiny ViT (random)")

    window = MainWindow(qsettings=qs, settings_path=scratch / "settings.toml")
    window.resize(1400, 880)
    window.show()
    images = photos(scratch / "photos")
    window.workspace.add_paths(images)
    wait_until(app, lambda: window.workspace.shown_path == images[0])
    settle(app, 0.5)
    save(window, out, "main_empty_results.png")

    # explain: attention rollout of the tiny ViT on the astronaut
    window.task_combo.setCurrentIndex(window.task_combo.findData("explain"))
    window.model_picker.select(window.catalog.get(vit.id))
    form = window.task_panel.explain_form
    form.method.setCurrentIndex(form.method.findData("rollout"))
    maps: list = []
    window.explain.mapsReady.connect(maps.append)
    window.explain.failed.connect(lambda message: print("explain failed:", message))
    window.run()
    print("explain started:", window.card.id, window.explain.busy, flush=True)
    wait_until(app, lambda: bool(maps), 300)
    settle(app)
    save(window, out, "main_explain.png")

    apply_theme(app, "dark")
    settle(app)
    save(window, out, "main_explain_dark.png")
    apply_theme(app, "light")

    # detect: a real job (engine detect handler) with a tiny random DETR
    from tests.fixtures.tiny_detectors import build_detr

    detr = import_model(build_detr(scratch / "tiny-detr"), task="detect",
                        name="Tiny DETR (random)")
    window.load_catalog()
    window.task_combo.setCurrentIndex(window.task_combo.findData("detect"))
    window.model_picker.select(window.catalog.get(detr.id))
    window.task_panel.forms["detect"].threshold.setValue(0.3)
    window.task_panel.output_dir.setText(str(scratch / "out"))
    finished: list = []
    window.jobFinished.connect(finished.append)
    window.run()
    wait_until(app, lambda: bool(finished), 300)
    window.workspace.set_current(0)
    wait_until(app, lambda: window.viewer.boxes is not None, 30)
    settle(app)
    save(window, out, "main_detect.png")

    catalog = window.open_catalog()
    catalog.resize(1200, 700)
    wait_until(app, lambda: " installed, " in catalog.disk_label.text(), 30)
    catalog.select(catalog.model.rows[0].card.id)
    settle(app)
    save(catalog, out, "catalog.png")
    catalog.hide()

    settings = window.open_settings()
    settle(app)
    save(settings, out, "settings.png")
    settings.reject()

    welcome = window.show_welcome()
    settle(app)
    save(welcome, out, "welcome.png")
    welcome.reject()

    try:
        raise OfflineError("Model 'rtdetr-r18' is not downloaded and offline mode is on. Turn "
                           "offline mode off in Settings, or download it when you are online.")
    except OfflineError as exc:
        import traceback

        error = ErrorDialog.for_exception(exc, traceback.format_exc(), parent=window)
    error.show()
    error.details_button.click()
    settle(app)
    save(error, out, "error_dialog.png")
    error.close()

    window.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1] if len(sys.argv) > 1 else "tests/artifacts"))
