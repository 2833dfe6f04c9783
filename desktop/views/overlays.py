"""Graphics items drawn over the image, each in original-image pixel coordinates.

Every overlay is one QGraphicsItem group the viewer can show or hide on its own:
boxes (with labels, scores and hover tooltips), masks (opacity + legend),
the attention heatmap, the before/after restoration split, and the SAM prompts
the user draws.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from PySide6.QtCore import QPointF, QRectF, Qt
from PySide6.QtGui import QBrush, QColor, QPainter, QPen, QPixmap, QTransform
from PySide6.QtWidgets import (
    QGraphicsEllipseItem,
    QGraphicsItem,
    QGraphicsItemGroup,
    QGraphicsPixmapItem,
    QGraphicsRectItem,
    QGraphicsSimpleTextItem,
    QStyleOptionGraphicsItem,
    QWidget,
)

from desktop.views.imaging import array_to_pixmap, heatmap_rgba, label_color, label_palette

if TYPE_CHECKING:
    import numpy as np

Z_MASKS, Z_HEATMAP, Z_COMPARE, Z_BOXES, Z_PROMPTS = 10, 20, 5, 30, 40


@dataclass
class LegendEntry:
    label: str
    color: QColor
    fraction: float  # share of the image's pixels (masks) or the score (boxes)
    label_id: int = -1


def _cosmetic_pen(color: QColor, width: float = 2.0) -> QPen:
    pen = QPen(color, width)
    pen.setCosmetic(True)  # same width in screen pixels at every zoom
    return pen


class BoxItem(QGraphicsRectItem):
    """One detection box; hovering shows label and score."""

    def __init__(self, box, color: QColor) -> None:
        super().__init__(QRectF(QPointF(box.x0, box.y0), QPointF(box.x1, box.y1)))
        self.box = box
        self.setPen(_cosmetic_pen(color))
        fill = QColor(color)
        fill.setAlpha(28)
        self.setBrush(QBrush(fill))
        tip = f"{box.label}  {box.score:.2f}"
        if box.track_id is not None:
            tip += f"  (track {box.track_id})"
        tip += f"\n{box.x0:.0f}, {box.y0:.0f} – {box.x1:.0f}, {box.y1:.0f}"
        self.setToolTip(tip)
        self.setAcceptHoverEvents(True)
        self.highlighted = False

    def set_highlighted(self, on: bool) -> None:
        """The box of the selected result row: thicker and filled more, drawn on top."""
        self.highlighted = on
        self._set_width(4.5 if on else 2.0)
        fill = QColor(self.pen().color())
        fill.setAlpha(90 if on else 28)
        self.setBrush(QBrush(fill))
        self.setZValue(1 if on else 0)

    def _set_width(self, width: float) -> None:
        pen = self.pen()
        pen.setWidthF(width)
        self.setPen(pen)

    def hoverEnterEvent(self, event) -> None:  # noqa: N802 (Qt name)
        self._set_width(4.5 if self.highlighted else 3.5)
        super().hoverEnterEvent(event)

    def hoverLeaveEvent(self, event) -> None:  # noqa: N802
        self._set_width(4.5 if self.highlighted else 2.0)
        super().hoverLeaveEvent(event)


class LabelTag(QGraphicsSimpleTextItem):
    """A box's label that stays readable at any zoom (ignores the view's scale)."""

    def __init__(self, text: str, color: QColor, parent: QGraphicsItem) -> None:
        super().__init__(text, parent)
        self.color = color
        self.setBrush(QBrush(Qt.GlobalColor.white))
        self.setFlag(QGraphicsItem.GraphicsItemFlag.ItemIgnoresTransformations, True)

    def paint(self, painter: QPainter, option: QStyleOptionGraphicsItem,
              widget: QWidget | None = None) -> None:
        painter.fillRect(self.boundingRect().adjusted(-3, -1, 3, 1), self.color.darker(140))
        super().paint(painter, option, widget)


class BoxesOverlay(QGraphicsItemGroup):
    def __init__(self, detections) -> None:
        super().__init__()
        self.setZValue(Z_BOXES)
        self.setHandlesChildEvents(False)  # hover and tooltips reach each box
        self.box_items: list[BoxItem] = []
        self.tags: list[LabelTag] = []
        ids = {b.label: (b.label_id if b.label_id >= 0 else i)
               for i, b in enumerate(detections.boxes)}
        for box in detections.boxes:
            color = label_color(ids[box.label])
            item = BoxItem(box, color)
            self.addToGroup(item)
            self.box_items.append(item)
            tag = LabelTag(f"{box.label} {box.score:.2f}", color, item)
            tag.setPos(box.x0, box.y0)
            self.tags.append(tag)
        self.highlighted: int | None = None
        self.layout_labels(1.0)

    def highlight(self, index: int | None) -> BoxItem | None:
        """Highlight box `index` (into detections.boxes), or none; returns its item."""
        for i, item in enumerate(self.box_items):
            item.set_highlighted(i == index)
        self.highlighted = index
        return self.box_items[index] if index is not None and \
            0 <= index < len(self.box_items) else None

    def layout_labels(self, zoom: float) -> None:
        """Place each label where it overlaps no label placed before it (highest scores
        first): above the box, else inside its top edge, else shifted down inside the box
        a label height at a time. Labels are drawn at screen size, so their size in image
        pixels is their pixel size / zoom: call again when the zoom changes."""
        scale = 1.0 / max(zoom, 1e-6)
        placed: list[QRectF] = []
        order = sorted(range(len(self.tags)), key=lambda i: -self.box_items[i].box.score)
        for i in order:
            tag, box = self.tags[i], self.box_items[i].box
            rect = tag.boundingRect().adjusted(-3, -1, 3, 1)
            w, h = rect.width() * scale, rect.height() * scale
            candidates = [box.y0 - h]  # above the box
            y = box.y0
            while y + h <= max(box.y1, box.y0 + h) + 1e-6:  # inside, shifting down
                candidates.append(y)
                y += h
            best = candidates[-1]
            for top in candidates:
                here = QRectF(box.x0, top, w, h)
                if not any(here.intersects(other) for other in placed):
                    best = top
                    break
            placed.append(QRectF(box.x0, best, w, h))
            tag.setPos(box.x0 + 3 * scale, best + 1 * scale)

    def legend(self) -> list[LegendEntry]:
        seen: dict[str, LegendEntry] = {}
        for item in self.box_items:
            b = item.box
            if b.label not in seen:
                seen[b.label] = LegendEntry(b.label, QColor(item.pen().color()), b.score,
                                            b.label_id)
        return list(seen.values())

    def set_labels_visible(self, shown: bool) -> None:
        for tag in self.tags:
            tag.setVisible(shown)


class MaskOverlay(QGraphicsPixmapItem):
    """All masks of a Segmentation as one coloured RGBA pixmap (fast at any count)."""

    def __init__(self, segmentation) -> None:
        rgba, legend = render_segmentation(segmentation)
        super().__init__(array_to_pixmap(rgba))
        self.setZValue(Z_MASKS)
        self.setShapeMode(QGraphicsPixmapItem.ShapeMode.BoundingRectShape)
        self.legend_entries = legend
        self.setOpacity(0.5)


def render_segmentation(seg) -> tuple[np.ndarray, list[LegendEntry]]:
    """Segmentation -> (H, W, 4) RGBA and its legend (labels by area, largest first)."""
    import numpy as np

    width, height = seg.image_size
    rgba = np.zeros((height, width, 4), np.uint8)
    total = float(max(1, width * height))
    legend: list[LegendEntry] = []
    if seg.instances:
        for i, inst in enumerate(seg.instances):
            color = label_color(inst.label_id if inst.label_id >= 0 else i)
            mask = np.asarray(inst.mask, bool)
            rgba[mask] = (color.red(), color.green(), color.blue(), 255)
            name = inst.label + (f" #{inst.segment_id}" if seg.kind in ("instance", "panoptic",
                                                                         "promptable") else "")
            legend.append(LegendEntry(name, color, float(mask.sum()) / total, inst.label_id))
    elif seg.label_map is not None:
        label_map = np.asarray(seg.label_map)
        valid = label_map >= 0
        if valid.any():
            top = int(label_map[valid].max())
            palette = label_palette(top + 1)
            rgba[valid, :3] = palette[label_map[valid]]
            rgba[valid, 3] = 255
            ids, counts = np.unique(label_map[valid], return_counts=True)
            for label_id, count in zip(ids.tolist(), counts.tolist()):
                name = seg.labels.get(label_id, str(label_id))
                legend.append(LegendEntry(name, label_color(label_id), count / total, label_id))
    elif seg.alpha is not None:
        alpha = np.clip(np.asarray(seg.alpha, np.float32), 0.0, 1.0)
        # matting: tint what the model removes, keep the foreground clear
        rgba[..., :3] = (220, 40, 90)
        rgba[..., 3] = ((1.0 - alpha) * 255).astype(np.uint8)
        legend.append(LegendEntry("background", QColor(220, 40, 90),
                                  float((1.0 - alpha).mean())))
    legend.sort(key=lambda e: e.fraction, reverse=True)
    return rgba, legend


class HeatmapOverlay(QGraphicsPixmapItem):
    """An attention (or similarity) map stretched over the image, smoothly."""

    def __init__(self, values: "np.ndarray", image_size: tuple[int, int]) -> None:
        import numpy as np

        values = np.asarray(values, np.float32)
        super().__init__(array_to_pixmap(heatmap_rgba(values, alpha=1.0)))
        self.values = values
        width, height = image_size
        self.setTransformationMode(Qt.TransformationMode.SmoothTransformation)
        self.setTransform(QTransform.fromScale(width / values.shape[1], height / values.shape[0]))
        self.setZValue(Z_HEATMAP)
        self.setOpacity(0.6)


class CompareOverlay(QGraphicsItem):
    """Restored image over the original: 'after' right of the split line, 'before' left."""

    def __init__(self, restored: QPixmap, source_size: tuple[int, int]) -> None:
        super().__init__()
        self.restored = restored
        self.source_w, self.source_h = source_size
        self.split = 0.5  # fraction of the width showing 'before'
        self.setZValue(Z_COMPARE)

    def boundingRect(self) -> QRectF:  # noqa: N802
        return QRectF(0, 0, self.source_w, self.source_h)

    def set_split(self, fraction: float) -> None:
        self.split = min(1.0, max(0.0, fraction))
        self.update()

    def set_restored(self, restored: QPixmap) -> None:
        """The next restored picture of the same size (a video frame)."""
        self.restored = restored
        self.update()

    def paint(self, painter: QPainter, option: QStyleOptionGraphicsItem,
              widget: QWidget | None = None) -> None:
        x_split = self.split * self.source_w
        target = QRectF(x_split, 0, self.source_w - x_split, self.source_h)
        sx = self.restored.width() / self.source_w
        sy = self.restored.height() / self.source_h
        source = QRectF(x_split * sx, 0, (self.source_w - x_split) * sx, self.restored.height())
        painter.setRenderHint(QPainter.RenderHint.SmoothPixmapTransform, False)
        if target.width() > 0:
            painter.drawPixmap(target, self.restored, source)
        pen = _cosmetic_pen(QColor(255, 255, 255), 2.0)
        painter.setPen(pen)
        painter.drawLine(QPointF(x_split, 0), QPointF(x_split, self.source_h))
        del sy


class PromptOverlay(QGraphicsItemGroup):
    """SAM prompts drawn by the user: positive/negative points and boxes."""

    def __init__(self) -> None:
        super().__init__()
        self.setZValue(Z_PROMPTS)
        self.points: list[tuple[float, float, int]] = []  # x, y, 1 = include / 0 = exclude
        self.boxes: list[tuple[float, float, float, float]] = []
        self._items: list[QGraphicsItem] = []
        self._rubber: QGraphicsRectItem | None = None

    def add_point(self, x: float, y: float, positive: bool = True) -> None:
        self.points.append((x, y, 1 if positive else 0))
        color = QColor(40, 200, 90) if positive else QColor(230, 60, 60)
        dot = QGraphicsEllipseItem(-6, -6, 12, 12)
        dot.setFlag(QGraphicsItem.GraphicsItemFlag.ItemIgnoresTransformations, True)
        dot.setPos(x, y)
        dot.setBrush(QBrush(color))
        dot.setPen(_cosmetic_pen(QColor(255, 255, 255), 1.5))
        dot.setToolTip(("include" if positive else "exclude") + f" point {x:.0f}, {y:.0f}")
        self.addToGroup(dot)
        self._items.append(dot)

    def begin_box(self, start: QPointF) -> None:
        self._rubber = QGraphicsRectItem(QRectF(start, start))
        self._rubber.setPen(_cosmetic_pen(QColor(255, 200, 0), 2.0))
        self.addToGroup(self._rubber)

    def drag_box(self, start: QPointF, now: QPointF) -> None:
        if self._rubber is not None:
            self._rubber.setRect(QRectF(start, now).normalized())

    def end_box(self) -> tuple[float, float, float, float] | None:
        if self._rubber is None:
            return None
        rect = self._rubber.rect()
        item, self._rubber = self._rubber, None
        if rect.width() < 3 or rect.height() < 3:  # a click, not a box
            self.removeFromGroup(item)
            if item.scene():
                item.scene().removeItem(item)
            return None
        box = (rect.left(), rect.top(), rect.right(), rect.bottom())
        self.boxes.append(box)
        item.setToolTip(f"box {box[0]:.0f}, {box[1]:.0f} – {box[2]:.0f}, {box[3]:.0f}")
        self._items.append(item)
        return box

    def clear(self) -> None:
        for item in self._items:
            self.removeFromGroup(item)
            if item.scene():
                item.scene().removeItem(item)
        self._items.clear()
        self.points.clear()
        self.boxes.clear()
