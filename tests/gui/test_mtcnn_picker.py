"""MTCNN (weights inside the facenet-pytorch package) in the GUI: offered for Detect and shown
installed in the model picker; in the catalog view it can be used but not downloaded or
deleted (pip owns its files)."""
from __future__ import annotations

import pytest

pytest.importorskip(
    "facenet_pytorch", reason="test extra: pip install --no-deps facenet-pytorch==2.6.0 requests"
)

from desktop.main_window import MainWindow  # noqa: E402


def test_mtcnn_is_offered_for_detect_and_shown_installed(qtbot, qsettings, settings_path,
                                                         tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("OCULA_HOME", str(tmp_path / "home"))  # no imported models
    win = MainWindow(qsettings=qsettings, settings_path=settings_path)
    qtbot.addWidget(win)
    win.show()
    qtbot.waitUntil(lambda: "mtcnn" in win.installed, timeout=20_000)
    win.task_combo.setCurrentIndex(win.task_combo.findData("detect"))
    picker = win.model_picker
    index = picker.findData("mtcnn")
    assert index >= 0
    card = win.catalog.get("mtcnn")
    assert picker.itemText(index) == card.name  # installed: no "↓ size" suffix
    assert picker.itemData(index, 3) == "Installed · mtcnn"  # Qt.ToolTipRole
    installed_first = [picker.itemData(i) for i in range(index + 1)]
    assert all(i in win.installed for i in installed_first if i)  # in the installed group
    picker.select(card)
    assert win.card is card

    win.task_combo.setCurrentIndex(win.task_combo.findData("caption"))
    assert picker.findData("mtcnn") < 0  # a detector only
    win.close()


def test_catalog_view_lists_it_installed_and_will_not_delete_it(qtbot) -> None:
    from desktop.views.catalog import CatalogView
    from desktop.workers import Pools
    from engine.settings import Settings

    pools = Pools()
    view = CatalogView(settings=lambda: Settings(), pools=pools)
    qtbot.addWidget(view)
    view.reload()
    qtbot.waitUntil(lambda: any(r.card.id == "mtcnn" and r.installed for r in view.all_rows),
                    timeout=20_000)
    assert view.select("mtcnn")
    row = view.selected_row()
    assert row.disk_bytes == row.card.download_bytes
    assert view.use_button.isEnabled()
    assert not view.download_button.isEnabled() and not view.delete_button.isEnabled()
    assert "ship inside the facenet-pytorch Python package" in view.details.toPlainText()
    view.shutdown()
    pools.wait()
