"""The image viewer: overlays drawn from real result types, in image-pixel coordinates."""
from __future__ import annotations

import numpy as np
import pytest
from PySide6.QtCore import QPoint, QPointF, QRectF, Qt
from PySide6.QtGui import QImage, QPainter
from PySide6.QtTest import QTest

from desktop.views.imaging import label_color, qimage_to_array
from desktop.views.overlays import render_segmentation
from desktop.views.viewer import ImageViewer
from engine.results import Box, Detections, RestoredImage, Segmentation, SegmentInstance

W, H = 200, 100


@pytest.fixture
def viewer(qtbot):
    view = ImageViewer()
    qtbot.addWidget(view)
    view.resize(640, 420)
    view.show()
    qtbot.waitExposed(view)
    view.set_image(np.zeros((H, W, 3), np.uint8))
    return view


def _render_scene(viewer: ImageViewer) -> np.ndarray:
    """The scene (image + visible overlays) at 1:1, as RGBA."""
    image = QImage(W, H, QImage.Format.Format_RGBA8888)
    image.fill(Qt.GlobalColor.transparent)
    painter = QPainter(image)
    viewer.canvas.scene().render(painter, QRectF(0, 0, W, H), QRectF(0, 0, W, H))
    painter.end()
    return qimage_to_array(image)


def _detections() -> Detections:
    return Detections([Box(10, 10, 50, 60, "cat", 0.9, 0), Box(100, 20, 150, 80, "dog", 0.75, 1),
                       Box(120, 30, 190, 90, "cat", 0.6, 0)], (W, H), {0: "cat", 1: "dog"})


def test_boxes_match_detections_with_tooltips(viewer):
    det = _detections()
    viewer.set_detections(det)
    items = viewer.boxes.box_items
    assert len(items) == 3
    for item, box in zip(items, det.boxes):
        rect = item.mapRectToScene(item.rect())
        assert (rect.left(), rect.top(), rect.right(), rect.bottom()) == box.xyxy
        assert box.label in item.toolTip() and f"{box.score:.2f}" in item.toolTip()
    # what the mouse hovers at (30, 30) is the cat box, whose tooltip says so
    hovered = [i for i in viewer.canvas.scene().items(QPointF(30, 30)) if i in items]
    assert hovered and "cat  0.90" in hovered[0].toolTip()
    assert [e.label for e in viewer.legend()] == ["cat", "dog"]
    assert viewer.actions["boxes"].isEnabled()


def test_semantic_mask_colours_and_legend(viewer):
    label_map = np.full((H, W), -1, np.int32)
    label_map[:, :50] = 0
    label_map[:, 50:150] = 3
    label_map[:20, 150:] = 7
    seg = Segmentation("semantic", (W, H), label_map=label_map,
                       labels={0: "sky", 3: "road", 7: "tree"})
    rgba, legend = render_segmentation(seg)
    ids, counts = np.unique(label_map[label_map >= 0], return_counts=True)
    assert {e.label_id: e.fraction for e in legend} == pytest.approx(
        {int(i): c / (W * H) for i, c in zip(ids, counts)})
    assert [e.label for e in legend] == ["road", "sky", "tree"]  # largest area first
    road = label_color(3)
    assert tuple(rgba[50, 100]) == (road.red(), road.green(), road.blue(), 255)
    assert rgba[50, 170, 3] == 0  # unlabelled stays transparent
    viewer.set_segmentation(seg)
    assert len(viewer.legend()) == 3
    # the mask item really covers the image at the opacity slider's value
    assert viewer.masks.boundingRect() == QRectF(0, 0, W, H)
    viewer.opacity_slider.setValue(80)
    assert viewer.masks.opacity() == pytest.approx(0.8)


def test_instance_masks_each_get_a_legend_entry(viewer):
    a = np.zeros((H, W), bool)
    a[10:40, 10:40] = True
    b = np.zeros((H, W), bool)
    b[50:90, 100:180] = True
    seg = Segmentation("instance", (W, H), instances=[
        SegmentInstance(a, "cat", 0, 0.9, 1), SegmentInstance(b, "cat", 0, 0.8, 2)])
    viewer.set_segmentation(seg)
    legend = viewer.legend()
    assert len(legend) == 2
    assert sorted(e.fraction for e in legend) == pytest.approx([900 / (W * H), 3200 / (W * H)])


def test_overlays_toggle_independently(viewer):
    viewer.set_detections(_detections())
    label_map = np.zeros((H, W), np.int32)
    viewer.set_segmentation(Segmentation("semantic", (W, H), label_map=label_map))
    viewer.set_heatmap(np.arange(16, dtype=np.float32).reshape(4, 4))
    viewer.set_caption("a cat and a dog")
    viewer.actions["masks"].trigger()  # the toolbar button (shortcut M)
    assert not viewer.masks.isVisible()
    assert viewer.boxes.isVisible() and viewer.heatmap.isVisible()
    assert viewer.caption_label.isVisible()
    viewer.toggle_overlay("caption")
    assert not viewer.caption_label.isVisible() and viewer.boxes.isVisible()
    viewer.toggle_overlay("masks")
    assert viewer.masks.isVisible()
    # a new image clears every overlay
    viewer.set_image(np.zeros((H, W, 3), np.uint8))
    assert viewer.boxes is None and viewer.masks is None and viewer.heatmap is None
    assert not viewer.actions["boxes"].isEnabled()


def test_heatmap_is_stretched_over_the_image(viewer):
    values = np.zeros((4, 8), np.float32)
    values[:, 4:] = 1.0  # right half hot
    viewer.set_heatmap(values)
    rect = viewer.heatmap.mapRectToScene(viewer.heatmap.boundingRect())
    assert rect == QRectF(0, 0, W, H)
    viewer.opacity_slider.setValue(100)
    pixels = _render_scene(viewer)
    left, right = pixels[50, 20, :3].astype(int), pixels[50, 180, :3].astype(int)
    assert right[0] > left[0]  # Turbo: hot is red, cold is blue
    assert left[2] > right[2]


def test_before_after_split_slider(viewer):
    restored = RestoredImage(np.full((H * 2, W * 2, 3), 255, np.uint8), 2, (W, H))
    viewer.set_restored(restored)
    assert viewer.split_row.isVisible()
    pixels = _render_scene(viewer)
    assert pixels[50, 60, 0] == 0  # left of the line: before (black original)
    assert pixels[50, 160, 0] == 255  # right: after (white restoration)
    viewer.split_slider.setValue(250)
    pixels = _render_scene(viewer)
    assert pixels[50, 80, 0] == 255
    viewer.toggle_overlay("compare")
    assert not viewer.compare.isVisible() and not viewer.split_row.isVisible()


def test_zoom_fit_one_to_one_and_wheel(viewer, qtbot):
    canvas = viewer.canvas
    viewer.actions["one_to_one"].trigger()
    assert canvas.zoom == pytest.approx(1.0)
    viewer.actions["zoom_in"].trigger()
    assert canvas.zoom == pytest.approx(1.25)
    assert viewer.zoom_label.text().strip() == "125%"
    viewer.actions["fit"].trigger()
    shown = canvas.mapFromScene(canvas.image_item.sceneBoundingRect()).boundingRect()
    viewport = canvas.viewport().rect()
    assert shown.width() <= viewport.width() + 2 and shown.height() <= viewport.height() + 2
    assert max(shown.width() / viewport.width(), shown.height() / viewport.height()) > 0.9
    before = canvas.zoom
    from PySide6.QtGui import QWheelEvent

    centre = QPointF(canvas.viewport().rect().center())
    event = QWheelEvent(centre, canvas.viewport().mapToGlobal(centre), QPoint(0, 0),
                        QPoint(0, 120), Qt.MouseButton.NoButton, Qt.KeyboardModifier.NoModifier,
                        Qt.ScrollPhase.NoScrollPhase, False)
    canvas.wheelEvent(event)
    assert canvas.zoom > before * 1.1


def test_sam_prompts_drawn_with_the_mouse(viewer, qtbot):
    canvas = viewer.canvas
    canvas.actual_size()
    canvas.set_mode("point")
    with qtbot.waitSignal(canvas.promptsChanged):
        QTest.mouseClick(canvas.viewport(), Qt.MouseButton.LeftButton,
                         pos=canvas.mapFromScene(QPointF(40, 30)))
    QTest.mouseClick(canvas.viewport(), Qt.MouseButton.RightButton,
                     pos=canvas.mapFromScene(QPointF(160, 70)))
    (x0, y0, l0), (x1, y1, l1) = canvas.prompts.points
    assert (round(x0), round(y0), l0) == (40, 30, 1)
    assert (round(x1), round(y1), l1) == (160, 70, 0)
    canvas.set_mode("box")
    start, end = canvas.mapFromScene(QPointF(20, 10)), canvas.mapFromScene(QPointF(120, 80))
    QTest.mousePress(canvas.viewport(), Qt.MouseButton.LeftButton, pos=start)
    QTest.mouseMove(canvas.viewport(), end)
    QTest.mouseRelease(canvas.viewport(), Qt.MouseButton.LeftButton, pos=end)
    assert len(canvas.prompts.boxes) == 1
    assert [round(v) for v in canvas.prompts.boxes[0]] == [20, 10, 120, 80]
    canvas.prompts.clear()
    assert not canvas.prompts.points and not canvas.prompts.boxes


def test_click_on_image_reports_a_patch(viewer, qtbot):
    canvas = viewer.canvas
    canvas.actual_size()
    with qtbot.waitSignal(viewer.patchClicked) as blocker:
        QTest.mouseClick(canvas.viewport(), Qt.MouseButton.LeftButton,
                         pos=canvas.mapFromScene(QPointF(150, 25)))
    x, y = blocker.args
    assert (round(x), round(y)) == (150, 25)
