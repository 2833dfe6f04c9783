"""Table model for the catalog: one row per ModelCard, plus its download state."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from PySide6.QtCore import QAbstractTableModel, QModelIndex, QRect, Qt
from PySide6.QtGui import QColor
from PySide6.QtWidgets import (
    QApplication,
    QStyle,
    QStyledItemDelegate,
    QStyleOptionProgressBar,
    QStyleOptionViewItem,
)

from desktop.format import human_bytes, human_params

COLUMNS = ("Name", "Installed", "Task", "Download", "Parameters", "License (commercial)",
           "Runtime", "Attention")
NAME, STATE, TASK, DOWNLOAD, PARAMS, LICENSE, RUNTIME, ATTENTION = range(len(COLUMNS))
STATE_COLUMN = STATE


@dataclass
class CatalogRow:
    card: Any  # engine.catalog.card.ModelCard; None for a hub hit not yet looked up
    hit: Any = None  # a hub search hit (repo_id, downloads, pipeline_tag…)
    installed: bool = False
    disk_bytes: int = 0
    state: str = ""  # "" | downloading | cancelled | failed
    done: float = 0.0
    total: float | None = None
    message: str = ""

    @property
    def needs_full_build(self) -> bool:
        """A PyTorch model on the Lite install: shown greyed, with what to install."""
        if self.card is None:
            return False
        from engine.catalog.requirements import needs_full_build

        return needs_full_build(self.card)

    @property
    def fraction(self) -> float | None:
        if not self.total:
            return None
        return min(1.0, self.done / self.total)


def license_text(card: Any) -> str:
    """Licence and commercial-use flag: ✓ allowed, ✗ not allowed, ? check the terms."""
    mark = {True: "✓", False: "✗"}.get(card.commercial_use, "?")
    return f"{card.license} {mark}"


def license_tooltip(card: Any) -> str:
    if card.commercial_use is True:
        return f"{card.license}: commercial use allowed"
    if card.commercial_use is False:
        return f"{card.license}: non-commercial use only"
    return f"{card.license}: commercial use unclear — read the licence terms"


class CatalogModel(QAbstractTableModel):
    def __init__(self, parent=None) -> None:
        super().__init__(parent)
        self.rows: list[CatalogRow] = []

    def set_rows(self, rows: list[CatalogRow]) -> None:
        self.beginResetModel()
        self.rows = rows
        self.endResetModel()

    def row_of(self, card_id: str) -> int:
        for i, row in enumerate(self.rows):
            if row.card is not None and row.card.id == card_id:
                return i
        return -1

    def refresh_row(self, index: int) -> None:
        if 0 <= index < len(self.rows):
            self.dataChanged.emit(self.index(index, 0), self.index(index, len(COLUMNS) - 1))

    # -- Qt model API -----------------------------------------------------------------------
    def rowCount(self, parent: QModelIndex = QModelIndex()) -> int:  # noqa: N802
        return 0 if parent.isValid() else len(self.rows)

    def columnCount(self, parent: QModelIndex = QModelIndex()) -> int:  # noqa: N802
        return 0 if parent.isValid() else len(COLUMNS)

    def headerData(self, section: int, orientation, role=Qt.ItemDataRole.DisplayRole):  # noqa: N802
        if orientation == Qt.Orientation.Horizontal and role == Qt.ItemDataRole.DisplayRole:
            return QApplication.translate("CatalogModel", COLUMNS[section])
        return None

    def data(self, index: QModelIndex, role=Qt.ItemDataRole.DisplayRole) -> Any:
        if not index.isValid():
            return None
        row = self.rows[index.row()]
        card, col = row.card, index.column()
        if card is None:
            return self._hit_data(row, col, role)
        if role == Qt.ItemDataRole.DisplayRole:
            return self._display(row, col)
        if role == Qt.ItemDataRole.ToolTipRole:
            if row.needs_full_build and col in (NAME, STATE, RUNTIME):
                from engine.catalog.requirements import full_build_message

                return full_build_message(card)
            if col == NAME:
                return f"{card.id}\n{card.repo or card.local_path or ''}\n{card.seed}"
            if col == STATE and row.message:
                return row.message
            if col == LICENSE:
                return license_tooltip(card)
            return self._display(row, col)
        if role == Qt.ItemDataRole.ForegroundRole:
            if row.needs_full_build:
                return QColor(140, 140, 140)
            if col == LICENSE and card.commercial_use is False:
                return QColor(200, 80, 60)
            if col == STATE and row.state == "failed":
                return QColor(210, 60, 60)
        if role == Qt.ItemDataRole.UserRole:
            return row
        if role == Qt.ItemDataRole.TextAlignmentRole and col in (DOWNLOAD, PARAMS):
            return int(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        return None

    def _hit_data(self, row: CatalogRow, col: int, role) -> Any:
        """A hub search hit: only what the search returned; details load on selection."""
        hit = row.hit
        if role == Qt.ItemDataRole.UserRole:
            return row
        if role == Qt.ItemDataRole.ToolTipRole:
            return QApplication.translate(
                "CatalogModel", "From the hub search; select it to read its metadata.")
        if role != Qt.ItemDataRole.DisplayRole:
            return None
        if col == NAME:
            return getattr(hit, "repo_id", str(hit))
        if col == TASK:
            return getattr(hit, "pipeline_tag", "") or ""
        if col == LICENSE:
            return "gated" if getattr(hit, "gated", False) else "?"
        if col == RUNTIME:
            return getattr(hit, "library", None) or "?"
        if col == STATE:
            downloads = getattr(hit, "downloads", None)
            return f"hub · {downloads:,} downloads" if downloads is not None else "hub"
        return "?"

    def _display(self, row: CatalogRow, col: int) -> str:
        card = row.card
        if col == NAME:
            return card.name
        if col == TASK:
            return ", ".join(card.tasks)
        if col == DOWNLOAD:
            return human_bytes(card.download_bytes)
        if col == PARAMS:
            return human_params(card.params)
        if col == LICENSE:
            return license_text(card)
        if col == RUNTIME:
            return card.runtime
        if col == ATTENTION:
            return getattr(card.attention, "value", str(card.attention))
        if row.state == "downloading":
            frac = row.fraction
            return f"{frac * 100:.0f} %" if frac is not None else "…"
        if row.state == "cancelled":
            return "paused — resume"
        if row.state == "failed":
            return "failed"
        if row.needs_full_build:
            return "needs the full build"
        if row.installed:
            return f"yes · {human_bytes(row.disk_bytes)}"
        return ""


class ProgressDelegate(QStyledItemDelegate):
    """Draws a progress bar in the Installed column while a model downloads."""

    def paint(self, painter, option: QStyleOptionViewItem, index: QModelIndex) -> None:
        row: CatalogRow = index.data(Qt.ItemDataRole.UserRole)
        if index.column() != STATE_COLUMN or row is None or row.state != "downloading":
            super().paint(painter, option, index)
            return
        bar = QStyleOptionProgressBar()
        bar.rect = QRect(option.rect.adjusted(2, 3, -2, -3))
        bar.minimum, bar.maximum = 0, 1000
        frac = row.fraction
        bar.progress = int(1000 * frac) if frac is not None else 0
        bar.text = f"{frac * 100:.0f} %" if frac is not None else "…"
        bar.textVisible = True
        bar.state = QStyle.StateFlag.State_Enabled | QStyle.StateFlag.State_Horizontal
        style = option.widget.style() if option.widget else QApplication.style()
        style.drawControl(QStyle.ControlElement.CE_ProgressBar, bar, painter, option.widget)
