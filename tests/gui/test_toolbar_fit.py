"""Toolbars fit narrow windows without an overflow chevron (issue 15, item 10): the main
bar goes icon-only, the viewer's overlay switches fold into one "Layers" menu whose
actions are the same QActions (state and shortcuts kept), and wide windows are unchanged."""
from __future__ import annotations

from PySide6.QtCore import Qt

from desktop.main_window import MainWindow


def _overflowing(bar) -> list[str]:
    hidden = []
    for action in bar.actions():
        if action.isSeparator() or not action.isVisible():
            continue
        widget = bar.widgetForAction(action)
        if widget is None or not widget.isVisible() or widget.parent() is not bar \
                or not bar.rect().contains(widget.geometry()):
            hidden.append(action.text() or widget.objectName())
    return hidden


def test_narrow_window_folds_instead_of_overflowing(qtbot, qsettings, settings_path):
    win = MainWindow(qsettings=qsettings, settings_path=settings_path, welcome=False)
    qtbot.addWidget(win)
    win.resize(1700, 900)
    win.show()
    qtbot.waitExposed(win)
    viewer = win.viewer
    assert win.toolbar.toolButtonStyle() == Qt.ToolButtonStyle.ToolButtonTextBesideIcon
    assert viewer.toolbar_fit.level == 0 and viewer.actions["boxes"] in viewer.toolbar.actions()

    win.resize(800, 600)  # a 1600 px screen at 2x scale
    qtbot.waitUntil(lambda: viewer.toolbar_fit.level == 2, timeout=5_000)
    assert win.toolbar.toolButtonStyle() == Qt.ToolButtonStyle.ToolButtonIconOnly
    qtbot.waitUntil(lambda: _overflowing(win.toolbar) == [] and _overflowing(viewer.toolbar) == [],
                    timeout=5_000)  # the bars lay out on the next event loop pass
    menu = viewer.toolbar_fit.menu
    assert [a.text() for a in menu.actions()] == ["Boxes", "Masks", "Caption", "Compare", "Heatmap"]
    heatmap = viewer.actions["heatmap"]
    heatmap.setEnabled(True)
    heatmap.setChecked(False)  # the menu's entry is the toolbar's action: one state
    assert not viewer.visible["heatmap"] and menu.actions()[4] is heatmap

    win.resize(1700, 900)
    qtbot.waitUntil(lambda: viewer.toolbar_fit.level == 0, timeout=5_000)
    assert viewer.actions["boxes"] in viewer.toolbar.actions()
    assert win.toolbar.toolButtonStyle() == Qt.ToolButtonStyle.ToolButtonTextBesideIcon
    assert not heatmap.isChecked()


def test_help_lists_the_video_players_keys(qtbot, qsettings, settings_path):
    """Help > Keyboard shortcuts shows the window's shortcuts and the video player's keys,
    from the table the player dispatches on."""
    from desktop.views.help import ShortcutsDialog
    from desktop.views.video_player import TRANSPORT

    win = MainWindow(qsettings=qsettings, settings_path=settings_path, welcome=False)
    qtbot.addWidget(win)
    dialog = ShortcutsDialog(win.findChildren(type(win.act_run)), parent=win)
    qtbot.addWidget(dialog)
    rows = {dialog.table.item(r, 0).text(): dialog.table.item(r, 1).text()
            for r in range(dialog.table.rowCount())}
    assert rows["Run"].startswith("Ctrl+R")
    for _, _, text in TRANSPORT.values():
        assert text in rows
    assert rows["Video: pause"] == "K" and rows["Video: play / pause"] == "Space"
