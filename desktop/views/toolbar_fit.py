"""Toolbars that fit narrow windows (1024 px, 2× scale) instead of overflowing.

Qt's answer to a toolbar wider than its window is an overflow chevron that hides the last
actions, which for Ocula are Cancel, Models, Settings and the overlay switches. Instead,
`ToolbarFit.refit(width)` tries, in order, until the bar fits:

1. everything as designed (text beside icon);
2. icon-only buttons for actions that have an icon (the tooltip keeps the text);
3. the `collapsible` actions (e.g. the viewer's overlay switches) moved into one menu
   button, whose menu holds the very same QActions (checked state, shortcuts and enabled
   state stay in one place).

The owner calls `refit` from its resizeEvent (and once shown). The actions keep working
through their shortcuts in every state.
"""
from __future__ import annotations

from collections.abc import Sequence

from PySide6.QtCore import Qt
from PySide6.QtGui import QAction
from PySide6.QtWidgets import QMenu, QToolBar, QToolButton, QWidget

MARGIN = 0  # px of slack left at the end of a bar that fits


class ToolbarFit:
    def __init__(self, bar: QToolBar, *, collapsible: Sequence[QAction] = (),
                 menu_text: str = "", menu_tooltip: str = "",
                 shrinkable: Sequence[QWidget] = (), compact_width: int = 160) -> None:
        self.bar = bar
        self.collapsible = list(collapsible)
        self.shrinkable = list(shrinkable)  # widgets capped at compact_width px when tight
        self.compact_width = compact_width
        self.wide_style = bar.toolButtonStyle()
        self.level = 0
        self.menu_action: QAction | None = None
        if self.collapsible:
            self.menu = QMenu(bar)
            for action in self.collapsible:
                self.menu.addAction(action)
            self.button = QToolButton(bar)
            self.button.setObjectName(f"{bar.objectName()}_more")
            self.button.setText(menu_text)
            self.button.setToolTip(menu_tooltip)
            self.button.setMenu(self.menu)
            self.button.setPopupMode(QToolButton.ToolButtonPopupMode.InstantPopup)
            self.button.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextOnly)
            anchor = self._after(self.collapsible[-1])
            self.menu_action = (bar.insertWidget(anchor, self.button) if anchor is not None
                                else bar.addWidget(self.button))
            self.menu_action.setText(menu_text)
            self.menu_action.setVisible(False)
            self._anchor = self.menu_action

    def _after(self, action: QAction) -> QAction | None:
        actions = self.bar.actions()
        index = actions.index(action)
        return actions[index + 1] if index + 1 < len(actions) else None

    def _set_level(self, level: int) -> None:
        if level == self.level:
            return
        self.bar.setToolButtonStyle(self.wide_style if level == 0
                                    else Qt.ToolButtonStyle.ToolButtonIconOnly)
        for widget in self.shrinkable:
            widget.setMaximumWidth(16777215 if level == 0 else self.compact_width)
        if self.menu_action is not None:
            collapsed = level >= 2
            if collapsed and self.level < 2:
                for action in self.collapsible:
                    self.bar.removeAction(action)
                self.menu.clear()
                for action in self.collapsible:
                    self.menu.addAction(action)
            elif not collapsed and self.level >= 2:
                for action in self.collapsible:
                    self.bar.insertAction(self.menu_action, action)
            self.menu_action.setVisible(collapsed)
        self.level = level

    def needed(self) -> int:
        return self.bar.sizeHint().width()

    def refit(self, width: int) -> int:
        """Choose the widest state that fits `width`; returns the level used (0, 1, 2)."""
        top = 2 if self.menu_action is not None else 1
        for level in range(top + 1):
            self._set_level(level)
            if self.needed() + MARGIN <= width:
                return level
        return self.level
