"""A task's settings form, built from its options dataclass (engine.options).

Every field of the task's options gets a control here, with the dataclass's default,
range, choices, label and help (as the tooltip), so the form, the CLI flags and the
job spec's validation can never disagree. "None" defaults (automatic, model default…)
are a spin box's special value, a combo box's first item, a partly-checked box or an
empty line. Fields the image sets (SAM prompts, the clicked point) are shown read-only.
Shared options (video, advanced) sit in folded sections under the task's own.
"""
from __future__ import annotations

import json
from typing import Any

from PySide6.QtCore import Qt, Signal
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QLabel,
    QLineEdit,
    QSlider,
    QSpinBox,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from engine.options import Option, options_class, options_of

SECTION_TITLES = {"output": "Output files", "video": "Video", "advanced": "Advanced"}
FOLDED = ("video", "advanced")  # sections that start folded
IMAGE_SET = ("points", "boxes", "point")  # kinds set by clicking on the image
LIST_KINDS = ("str_list", "formats", "time_range")


def _decimals(option: Option) -> int:
    step = option.step or 0.01
    text = f"{step:.6f}".rstrip("0")
    return max(2, len(text.split(".")[1]) if "." in text else 0)


def make_control(option: Option) -> QWidget:
    """The default control for an option kind, set to the option's default."""
    kind, nullable = option.kind, option.default is None
    if kind == "int":
        box = QSpinBox()
        low = int(option.low if option.low is not None else -2**31 + 1)
        box.setRange(low - 1 if nullable else low,  # a Qt spin box holds a 32-bit int
                     int(min(option.high if option.high is not None else 2**31 - 1, 2**31 - 1)))
        box.setSingleStep(int(option.step or 1))
        if nullable:
            box.setSpecialValueText(option.none_label or "default")
        widget: QWidget = box
    elif kind == "float":
        dbox = QDoubleSpinBox()
        step = option.step or 0.01
        dbox.setDecimals(_decimals(option))
        low = option.low if option.low is not None else -1e9
        dbox.setRange(low - step if nullable else low,
                      option.high if option.high is not None else 1e9)
        dbox.setSingleStep(step)
        if nullable:
            dbox.setSpecialValueText(option.none_label or "default")
        widget = dbox
    elif kind == "bool":
        check = QCheckBox()
        check.setTristate(nullable)
        if nullable:
            check.setText(option.none_label or "")
        widget = check
    elif kind == "choice":
        combo = QComboBox()
        if nullable:
            combo.addItem(option.none_label or "default", None)
        for choice in option.choices or ():
            combo.addItem(choice, choice)
        widget = combo
    elif kind in IMAGE_SET:
        widget = QLabel()
        widget.setProperty("optionValue", None)
    else:  # str and the comma-separated kinds
        line = QLineEdit()
        line.setPlaceholderText(option.none_label or "")
        widget = line
    widget.setToolTip(option.help)
    widget.setObjectName(f"option_{option.name}")
    set_control_value(widget, option, option.default)
    return widget


def control_value(widget: QWidget, option: Option) -> Any:
    """The control's value as the options dataclass takes it (None = the default)."""
    if isinstance(widget, (QSpinBox, QSlider)):
        value = widget.value()
        return None if option.default is None and value == widget.minimum() else value
    if isinstance(widget, QDoubleSpinBox):
        value = round(widget.value(), widget.decimals())
        return None if option.default is None and value <= widget.minimum() else value
    if isinstance(widget, QCheckBox):
        state = widget.checkState()
        if widget.isTristate() and state == Qt.CheckState.PartiallyChecked:
            return None
        return state == Qt.CheckState.Checked
    if isinstance(widget, QComboBox):
        return widget.currentData()
    if isinstance(widget, QLineEdit):
        return widget.text().strip() or None
    return widget.property("optionValue")


def set_control_value(widget: QWidget, option: Option, value: Any) -> None:
    if isinstance(widget, (QSpinBox, QSlider)):
        widget.setValue(widget.minimum() if value is None else int(value))
    elif isinstance(widget, QDoubleSpinBox):
        widget.setValue(widget.minimum() if value is None else float(value))
    elif isinstance(widget, QCheckBox):
        widget.setCheckState(Qt.CheckState.PartiallyChecked if value is None
                             else Qt.CheckState.Checked if value else Qt.CheckState.Unchecked)
    elif isinstance(widget, QComboBox):
        index = widget.findData(value)
        if index >= 0:
            widget.setCurrentIndex(index)
    elif isinstance(widget, QLineEdit):
        if isinstance(value, (list, tuple)):
            value = ", ".join(str(v) for v in value)
        widget.setText("" if value is None else str(value))
    else:
        widget.setProperty("optionValue", value)
        if isinstance(widget, QLabel):
            count = len(value) if isinstance(value, (list, tuple)) and option.kind != "point" \
                else (1 if value else 0)
            widget.setText(option.none_label or "none" if not count
                           else ", ".join(str(v) for v in value) if option.kind == "point"
                           else f"{count} set on the image")


def _changed_signal(widget: QWidget):
    for name in ("valueChanged", "stateChanged", "currentIndexChanged", "textChanged"):
        if isinstance(widget, QLabel):
            return None
        signal = getattr(widget, name, None)
        if signal is not None:
            return signal
    return None


class OptionsForm(QWidget):
    """Every option of `task`, as controls; `options()` gives what the job spec takes."""

    changed = Signal()

    def __init__(self, task: str, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.task = task
        self.specs: dict[str, Option] = {o.name: o for o in options_of(options_class(task))}
        self.controls: dict[str, QWidget] = {}
        self.labels: dict[str, QLabel] = {}
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        self.sections: dict[str, QFormLayout] = {"task": QFormLayout()}
        layout.addLayout(self.sections["task"])
        self.extra = QVBoxLayout()  # task-specific widgets (SAM prompt tools, hints)
        layout.addLayout(self.extra)
        for group in ("output", "video", "advanced"):
            if any(o.group == group for o in self.specs.values()):
                self._section(layout, group)
        for option in self.specs.values():
            control = self.make_control(option) or make_control(option)
            self.controls[option.name] = control
            setattr(self, option.name, control)  # form.threshold, form.tile_size, …
            label = QLabel(self.tr(option.label))
            label.setToolTip(option.help)
            self.labels[option.name] = label
            self.sections[option.group].addRow(label, control)
            signal = _changed_signal(control)
            if signal is not None:
                signal.connect(self._emit_changed)

    def _section(self, layout: QVBoxLayout, group: str) -> None:
        toggle = QToolButton()
        toggle.setText(self.tr(SECTION_TITLES[group]))
        toggle.setObjectName(f"section_{group}")
        toggle.setCheckable(True)
        toggle.setChecked(group not in FOLDED)
        toggle.setArrowType(Qt.ArrowType.DownArrow if toggle.isChecked()
                            else Qt.ArrowType.RightArrow)
        toggle.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextBesideIcon)
        body = QWidget()
        form = QFormLayout(body)
        form.setContentsMargins(12, 0, 0, 0)
        body.setVisible(toggle.isChecked())

        def fold(open_: bool) -> None:
            body.setVisible(open_)
            toggle.setArrowType(Qt.ArrowType.DownArrow if open_ else Qt.ArrowType.RightArrow)

        toggle.toggled.connect(fold)
        layout.addWidget(toggle)
        layout.addWidget(body)
        self.sections[group] = form

    def make_control(self, option: Option) -> QWidget | None:
        """A subclass's own control for an option (None: the kind's default control)."""
        return None

    def _emit_changed(self, *_: Any) -> None:
        self.changed.emit()

    # -- values -----------------------------------------------------------------------------
    def value(self, name: str) -> Any:
        return control_value(self.controls[name], self.specs[name])

    def set_value(self, name: str, value: Any) -> None:
        set_control_value(self.controls[name], self.specs[name], value)

    def options(self) -> dict[str, Any]:
        """The chosen values (None = the task's default is left out)."""
        values = {name: self.value(name) for name in self.specs}
        return {name: value for name, value in values.items() if value is not None}

    def set_row_visible(self, name: str, visible: bool) -> None:
        self.controls[name].setVisible(visible)
        self.labels[name].setVisible(visible)

    # -- last-used values (QSettings) -------------------------------------------------------------
    def save_state(self, qs: Any, prefix: str) -> None:
        for name, option in self.specs.items():
            if option.kind not in IMAGE_SET:  # prompts belong to one image, not the next
                qs.setValue(f"{prefix}/{self.task}/{name}", json.dumps(self.value(name)))

    def restore_state(self, qs: Any, prefix: str) -> None:
        for name, option in self.specs.items():
            stored = qs.value(f"{prefix}/{self.task}/{name}")
            if stored is None or option.kind in IMAGE_SET:
                continue
            try:
                self.set_value(name, json.loads(stored))
            except (TypeError, ValueError):
                pass  # a stale or hand-edited value: keep the default
