"""Restoration compare at the output's scale, with the split dragged on the image.

The oracle is the pixels themselves: at 1:1 a screen pixel right of the line is the
output pixel under it (one output pixel per screen pixel), and left of it the input
pixel it came from (nearest-neighbour upscale by the restoration's scale).
"""
from __future__ import annotations

import numpy as np
import pytest
from PySide6.QtCore import QPoint, QPointF, Qt
from PySide6.QtTest import QTest

from desktop.views.imaging import qimage_to_array
from desktop.views.viewer import ImageViewer
from engine.results import RestoredImage

W, H, SCALE = 60, 40, 2


@pytest.fixture
def compared(qtbot):
    rng = np.random.default_rng(7)
    source = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
    output = rng.integers(0, 256, (H * SCALE, W * SCALE, 3), dtype=np.uint8)
    view = ImageViewer()
    qtbot.addWidget(view)
    view.resize(640, 480)
    view.show()
    qtbot.waitExposed(view)
    view.set_image(source)
    view.set_restored(RestoredImage(output, SCALE, (W, H)))
    return view, source, output


def _screen(view: ImageViewer) -> np.ndarray:
    return qimage_to_array(view.canvas.viewport().grab().toImage())[..., :3]


def _screen_xy(view: ImageViewer, ox: int, oy: int) -> QPoint:
    """The viewport pixel showing output pixel (ox, oy) at 1:1: the image's top-left
    corner plus (ox, oy)."""
    return view.canvas.mapFromScene(QPointF(0, 0)) + QPoint(ox, oy)


def test_one_to_one_shows_each_output_pixel_on_one_screen_pixel(compared):
    view, source, output = compared
    view.actions["one_to_one"].trigger()
    assert view.canvas.zoom == pytest.approx(SCALE)  # scene units are input pixels
    assert view.zoom_label.text().strip() == "100%"
    view.split_slider.setValue(0)  # all "after" (the 2 px line stays on the left edge)
    screen = _screen(view)
    origin = _screen_xy(view, 0, 0)
    shown = screen[origin.y():origin.y() + H * SCALE, origin.x():origin.x() + W * SCALE]
    np.testing.assert_array_equal(shown[:, 2:], output[:, 2:])  # each output pixel, unscaled

    view.split_slider.setValue(1000)  # all "before": the input, upscaled by nearest
    screen = _screen(view)
    shown = screen[origin.y():origin.y() + H * SCALE, origin.x():origin.x() + W * SCALE]
    upscaled = np.repeat(np.repeat(source, SCALE, 0), SCALE, 1)
    np.testing.assert_array_equal(shown[:, :-2], upscaled[:, :-2])


def test_split_is_dragged_on_the_image(compared, qtbot):
    view, source, output = compared
    view.actions["one_to_one"].trigger()
    canvas, viewport = view.canvas, view.canvas.viewport()
    assert view.split_slider.value() == 500
    line = _screen_xy(view, W * SCALE // 2, H * SCALE // 2)  # on the line, mid-height
    QTest.mouseMove(viewport, line)
    assert viewport.cursor().shape() == Qt.CursorShape.SplitHCursor
    QTest.mouseMove(viewport, line + QPoint(40, 0))
    assert viewport.cursor().shape() != Qt.CursorShape.SplitHCursor  # off the line
    target = _screen_xy(view, W * SCALE // 4, H * SCALE // 2)
    scroll_before = (canvas.horizontalScrollBar().value(), canvas.verticalScrollBar().value())
    QTest.mousePress(viewport, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier, line)
    QTest.mouseMove(viewport, line + QPoint(-10, 3))
    QTest.mouseMove(viewport, target)
    QTest.mouseRelease(viewport, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier,
                       target)
    assert view.split_slider.value() == pytest.approx(250, abs=10)  # the slider follows
    assert view.compare.split == pytest.approx(0.25, abs=0.01)
    assert (canvas.horizontalScrollBar().value(),
            canvas.verticalScrollBar().value()) == scroll_before  # no pan on the way
    # the pixels follow: right of the new line is "after", left of it "before"
    screen = _screen(view)
    after = _screen_xy(view, W * SCALE // 4 + 6, 10)
    before = _screen_xy(view, W * SCALE // 4 - 6, 10)
    np.testing.assert_array_equal(screen[after.y(), after.x()], output[10, W * SCALE // 4 + 6])
    np.testing.assert_array_equal(screen[before.y(), before.x()],
                                  source[10 // SCALE, (W * SCALE // 4 - 6) // SCALE])
    # a drag away from the line still pans
    start = _screen_xy(view, 10, 10)
    QTest.mousePress(viewport, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier, start)
    QTest.mouseMove(viewport, start + QPoint(30, 0))
    QTest.mouseRelease(viewport, Qt.MouseButton.LeftButton, Qt.KeyboardModifier.NoModifier,
                       start + QPoint(30, 0))
    assert view.compare.split == pytest.approx(0.25, abs=0.01)


def test_clearing_the_compare_restores_image_scale(compared):
    view, _source, _output = compared
    view.clear_results()
    view.actions["one_to_one"].trigger()
    assert view.canvas.zoom == pytest.approx(1.0)
    assert view.zoom_label.text().strip() == "100%"
