"""First run (welcome: one small model per task) and errors shown as sentences."""
from __future__ import annotations

import traceback

from PySide6.QtCore import QSettings

from desktop.format import human_bytes
from desktop.main_window import MainWindow
from desktop.views.error_dialogs import ErrorDialog, describe
from desktop.views.welcome import STARTER_TASKS, WelcomeDialog, starter_models
from engine.catalog.catalog import load_catalog
from engine.errors import InputError


def test_starter_models_are_the_smallest_usable_per_task():
    catalog = load_catalog()
    picks = starter_models(catalog)
    assert set(picks) == set(STARTER_TASKS)
    for task, card in picks.items():
        usable = [c for c in catalog.list(task=task) if c.repo and not c.gated
                  and not c.trust_remote_code and c.commercial_use is True]
        assert card in usable
        assert card.download_bytes == min(c.download_bytes for c in usable)


def test_welcome_explains_sizes_and_starts_the_chosen_downloads(qtbot):
    catalog = load_catalog()
    started = []
    dialog = WelcomeDialog(catalog, cache_dir="/data/models", start_download=started.append)
    qtbot.addWidget(dialog)
    picks = dialog.picks
    total = sum(c.download_bytes for c in picks.values())
    assert human_bytes(total) in dialog.total.text()
    dialog.checks["caption"].setChecked(False)
    rest = [c for t, c in picks.items() if t != "caption"]
    assert human_bytes(sum(c.download_bytes for c in rest)) in dialog.total.text()
    dialog.download_button.click()
    assert started == rest


def test_first_run_shows_welcome_once(qtbot, tmp_path, settings_path):
    ini = tmp_path / "fresh.ini"
    window = MainWindow(qsettings=QSettings(str(ini), QSettings.Format.IniFormat),
                        settings_path=settings_path)
    qtbot.addWidget(window)
    window.show()
    qtbot.waitUntil(lambda: getattr(window, "welcome_dialog", None) is not None, timeout=15_000)
    assert window.welcome_dialog.isVisible()
    window.welcome_dialog.reject()
    window.close()
    again = MainWindow(qsettings=QSettings(str(ini), QSettings.Format.IniFormat),
                       settings_path=settings_path)
    qtbot.addWidget(again)
    again.show()
    qtbot.wait(500)
    assert getattr(again, "welcome_dialog", None) is None
    again.close()


def test_errors_are_sentences_with_details_folded(qtbot):
    try:
        raise InputError("/photos/a.jpg: corrupt or truncated image.")
    except InputError as exc:
        dialog = ErrorDialog.for_exception(exc, traceback.format_exc())
    qtbot.addWidget(dialog)
    dialog.show()
    assert dialog.message_label.text() == "/photos/a.jpg: corrupt or truncated image."
    assert not dialog.details_view.isVisible()
    dialog.details_button.click()
    assert dialog.details_view.isVisible() and "Traceback" in dialog.details_view.toPlainText()
    assert "memory" in describe(MemoryError())
    assert describe(ValueError("bad value")) == "Something went wrong (ValueError): bad value."
    assert "Traceback" not in describe(RuntimeError("x"))
