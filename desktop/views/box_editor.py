"""Label correction in the detect result view: move, resize, delete, relabel and add boxes.

Press "Edit boxes" (E) in the viewer's toolbar and an edit bar appears:
- drag a box to move it; drag its edge or corner (within a few screen pixels) to resize;
- Delete removes the selected box;
- the label field (the model's labels, or type a new one + Enter) relabels the selected
  box and is the label of boxes added next;
- "Add box" (A), or Ctrl+drag on an empty area, draws a new box.
Each finished edit gives a new engine `Detections` (`edited` signal); the main window
saves it next to the results and re-writes the exports (engine.exporters.edits).
The editor works on plain engine results; the viewer only draws what it holds.
"""
from __future__ import annotations

from typing import Any

from PySide6.QtCore import QEvent, QObject, QPointF, QRectF, Qt, Signal
from PySide6.QtGui import QAction, QColor, QKeySequence, QPen
from PySide6.QtWidgets import QComboBox, QGraphicsRectItem, QLabel, QToolBar

HANDLE_PX = 6  # how close (screen pixels) to an edge a press resizes instead of moving
MIN_BOX_PX = 3  # smaller drags are clicks, not boxes (image pixels)


def _moved_box(box: Any, x0: float, y0: float, x1: float, y1: float, **changes: Any) -> Any:
    from engine.results import Box

    return Box(min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1),
               label=changes.get("label", box.label), score=changes.get("score", box.score),
               label_id=changes.get("label_id", box.label_id),
               track_id=changes.get("track_id", box.track_id))


class BoxEditor(QObject):
    edited = Signal(object)  # engine.results.Detections after an edit
    selectionChanged = Signal(object)  # index of the selected box, or None

    def __init__(self, viewer: Any) -> None:  # the ImageViewer (it imports this module)
        super().__init__(viewer)
        self.viewer = viewer
        self.canvas = viewer.canvas
        self.detections: Any = None  # the Detections being edited
        self.selected: int | None = None
        self.enabled = False
        self.adding = False
        self._drag: tuple[int, str, QPointF, QRectF] | None = None  # index, handle, start, rect
        self._rubber: QGraphicsRectItem | None = None
        self._rubber_start: QPointF | None = None
        self._committing = False

        self.bar = QToolBar(viewer.tr("Edit boxes"), viewer)
        self.bar.setObjectName("boxEditBar")
        self.bar.addAction(viewer.actions["edit_boxes"])  # on: the tools below appear
        self.bar.addSeparator()
        self.action_add = self._action("add_box", viewer.tr("Add box"), "A", self.set_adding,
                                       checkable=True)
        self.action_delete = self._action("delete_box", viewer.tr("Delete box"), "Del",
                                          lambda: self.delete_box(self.selected))
        self.tools: list[QAction] = [self.action_add, self.action_delete]
        self.tools.append(self.bar.addWidget(QLabel(viewer.tr(" Label "))))
        self.label_combo = QComboBox()
        self.label_combo.setObjectName("boxLabelCombo")
        self.label_combo.setEditable(True)
        self.label_combo.setMinimumContentsLength(14)
        self.label_combo.setToolTip(viewer.tr("Label of the selected box (and of new boxes): "
                                              "pick one of the model's, or type a new one "
                                              "and press Enter"))
        self.label_combo.activated.connect(lambda _: self.apply_label())
        self.label_combo.lineEdit().returnPressed.connect(self.apply_label)
        self.tools.append(self.bar.addWidget(self.label_combo))
        self.hint = QLabel()
        self.hint.setObjectName("boxEditHint")
        self.tools.append(self.bar.addWidget(self.hint))
        self.bar.setVisible(False)
        self.canvas.viewport().installEventFilter(self)
        self._update()

    def _action(self, name: str, text: str, shortcut: str, slot: Any,
                checkable: bool = False) -> QAction:
        action = QAction(text, self.viewer)
        action.setObjectName(f"action_{name}")
        action.setShortcut(QKeySequence(shortcut))
        action.setShortcutContext(Qt.ShortcutContext.WidgetWithChildrenShortcut)
        action.setToolTip(f"{text} ({QKeySequence(shortcut).toString()})")
        action.setCheckable(checkable)
        (action.toggled if checkable else action.triggered).connect(slot)
        self.bar.addAction(action)
        self.viewer.addAction(action)  # keys work with the focus anywhere in the viewer
        return action

    # -- state -----------------------------------------------------------------------------
    def attach(self, detections: Any) -> None:
        """The viewer shows new detections (a new image, or this editor's own edit)."""
        self.detections = detections
        if not self._committing:
            self.selected = None
            labels = sorted({str(v) for v in getattr(detections, "labels", {}).values()}
                            | {b.label for b in getattr(detections, "boxes", [])})
            current = self.label_combo.currentText()
            self.label_combo.blockSignals(True)
            self.label_combo.clear()
            self.label_combo.addItems(labels)
            if current:
                self.label_combo.setCurrentText(current)
            self.label_combo.blockSignals(False)
        self._show_selection()
        self._update()

    def detach(self) -> None:
        self.detections, self.selected, self._drag = None, None, None
        self._update()

    def set_enabled(self, on: bool) -> None:
        self.enabled = on
        for tool in self.tools:
            tool.setVisible(on)
        self.canvas.set_mode("pan")
        self.canvas.setDragMode(self.canvas.DragMode.NoDrag if on
                                else self.canvas.DragMode.ScrollHandDrag)
        if not on:
            self.set_adding(False)
            self.select(None)
        self._update()

    def set_adding(self, on: bool) -> None:
        self.adding = on
        if self.action_add.isChecked() != on:
            self.action_add.setChecked(on)
        self.canvas.viewport().setCursor(Qt.CursorShape.CrossCursor if on
                                         else Qt.CursorShape.ArrowCursor if self.enabled
                                         else Qt.CursorShape.OpenHandCursor)

    def _update(self) -> None:
        has = self.detections is not None
        self.bar.setVisible(has)  # a detect result is shown: it can be corrected
        if not self.enabled:
            for tool in self.tools:
                tool.setVisible(False)
        self.action_delete.setEnabled(has and self.selected is not None)
        self.action_add.setEnabled(has)
        self.hint.setText(self.viewer.tr("  drag: move · edges: resize · Ctrl+drag: add")
                          if has else self.viewer.tr("  no detections to edit"))

    def select(self, index: int | None) -> None:
        if self.detections is None or index is None \
                or not 0 <= index < len(self.detections.boxes):
            index = None
        self.selected = index
        if index is not None:
            self.label_combo.setCurrentText(self.detections.boxes[index].label)
        self._show_selection()
        self._update()
        self.selectionChanged.emit(index)

    def _show_selection(self) -> None:
        boxes = self.viewer.boxes
        if boxes is not None:
            boxes.highlight(self.selected)

    # -- edits (each one commits a new Detections) ------------------------------------------
    def set_box(self, index: int, x0: float, y0: float, x1: float, y1: float) -> None:
        box = self.detections.boxes[index]
        w, h = self.detections.image_size
        x0, x1 = sorted((min(max(x0, 0.0), w), min(max(x1, 0.0), w)))
        y0, y1 = sorted((min(max(y0, 0.0), h), min(max(y1, 0.0), h)))
        self._commit(index, _moved_box(box, x0, y0, x1, y1, score=1.0))

    def move_box(self, index: int, dx: float, dy: float) -> None:
        b = self.detections.boxes[index]
        w, h = self.detections.image_size
        dx = min(max(dx, -b.x0), w - b.x1)  # keep the whole box on the image
        dy = min(max(dy, -b.y0), h - b.y1)
        self.set_box(index, b.x0 + dx, b.y0 + dy, b.x1 + dx, b.y1 + dy)

    def set_label(self, index: int, label: str) -> None:
        label = label.strip()
        if not label or self.detections is None:
            return
        b = self.detections.boxes[index]
        self._commit(index, _moved_box(b, b.x0, b.y0, b.x1, b.y1, label=label, score=1.0,
                                       label_id=-1))
        if self.label_combo.findText(label) < 0:
            self.label_combo.addItem(label)

    def apply_label(self) -> None:
        if self.selected is not None:
            self.set_label(self.selected, self.label_combo.currentText())

    def delete_box(self, index: int | None) -> None:
        if self.detections is None or index is None:
            return
        boxes = list(self.detections.boxes)
        del boxes[index]
        self.selected = None
        self._publish(boxes)

    def add_box(self, x0: float, y0: float, x1: float, y1: float,
                label: str | None = None) -> int:
        from engine.results import Box

        label = (label or self.label_combo.currentText() or "object").strip()
        w, h = self.detections.image_size
        x0, x1 = sorted((min(max(x0, 0.0), w), min(max(x1, 0.0), w)))
        y0, y1 = sorted((min(max(y0, 0.0), h), min(max(y1, 0.0), h)))
        boxes = [*self.detections.boxes, Box(x0, y0, x1, y1, label=label, score=1.0)]
        self.selected = len(boxes) - 1
        self._publish(boxes)
        return self.selected

    def _commit(self, index: int, box: Any) -> None:
        boxes = list(self.detections.boxes)
        boxes[index] = box
        self.selected = index
        self._publish(boxes)

    def _publish(self, boxes: list[Any]) -> None:
        from engine.results import Detections

        det = self.detections
        edited = Detections(boxes=boxes, image_size=det.image_size, labels=dict(det.labels))
        self._committing = True
        try:
            self.viewer.set_detections(edited)
        finally:
            self._committing = False
        self._update()
        self.edited.emit(edited)

    # -- mouse -----------------------------------------------------------------------------
    def hit(self, pos: QPointF) -> tuple[int, str] | None:
        """(box index, handle) under an image position: handle is "move" or the edges
        grabbed ("l", "t", "r", "b" and their corners, e.g. "tl"). Smallest box wins."""
        if self.detections is None:
            return None
        tol = HANDLE_PX / max(self.canvas.zoom, 1e-6)
        found = []
        for i, b in enumerate(self.detections.boxes):
            if not (b.x0 - tol <= pos.x() <= b.x1 + tol and b.y0 - tol <= pos.y() <= b.y1 + tol):
                continue
            handle = "".join(edge for edge, near in (
                ("t", abs(pos.y() - b.y0) <= tol), ("b", abs(pos.y() - b.y1) <= tol),
                ("l", abs(pos.x() - b.x0) <= tol), ("r", abs(pos.x() - b.x1) <= tol)) if near)
            found.append(((b.x1 - b.x0) * (b.y1 - b.y0), i, handle or "move"))
        if not found:
            return None
        _, index, handle = min(found)
        return index, handle

    def eventFilter(self, watched: QObject, event: QEvent) -> bool:  # noqa: N802
        if not self.enabled or self.detections is None:
            return False
        kind = event.type()
        if kind == QEvent.Type.MouseButtonPress and event.button() == Qt.MouseButton.LeftButton:
            return self._press(self.canvas.mapToScene(event.position().toPoint()),
                               event.modifiers())
        if kind == QEvent.Type.MouseMove:
            return self._move(self.canvas.mapToScene(event.position().toPoint()))
        if kind == QEvent.Type.MouseButtonRelease and event.button() == Qt.MouseButton.LeftButton:
            return self._release(self.canvas.mapToScene(event.position().toPoint()))
        return False

    def _press(self, pos: QPointF, modifiers: Any) -> bool:
        adding = self.adding or bool(modifiers & Qt.KeyboardModifier.ControlModifier)
        target = None if adding else self.hit(pos)
        if target is not None:
            index, handle = target
            self.select(index)
            b = self.detections.boxes[index]
            self._drag = (index, handle, pos, QRectF(QPointF(b.x0, b.y0), QPointF(b.x1, b.y1)))
            return True
        if adding:
            self._rubber_start = pos
            self._rubber = QGraphicsRectItem(QRectF(pos, pos))
            pen = QPen(QColor(255, 200, 0), 2.0)
            pen.setCosmetic(True)
            self._rubber.setPen(pen)
            self._rubber.setZValue(50)
            self.canvas.scene().addItem(self._rubber)
            return True
        self.select(None)
        return False

    def _dragged_rect(self, pos: QPointF) -> QRectF:
        index, handle, start, rect = self._drag
        dx, dy = pos.x() - start.x(), pos.y() - start.y()
        r = QRectF(rect)
        if handle == "move":
            r.translate(dx, dy)
            return r
        if "l" in handle:
            r.setLeft(rect.left() + dx)
        if "r" in handle:
            r.setRight(rect.right() + dx)
        if "t" in handle:
            r.setTop(rect.top() + dy)
        if "b" in handle:
            r.setBottom(rect.bottom() + dy)
        return r.normalized()

    def _move(self, pos: QPointF) -> bool:
        if self._drag is not None:
            item = self.viewer.boxes.box_items[self._drag[0]] if self.viewer.boxes else None
            if item is not None:
                item.setRect(self._dragged_rect(pos))  # live feedback; committed on release
            return True
        if self._rubber is not None:
            self._rubber.setRect(QRectF(self._rubber_start, pos).normalized())
            return True
        return False

    def _release(self, pos: QPointF) -> bool:
        if self._drag is not None:
            index, handle, start, _ = self._drag
            rect = self._dragged_rect(pos)
            self._drag = None
            if (pos - start).manhattanLength() * self.canvas.zoom < 2:
                return True  # a click selects; nothing moved
            if handle == "move":
                self.move_box(index, pos.x() - start.x(), pos.y() - start.y())
            else:
                self.set_box(index, rect.left(), rect.top(), rect.right(), rect.bottom())
            return True
        if self._rubber is not None:
            rect = self._rubber.rect()
            self.canvas.scene().removeItem(self._rubber)
            self._rubber, self._rubber_start = None, None
            if rect.width() >= MIN_BOX_PX and rect.height() >= MIN_BOX_PX:
                self.add_box(rect.left(), rect.top(), rect.right(), rect.bottom())
            self.set_adding(False)
            return True
        return False
