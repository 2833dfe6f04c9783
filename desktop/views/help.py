"""Help menu dialogs: the keyboard shortcuts and About (versions, licence, folders).

Versions come from the installed packages' metadata (importlib.metadata), so About
never imports torch or onnxruntime just to say which version is there.
"""
from __future__ import annotations

import platform
from collections.abc import Iterable
from importlib import metadata
from pathlib import Path
from typing import Any

from PySide6.QtCore import Qt
from PySide6.QtGui import QAction, QKeySequence
from PySide6.QtWidgets import (
    QAbstractItemView,
    QDialog,
    QDialogButtonBox,
    QHeaderView,
    QLabel,
    QTableWidget,
    QTableWidgetItem,
    QVBoxLayout,
    QWidget,
)

LICENCE = "Apache-2.0"


def package_version(name: str) -> str:
    """The installed version of a distribution, or "not installed" (no import)."""
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "not installed"


def shortcut_rows(actions: Iterable[QAction]) -> list[tuple[str, str]]:
    """(what it does, its keys) for each action that has a shortcut, sorted by name."""
    rows: dict[str, str] = {}
    for action in actions:
        keys = [k.toString(QKeySequence.SequenceFormat.NativeText) for k in action.shortcuts()]
        keys = [k for k in keys if k]
        if not keys:
            continue
        text = action.text().replace("&", "").rstrip("…").strip() or action.objectName()
        rows.setdefault(text, ", ".join(keys))
    return sorted(rows.items(), key=lambda r: r[0].lower())


class ShortcutsDialog(QDialog):
    def __init__(self, actions: Iterable[QAction], parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("shortcutsDialog")
        self.setWindowTitle(self.tr("Keyboard shortcuts"))
        from desktop.views.video_player import transport_help

        rows = shortcut_rows(actions) + transport_help()  # the video player's keys last
        self.table = QTableWidget(len(rows), 2)
        self.table.setObjectName("shortcutsTable")
        self.table.setHorizontalHeaderLabels([self.tr("Action"), self.tr("Keys")])
        self.table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
        self.table.verticalHeader().setVisible(False)
        self.table.horizontalHeader().setSectionResizeMode(0, QHeaderView.ResizeMode.Stretch)
        self.table.horizontalHeader().setSectionResizeMode(
            1, QHeaderView.ResizeMode.ResizeToContents)
        for r, (text, keys) in enumerate(rows):
            self.table.setItem(r, 0, QTableWidgetItem(text))
            self.table.setItem(r, 1, QTableWidgetItem(keys))
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Close)
        buttons.rejected.connect(self.reject)
        layout = QVBoxLayout(self)
        layout.addWidget(self.table)
        layout.addWidget(buttons)
        self.resize(460, 480)


def about_facts(settings: Any = None, settings_path: Path | None = None,
                job_store_path: Path | None = None) -> list[tuple[str, str]]:
    from PySide6 import __version__ as pyside_version
    from PySide6.QtCore import qVersion

    import engine
    from engine.paths import settings_file

    try:
        from engine.hub import cache_dir

        cache = str(cache_dir(settings))
    except Exception as exc:  # noqa: BLE001 — About must open whatever is broken
        cache = f"unknown ({exc})"
    if job_store_path is None:
        from engine.jobs.store import default_store_path

        job_store_path = default_store_path()
    return [
        ("Ocula", engine.__version__),
        ("Python", platform.python_version()),
        ("Qt", f"{qVersion()} (PySide6 {pyside_version})"),
        ("torch", package_version("torch")),
        ("onnxruntime", package_version("onnxruntime")),
        ("Licence", LICENCE),
        ("Shipped models", shipped_models()),
        ("Settings", str(settings_path or settings_file())),
        ("Model cache", cache),
        ("Jobs", str(job_store_path)),
    ]


def shipped_models() -> str:
    """The real-weight models this build carries and their licences (THIRD_PARTY_LICENSES)."""
    try:
        from desktop.views.bundled_models import first_run_models
        found = first_run_models()
    except Exception:  # noqa: BLE001 — About must open whatever is broken
        found = {}
    if "detect" in found:
        return ("MTCNN faces: facenet-pytorch weights, MIT (T. Esler; ported from D. Sandberg's "
                "facenet, MIT); tiny self-test models, Apache-2.0. See THIRD_PARTY_LICENSES.")
    return "tiny self-test models only (Apache-2.0); hub models state their own licence"


class AboutDialog(QDialog):
    def __init__(self, facts: list[tuple[str, str]], parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("aboutDialog")
        self.setWindowTitle(self.tr("About Ocula"))
        self.facts = dict(facts)
        lines = "".join(f"<tr><td><b>{_esc(k)}</b>&nbsp;&nbsp;</td><td>{_esc(v)}</td></tr>"
                        for k, v in facts)
        self.label = QLabel(
            "<h3>Ocula {}</h3><p>{}</p><table>{}</table>".format(
                _esc(self.facts.get("Ocula", "")),
                _esc(self.tr("On-device captioning, detection, segmentation, restoration "
                             "and attention maps.")), lines))
        self.label.setObjectName("aboutText")
        self.label.setTextFormat(Qt.TextFormat.RichText)
        self.label.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.label.setWordWrap(True)
        buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Close)
        buttons.rejected.connect(self.reject)
        layout = QVBoxLayout(self)
        layout.addWidget(self.label)
        layout.addWidget(buttons)


def _esc(text: str) -> str:
    import html

    return html.escape(str(text))
