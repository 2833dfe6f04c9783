"""Errors shown as sentences, with the technical details folded away.

Engine errors (OculaError) already read as sentences that name the file or model
and the next step; anything else gets a plain sentence from `describe`. The
traceback is only ever behind the "Details" expander.
"""
from __future__ import annotations

from PySide6.QtCore import Qt
from PySide6.QtWidgets import (
    QDialog,
    QDialogButtonBox,
    QLabel,
    QPlainTextEdit,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from engine.errors import OculaError


def describe(exc: BaseException) -> str:
    """A user-facing sentence for an exception."""
    if isinstance(exc, OculaError):
        return str(exc)
    if isinstance(exc, MemoryError):
        return ("The computer ran out of memory. Close other programs, choose a smaller "
                "model or tile size, or switch precision to fp16 in the task settings.")
    if isinstance(exc, FileNotFoundError):
        return f"A file was not found: {exc.filename or exc}. Check that it still exists."
    if isinstance(exc, PermissionError):
        return (f"Ocula is not allowed to read or write {exc.filename or 'a file'}. "
                f"Choose another folder or check its permissions.")
    if isinstance(exc, ImportError):
        name = getattr(exc, "name", None) or str(exc)
        return (f"A part of Ocula is missing ({name}). Reinstall Ocula, or update it "
                f"if this feature is new.")
    text = str(exc).strip().rstrip(".")
    what = type(exc).__name__
    if text:
        return f"Something went wrong ({what}): {text}."
    return f"Something went wrong ({what})."


class ErrorDialog(QDialog):
    """A sentence, and a 'Details' button that reveals the traceback."""

    def __init__(self, message: str, details: str = "", *, title: str = "",
                 parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setWindowTitle(title or self.tr("Ocula"))
        self.setObjectName("errorDialog")
        layout = QVBoxLayout(self)
        self.message_label = QLabel(message)
        self.message_label.setWordWrap(True)
        self.message_label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.message_label.setMinimumWidth(420)
        layout.addWidget(self.message_label)

        self.details_button = QToolButton()
        self.details_button.setText(self.tr("Details"))
        self.details_button.setCheckable(True)
        self.details_button.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextBesideIcon)
        self.details_button.setArrowType(Qt.ArrowType.RightArrow)
        self.details_button.setVisible(bool(details))
        layout.addWidget(self.details_button)

        self.details_view = QPlainTextEdit(details)
        self.details_view.setReadOnly(True)
        self.details_view.setVisible(False)
        self.details_view.setMinimumHeight(160)
        layout.addWidget(self.details_view)
        self.details_button.toggled.connect(self._toggle_details)

        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Close)
        buttons.rejected.connect(self.reject)
        buttons.accepted.connect(self.accept)
        layout.addWidget(buttons)

    def _toggle_details(self, shown: bool) -> None:
        self.details_view.setVisible(shown)
        self.details_button.setArrowType(Qt.ArrowType.DownArrow if shown
                                         else Qt.ArrowType.RightArrow)
        self.adjustSize()

    @classmethod
    def for_exception(cls, exc: BaseException, details: str = "", *, title: str = "",
                      parent: QWidget | None = None) -> "ErrorDialog":
        return cls(describe(exc), details, title=title, parent=parent)


def show_error(parent: QWidget | None, exc: BaseException, details: str = "",
               title: str = "") -> ErrorDialog:
    """Open a non-blocking error dialog (never exec(): tests and batches keep running)."""
    dialog = ErrorDialog.for_exception(exc, details, title=title, parent=parent)
    dialog.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
    dialog.setModal(False)
    dialog.show()
    return dialog
