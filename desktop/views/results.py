"""The results panel: what the model found for the image on screen.

Captions are shown word by word as links: clicking a word asks the explain view
for that word's cross-attention map. Detections and masks are listed with their
colours (the legend), scores and areas.
"""
from __future__ import annotations

import html
from typing import Any

from PySide6.QtCore import Qt, QUrl, Signal
from PySide6.QtGui import QColor, QIcon, QPixmap
from PySide6.QtWidgets import (
    QAbstractItemView,
    QHeaderView,
    QLabel,
    QTableWidget,
    QTableWidgetItem,
    QTextBrowser,
    QVBoxLayout,
    QWidget,
)

from desktop.views.overlays import LegendEntry


def _swatch(color: QColor) -> QIcon:
    pixmap = QPixmap(12, 12)
    pixmap.fill(color)
    return QIcon(pixmap)


class ResultsPanel(QWidget):
    tokenClicked = Signal(int)  # index into Caption.tokens
    rowActivated = Signal(int)
    boxSelected = Signal(object)  # index into the shown Detections.boxes, or None

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("resultsPanel")
        self.summary = QLabel(self.tr("No results yet."))
        self.summary.setObjectName("resultsSummary")
        self.summary.setWordWrap(True)
        self.caption_view = QTextBrowser()
        self.caption_view.setObjectName("captionView")
        self.caption_view.setOpenLinks(False)
        self.caption_view.anchorClicked.connect(self._on_anchor)
        self.caption_view.setMaximumHeight(110)
        self.caption_view.setVisible(False)
        self.table = QTableWidget(0, 3)
        self.table.setObjectName("resultsTable")
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.setSelectionBehavior(QAbstractItemView.SelectionBehavior.SelectRows)
        self.table.verticalHeader().setVisible(False)
        header = self.table.horizontalHeader()
        header.setSectionResizeMode(QHeaderView.ResizeMode.ResizeToContents)
        header.setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)
        self.table.verticalHeader().setDefaultSectionSize(22)
        self.table.setWordWrap(False)
        self.table.cellDoubleClicked.connect(lambda row, _col: self.rowActivated.emit(row))
        self.table.itemSelectionChanged.connect(self._on_row_selected)
        self.row_boxes: list[int] = []  # table row -> index into detections.boxes
        self.table.setVisible(False)
        layout = QVBoxLayout(self)
        layout.addWidget(self.summary)
        layout.addWidget(self.caption_view)
        layout.addWidget(self.table, 1)
        self.tokens: list[str] = []
        self.placement_text = ""

    def clear(self) -> None:
        self.summary.setText(self.tr("No results yet."))
        self.caption_view.clear()
        self.caption_view.setVisible(False)
        self.table.setRowCount(0)
        self.table.setVisible(False)
        self.tokens = []
        self.row_boxes = []

    # -- captions --------------------------------------------------------------------------
    def show_caption(self, caption: Any, *, streaming: bool = False) -> None:
        tokens = list(getattr(caption, "tokens", []) or [])
        text = getattr(caption, "text", str(caption))
        self.tokens = tokens
        if tokens:
            parts = [f'<a href="tok:{i}" style="text-decoration:none">{html.escape(t)}</a>'
                     for i, t in enumerate(tokens)]
            body = "".join(parts)
        else:
            body = html.escape(text)
        if streaming:
            body += " <span style='color:gray'>…</span>"
        self.caption_view.setHtml(f"<p style='font-size:13pt'>{body}</p>")
        self.caption_view.setVisible(True)
        self.summary.setText(self.tr("Caption") + (self.tr(" (click a word for its attention map)")
                                                   if tokens and not streaming else ""))

    def _on_anchor(self, url: QUrl) -> None:
        text = url.toString()
        if text.startswith("tok:"):
            self.tokenClicked.emit(int(text[4:]))

    # -- boxes and masks -------------------------------------------------------------------------
    def show_detections(self, detections: Any, legend: list[LegendEntry]) -> None:
        colors = {e.label: e.color for e in legend}
        order = sorted(range(len(detections.boxes)), key=lambda i: -detections.boxes[i].score)
        boxes = [detections.boxes[i] for i in order]
        self._table([self.tr("Label"), self.tr("Score"), self.tr("Box (x0, y0, x1, y1)")],
                    [(b.label, f"{b.score:.3f}",
                      f"{b.x0:.0f}, {b.y0:.0f}, {b.x1:.0f}, {b.y1:.0f}",
                      colors.get(b.label)) for b in boxes])
        self.row_boxes = order
        objects, labels = len(detections.boxes), len({b.label for b in detections.boxes})
        self.summary.setText(
            (self.tr("1 object") if objects == 1 else self.tr("{} objects").format(objects))
            + ", " + (self.tr("1 label") if labels == 1 else self.tr("{} labels").format(labels)))

    def _on_row_selected(self) -> None:
        rows = {index.row() for index in self.table.selectedIndexes()}
        row = min(rows) if rows else None
        self.boxSelected.emit(self.row_boxes[row] if row is not None
                              and row < len(self.row_boxes) else None)

    def select_box(self, index: int | None) -> None:
        """Select the row of box `index` (a box picked on the image), without echo."""
        self.table.blockSignals(True)
        if index in self.row_boxes:
            self.table.selectRow(self.row_boxes.index(index))
        else:
            self.table.clearSelection()
        self.table.blockSignals(False)

    def show_segmentation(self, segmentation: Any, legend: list[LegendEntry]) -> None:
        self.row_boxes = []
        self._table([self.tr("Label"), self.tr("Area"), self.tr("Id")],
                    [(e.label, f"{e.fraction * 100:.1f} %", str(e.label_id), e.color)
                     for e in legend])
        self.summary.setText(self.tr("{} segmentation: {} regions").format(
            segmentation.kind, len(legend)))

    def show_restored(self, restored: Any) -> None:
        self.row_boxes = []
        h, w = restored.image.shape[:2]
        sw, sh = restored.source_size
        tile = restored.tile_size or self.tr("whole image")
        self._table([self.tr("Property"), self.tr("Value"), ""],
                    [(self.tr("Input"), f"{sw} × {sh}", "", None),
                     (self.tr("Output"), f"{w} × {h}", "", None),
                     (self.tr("Scale"), f"×{restored.scale}", "", None),
                     (self.tr("Tile"), str(tile), "", None)])
        self.summary.setText(self.tr("Restored ×{} — drag the slider under the image to "
                                     "compare").format(restored.scale))

    def show_video(self, video: Any, audio_note: str = "") -> None:
        """A processed video (engine.jobs.video_result.VideoResult): its files and facts;
        each frame's results are drawn over it as it plays."""
        self.caption_view.setVisible(False)
        exported = video.video.name if video.video is not None else self.tr("none")
        rows = [(self.tr("Frames"), str(video.frames), "", None),
                (self.tr("Frame rate"), f"{video.fps:.3g} fps", "", None),
                (self.tr("Size"), f"{video.width} × {video.height}", "", None),
                (self.tr("Exported"), exported, "", None),
                (self.tr("Per-frame results"),
                 video.frames_jsonl.name if video.frames_jsonl is not None else self.tr("none"),
                 "", None)]
        if audio_note:
            rows.append((self.tr("Audio"), audio_note, "", None))
        self._table([self.tr("Video"), self.tr("Value"), ""], rows)
        self.summary.setText(self.tr("Video: Space plays, ←/→ step a frame, J/K/L shuttle"))

    def show_attention(self, description: str) -> None:
        self.summary.setText(description)

    def show_result(self, result: Any, legend: list[LegendEntry]) -> None:
        kind = type(result).__name__
        if kind == "Caption":
            self.table.setVisible(False)
            self.show_caption(result)
        elif kind == "Detections":
            self.caption_view.setVisible(False)
            self.show_detections(result, legend)
        elif kind == "Segmentation":
            self.caption_view.setVisible(False)
            self.show_segmentation(result, legend)
        elif kind == "RestoredImage":
            self.caption_view.setVisible(False)
            self.show_restored(result)

    def _table(self, headers: list[str], rows: list[tuple]) -> None:
        self.table.setVisible(True)
        self.table.setUpdatesEnabled(False)  # one repaint for the whole table
        self.table.setRowCount(0)
        self.table.setHorizontalHeaderLabels(headers)
        self.table.setRowCount(len(rows))
        for r, (a, b, c, color) in enumerate(rows):
            first = QTableWidgetItem(a)
            if color is not None:
                first.setIcon(_swatch(color))
            self.table.setItem(r, 0, first)
            second = QTableWidgetItem(b)
            second.setTextAlignment(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
            self.table.setItem(r, 1, second)
            self.table.setItem(r, 2, QTableWidgetItem(c))
            # no fixed foreground: items follow the palette, so a theme switch keeps the
            # rows readable (a colour copied now stays dark on a later dark theme)
        self.table.setUpdatesEnabled(True)
