"""Explain ▸ Compare side by side: a second attention view of the same image.

Left is the main viewer (the method and model chosen in the toolbar and the Explain form);
right is another method and/or another model, picked in the two boxes above it. Both views
keep the same zoom and pan; moving the mouse over one draws a crosshair at the same image
pixel on the other and shows both maps' values there ("rollout 0.71 · attention L11 0.43").
The right map is computed off the UI thread by its own ExplainController, after each left
map (so a slider, a new image or a patch click updates both) and whenever its own choices
change; the Explain form's other settings (layer, head, fusion…) apply to both.
"""
from __future__ import annotations

from typing import Any

from PySide6.QtCore import QEvent, QObject, QPointF, QRectF, Qt, QTimer, Signal
from PySide6.QtGui import QColor, QPainter, QPen
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QGraphicsItem,
    QHBoxLayout,
    QLabel,
    QSplitter,
    QStyleOptionGraphicsItem,
    QVBoxLayout,
    QWidget,
)

from desktop.views.attention import ExplainController, supported_methods
from desktop.views.overlays import HeatmapOverlay
from desktop.views.task_panel import EXPLAIN_METHOD_LABELS
from desktop.views.viewer import ImageCanvas
from engine.vocabulary import EXPLAIN_METHODS

Z_CROSSHAIR = 1000
SHORT_NAMES = {"raw": "attention", "cls_similarity": "CLS similarity", "patch_similarity": "similarity",
               "cross_attention": "word", "class_attention": "class attention"}


def map_label(maps: Any, *, model: str = "") -> str:
    """How the values line names a map: its method, its layer if it has one, and the model
    when the two sides show different models."""
    text = SHORT_NAMES.get(maps.method, maps.method.replace("_", " "))
    layer = maps.params.get("layer")
    if layer is not None:
        text += f" L{layer % maps.layers if maps.layers else layer}"
    return f"{model} {text}" if model else text


def value_at(heatmap: Any, x: float, y: float) -> float | None:
    """The map's value (normalised, as drawn) at image pixel (x, y), or None outside it."""
    if heatmap is None:
        return None
    col, row = int(x), int(y)
    if 0 <= row < heatmap.shape[0] and 0 <= col < heatmap.shape[1]:
        return float(heatmap[row, col])
    return None


class Crosshair(QGraphicsItem):
    """Two thin lines across the image through one pixel: where the cursor is on the other view."""

    def __init__(self) -> None:
        super().__init__()
        self.setZValue(Z_CROSSHAIR)
        self.setAcceptedMouseButtons(Qt.MouseButton.NoButton)
        self.size = (0, 0)
        self.point = QPointF()
        self.setVisible(False)

    def boundingRect(self) -> QRectF:
        return QRectF(0, 0, *self.size)

    def show_at(self, x: float, y: float, image_size: tuple[int, int]) -> None:
        if tuple(image_size) != self.size:
            self.prepareGeometryChange()
            self.size = tuple(image_size)
        self.point = QPointF(x, y)
        self.setVisible(True)
        self.update()

    def paint(self, painter: QPainter, option: QStyleOptionGraphicsItem,
              widget: QWidget | None = None) -> None:
        pen = QPen(QColor(255, 255, 255, 220), 1.0)
        pen.setCosmetic(True)
        painter.setPen(pen)
        width, height = self.size
        painter.drawLine(QPointF(0, self.point.y()), QPointF(width, self.point.y()))
        painter.drawLine(QPointF(self.point.x(), 0), QPointF(self.point.x(), height))


class ComparePanel(QWidget):
    """The right-hand view: its method and model boxes, the values line and its canvas."""

    choiceChanged = Signal()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("comparePanel")
        self.method = QComboBox()
        self.method.setObjectName("compareMethod")
        for key in EXPLAIN_METHODS:
            self.method.addItem(self.tr(EXPLAIN_METHOD_LABELS[key]), key)
        self.method.setCurrentIndex(self.method.findData("rollout"))
        self.model = QComboBox()
        self.model.setObjectName("compareModel")
        self.model.addItem(self.tr("Same model"), None)
        self.cards: dict[str, Any] = {}
        self.values = QLabel()
        self.values.setObjectName("compareValues")
        self.status = QLabel()
        self.status.setObjectName("compareStatus")
        self.status.setWordWrap(True)
        self.canvas = ImageCanvas(self)
        self.canvas.setObjectName("compareCanvas")
        self.canvas.fit_on_resize = False  # zoom and pan follow the main view
        self.heatmap: HeatmapOverlay | None = None
        self.crosshair = Crosshair()
        self.canvas.scene().addItem(self.crosshair)
        for combo in (self.method, self.model):  # narrow: the two views share the width
            combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
            combo.setMinimumContentsLength(10)
        row = QHBoxLayout()
        row.setContentsMargins(6, 2, 6, 2)
        row.addWidget(QLabel(self.tr("Compare with")))
        row.addWidget(self.method, 1)
        row.addWidget(self.model, 1)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(2)
        layout.addLayout(row)
        layout.addWidget(self.values)
        layout.addWidget(self.canvas, 1)
        layout.addWidget(self.status)
        self.method.currentIndexChanged.connect(lambda _: self.choiceChanged.emit())
        self.model.currentIndexChanged.connect(lambda _: self.choiceChanged.emit())

    def model_card(self) -> Any | None:
        """The right side's own model, or None for the main view's."""
        return self.cards.get(self.model.currentData())

    def set_models(self, cards: dict[str, Any]) -> None:
        """The models the Explain task offers; keeps the choice when it is still there."""
        keep = self.model.currentData()
        self.model.blockSignals(True)
        self.model.clear()
        self.model.addItem(self.tr("Same model"), None)
        self.cards = dict(cards)
        for card_id, card in self.cards.items():
            self.model.addItem(card.name, card_id)
        self.model.setCurrentIndex(max(0, self.model.findData(keep)))
        self.model.blockSignals(False)

    def set_supported(self, methods: list[str]) -> None:
        """Grey out what the right model cannot show; move off a method it cannot."""
        items = self.method.model()
        for row in range(self.method.count()):
            items.item(row).setEnabled(self.method.itemData(row) in methods)
        if methods and self.method.currentData() not in methods:
            self.method.setCurrentIndex(self.method.findData(methods[0]))

    def set_image(self, pixmap: Any) -> None:
        self.set_heatmap(None)
        self.crosshair.setVisible(False)
        self.canvas.set_pixmap(pixmap)
        self.canvas.fit_on_resize = False

    def set_heatmap(self, values: Any) -> None:
        if self.heatmap is not None and self.heatmap.scene() is not None:
            self.heatmap.scene().removeItem(self.heatmap)
        self.heatmap = None
        if values is not None and not self.canvas.image_item.pixmap().isNull():
            self.heatmap = HeatmapOverlay(values, self.canvas.image_size)
            self.heatmap.setOpacity(0.6)
            self.canvas.scene().addItem(self.heatmap)


class ExplainCompare(QObject):
    """The wiring between the main window's explain view and the compare panel."""

    def __init__(self, window: Any) -> None:
        super().__init__(window)
        self.window = window
        self.viewer = window.viewer
        self.panel = ComparePanel()
        self.panel.setVisible(False)
        self.controller = ExplainController(window.pools, self)
        self.left_maps: Any = None
        self.left_heat: Any = None
        self.right_maps: Any = None
        self.right_heat: Any = None
        self.patch: tuple[float, float] | None = None  # the last clicked pixel, for similarity
        self.last_request: tuple | None = None
        self._syncing = False
        self.left_crosshair = Crosshair()
        self.viewer.canvas.scene().addItem(self.left_crosshair)

        form = window.task_panel.explain_form
        self.toggle = QCheckBox(self.tr("Compare side by side"))
        self.toggle.setObjectName("explainCompare")
        self.toggle.setToolTip(self.tr("Show a second method or model next to this one, with the "
                                       "same zoom and a linked cursor"))
        form.extra.addWidget(self.toggle)
        self.splitter = self._place_beside_viewer(window.workspace)

        self.toggle.toggled.connect(self._on_toggled)
        self.panel.choiceChanged.connect(self._on_choice)
        window.explain.heatmapChanged.connect(self._on_left_heat)
        window.explain.mapsReady.connect(self._on_left_maps)
        self.controller.heatmapChanged.connect(self._on_right_heat)
        self.controller.mapsReady.connect(self._on_right_maps)
        self.controller.failed.connect(self._on_right_failed)
        window.workspace.imageShown.connect(self._on_image)
        window.model_picker.modelChanged.connect(lambda _card: self._refresh_models())
        window.task_combo.currentIndexChanged.connect(lambda _: self._update_visible())
        self.viewer.patchClicked.connect(self._on_patch)
        self.panel.canvas.imageClicked.connect(self._on_right_click)
        for source, target in ((self.viewer.canvas, self.panel.canvas), (self.panel.canvas, self.viewer.canvas)):
            sync = (lambda *_, s=source, t=target: self.sync_view(s, t))
            source.zoomChanged.connect(sync)
            source.horizontalScrollBar().valueChanged.connect(sync)
            source.verticalScrollBar().valueChanged.connect(sync)
            source.viewport().installEventFilter(self)

    def _place_beside_viewer(self, workspace: Any) -> QSplitter:
        """Put the viewer and the panel side by side where the viewer was."""
        parent = workspace.splitter
        index = parent.indexOf(self.viewer)
        pair = QSplitter(Qt.Orientation.Horizontal)
        pair.setObjectName("compareSplitter")
        parent.replaceWidget(index, pair)
        pair.addWidget(self.viewer)
        pair.addWidget(self.panel)
        pair.setChildrenCollapsible(False)
        return pair

    @property
    def active(self) -> bool:
        return self.toggle.isChecked() and self.window.task == "explain"

    # -- showing ---------------------------------------------------------------------------------
    def _on_toggled(self, on: bool) -> None:
        self._update_visible()
        if on:
            self._refresh_models()
            self.panel.set_image(self.viewer.canvas.image_item.pixmap())
            self.sync_view(self.viewer.canvas, self.panel.canvas)
            self.last_request = None  # the panel was cleared: draw its map again
            self.request(immediate=True)
        else:
            self.hide_cursor()

    def _update_visible(self) -> None:
        shown = self.active
        self.panel.setVisible(shown)
        if shown:  # two equal halves, once the panel is laid out
            QTimer.singleShot(0, self._halve)
        else:
            self.hide_cursor()

    def _halve(self) -> None:
        width = self.splitter.width() - self.splitter.handleWidth()
        self.splitter.setSizes([width // 2, width - width // 2])

    def _refresh_models(self) -> None:
        self.panel.set_models(self.window.model_picker.cards)
        self._update_supported()

    def _update_supported(self) -> None:
        card = self.panel.model_card() or self.window.card
        if card is None:
            return
        try:
            methods, _reason = supported_methods(card)
        except Exception:  # noqa: BLE001 — an unreadable card offers nothing
            methods = []
        self.panel.method.blockSignals(True)
        self.panel.set_supported(methods)
        self.panel.method.blockSignals(False)

    def _on_image(self, _path: Any) -> None:
        self.patch = None
        self.left_maps = self.left_heat = self.right_maps = self.right_heat = None
        self.last_request = None
        if self.toggle.isChecked():
            self.panel.set_image(self.viewer.canvas.image_item.pixmap())
            self.sync_view(self.viewer.canvas, self.panel.canvas)

    # -- the right map ---------------------------------------------------------------------------
    def request(self, immediate: bool = False) -> None:
        """Ask for the right map with the current choices (the newest request wins)."""
        window = self.window
        card = self.panel.model_card() or window.card
        path = window.workspace.shown_path
        if not self.active or card is None or path is None:
            return
        method = self.panel.method.currentData()
        options = dict(window.task_panel.explain_form.options(), method=method)
        options.pop("patch", None)
        if method == "patch_similarity":
            if self.patch is None:
                self.panel.status.setText(self.tr("Click the image to choose a patch."))
                return
            options["patch"] = self.patch
        device = window.task_panel.device.currentText()
        key = (card.id, str(path), device, repr(sorted(options.items())))
        if key == self.last_request:
            return
        self.last_request = key
        self.panel.status.setText(self.tr("Computing…"))
        self.controller.request(card, path, options, device=device, precision="fp32",
                                settings=window.settings, immediate=immediate)

    def _on_choice(self) -> None:
        self._update_supported()
        self.request(immediate=True)

    def _on_left_heat(self, values: Any) -> None:
        self.left_heat = values

    def _on_left_maps(self, maps: Any) -> None:
        self.left_maps = maps
        self.request(immediate=True)

    def _on_right_heat(self, values: Any) -> None:
        self.right_heat = values
        if self.active:
            self.panel.set_heatmap(values)

    def _on_right_maps(self, maps: Any) -> None:
        self.right_maps = maps
        self.panel.status.setText("\n".join(maps.notes[-2:]))
        self.panel.status.setToolTip("\n".join(maps.notes))

    def _on_right_failed(self, message: str) -> None:
        self.last_request = None  # the same choices may be asked again
        self.panel.status.setText(message)

    def _on_patch(self, x: float, y: float) -> None:
        self.patch = (x, y)
        if self.active and self.panel.method.currentData() == "patch_similarity":
            self.request(immediate=True)

    def _on_right_click(self, pos: QPointF, button: Any) -> None:
        if button == Qt.MouseButton.LeftButton:
            self.viewer.patchClicked.emit(pos.x(), pos.y())  # as if clicked on the main view

    # -- linked zoom, pan and cursor ---------------------------------------------------------------
    def sync_view(self, source: ImageCanvas, target: ImageCanvas) -> None:
        """Give `target` the zoom and the centre of `source`."""
        if self._syncing or not self.active:
            return
        self._syncing = True
        try:
            target.setTransform(source.transform())
            target.centerOn(source.mapToScene(source.viewport().rect().center()))
            target.zoomChanged.emit(target.zoom)
        finally:
            self._syncing = False

    def eventFilter(self, watched: QObject, event: QEvent) -> bool:
        if self.active and event.type() == QEvent.Type.MouseMove:
            left = watched is self.viewer.canvas.viewport()
            canvas = self.viewer.canvas if left else self.panel.canvas
            pos = canvas.mapToScene(event.position().toPoint())
            self.show_cursor(pos.x(), pos.y(), from_left=left)
        elif event.type() == QEvent.Type.Leave:
            self.hide_cursor()
        return False

    def show_cursor(self, x: float, y: float, *, from_left: bool = True) -> str:
        """A crosshair at image pixel (x, y) on the other view, and both values; returns the line."""
        other = self.panel.crosshair if from_left else self.left_crosshair
        (self.left_crosshair if from_left else self.panel.crosshair).setVisible(False)
        other.show_at(x, y, self.viewer.canvas.image_size)
        self.panel.values.setText(self.values_line(x, y))
        return self.panel.values.text()

    def hide_cursor(self) -> None:
        self.left_crosshair.setVisible(False)
        self.panel.crosshair.setVisible(False)

    def values_line(self, x: float, y: float) -> str:
        """"rollout 0.71 · attention L11 0.43": each side's map and its value at (x, y)."""
        left_card, right_card = self.window.card, self.panel.model_card()
        differ = right_card is not None and left_card is not None and right_card.id != left_card.id
        parts = []
        for maps, heat, card in ((self.left_maps, self.left_heat, left_card),
                                 (self.right_maps, self.right_heat, right_card or left_card)):
            if maps is None:
                parts.append("…")
                continue
            value = value_at(heat, x, y)
            name = map_label(maps, model=card.name if differ and card is not None else "")
            parts.append(f"{name} {'–' if value is None else f'{value:.2f}'}")
        return " · ".join(parts)
