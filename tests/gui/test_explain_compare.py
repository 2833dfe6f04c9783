"""Explain ▸ Compare side by side: two attention views of one image (a second method, then a
second model), the same zoom and pan, a linked cursor with both values, and a patch click that
updates both. Real tiny ViTs imported from local folders; oracle maps from the engine's own
explain route on the same runner."""
from __future__ import annotations

import numpy as np
import pytest
from PySide6.QtCore import QEvent, QPointF, Qt
from PySide6.QtGui import QMouseEvent
from PySide6.QtTest import QTest
from PySide6.QtWidgets import QApplication

from desktop.main_window import MainWindow

pytestmark = pytest.mark.slow  # torch + transformers load in the worker (several seconds)


@pytest.fixture
def window(qtbot, qsettings, settings_path, tmp_path, monkeypatch, photos):
    monkeypatch.setenv("OCULA_HOME", str(tmp_path / "home"))
    from engine.catalog.local_import import import_model
    from tests.fixtures.repos import tiny_vit_classifier

    first = import_model(tiny_vit_classifier(tmp_path / "vit-a", seed=0), name="Tiny ViT A")
    second = import_model(tiny_vit_classifier(tmp_path / "vit-b", seed=1), name="Tiny ViT B")
    win = MainWindow(qsettings=qsettings, settings_path=settings_path)
    qtbot.addWidget(win)
    win.resize(1200, 800)
    win.show()
    qtbot.waitExposed(win)
    win.task_combo.setCurrentIndex(win.task_combo.findData("explain"))
    win.model_picker.select(win.catalog.get(first.id))
    win.workspace.add_paths([photos[1]])  # the cat, 160 × 106
    qtbot.waitUntil(lambda: win.workspace.shown_path == photos[1], timeout=10_000)
    yield win, win.catalog.get(second.id)
    win.close()


def _move(canvas, x: float, y: float) -> None:
    """A plain mouse move (no button) over `canvas` at image pixel (x, y)."""
    local = QPointF(canvas.mapFromScene(QPointF(x, y)))
    event = QMouseEvent(QEvent.Type.MouseMove, local, QPointF(canvas.viewport().mapToGlobal(local.toPoint())),
                        Qt.MouseButton.NoButton, Qt.MouseButton.NoButton, Qt.KeyboardModifier.NoModifier)
    QApplication.sendEvent(canvas.viewport(), event)


def _centre(canvas) -> QPointF:
    return canvas.mapToScene(canvas.viewport().rect().center())


def _oracle(win, options):
    from engine.explain.with_options import explain_with_options
    from engine.media.image import read_image

    return explain_with_options(win.explain.runner, read_image(win.workspace.shown_path).rgb, options, cache=None)


def test_compare_two_methods_then_two_models_with_linked_view_and_cursor(window, qtbot):
    win, second = window
    form, compare = win.task_panel.explain_form, win.compare
    panel, left, right = compare.panel, win.viewer.canvas, compare.panel.canvas
    form.method.setCurrentIndex(form.method.findData("raw"))
    with qtbot.waitSignal(win.explain.mapsReady, timeout=120_000) as first:
        win.run()
    left_maps = first.args[0]
    assert not panel.isVisible()

    # Compare on: the right view shows the same image with its own method (rollout)
    with qtbot.waitSignal(compare.controller.mapsReady, timeout=60_000) as shown:
        compare.toggle.setChecked(True)
    assert panel.isVisible() and win.viewer.isVisible()
    right_maps = shown.args[0]
    assert right_maps.method == "rollout" and right_maps.model == win.card.id
    np.testing.assert_array_equal(right_maps.heatmap, _oracle(win, dict(form.options(), method="rollout")).heatmap)
    assert right.image_size == left.image_size == (160, 106)
    assert panel.heatmap is not None and win.viewer.heatmap is not None
    assert win.explain.requests == 1  # the left map was not recomputed

    # the same zoom and pan, whichever side moves
    qtbot.wait(50)
    left.zoom_by(3.0)
    assert right.transform().m11() == pytest.approx(left.zoom)
    bar = left.horizontalScrollBar()
    bar.setValue(bar.value() + 25)
    assert (_centre(right) - _centre(left)).manhattanLength() < 2.0
    right.zoom_by(2.0)  # deep enough that both views can scroll (their viewports differ in size)
    assert left.zoom == pytest.approx(right.transform().m11())
    right.verticalScrollBar().setValue(right.verticalScrollBar().value() + 10)
    assert (_centre(right) - _centre(left)).manhattanLength() < 2.0

    # linked cursor: over the left, a crosshair on the right at the same pixel, and both values
    left.fit()
    x, y = 40.0, 50.0
    _move(left, x, y)
    assert panel.crosshair.isVisible() and not compare.left_crosshair.isVisible()
    assert abs(panel.crosshair.point.x() - x) <= 1 and abs(panel.crosshair.point.y() - y) <= 1
    px, py = int(panel.crosshair.point.x()), int(panel.crosshair.point.y())
    expected = (f"attention L1 {left_maps.heatmap[py, px]:.2f} · "
                f"rollout {right_maps.heatmap[py, px]:.2f}")
    assert panel.values.text() == expected
    _move(right, 120.0, 20.0)  # and the other way round
    assert compare.left_crosshair.isVisible() and not panel.crosshair.isVisible()
    assert abs(compare.left_crosshair.point.x() - 120) <= 1

    # similarity on the right: a click on the image updates both views
    panel.method.setCurrentIndex(panel.method.findData("patch_similarity"))
    assert "Click the image" in panel.status.text()
    target = QPointF(100.0, 60.0)
    lefts, rights = [], []
    win.explain.mapsReady.connect(lefts.append)
    compare.controller.mapsReady.connect(rights.append)
    QTest.mouseClick(left.viewport(), Qt.MouseButton.LeftButton, pos=left.mapFromScene(target))
    qtbot.waitUntil(lambda: bool(lefts and rights) and not compare.controller.busy and not win.explain.busy,
                    timeout=60_000)
    clicked_left, clicked_right = lefts[-1], rights[-1]
    assert len(rights) == 1  # one right map per click, not one per trigger
    assert clicked_left.method == clicked_right.method == "patch_similarity"
    for maps in (clicked_left, clicked_right):
        assert abs(maps.params["patch"][0] - target.x()) <= 2 and abs(maps.params["patch"][1] - target.y()) <= 2

    # a second model on the right, same method, same click
    with qtbot.waitSignal(compare.controller.mapsReady, timeout=120_000) as other:
        panel.model.setCurrentIndex(panel.model.findData(second.id))
    other_maps = other.args[0]
    assert other_maps.model == second.id and other_maps.method == "patch_similarity"
    assert not np.allclose(other_maps.grid_map, clicked_right.grid_map)
    _move(left, x, y)
    assert panel.values.text().startswith("Tiny ViT A similarity L1") and " · Tiny ViT B similarity L1 " in \
        panel.values.text()

    # Compare off: one view again, and nothing more is computed for the right
    compare.toggle.setChecked(False)
    assert not panel.isVisible() and not compare.left_crosshair.isVisible()
    right_runs = compare.controller.requests
    with qtbot.waitSignal(win.explain.mapsReady, timeout=60_000):
        form.method.setCurrentIndex(form.method.findData("raw"))
    assert compare.controller.requests == right_runs
    # and on again: the panel's map is drawn again for the same choices
    with qtbot.waitSignal(compare.controller.mapsReady, timeout=60_000) as again:
        compare.toggle.setChecked(True)
    assert panel.heatmap is not None and again.args[0].model == second.id
