"""Issue 15, item 10: the smaller things a first session hits."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PySide6.QtCore import QRectF, Qt
from PySide6.QtGui import QGuiApplication, QPalette
from PySide6.QtWidgets import QApplication

from engine.results import Box, Detections


# -- device change: the cached runner says what really runs for this request ------------------

@pytest.mark.slow  # torch + spandrel
def test_a_cached_runner_keeps_the_fallback_note_of_each_request(tmp_path, monkeypatch):
    monkeypatch.setenv("OCULA_HOME", str(tmp_path / "home"))
    from desktop.views.bundled_models import register_bundled
    from engine import devices
    from engine.runtimes.runner_cache import RunnerCache

    (card,) = register_bundled(["restore"])
    if not devices.plan(card, device="cuda", precision="auto").fallback:
        pytest.skip("this machine has CUDA: asking for it is no fallback")
    cache = RunnerCache(4096)
    on_cpu = cache.get_or_load(card, device="cpu", precision="auto")
    assert on_cpu.placement.fallback is None
    asked_cuda = cache.get_or_load(card, device="cuda", precision="auto")
    assert asked_cuda is on_cpu and len(cache) == 1  # the same model, not loaded twice
    assert "cuda" in asked_cuda.placement.describe() and "fallback" in \
        asked_cuda.placement.describe()
    again_cpu = cache.get_or_load(card, device="cpu", precision="auto")
    assert again_cpu.placement.fallback is None  # no stale note either
    cache.release()


# -- the Offline setting agrees with HF_HUB_OFFLINE --------------------------------------------

def test_offline_setting_is_locked_on_when_the_environment_says_so(qtbot, qsettings,
                                                                   settings_path, monkeypatch):
    from desktop.views.settings import SettingsDialog
    from engine.settings import Settings

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    dialog = SettingsDialog(Settings(offline=False), qsettings, settings_path=settings_path)
    qtbot.addWidget(dialog)
    assert dialog.offline.isChecked() and not dialog.offline.isEnabled()
    assert "HF_HUB_OFFLINE" in dialog.offline_note.text()
    assert not dialog.offline_note.isHidden()
    assert dialog.collect().offline is False  # the saved choice is the user's, not the env's

    monkeypatch.delenv("HF_HUB_OFFLINE")
    free = SettingsDialog(Settings(offline=False), qsettings, settings_path=settings_path)
    qtbot.addWidget(free)
    assert free.offline.isEnabled() and not free.offline.isChecked()
    assert free.offline_note.isHidden()


# -- Open folder without a file manager, and the output path in the row ------------------------

def test_open_folder_without_a_launcher_says_so_and_copies_the_path(qtbot, tmp_path,
                                                                    monkeypatch):
    from desktop.views.queue import JobRow
    from desktop.workers import call_operation

    empty = tmp_path / "no-programs"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))  # no xdg-open, gio, kde-open…
    monkeypatch.delenv("XDG_CURRENT_DESKTOP", raising=False)
    out = tmp_path / "results"
    out.mkdir()
    op = call_operation(lambda: None, label="job")
    row = JobRow(op, str(out))
    qtbot.addWidget(row)
    row.show()
    assert str(out) in row.path_label.text() and row.copy_button.isVisibleTo(row)
    assert row.open_output_folder() is False
    assert "No file manager" in row.path_label.text()
    assert QGuiApplication.clipboard().text() == str(out)


# -- ETA from a smoothed rate, none until enough bytes -----------------------------------------

def test_eta_waits_for_enough_bytes_and_follows_the_rate():
    from desktop.views.queue import ETA_MIN_BYTES, RateMeter

    meter = RateMeter()
    total = 2_000_000.0
    meter.add(0.0, 0.0)
    meter.add(0.01, 60_000.0)  # one early chunk: 6 MB/s for 10 ms says nothing
    assert meter.rate is None and meter.eta_s(60_000.0, total) is None
    # then a steady 200 kB/s
    t, done = 0.01, 60_000.0
    while t < 4.0:
        t += 0.1
        done += 20_000.0
        meter.add(t, done)
    assert done - 60_000 > ETA_MIN_BYTES
    assert meter.rate == pytest.approx(200_000.0, rel=0.15)
    assert meter.eta_s(done, total) == pytest.approx((total - done) / 200_000.0, rel=0.15)


def test_a_small_download_shows_no_eta(qtbot):
    from desktop.views.queue import JobRow
    from desktop.workers import call_operation
    from engine.events import Progress

    op = call_operation(lambda: None, label="download", )
    op.kind = "download"
    op.started_at = 0.0  # running
    row = JobRow(op)
    qtbot.addWidget(row)
    row.on_events([Progress("download", 10_000, 120_000, unit="bytes", time=1.0)])
    row.on_events([Progress("download", 60_000, 120_000, unit="bytes", time=1.02)])
    assert "left" not in row.detail.text()  # 50 kB in 20 ms is not a rate to trust


# -- box labels do not pile up; a result row highlights its box ---------------------------------

def _viewer_with(qtbot, boxes: list[Box], size=(400, 300)):
    from desktop.views.viewer import ImageViewer

    viewer = ImageViewer()
    qtbot.addWidget(viewer)
    viewer.resize(900, 700)
    viewer.show()
    qtbot.waitExposed(viewer)
    viewer.set_image(np.full((size[1], size[0], 3), 90, np.uint8))
    viewer.set_detections(Detections(boxes=boxes, image_size=size,
                                     labels={i: f"class{i}" for i in range(10)}))
    return viewer


def _label_rects(viewer) -> list[QRectF]:
    transform = viewer.canvas.viewportTransform()
    return [tag.deviceTransform(transform).mapRect(tag.boundingRect())
            for tag in viewer.boxes.tags]


def test_box_labels_do_not_overlap(qtbot):
    # five boxes sharing a top-left corner: every label would sit on the same spot
    boxes = [Box(40, 40, 40 + 60 + 25 * i, 40 + 80 + 20 * i, label=f"class{i}",
                 score=0.9 - 0.1 * i, label_id=i) for i in range(5)]
    viewer = _viewer_with(qtbot, boxes)
    for zoom in (viewer.canvas.zoom, 1.0, 2.5):
        viewer.canvas.set_zoom(zoom)
        rects = _label_rects(viewer)
        for i, a in enumerate(rects):
            for b in rects[i + 1:]:
                assert not a.intersects(b), (zoom, a, b)


def test_clicking_a_result_row_highlights_its_box(qtbot):
    from desktop.views.results import ResultsPanel

    boxes = [Box(10, 10, 60, 60, label="class1", score=0.3, label_id=1),
             Box(100, 100, 200, 180, label="class2", score=0.9, label_id=2)]
    viewer = _viewer_with(qtbot, boxes)
    panel = ResultsPanel()
    qtbot.addWidget(panel)
    panel.boxSelected.connect(viewer.highlight_box)
    panel.show_result(viewer.boxes and Detections(boxes=boxes, image_size=(400, 300)),
                      viewer.legend())
    panel.table.selectRow(0)  # rows are by score: row 0 is box 1
    items = viewer.boxes.box_items
    assert items[1].highlighted and not items[0].highlighted
    assert items[1].pen().widthF() > items[0].pen().widthF()
    panel.table.selectRow(1)
    assert items[0].highlighted and not items[1].highlighted


# -- table rows readable after a theme switch -----------------------------------------------

def _luminance(color) -> float:
    return 0.2126 * color.redF() + 0.7152 * color.greenF() + 0.0722 * color.blueF()


def test_result_rows_readable_after_switching_to_dark(qtbot):
    from desktop.theme import apply_theme
    from desktop.views.results import ResultsPanel
    from desktop.views.overlays import LegendEntry
    from PySide6.QtGui import QColor

    app = QApplication.instance()
    apply_theme(app, "light")
    try:
        panel = ResultsPanel()
        qtbot.addWidget(panel)
        det = Detections(boxes=[Box(1, 1, 5, 5, label="cat", score=0.8, label_id=1)],
                         image_size=(10, 10))
        panel.show_result(det, [LegendEntry("cat", QColor(200, 40, 40), 0.8, 1)])
        apply_theme(app, "dark")
        item = panel.table.item(0, 0)
        brush = item.foreground()
        text = brush.color() if brush.style() != Qt.BrushStyle.NoBrush else \
            panel.table.palette().color(QPalette.ColorRole.Text)
        base = panel.table.palette().color(QPalette.ColorRole.Base)
        assert abs(_luminance(text) - _luminance(base)) > 0.4
    finally:
        apply_theme(app, "light")


# -- the catalog details pane never shows a row the filter hid ---------------------------------

def test_catalog_details_clear_when_the_filter_hides_the_selection(qtbot, tmp_path,
                                                                    monkeypatch):
    monkeypatch.setenv("OCULA_HOME", str(tmp_path / "home"))
    from desktop.views.catalog import CatalogView
    from desktop.workers import Pools
    from engine.settings import Settings

    pools = Pools()
    view = CatalogView(settings=lambda: Settings(), pools=pools)
    qtbot.addWidget(view)
    row = next(r for r in view.model.rows if r.card.supports("detect"))
    assert view.select(row.card.id)
    view._on_selection()
    assert row.card.name in view.details.toPlainText()
    view.task.setCurrentIndex(view.task.findData("restore"))  # hides the detect model
    assert view.selected_row() is None
    assert view.details.toPlainText() == ""
    view.task.setCurrentIndex(0)
    view.search.setText(row.card.name)
    view.apply_filter()
    pools.wait()


# -- Delete asks first; imported models can be removed ----------------------------------------

def test_delete_asks_and_imported_models_can_be_removed(qtbot, tmp_path, monkeypatch):
    monkeypatch.setenv("OCULA_HOME", str(tmp_path / "home"))
    from desktop.views.catalog import CatalogView
    from desktop.workers import Pools
    from engine.catalog.local_import import import_model, list_imports
    from engine.settings import Settings
    from tests.fixtures.repos import tiny_vit_classifier

    folder = tiny_vit_classifier(tmp_path / "vit")
    card = import_model(folder, name="My ViT")
    pools = Pools()
    view = CatalogView(settings=lambda: Settings(), pools=pools)
    qtbot.addWidget(view)
    qtbot.waitUntil(lambda: view.model.rows[view.model.row_of(card.id)].installed,
                    timeout=20_000)
    assert view.select(card.id)
    assert view.delete_button.isEnabled() and view.delete_button.text() == "Remove import"
    answers = [False, True]
    asked: list[str] = []
    monkeypatch.setattr(view, "confirm", lambda title, text: asked.append(text)
                        or answers.pop(0))
    view.delete_selected()  # "Cancel": nothing happens
    assert [c.id for c in list_imports()] == [card.id]
    view.delete_selected()  # "Yes": forgotten, files kept
    assert list_imports() == [] and folder.is_dir()
    assert len(asked) == 2 and str(folder) in asked[0]
    assert view.model.row_of(card.id) < 0
    pools.wait()


# -- narrow windows keep their controls out of the toolbar overflow ---------------------------

def _in_toolbar(toolbar, widget) -> bool:
    """Shown inside the bar (not hidden in its overflow extension)."""
    if widget is None or not widget.isVisible():
        return False
    rect = widget.geometry()
    return toolbar.rect().contains(rect) and widget.parent() is toolbar


def test_1024x700_keeps_opacity_and_main_actions_visible(qtbot, qsettings, settings_path,
                                                         tmp_path, monkeypatch):
    monkeypatch.setenv("OCULA_HOME", str(tmp_path / "home"))
    from desktop.main_window import MainWindow

    win = MainWindow(qsettings=qsettings, settings_path=settings_path, welcome=False)
    qtbot.addWidget(win)
    win.resize(1024, 700)
    win.show()
    qtbot.waitExposed(win)
    QApplication.processEvents()
    bar = win.viewer.toolbar
    assert _in_toolbar(bar, win.viewer.opacity_slider)
    for action in (win.act_open, win.act_run, win.act_catalog):
        assert _in_toolbar(win.toolbar, win.toolbar.widgetForAction(action)), action.text()
    win.close()
