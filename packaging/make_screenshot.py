"""Regenerate docs/screenshot.png from a real model run (not a random tiny model).

    QT_QPA_PLATFORM=offscreen .venv/bin/python packaging/make_screenshot.py [--out docs/screenshot.png]

Starts the desktop app in a temporary OCULA_HOME, imports the real-weight MTCNN face
detector the Lite bundle ships (resources/first-run/mtcnn, made by
make_first_run_models.py when missing), runs a Detect job on scikit-image's astronaut
photo through the app's own job queue, and saves the window once the result is drawn.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _wait(app, predicate, timeout_s: float = 180.0) -> None:
    end = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > end:
            raise TimeoutError("the window did not reach the expected state in time")
        app.processEvents()
        time.sleep(0.01)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "screenshot.png")
    parser.add_argument("--size", default="1280x800")
    args = parser.parse_args(argv)
    first_run = ROOT / "resources" / "first-run" / "mtcnn"
    if not (first_run / "model.toml").is_file():
        subprocess.run([sys.executable, str(ROOT / "packaging" / "make_first_run_models.py")],
                       check=True)
    work = Path(tempfile.mkdtemp(prefix="ocula-shot-"))
    os.environ.update(OCULA_HOME=str(work / "home"), HF_HUB_OFFLINE="1",
                      XDG_CONFIG_HOME=str(work / "config"))
    import numpy as np
    from PIL import Image
    from PySide6.QtCore import QSettings
    from PySide6.QtWidgets import QApplication
    from skimage import data

    import desktop  # noqa: F401  (PySide6 reference-count fix)
    from desktop.main_window import MainWindow
    from desktop.theme import apply_theme
    from engine.catalog.local_import import import_model
    from engine.jobs.spec import JobSpec

    app = QApplication.instance() or QApplication(sys.argv)
    apply_theme(app, "dark")
    photo = work / "astronaut.png"
    Image.fromarray(np.asarray(data.astronaut())).save(photo)
    card = import_model(first_run)
    qsettings = QSettings(str(work / "ui.ini"), QSettings.Format.IniFormat)
    qsettings.setValue("ui/welcomed", True)
    window = MainWindow(qsettings=qsettings, settings_path=work / "settings.toml", welcome=False)
    width, height = (int(v) for v in args.size.split("x"))
    window.resize(width, height)
    window.show()
    window.task_combo.setCurrentIndex(window.task_combo.findData("detect"))
    window.workspace.add_paths([photo])
    _wait(app, lambda: window.workspace.shown_path == photo)
    finished = []
    window.jobFinished.connect(lambda *a: finished.append(a))
    window.start_job(JobSpec(task="detect", model=card.id, inputs=[str(photo)],
                             output_dir=str(work / "out"), options={"threshold": 0.9},
                             device="cpu"))
    _wait(app, lambda: finished and window.viewer.boxes is not None)
    picker = window.model_picker
    index = picker.findData(card.id)
    if index >= 0:
        picker.setCurrentIndex(index)
    end = time.monotonic() + 1.0
    while time.monotonic() < end:
        app.processEvents()
        time.sleep(0.01)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    image = window.grab().toImage()
    tmp = args.out.with_suffix(".tmp.png")
    image.save(str(tmp), "PNG")
    Image.open(tmp).convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT).save(
        args.out, optimize=True)
    tmp.unlink()
    print(f"{args.out}: {args.out.stat().st_size / 1e3:.0f} kB")
    window.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
