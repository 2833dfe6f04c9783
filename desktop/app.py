"""Desktop entry point: `ocula` with no command calls `main`.

The window is shown before torch or transformers are imported; they load in a
worker thread when a model first runs.
"""
from __future__ import annotations

import os
import sys
import time
from typing import Sequence

_T0 = time.perf_counter()


def _no_display() -> str | None:
    """A sentence if Qt would abort for lack of a display (Linux without X/Wayland)."""
    if not sys.platform.startswith("linux") or os.environ.get("QT_QPA_PLATFORM"):
        return None
    if os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"):
        return None
    return ("Ocula cannot open its window: no display was found (DISPLAY and WAYLAND_DISPLAY "
            "are not set). Start it from a desktop session, or use the command line "
            "(`ocula --help`).")


def main(argv: Sequence[str] | None = None) -> int:
    """Create the QApplication and the main window; run until the window closes."""
    problem = _no_display()
    if problem:
        print(problem, file=sys.stderr)
        return 1
    from PySide6.QtCore import QCoreApplication, QSettings, QTimer
    from PySide6.QtWidgets import QApplication

    QCoreApplication.setOrganizationName("Ocula")
    QCoreApplication.setApplicationName("Ocula")
    args = [sys.argv[0] if sys.argv else "ocula", *(argv if argv is not None else sys.argv[1:])]
    app = QApplication.instance() or QApplication(args)

    from desktop.main_window import MainWindow
    from desktop.theme import apply_theme, icon

    qsettings = QSettings()
    apply_theme(app, str(qsettings.value("ui/theme", "system")))
    app.setWindowIcon(icon("ocula"))
    window = MainWindow(qsettings=qsettings)
    window.show()
    QTimer.singleShot(0, _migrate_legacy_token)
    if os.environ.get("OCULA_STARTUP_PROBE"):
        QTimer.singleShot(0, lambda: _report_startup(window))
    code = app.exec()
    import gc

    gc.unfreeze()  # desktop.workers.load_backend froze the model libraries; let exit see them
    return code


def _migrate_legacy_token() -> None:
    """A token the old desktop store kept (keyring or app folder) joins the CLI's login,
    once (engine.hub.auth); after the first run this is one file check."""
    from engine.hub.auth import migrate_legacy_token

    try:
        migrate_legacy_token()
    except OSError:
        pass  # an unreadable app folder: the login is still `ocula models login`'s


def _report_startup(window) -> None:
    """The start-up benchmark's probe: runs once the event loop has shown the window."""
    shown = time.perf_counter() - _T0
    heavy = sorted(m for m in ("torch", "transformers", "onnxruntime") if m in sys.modules)
    print(f"OCULA_WINDOW_SHOWN {shown:.4f} visible={window.isVisible()} "
          f"heavy={','.join(heavy) or 'none'}", flush=True)
    window.close()


if __name__ == "__main__":
    raise SystemExit(main())
