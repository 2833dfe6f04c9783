"""Image viewer: zoom and pan, with independently toggled result overlays.

Scene coordinates are original-image pixels, the same as every engine result,
so overlays are placed without conversion. Mouse wheel zooms around the cursor;
dragging pans; "Fit" and "1:1" reset the zoom. In prompt modes (SAM) a click adds
a point (right-click or Shift: an exclude point) and a drag draws a box.

Restoration compare works at the OUTPUT's scale: "1:1" is one restored pixel per
screen pixel, with the input under it upscaled by nearest neighbour (each input
pixel a block of scale × scale: what the model was given, not a resampler's guess).
The split line is dragged on the image itself (the cursor changes over it), as in
upscalers; the slider under the image follows, and moves it too.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from PySide6.QtCore import QPointF, QRectF, Qt, QTimer, Signal
from PySide6.QtGui import QAction, QColor, QKeySequence, QPainter, QPixmap
from PySide6.QtWidgets import (
    QFrame,
    QGraphicsPixmapItem,
    QGraphicsScene,
    QGraphicsView,
    QHBoxLayout,
    QLabel,
    QSlider,
    QToolBar,
    QVBoxLayout,
    QWidget,
)

from desktop.views.box_editor import BoxEditor
from desktop.views.imaging import array_to_pixmap
from desktop.views.overlays import (
    BoxesOverlay,
    CompareOverlay,
    HeatmapOverlay,
    LegendEntry,
    MaskOverlay,
    PromptOverlay,
)

if TYPE_CHECKING:
    import numpy as np

OVERLAYS = ("boxes", "masks", "caption", "compare", "heatmap")
MIN_ZOOM, MAX_ZOOM = 0.02, 64.0
SPLIT_GRAB_PX = 6  # screen pixels either side of the compare line that grab it
SPLIT_STEPS = 1000  # the compare slider's range


class ImageCanvas(QGraphicsView):
    """The zoomable, pannable view of one image and its overlays."""

    zoomChanged = Signal(float)
    imageClicked = Signal(QPointF, object)  # image-pixel position, Qt.MouseButton
    promptsChanged = Signal()
    splitDragged = Signal(float)  # the compare line moved with the mouse (fraction)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("imageCanvas")
        self.setScene(QGraphicsScene(self))
        self.setRenderHints(QPainter.RenderHint.Antialiasing
                            | QPainter.RenderHint.SmoothPixmapTransform)
        self.setTransformationAnchor(QGraphicsView.ViewportAnchor.AnchorUnderMouse)
        self.setResizeAnchor(QGraphicsView.ViewportAnchor.AnchorViewCenter)
        self.setDragMode(QGraphicsView.DragMode.ScrollHandDrag)
        self.setFrameShape(QFrame.Shape.NoFrame)
        self.setBackgroundBrush(QColor(38, 40, 44))
        self.setMouseTracking(True)
        # files dropped on the image go to the workspace, not to the scene
        self.setAcceptDrops(False)
        self.viewport().setAcceptDrops(False)
        self.image_item = QGraphicsPixmapItem()
        self.image_item.setTransformationMode(Qt.TransformationMode.SmoothTransformation)
        self.scene().addItem(self.image_item)
        self.prompts = PromptOverlay()
        self.scene().addItem(self.prompts)
        self.mode = "pan"  # pan | point | box
        self.fit_on_resize = True
        self._box_start: QPointF | None = None
        self._press_pos = None
        # output pixels per image pixel: 1, or a restoration's scale while it is compared
        self.pixel_scale = 1.0
        self.compare_item: CompareOverlay | None = None
        self._dragging_split = False

    # -- image and zoom -----------------------------------------------------------------
    def set_pixmap(self, pixmap: QPixmap) -> None:
        self.image_item.setPixmap(pixmap)
        self.scene().setSceneRect(QRectF(pixmap.rect()).adjusted(-64, -64, 64, 64))
        self.fit()

    @property
    def image_size(self) -> tuple[int, int]:
        pm = self.image_item.pixmap()
        return (pm.width(), pm.height())

    @property
    def zoom(self) -> float:
        return self.transform().m11()

    def set_zoom(self, factor: float) -> None:
        factor = min(MAX_ZOOM, max(MIN_ZOOM, factor))
        current = self.zoom or 1.0
        self.scale(factor / current, factor / current)
        self.zoomChanged.emit(self.zoom)

    def zoom_by(self, step: float) -> None:
        self.fit_on_resize = False
        self.set_zoom(self.zoom * step)

    def fit(self) -> None:
        self.fit_on_resize = True
        if self.image_item.pixmap().isNull():
            return
        self.fitInView(self.image_item, Qt.AspectRatioMode.KeepAspectRatio)
        self.zoomChanged.emit(self.zoom)

    def actual_size(self) -> None:
        """1:1: one screen pixel per pixel of the finest picture shown (the output of a
        restoration being compared, else the image)."""
        self.fit_on_resize = False
        self.set_zoom(self.pixel_scale)

    def set_compare(self, item: CompareOverlay | None) -> None:
        """The restoration compare now shown (or none): 1:1 follows its scale and the
        input under it is upscaled by nearest neighbour."""
        self.compare_item = item
        scale = 1.0
        if item is not None and item.source_w:
            scale = item.restored.width() / item.source_w
        self.pixel_scale = scale if scale > 0 else 1.0
        self.image_item.setTransformationMode(
            Qt.TransformationMode.FastTransformation if item is not None
            else Qt.TransformationMode.SmoothTransformation)
        if not self.fit_on_resize:
            self.zoomChanged.emit(self.zoom)

    def _over_split(self, view_pos: QPointF) -> bool:
        item = self.compare_item
        if item is None or not item.isVisible() or self.mode != "pan":
            return False
        top = self.mapFromScene(QPointF(item.split * item.source_w, 0))
        bottom = self.mapFromScene(QPointF(item.split * item.source_w, item.source_h))
        return (abs(view_pos.x() - top.x()) <= SPLIT_GRAB_PX
                and top.y() - SPLIT_GRAB_PX <= view_pos.y() <= bottom.y() + SPLIT_GRAB_PX)

    def _drag_split_to(self, view_pos: QPointF) -> None:
        item = self.compare_item
        if item is None or not item.source_w:
            return
        x = self.mapToScene(view_pos.toPoint()).x()
        self.splitDragged.emit(min(1.0, max(0.0, x / item.source_w)))

    def wheelEvent(self, event) -> None:  # noqa: N802
        delta = event.angleDelta().y()
        if delta:
            self.zoom_by(1.0015 ** delta)  # 120 units (one notch) = ~20 %
        event.accept()

    def resizeEvent(self, event) -> None:  # noqa: N802
        super().resizeEvent(event)
        if self.fit_on_resize:
            self.fit()

    # -- prompts and clicks --------------------------------------------------------------
    def set_mode(self, mode: str) -> None:
        self.mode = mode
        self.setDragMode(QGraphicsView.DragMode.ScrollHandDrag if mode == "pan"
                         else QGraphicsView.DragMode.NoDrag)
        self.viewport().setCursor(Qt.CursorShape.OpenHandCursor if mode == "pan"
                                  else Qt.CursorShape.CrossCursor)

    def mousePressEvent(self, event) -> None:  # noqa: N802
        pos = self.mapToScene(event.position().toPoint())
        self._press_pos = event.position()
        if event.button() == Qt.MouseButton.LeftButton and self._over_split(event.position()):
            self._dragging_split = True  # the compare line, not a pan
            self._drag_split_to(event.position())
            event.accept()
            return
        if self.mode == "box" and event.button() == Qt.MouseButton.LeftButton:
            self._box_start = pos
            self.prompts.begin_box(pos)
            event.accept()
            return
        if self.mode == "point":
            positive = (event.button() == Qt.MouseButton.LeftButton
                        and not event.modifiers() & Qt.KeyboardModifier.ShiftModifier)
            self.prompts.add_point(pos.x(), pos.y(), positive)
            self.promptsChanged.emit()
            event.accept()
            return
        super().mousePressEvent(event)

    def mouseMoveEvent(self, event) -> None:  # noqa: N802
        if self._dragging_split:
            self._drag_split_to(event.position())
            event.accept()
            return
        if self.mode == "pan" and self.compare_item is not None and not event.buttons():
            self.viewport().setCursor(Qt.CursorShape.SplitHCursor
                                      if self._over_split(event.position())
                                      else Qt.CursorShape.OpenHandCursor)
        if self.mode == "box" and self._box_start is not None:
            self.prompts.drag_box(self._box_start, self.mapToScene(event.position().toPoint()))
            event.accept()
            return
        super().mouseMoveEvent(event)

    def mouseReleaseEvent(self, event) -> None:  # noqa: N802
        if self._dragging_split:
            self._dragging_split = False
            self._press_pos = None
            event.accept()
            return
        if self.mode == "box" and self._box_start is not None:
            self._box_start = None
            if self.prompts.end_box() is not None:
                self.promptsChanged.emit()
            event.accept()
            return
        super().mouseReleaseEvent(event)
        moved = (self._press_pos is not None
                 and (event.position() - self._press_pos).manhattanLength() > 4)
        if self.mode == "pan" and not moved and not self.image_item.pixmap().isNull():
            pos = self.mapToScene(event.position().toPoint())
            w, h = self.image_size
            if 0 <= pos.x() < w and 0 <= pos.y() < h:
                self.imageClicked.emit(pos, event.button())


class ImageViewer(QWidget):
    """Canvas + overlay toolbar + before/after slider + streamed caption strip."""

    overlaysChanged = Signal()
    legendChanged = Signal(list)  # list[LegendEntry]
    patchClicked = Signal(float, float)  # image pixels; the explain panel asks for a map

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("imageViewer")
        self.canvas = ImageCanvas(self)
        self.boxes: BoxesOverlay | None = None
        self.masks: MaskOverlay | None = None
        self.heatmap: HeatmapOverlay | None = None
        self.compare: CompareOverlay | None = None
        self.caption_text = ""
        self.visible = {name: True for name in OVERLAYS}
        self._mask_opacity = 0.5
        self._heatmap_opacity = 0.6

        self.toolbar = QToolBar(self.tr("View"), self)
        self.toolbar.setObjectName("viewerToolbar")
        self.actions: dict[str, QAction] = {}
        self._build_toolbar()
        self.box_editor = BoxEditor(self)  # label correction (desktop/views/box_editor.py)
        self.actions["edit_boxes"].toggled.connect(self.box_editor.set_enabled)
        self.canvas.zoomChanged.connect(  # labels are screen-sized: re-place them per zoom
            lambda zoom: self.boxes.layout_labels(zoom) if self.boxes is not None else None)

        self.caption_label = QLabel(self)
        self.caption_label.setObjectName("captionStrip")
        self.caption_label.setWordWrap(True)
        self.caption_label.setVisible(False)
        self.caption_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)

        self.split_slider = QSlider(Qt.Orientation.Horizontal, self)
        self.split_slider.setObjectName("compareSlider")
        self.split_slider.setRange(0, SPLIT_STEPS)
        self.split_slider.setValue(SPLIT_STEPS // 2)
        self.split_slider.setToolTip(self.tr("Drag here or the line on the image to compare "
                                             "before (left) and after (right)"))
        self.split_slider.valueChanged.connect(self._on_split)
        self.split_row = QWidget(self)
        row = QHBoxLayout(self.split_row)
        row.setContentsMargins(8, 0, 8, 0)
        row.addWidget(QLabel(self.tr("Before")))
        row.addWidget(self.split_slider, 1)
        row.addWidget(QLabel(self.tr("After")))
        self.split_row.setVisible(False)

        self.empty_label = QLabel(self.tr("Drop images, folders or videos here\n"
                                          "or use File ▸ Open (Ctrl+O)"), self.canvas)
        self.empty_label.setObjectName("emptyHint")
        self.empty_label.setAlignment(Qt.AlignmentFlag.AlignCenter)

        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(0)
        layout.addWidget(self.toolbar)
        layout.addWidget(self.box_editor.bar)
        layout.addWidget(self.canvas, 1)
        layout.addWidget(self.split_row)
        layout.addWidget(self.caption_label)
        self.canvas.imageClicked.connect(self._on_clicked)
        self.canvas.zoomChanged.connect(self._on_zoom)
        self.canvas.splitDragged.connect(
            lambda fraction: self.split_slider.setValue(round(fraction * SPLIT_STEPS)))
        self._update_actions()

    def add_bar(self, widget: QWidget) -> None:
        """A bar right under the image (the video transport), above the compare slider."""
        layout = self.layout()
        layout.insertWidget(layout.indexOf(self.canvas) + 1, widget)

    def _build_toolbar(self) -> None:
        tb = self.toolbar

        def act(name: str, text: str, shortcut: str, slot, checkable: bool = False,
                shown: bool = True) -> QAction:
            action = QAction(text, self)
            action.setObjectName(f"action_{name}")
            if shortcut:
                action.setShortcut(QKeySequence(shortcut))
                action.setShortcutContext(Qt.ShortcutContext.WindowShortcut)
                action.setToolTip(f"{text} ({QKeySequence(shortcut).toString()})")
            action.setCheckable(checkable)
            if checkable:
                action.setChecked(True)
                action.toggled.connect(slot)
            else:
                action.triggered.connect(slot)
            # not shown: in the View menu with its keys, so the bar fits narrow windows
            tb.addAction(action) if shown else self.addAction(action)
            self.actions[name] = action
            return action

        act("fit", self.tr("Fit"), "Ctrl+0", self.canvas.fit)
        act("one_to_one", self.tr("1:1"), "Ctrl+1", self.canvas.actual_size)
        act("zoom_in", self.tr("Zoom in"), "Ctrl++", lambda: self.canvas.zoom_by(1.25),
            shown=False)  # the mouse wheel zooms too
        act("zoom_out", self.tr("Zoom out"), "Ctrl+-", lambda: self.canvas.zoom_by(0.8),
            shown=False)
        self.zoom_label = QLabel(" 100% ")
        self.zoom_label.setObjectName("zoomLabel")
        tb.addWidget(self.zoom_label)
        tb.addSeparator()
        names = {"boxes": (self.tr("Boxes"), "B"), "masks": (self.tr("Masks"), "M"),
                 "caption": (self.tr("Caption"), "C"), "compare": (self.tr("Compare"), "K"),
                 "heatmap": (self.tr("Heatmap"), "H")}
        for name, (text, key) in names.items():
            act(name, text, key, lambda on, n=name: self.set_overlay_visible(n, on),
                checkable=True)
        tb.addSeparator()
        tb.addWidget(QLabel(self.tr(" Opacity ")))
        self.opacity_slider = QSlider(Qt.Orientation.Horizontal)
        self.opacity_slider.setObjectName("opacitySlider")
        self.opacity_slider.setRange(0, 100)
        self.opacity_slider.setValue(50)
        self.opacity_slider.setMaximumWidth(110)
        self.opacity_slider.setToolTip(self.tr("Mask and heatmap opacity"))
        self.opacity_slider.valueChanged.connect(self._on_opacity)
        tb.addWidget(self.opacity_slider)
        # in the box editor's own bar (shown with detections), so this bar fits 1024 px
        edit = act("edit_boxes", self.tr("Edit boxes"), "E", lambda on: None, checkable=True,
                   shown=False)
        edit.setChecked(False)
        edit.setToolTip(self.tr("Correct the boxes: move, resize, delete, relabel, add (E)"))
        # narrow windows (1024 px, 2x scale): the overlay switches fold into one menu button
        # instead of an overflow chevron (desktop/views/toolbar_fit.py)
        from desktop.views.toolbar_fit import ToolbarFit

        self.toolbar_fit = ToolbarFit(
            tb, collapsible=[self.actions[n] for n in names], menu_text=self.tr("Layers ▾"),
            menu_tooltip=self.tr("Boxes (B), Masks (M), Caption (C), Compare (K), Heatmap (H)"),
            shrinkable=[self.opacity_slider], compact_width=70)

    # -- image ---------------------------------------------------------------------------
    def set_image(self, image: Any) -> None:
        """A QPixmap, a numpy array (H, W, C) or a PIL image; clears every overlay."""
        if isinstance(image, QPixmap):
            pixmap = image
        elif hasattr(image, "convert"):  # PIL
            import numpy as np

            pixmap = array_to_pixmap(np.asarray(image.convert("RGB")))
        else:
            pixmap = array_to_pixmap(image)
        self.clear_results()
        self.canvas.prompts.clear()
        self.canvas.set_pixmap(pixmap)
        self.empty_label.setVisible(pixmap.isNull())

    def set_frame(self, image: Any) -> None:
        """Replace the picture and keep zoom, pan, prompts and overlays (video playback).
        A picture of another size is shown as a new image (fitted)."""
        pixmap = image if isinstance(image, QPixmap) else array_to_pixmap(image)
        if pixmap.size() != self.canvas.image_item.pixmap().size():
            self.canvas.set_pixmap(pixmap)
        else:
            self.canvas.image_item.setPixmap(pixmap)
        self.empty_label.setVisible(pixmap.isNull())

    def clear_image(self) -> None:
        self.clear_results()
        self.canvas.prompts.clear()
        self.canvas.set_pixmap(QPixmap())
        self.empty_label.setVisible(True)

    @property
    def has_image(self) -> bool:
        return not self.canvas.image_item.pixmap().isNull()

    # -- results -------------------------------------------------------------------------
    def clear_results(self) -> None:
        for attr in ("boxes", "masks", "heatmap", "compare"):
            item = getattr(self, attr)
            if item is not None and item.scene() is not None:
                item.scene().removeItem(item)
            setattr(self, attr, None)
        self.box_editor.detach()
        self.canvas.set_compare(None)
        self.set_caption("")
        self.split_row.setVisible(False)
        self._update_actions()
        self.legendChanged.emit([])

    def show_result(self, result: Any) -> None:
        """Draw any engine result (Caption, Detections, Segmentation, RestoredImage)."""
        kind = type(result).__name__
        if kind == "Detections":
            self.set_detections(result)
        elif kind == "Segmentation":
            self.set_segmentation(result)
        elif kind == "Caption":
            self.set_caption(result.text)
        elif kind == "RestoredImage":
            self.set_restored(result)

    def set_detections(self, detections) -> None:
        self._replace("boxes", BoxesOverlay(detections))
        self.boxes.layout_labels(self.canvas.zoom)
        self.box_editor.attach(detections)
        self.legendChanged.emit(self.boxes.legend())

    def highlight_box(self, index: int | None) -> None:
        """Highlight box `index` of the shown detections (a clicked result row)."""
        if self.boxes is not None:
            item = self.boxes.highlight(index)
            if item is not None:
                self.canvas.ensureVisible(item, 16, 16)

    def set_segmentation(self, segmentation) -> None:
        overlay = MaskOverlay(segmentation)
        overlay.setOpacity(self._mask_opacity)
        self._replace("masks", overlay)
        self.legendChanged.emit(overlay.legend_entries)

    def set_caption(self, text: str) -> None:
        """Also called with partial text while a caption streams in."""
        self.caption_text = text
        self.caption_label.setText(text)
        self.caption_label.setVisible(bool(text) and self.visible["caption"])
        self._update_actions()

    def set_restored(self, restored) -> None:
        pixmap = array_to_pixmap(restored.image[..., :3] if restored.image.ndim == 3
                                 else restored.image)
        size = restored.source_size if restored.source_size[0] else self.canvas.image_size
        if self.compare is not None and (self.compare.source_w, self.compare.source_h) == \
                tuple(size) and self.compare.restored.size() == pixmap.size():
            self.compare.set_restored(pixmap)  # the next video frame: keep the item
            return
        overlay = CompareOverlay(pixmap, size)
        overlay.set_split(self.split_slider.value() / SPLIT_STEPS)
        self._replace("compare", overlay)
        self.canvas.set_compare(overlay)
        self.split_row.setVisible(self.visible["compare"])

    def remove_overlay(self, name: str) -> None:
        """Drop one overlay (the others stay): a video frame without that result."""
        if name == "caption":
            self.set_caption("")
        elif getattr(self, name) is not None:
            self._replace(name, None)
            if name == "boxes":
                self.box_editor.detach()
            if name == "compare":
                self.canvas.set_compare(None)
                self.split_row.setVisible(False)

    def set_heatmap(self, values: "np.ndarray | None") -> None:
        if values is None:
            self._replace("heatmap", None)
            return
        overlay = HeatmapOverlay(values, self.canvas.image_size)
        overlay.setOpacity(self._heatmap_opacity)
        self._replace("heatmap", overlay)

    def _replace(self, attr: str, item) -> None:
        old = getattr(self, attr)
        if old is not None and old.scene() is not None:
            old.scene().removeItem(old)
        setattr(self, attr, item)
        if item is not None:
            self.canvas.scene().addItem(item)
            item.setVisible(self.visible[attr])
        self._update_actions()
        self.overlaysChanged.emit()

    # -- toggles -----------------------------------------------------------------------------
    def set_overlay_visible(self, name: str, shown: bool) -> None:
        self.visible[name] = shown
        action = self.actions[name]
        if action.isChecked() != shown:
            action.setChecked(shown)  # re-enters once through toggled; harmless
        if name == "caption":
            self.caption_label.setVisible(shown and bool(self.caption_text))
        else:
            item = getattr(self, name)
            if item is not None:
                item.setVisible(shown)
            if name == "compare":
                self.split_row.setVisible(shown and self.compare is not None)
        self.overlaysChanged.emit()

    def toggle_overlay(self, name: str) -> None:
        self.set_overlay_visible(name, not self.visible[name])

    def overlay_present(self, name: str) -> bool:
        if name == "caption":
            return bool(self.caption_text)
        return getattr(self, name) is not None

    def _update_actions(self) -> None:
        for name in OVERLAYS:
            self.actions[name].setEnabled(self.overlay_present(name))
        self.opacity_slider.setEnabled(self.masks is not None or self.heatmap is not None)
        editing = self.actions["edit_boxes"]
        editing.setEnabled(self.boxes is not None)
        if self.boxes is None and editing.isChecked():
            editing.setChecked(False)

    def _on_opacity(self, value: int) -> None:
        fraction = value / 100
        if self.masks is not None:
            self._mask_opacity = fraction
            self.masks.setOpacity(fraction)
        if self.heatmap is not None:
            self._heatmap_opacity = fraction
            self.heatmap.setOpacity(fraction)

    def _on_split(self, value: int) -> None:
        if self.compare is not None:
            self.compare.set_split(value / SPLIT_STEPS)

    def _on_zoom(self, zoom: float) -> None:
        # in output pixels while a restoration is compared: 1:1 reads 100 %
        self.zoom_label.setText(f" {zoom / self.canvas.pixel_scale * 100:.0f}% ")

    def _on_clicked(self, pos: QPointF, button) -> None:
        if button == Qt.MouseButton.LeftButton:
            self.patchClicked.emit(pos.x(), pos.y())

    def resizeEvent(self, event) -> None:  # noqa: N802
        super().resizeEvent(event)
        self.empty_label.resize(self.canvas.size())
        self.toolbar_fit.refit(self.width())

    def showEvent(self, event) -> None:  # noqa: N802
        super().showEvent(event)
        self.toolbar_fit.refit(self.width())

    def legend(self) -> list[LegendEntry]:
        if self.masks is not None:
            return self.masks.legend_entries
        if self.boxes is not None:
            return self.boxes.legend()
        return []

    def flash(self, message: str, msecs: int = 2500) -> None:
        """A short note over the image (e.g. 'no attention for this model')."""
        self.empty_label.setText(message)
        self.empty_label.setVisible(True)
        QTimer.singleShot(msecs, lambda: self.empty_label.setVisible(not self.has_image))
