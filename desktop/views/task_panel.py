"""The right-hand settings for the chosen task.

`options()` returns the same option names the CLI passes to `engine.jobs.JobSpec`
(threshold, nms_iou, classes, prompt, points, boxes, tile_size…), so both front
ends drive the engine identically. Last-used values persist in QSettings.
"""
from __future__ import annotations

from typing import Any

from PySide6.QtCore import QSettings, Qt, Signal
from PySide6.QtWidgets import (
    QButtonGroup,
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QSlider,
    QSpinBox,
    QStackedWidget,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

TASK_LABELS = {"caption": "Caption", "detect": "Detect", "segment": "Segment",
               "restore": "Restore", "explain": "Explain"}
EXPLAIN_METHODS = {  # engine.explain.METHODS -> label
    "raw": "Raw attention (layer, head)",
    "rollout": "Attention rollout",
    "relevance": "Relevance (gradients)",
    "cls_similarity": "CLS feature similarity",
    "patch_similarity": "Patch similarity (click the image)",
    "dino": "DINO heads (CLS attention)",
    "cross_attention": "Caption words (click a word)",
    "detr": "Detected objects (DETR decoder)",
    "gradcam": "Grad-CAM (no attention)",
    "windowed": "Window attention (Swin)",
}
DEVICES = ("auto", "cpu", "cuda", "mps")
PRECISIONS = ("auto", "fp32", "fp16", "bf16")


def _double(lo: float, hi: float, step: float, value: float, decimals: int = 2) -> QDoubleSpinBox:
    box = QDoubleSpinBox()
    box.setRange(lo, hi)
    box.setSingleStep(step)
    box.setDecimals(decimals)
    box.setValue(value)
    return box


def _int(lo: int, hi: int, value: int, special: str = "") -> QSpinBox:
    box = QSpinBox()
    box.setRange(lo, hi)
    box.setValue(value)
    if special:
        box.setSpecialValueText(special)
    return box


class CaptionForm(QWidget):
    def __init__(self) -> None:
        super().__init__()
        form = QFormLayout(self)
        self.prompt = QLineEdit()
        self.prompt.setObjectName("captionPrompt")
        self.prompt.setPlaceholderText(self.tr("optional: text the caption starts with"))
        self.max_new_tokens = _int(1, 512, 40)
        self.num_beams = _int(1, 8, 1)
        form.addRow(self.tr("Prompt"), self.prompt)
        form.addRow(self.tr("Max words (tokens)"), self.max_new_tokens)
        form.addRow(self.tr("Beams"), self.num_beams)

    def options(self) -> dict[str, Any]:
        opts: dict[str, Any] = {"max_new_tokens": self.max_new_tokens.value(),
                                "num_beams": self.num_beams.value()}
        if self.prompt.text().strip():
            opts["prompt"] = self.prompt.text().strip()
        return opts


class DetectForm(QWidget):
    def __init__(self) -> None:
        super().__init__()
        form = QFormLayout(self)
        self.threshold = _double(0.0, 1.0, 0.05, 0.5)
        self.threshold.setObjectName("detectThreshold")
        self.nms_iou = _double(0.0, 1.0, 0.05, 0.0)
        self.nms_iou.setSpecialValueText(self.tr("model default"))
        self.max_detections = _int(1, 1000, 100)
        self.classes = QLineEdit()
        self.classes.setObjectName("openVocabClasses")
        self.classes.setPlaceholderText(self.tr("e.g. cat, remote control, red car"))
        self.classes_label = QLabel(self.tr("Find these"))
        form.addRow(self.tr("Score threshold"), self.threshold)
        form.addRow(self.tr("Overlap (NMS IoU)"), self.nms_iou)
        form.addRow(self.tr("Max boxes"), self.max_detections)
        form.addRow(self.classes_label, self.classes)
        self.set_open_vocabulary(False)

    def set_open_vocabulary(self, enabled: bool) -> None:
        self.classes.setVisible(enabled)
        self.classes_label.setVisible(enabled)

    def options(self) -> dict[str, Any]:
        opts: dict[str, Any] = {"threshold": self.threshold.value(),
                                "max_detections": self.max_detections.value()}
        if self.nms_iou.value() > 0:
            opts["nms_iou"] = self.nms_iou.value()
        names = [c.strip() for c in self.classes.text().split(",") if c.strip()]
        if self.classes.isVisibleTo(self) and names:
            opts["classes"] = names
        return opts


class SegmentForm(QWidget):
    promptModeChanged = Signal(str)  # pan | point | box
    clearPrompts = Signal()

    def __init__(self) -> None:
        super().__init__()
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        form = QFormLayout()
        self.threshold = _double(0.0, 1.0, 0.05, 0.5)
        form.addRow(self.tr("Score threshold"), self.threshold)
        layout.addLayout(form)
        self.prompt_box = QGroupBox(self.tr("Prompts (SAM)"))
        self.prompt_box.setObjectName("samPrompts")
        row = QHBoxLayout(self.prompt_box)
        self.mode_group = QButtonGroup(self)
        self.mode_buttons: dict[str, QToolButton] = {}
        for mode, text, tip in (("pan", self.tr("Pan"), self.tr("Drag to move the image")),
                                ("point", self.tr("Points"),
                                 self.tr("Click: include; right-click or Shift-click: exclude")),
                                ("box", self.tr("Box"), self.tr("Drag a box around the object"))):
            button = QToolButton()
            button.setText(text)
            button.setToolTip(tip)
            button.setCheckable(True)
            button.setObjectName(f"promptMode_{mode}")
            self.mode_group.addButton(button)
            self.mode_buttons[mode] = button
            button.clicked.connect(lambda _=False, m=mode: self.promptModeChanged.emit(m))
            row.addWidget(button)
        self.mode_buttons["pan"].setChecked(True)
        clear = QToolButton()
        clear.setText(self.tr("Clear"))
        clear.clicked.connect(self.clearPrompts.emit)
        row.addWidget(clear)
        self.prompt_count = QLabel()
        row.addWidget(self.prompt_count, 1)
        layout.addWidget(self.prompt_box)
        self.set_promptable(False)

    def set_promptable(self, enabled: bool) -> None:
        self.prompt_box.setVisible(enabled)
        if not enabled:
            self.mode_buttons["pan"].setChecked(True)
            self.promptModeChanged.emit("pan")

    def show_prompt_count(self, points: int, boxes: int) -> None:
        self.prompt_count.setText(self.tr("{} points, {} boxes").format(points, boxes))

    def options(self) -> dict[str, Any]:
        return {"threshold": self.threshold.value()}


class RestoreForm(QWidget):
    def __init__(self) -> None:
        super().__init__()
        form = QFormLayout(self)
        self.tile_size = _int(0, 4096, 0, self.tr("automatic"))
        self.tile_size.setSingleStep(64)
        self.tile_size.setObjectName("tileSize")
        self.tile_overlap = _int(0, 256, 16)
        self.output_format = QComboBox()
        self.output_format.addItems(["png", "tiff", "webp", "jpg"])
        form.addRow(self.tr("Tile size (px)"), self.tile_size)
        form.addRow(self.tr("Tile overlap (px)"), self.tile_overlap)
        form.addRow(self.tr("Save as"), self.output_format)

    def options(self) -> dict[str, Any]:
        opts: dict[str, Any] = {"tile_overlap": self.tile_overlap.value(),
                                "output_format": self.output_format.currentText()}
        if self.tile_size.value() > 0:
            opts["tile_size"] = self.tile_size.value()
        return opts


class ExplainForm(QWidget):
    """Method, layer and head for attention maps; changes re-draw the map at once."""

    changed = Signal()

    def __init__(self) -> None:
        super().__init__()
        form = QFormLayout(self)
        self.method = QComboBox()
        self.method.setObjectName("explainMethod")
        for key, label in EXPLAIN_METHODS.items():
            self.method.addItem(self.tr(label), key)
        self.layer = QSlider(Qt.Orientation.Horizontal)
        self.layer.setObjectName("explainLayer")
        self.layer.setRange(-1, 11)
        self.layer.setValue(-1)
        self.layer_label = QLabel()
        self.head = QSlider(Qt.Orientation.Horizontal)
        self.head.setObjectName("explainHead")
        self.head.setRange(-1, 11)
        self.head.setValue(-1)
        self.head_label = QLabel()
        self.head_fusion = QComboBox()
        self.head_fusion.addItems(["mean", "max", "min"])
        self.discard_ratio = _double(0.0, 0.99, 0.05, 0.0)
        layer_row, head_row = QHBoxLayout(), QHBoxLayout()
        layer_row.addWidget(self.layer, 1)
        layer_row.addWidget(self.layer_label)
        head_row.addWidget(self.head, 1)
        head_row.addWidget(self.head_label)
        form.addRow(self.tr("Method"), self.method)
        form.addRow(self.tr("Layer"), layer_row)
        form.addRow(self.tr("Head"), head_row)
        form.addRow(self.tr("Heads combined by"), self.head_fusion)
        form.addRow(self.tr("Rollout discard ratio"), self.discard_ratio)
        self.hint = QLabel()
        self.hint.setWordWrap(True)
        self.hint.setObjectName("explainHint")
        form.addRow(self.hint)
        for signal in (self.method.currentIndexChanged, self.layer.valueChanged,
                       self.head.valueChanged, self.head_fusion.currentIndexChanged,
                       self.discard_ratio.valueChanged):
            signal.connect(self._changed)
        self._update_labels()

    def set_shape(self, layers: int, heads: int) -> None:
        """The model's layer and head counts (sliders go to -1 = last layer / all heads)."""
        self.layer.setRange(-1, max(0, layers - 1))
        self.head.setRange(-1, max(0, heads - 1))
        self._update_labels()

    def set_supported(self, methods: list[str]) -> None:
        """Grey out methods the model cannot offer (e.g. no attention -> Grad-CAM only)."""
        model = self.method.model()
        first_ok = None
        for row in range(self.method.count()):
            ok = self.method.itemData(row) in methods
            model.item(row).setEnabled(ok)
            if ok and first_ok is None:
                first_ok = row
        if first_ok is not None and self.method.currentData() not in methods:
            self.method.setCurrentIndex(first_ok)

    def _update_labels(self) -> None:
        layer, head = self.layer.value(), self.head.value()
        self.layer_label.setText(self.tr("last") if layer < 0 else str(layer))
        self.head_label.setText(self.tr("all") if head < 0 else str(head))
        method = self.method.currentData()
        self.layer.setEnabled(method in ("raw", "cls_similarity", "patch_similarity",
                                         "cross_attention", "windowed"))
        self.head.setEnabled(method in ("raw", "dino", "cross_attention", "windowed"))
        self.discard_ratio.setEnabled(method == "rollout")
        self.head_fusion.setEnabled(method in ("rollout", "raw") and head < 0)

    def _changed(self) -> None:
        self._update_labels()
        self.changed.emit()

    def options(self) -> dict[str, Any]:
        layer, head = self.layer.value(), self.head.value()
        return {"method": self.method.currentData(), "layer": None if layer < 0 else layer,
                "head": None if head < 0 else head, "head_fusion": self.head_fusion.currentText(),
                "discard_ratio": self.discard_ratio.value()}


class TaskPanel(QWidget):
    """Per-task forms + device, precision and output folder."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("taskPanel")
        self.forms: dict[str, QWidget] = {
            "caption": CaptionForm(), "detect": DetectForm(), "segment": SegmentForm(),
            "restore": RestoreForm(), "explain": ExplainForm()}
        self.stack = QStackedWidget()
        for form in self.forms.values():
            self.stack.addWidget(form)
        self.title = QLabel()
        self.title.setObjectName("panelTitle")

        common = QFormLayout()
        self.device = QComboBox()
        self.device.setObjectName("deviceCombo")
        self.device.addItems(DEVICES)
        self.precision = QComboBox()
        self.precision.setObjectName("precisionCombo")
        self.precision.addItems(PRECISIONS)
        self.output_dir = QLineEdit()
        self.output_dir.setObjectName("outputDir")
        self.output_dir.setPlaceholderText(self.tr("next to the inputs, in ocula-out/"))
        browse = QPushButton(self.tr("…"))
        browse.setMaximumWidth(32)
        browse.clicked.connect(self._browse_output)
        out_row = QHBoxLayout()
        out_row.addWidget(self.output_dir, 1)
        out_row.addWidget(browse)
        self.save_outputs = QCheckBox(self.tr("Save results to files"))
        self.save_outputs.setChecked(True)
        common.addRow(self.tr("Device"), self.device)
        common.addRow(self.tr("Precision"), self.precision)
        common.addRow(self.tr("Output folder"), out_row)
        common.addRow(self.save_outputs)

        layout = QVBoxLayout(self)
        layout.addWidget(self.title)
        layout.addWidget(self.stack)
        layout.addLayout(common)
        layout.addStretch(1)
        self.task = "detect"
        self.set_task("detect")

    def set_task(self, task: str) -> None:
        self.task = task
        self.stack.setCurrentWidget(self.forms[task])
        self.title.setText(self.tr("{} settings").format(self.tr(TASK_LABELS[task])))
        is_job = task != "explain"
        self.output_dir.setEnabled(is_job)
        self.save_outputs.setEnabled(is_job)

    def configure_for_model(self, card: Any | None) -> None:
        """Show what only some models take: class names (open-vocab), SAM prompts."""
        variant = getattr(card, "variant", None)
        self.forms["detect"].set_open_vocabulary(variant == "open-vocab")
        self.forms["segment"].set_promptable(variant == "promptable")

    def options(self) -> dict[str, Any]:
        return self.forms[self.task].options()

    @property
    def explain_form(self) -> ExplainForm:
        return self.forms["explain"]

    @property
    def segment_form(self) -> SegmentForm:
        return self.forms["segment"]

    def _browse_output(self) -> None:
        folder = QFileDialog.getExistingDirectory(self, self.tr("Where to save results"))
        if folder:
            self.output_dir.setText(folder)

    # -- last-used values ------------------------------------------------------------------
    def _fields(self) -> dict[str, QWidget]:
        f = self.forms
        return {
            "caption/prompt": f["caption"].prompt,
            "caption/max_new_tokens": f["caption"].max_new_tokens,
            "caption/num_beams": f["caption"].num_beams,
            "detect/threshold": f["detect"].threshold,
            "detect/nms_iou": f["detect"].nms_iou,
            "detect/max_detections": f["detect"].max_detections,
            "detect/classes": f["detect"].classes,
            "segment/threshold": f["segment"].threshold,
            "restore/tile_size": f["restore"].tile_size,
            "restore/tile_overlap": f["restore"].tile_overlap,
            "restore/output_format": f["restore"].output_format,
            "explain/method": f["explain"].method,
            "common/device": self.device,
            "common/precision": self.precision,
            "common/output_dir": self.output_dir,
            "common/save_outputs": self.save_outputs,
        }

    def save_state(self, qs: QSettings) -> None:
        for key, widget in self._fields().items():
            qs.setValue(f"task_panel/{key}", _value_of(widget))

    def restore_state(self, qs: QSettings) -> None:
        for key, widget in self._fields().items():
            value = qs.value(f"task_panel/{key}")
            if value is not None:
                _set_value(widget, value)


def _value_of(widget: QWidget) -> Any:
    if isinstance(widget, (QSpinBox, QDoubleSpinBox)):
        return widget.value()
    if isinstance(widget, QComboBox):
        data = widget.currentData()
        return data if data is not None else widget.currentText()
    if isinstance(widget, QCheckBox):
        return widget.isChecked()
    if isinstance(widget, QLineEdit):
        return widget.text()
    raise TypeError(type(widget))


def _set_value(widget: QWidget, value: Any) -> None:
    try:
        if isinstance(widget, QSpinBox):
            widget.setValue(int(value))
        elif isinstance(widget, QDoubleSpinBox):
            widget.setValue(float(value))
        elif isinstance(widget, QComboBox):
            index = widget.findData(value)
            if index < 0:
                index = widget.findText(str(value))
            if index >= 0:
                widget.setCurrentIndex(index)
        elif isinstance(widget, QCheckBox):
            widget.setChecked(value in (True, "true", "1", 1))
        elif isinstance(widget, QLineEdit):
            widget.setText(str(value))
    except (TypeError, ValueError):
        pass  # a stale or hand-edited value: keep the default
