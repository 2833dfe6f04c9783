"""The right-hand settings for the chosen task.

Each task's form is built from its options dataclass (engine.options, through
desktop/views/options_form.py), the same contract the CLI's flags and the job spec
come from, so both front ends drive the engine identically, with the same defaults.
Last-used values persist in QSettings.
"""
from __future__ import annotations

from typing import Any

from PySide6.QtCore import QSettings, Qt, Signal
from PySide6.QtWidgets import (
    QButtonGroup,
    QCheckBox,
    QComboBox,
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

from desktop.views.options_form import OptionsForm
from engine.vocabulary import DEVICE_CHOICES, EXPLAIN_METHODS, PRECISION_CHOICES, TASK_LABELS

EXPLAIN_METHOD_LABELS = {  # engine.vocabulary.EXPLAIN_METHODS -> what the picker shows
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
    "discover": "Object discovery (TokenCut / LOST)",
    "class_attention": "Class attention (gradient-weighted CLS)",
}


class CaptionForm(OptionsForm):
    def __init__(self) -> None:
        super().__init__("caption")
        self.prompt.setObjectName("captionPrompt")
        self.prompt.setPlaceholderText(self.tr("optional: text the caption starts with"))


class DetectForm(OptionsForm):
    def __init__(self) -> None:
        super().__init__("detect")
        self.threshold.setObjectName("detectThreshold")
        self.classes.setObjectName("openVocabClasses")
        self.classes.setPlaceholderText(self.tr("e.g. cat, remote control, red car"))
        self.set_open_vocabulary(False)

    def set_open_vocabulary(self, enabled: bool) -> None:
        """Open-vocabulary models find what is typed; closed ones filter their classes."""
        self.labels["classes"].setText(self.tr("Find these") if enabled
                                       else self.tr("Only these classes"))


class SegmentForm(OptionsForm):
    promptModeChanged = Signal(str)  # pan | point | box
    clearPrompts = Signal()

    def __init__(self) -> None:
        super().__init__("segment")
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
        self.extra.addWidget(self.prompt_box)
        self.set_promptable(False)

    def set_promptable(self, enabled: bool) -> None:
        self.prompt_box.setVisible(enabled)
        for name in ("points", "boxes"):
            self.set_row_visible(name, enabled)
        if not enabled:
            self.mode_buttons["pan"].setChecked(True)
            self.promptModeChanged.emit("pan")

    def show_prompt_count(self, points: int, boxes: int) -> None:
        self.prompt_count.setText(self.tr("{} points, {} boxes").format(points, boxes))


class RestoreForm(OptionsForm):
    def __init__(self) -> None:
        super().__init__("restore")
        self.tile_size.setObjectName("tileSize")


class ExplainForm(OptionsForm):
    """Method, layer and head for attention maps; changes re-draw the map at once.

    The method picker lists the methods themselves (not the words `cross` and
    `similarity`, which the CLI resolves per model); layer and head are sliders whose
    -1 end means None (last layer / heads fused)."""

    def make_control(self, option):
        if option.name == "method":
            combo = QComboBox()
            combo.setObjectName("explainMethod")
            for key in EXPLAIN_METHODS:
                combo.addItem(self.tr(EXPLAIN_METHOD_LABELS[key]), key)
            combo.setCurrentIndex(combo.findData(option.default))
            combo.setToolTip(option.help)
            return combo
        if option.name in ("layer", "head"):
            slider = QSlider(Qt.Orientation.Horizontal)  # its minimum, -1, stands for None
            slider.setObjectName("explainLayer" if option.name == "layer" else "explainHead")
            slider.setRange(-1, 11)
            slider.setValue(-1)
            slider.setToolTip(option.help)
            return slider
        return None

    exportMask = Signal()  # "Export mask…": the shown map's thresholded segment to files

    def __init__(self) -> None:
        super().__init__("explain")
        self.hint = QLabel()
        self.hint.setWordWrap(True)
        self.hint.setObjectName("explainHint")
        self.extra.addWidget(self.hint)
        self.export_mask = QPushButton(self.tr("Export mask…"))
        self.export_mask.setObjectName("explainExportMask")
        self.export_mask.setToolTip(self.tr("Save the segment of the shown map (click-to-similarity, "
                                            "DINO, discovery) as a PNG mask and COCO RLE"))
        self.export_mask.setEnabled(False)
        self.export_mask.clicked.connect(self.exportMask)
        self.extra.addWidget(self.export_mask)
        self.changed.connect(self._update_labels)
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
        self.labels["layer"].setText(self.tr("Layer: {}").format(
            self.tr("last") if layer < 0 else layer))
        self.labels["head"].setText(self.tr("Head: {}").format(
            self.tr("all") if head < 0 else head))
        method = self.method.currentData()
        self.layer.setEnabled(method in ("raw", "cls_similarity", "patch_similarity",
                                         "cross_attention", "windowed"))
        self.head.setEnabled(method in ("raw", "dino", "cross_attention", "windowed"))
        self.discard_ratio.setEnabled(method == "rollout")
        self.head_fusion.setEnabled(method in ("rollout", "raw") and head < 0)


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
        self.device.addItems(DEVICE_CHOICES)
        self.precision = QComboBox()
        self.precision.setObjectName("precisionCombo")
        self.precision.addItems(PRECISION_CHOICES)
        from engine.jobs.spec import EXECUTORS

        # where the job runs: this machine, or Ray (a local runtime; needs ocula[cluster])
        self.executor = QComboBox()
        self.executor.setObjectName("executorCombo")
        self.executor.addItems(EXECUTORS)
        # Ray's settings, as the CLI's --address / --workers / --gpus-per-worker
        self.ray_address = QLineEdit()
        self.ray_address.setObjectName("rayAddress")
        self.ray_address.setPlaceholderText(self.tr("empty: a Ray runtime on this machine; "
                                                    "or auto, ray://head:10001"))
        self.ray_workers = QSpinBox()
        self.ray_workers.setObjectName("rayWorkers")
        self.ray_workers.setRange(0, 4096)
        self.ray_workers.setSpecialValueText(self.tr("as the cluster's CPUs allow"))
        self.ray_gpus = QCheckBox(self.tr("one GPU per worker"))
        self.ray_gpus.setObjectName("rayGpus")
        self.ray_box = QWidget()
        ray_form = QFormLayout(self.ray_box)
        ray_form.setContentsMargins(0, 0, 0, 0)
        ray_form.addRow(self.tr("Ray address"), self.ray_address)
        ray_form.addRow(self.tr("Workers"), self.ray_workers)
        ray_form.addRow(self.ray_gpus)
        self.executor.currentTextChanged.connect(
            lambda name: self.ray_box.setVisible(name == "ray"))
        self.ray_box.setVisible(False)
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
        common.addRow(self.tr("Run on"), self.executor)
        common.addRow(self.ray_box)
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

    def executor_choice(self, name: str | None = None) -> Any:
        """The ExecutorChoice "Run on" (or `name`) and the Ray fields give; RecipeError
        (with the field's name) when they are not valid."""
        from engine.jobs.spec import ExecutorChoice

        name = name or self.executor.currentText()
        if name != "ray":
            return ExecutorChoice(name=name).validate()
        return ExecutorChoice(name="ray", address=self.ray_address.text().strip() or None,
                              workers=self.ray_workers.value() or None,
                              gpus_per_worker=1.0 if self.ray_gpus.isChecked() else 0.0
                              ).validate()

    # -- last-used values ------------------------------------------------------------------
    def _common(self) -> dict[str, QWidget]:
        return {"device": self.device, "precision": self.precision, "executor": self.executor,
                "ray_address": self.ray_address, "ray_workers": self.ray_workers,
                "ray_gpus": self.ray_gpus,
                "output_dir": self.output_dir, "save_outputs": self.save_outputs}

    def save_state(self, qs: QSettings) -> None:
        for form in self.forms.values():
            form.save_state(qs, "task_panel")
        for key, widget in self._common().items():
            qs.setValue(f"task_panel/common/{key}", _value_of(widget))

    def restore_state(self, qs: QSettings) -> None:
        for form in self.forms.values():
            form.restore_state(qs, "task_panel")
        for key, widget in self._common().items():
            value = qs.value(f"task_panel/common/{key}")
            if value is not None:
                _set_value(widget, value)


def _value_of(widget: QWidget) -> Any:
    if isinstance(widget, QComboBox):
        return widget.currentText()
    if isinstance(widget, QCheckBox):
        return widget.isChecked()
    if isinstance(widget, QSpinBox):
        return widget.value()
    return widget.text()


def _set_value(widget: QWidget, value: Any) -> None:
    if isinstance(widget, QComboBox):
        index = widget.findText(str(value))
        if index >= 0:
            widget.setCurrentIndex(index)
    elif isinstance(widget, QCheckBox):
        widget.setChecked(value in (True, "true", "1", 1))
    elif isinstance(widget, QSpinBox):
        try:
            widget.setValue(int(value))
        except (TypeError, ValueError):
            pass
    else:
        widget.setText(str(value))
