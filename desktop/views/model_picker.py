"""The toolbar's model picker: installed models first, then the rest, then "Get more…"."""
from __future__ import annotations

from typing import Any

from PySide6.QtCore import Signal
from PySide6.QtWidgets import QComboBox, QWidget

from desktop.format import human_bytes

GET_MORE = "__get_more__"


class ModelPicker(QComboBox):
    modelChanged = Signal(object)  # ModelCard or None
    modelPicked = Signal(object)  # ModelCard: chosen by the user (not an automatic default)
    getMoreRequested = Signal()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("modelPicker")
        self.setMinimumContentsLength(28)
        self.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        self.cards: dict[str, Any] = {}
        self._last_id: str | None = None
        self._picked_id: str | None = None  # the user's own choice, kept across refreshes
        self.activated.connect(self._on_activated)

    def populate(self, cards: list[Any], installed: set[str], *, prefer: str | None = None) -> None:
        """Fill with `cards` for the current task; keep `prefer` (or the user's last choice)
        selected, else the first installed model. An automatic default is not kept across
        refreshes, so a model installed meanwhile wins over a never-downloaded one."""
        keep = prefer or self._picked_id
        self.blockSignals(True)
        self.clear()
        self.cards = {c.id: c for c in cards}
        from engine.catalog.requirements import full_build_message, needs_full_build

        blocked = [c for c in cards if needs_full_build(c)]  # PyTorch models on the Lite build
        runnable = [c for c in cards if c not in blocked]
        have = [c for c in runnable if c.id in installed]
        rest = [c for c in runnable if c.id not in installed]
        for card in have:
            self.addItem(f"{card.name}", card.id)
            self.setItemData(self.count() - 1, self.tr("Installed · {}").format(card.id),
                             3)  # Qt.ToolTipRole
        if have and rest:
            self.insertSeparator(self.count())
        for card in rest:
            self.addItem(f"{card.name}  ↓ {human_bytes(card.download_bytes)}", card.id)
            self.setItemData(self.count() - 1, self.tr("Not downloaded yet: Run downloads it "
                                                       "first ({})").format(card.id), 3)
        if blocked and self.count():
            self.insertSeparator(self.count())
        for card in blocked:  # listed so the user knows they exist, never picked
            self.addItem(self.tr("{}  (needs the full build)").format(card.name), card.id)
            self.setItemData(self.count() - 1, full_build_message(card), 3)
            item = self.model().item(self.count() - 1)
            if item is not None:
                item.setEnabled(False)
        if self.count():
            self.insertSeparator(self.count())
        self.addItem(self.tr("Get more…"), GET_MORE)
        index = self.findData(keep) if keep else -1
        if index >= 0 and self.cards.get(keep) in blocked:
            index = -1
        if index < 0:
            index = 0 if (have or rest) else -1
        self.setCurrentIndex(index)
        self.blockSignals(False)
        new_id = self.currentData() if self.currentData() != GET_MORE else None
        if new_id != self._last_id:
            self._last_id = new_id
            self.modelChanged.emit(self.current_card())

    def current_card(self) -> Any | None:
        data = self.currentData()
        return self.cards.get(data) if data and data != GET_MORE else None

    def select(self, card: Any) -> None:
        if card.id not in self.cards:
            self.cards[card.id] = card
            self.insertItem(0, card.name, card.id)
        self.setCurrentIndex(self.findData(card.id))
        self._on_activated(self.currentIndex())

    def _on_activated(self, index: int) -> None:
        data = self.itemData(index)
        if data == GET_MORE:
            # go back to the previous model; the catalog decides the next one
            previous = self.findData(self._last_id) if self._last_id else -1
            self.setCurrentIndex(previous)
            self.getMoreRequested.emit()
            return
        self._picked_id = data
        if data != self._last_id:
            self._last_id = data
            self.modelChanged.emit(self.current_card())
        card = self.current_card()
        if card is not None:
            self.modelPicked.emit(card)
