"""Screenshots of each main view, for review and for the README.

Run by tests/gui/test_screenshots.py in a subprocess on an Xvfb display (the Qt
platform is chosen once per process, and the test suite's is offscreen):

    python -m tests.gui.shots OUT_DIR [WIDTHxHEIGHT] [TAG]

WIDTHxHEIGHT is the main window's size in device pixels (default 1400x880); with TAG the
files are `<view>_<TAG>.png`, and `layout_<TAG>.json` lists, per view, every toolbar
action that is clipped or hidden in the toolbar's overflow and every dock that overlaps
the central widget (empty lists: nothing is). Run it under QT_SCALE_FACTOR=2 for 2x.

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


TAG = ""
LAYOUT: dict[str, list[str]] = {}


def save(widget, out: Path, name: str) -> Path:
    if TAG:
        name = name.replace(".png", f"_{TAG}.png")
    path = out / name
    widget.grab().save(str(path))
    print(f"saved {path}", flush=True)
    return path


def layout_problems(window) -> list[str]:
    """Toolbar actions not shown inside their bar (clipped, or moved to the overflow
    extension) and docks that overlap the central widget, in window coordinates."""
    from PySide6.QtCore import QRect
    from PySide6.QtWidgets import QDockWidget, QToolBar

    problems = []
    inside = QRect(0, 0, window.width(), window.height())
    for bar in window.findChildren(QToolBar):
        if not bar.isVisible():
            continue
        for action in bar.actions():
            if action.isSeparator() or not action.isVisible():
                continue
            widget = bar.widgetForAction(action)
            name = action.text() or (widget.objectName() if widget else "?")
            if widget is None or not widget.isVisible() or widget.parent() is not bar:
                problems.append(f"{bar.objectName()}: '{name}' is in the overflow")
                continue
            rect = QRect(widget.mapTo(window, widget.rect().topLeft()), widget.size())
            if not bar.rect().contains(widget.geometry()) or not inside.contains(rect):
                problems.append(f"{bar.objectName()}: '{name}' is clipped ({rect})")
    central = window.centralWidget().geometry()
    for dock in window.findChildren(QDockWidget):
        if dock.isVisible() and not dock.isFloating() and dock.geometry().intersects(central):
            problems.append(f"dock {dock.objectName()} overlaps the central widget")
    return problems


def check_layout(window, view: str) -> None:
    LAYOUT[view] = layout_problems(window)


def main(out_dir: str, size: str = "1400x880", tag: str = "") -> int:
    global TAG
    TAG = tag
    width, height = (int(v) for v in size.lower().split("x"))
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
    ratio = app.primaryScreen().devicePixelRatio()  # QT_SCALE_FACTOR=2: 2 device px each
    window.resize(round(width / ratio), round(height / ratio))
    window.show()
    images = photos(scratch / "photos")
    window.workspace.add_paths(images)
    wait_until(app, lambda: window.workspace.shown_path == images[0])
    settle(app, 0.5)
    save(window, out, "main_empty_results.png")
    check_layout(window, "main_empty_results")

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
    check_layout(window, "main_explain")

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
    check_layout(window, "main_detect")

    # caption, segment, restore: the bundled tiny models, each a real job
    from desktop.views.bundled_models import register_bundled

    bundled = {c.tasks[0]: c for c in register_bundled(["caption", "segment", "restore"])}
    window.load_catalog()
    for task in ("caption", "segment", "restore"):
        window.task_combo.setCurrentIndex(window.task_combo.findData(task))
        window.model_picker.select(window.catalog.get(bundled[task].id))
        window.workspace.set_current(0)
        done: list = []
        window.jobFinished.connect(done.append)
        op = window.start_job(window.build_spec(window.card, images[:1]))
        wait_until(app, lambda: bool(done), 300)
        window.jobFinished.disconnect()
        if op.outcome != "succeeded":
            print(f"{task} failed:", op.failure and op.failure.details, flush=True)
        wait_until(app, lambda t=task: (t, images[0]) in window.results, 30)
        window.workspace.set_current(0)
        settle(app)
        save(window, out, f"main_{task}.png")
        check_layout(window, f"main_{task}")
    window.queue_dock.show()
    settle(app)
    save(window.queue_dock, out, "jobs_dock.png")
    check_layout(window, "jobs_dock")

    catalog = window.open_catalog()
    catalog.resize(window.size())
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
    if TAG:
        import json

        (out / f"layout_{TAG}.json").write_text(json.dumps(LAYOUT, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(*(sys.argv[1:] or ["tests/artifacts"])))
