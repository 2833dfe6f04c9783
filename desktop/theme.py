"""Themes (system, light, dark) and icons from resources/.

"system" keeps the platform style and palette. Light and dark use Fusion with a
matching palette plus a short style sheet from resources/themes/.
"""
from __future__ import annotations

from pathlib import Path

from PySide6.QtGui import QColor, QIcon, QPalette
from PySide6.QtWidgets import QApplication, QStyleFactory

RESOURCES = Path(__file__).resolve().parent.parent / "resources"
THEMES = ("system", "light", "dark")
_system_style: str | None = None


def icon(name: str) -> QIcon:
    path = RESOURCES / "icons" / f"{name}.svg"
    return QIcon(str(path)) if path.exists() else QIcon()


def _sheet(name: str) -> str:
    path = RESOURCES / "themes" / f"{name}.qss"
    try:
        return path.read_text(encoding="utf-8")
    except OSError:
        return ""


def _dark_palette() -> QPalette:
    p = QPalette()
    base, window, text = QColor(36, 38, 43), QColor(31, 33, 38), QColor(232, 234, 237)
    p.setColor(QPalette.ColorRole.Window, window)
    p.setColor(QPalette.ColorRole.WindowText, text)
    p.setColor(QPalette.ColorRole.Base, base)
    p.setColor(QPalette.ColorRole.AlternateBase, QColor(42, 45, 51))
    p.setColor(QPalette.ColorRole.ToolTipBase, QColor(50, 53, 60))
    p.setColor(QPalette.ColorRole.ToolTipText, text)
    p.setColor(QPalette.ColorRole.Text, text)
    p.setColor(QPalette.ColorRole.Button, QColor(45, 48, 54))
    p.setColor(QPalette.ColorRole.ButtonText, text)
    p.setColor(QPalette.ColorRole.BrightText, QColor(255, 90, 90))
    p.setColor(QPalette.ColorRole.Highlight, QColor(61, 139, 242))
    p.setColor(QPalette.ColorRole.HighlightedText, QColor(255, 255, 255))
    p.setColor(QPalette.ColorRole.Link, QColor(110, 168, 254))
    p.setColor(QPalette.ColorRole.PlaceholderText, QColor(140, 145, 152))
    p.setColor(QPalette.ColorRole.Mid, QColor(120, 125, 132))
    for role in (QPalette.ColorRole.Text, QPalette.ColorRole.ButtonText,
                 QPalette.ColorRole.WindowText):
        p.setColor(QPalette.ColorGroup.Disabled, role, QColor(120, 124, 130))
    return p


def _light_palette() -> QPalette:
    p = QPalette()
    p.setColor(QPalette.ColorRole.Window, QColor(244, 245, 247))
    p.setColor(QPalette.ColorRole.WindowText, QColor(28, 30, 33))
    p.setColor(QPalette.ColorRole.Base, QColor(255, 255, 255))
    p.setColor(QPalette.ColorRole.AlternateBase, QColor(246, 247, 249))
    p.setColor(QPalette.ColorRole.Text, QColor(28, 30, 33))
    p.setColor(QPalette.ColorRole.Button, QColor(250, 250, 251))
    p.setColor(QPalette.ColorRole.ButtonText, QColor(28, 30, 33))
    p.setColor(QPalette.ColorRole.Highlight, QColor(47, 125, 225))
    p.setColor(QPalette.ColorRole.HighlightedText, QColor(255, 255, 255))
    p.setColor(QPalette.ColorRole.Link, QColor(30, 100, 200))
    p.setColor(QPalette.ColorRole.Mid, QColor(150, 155, 162))
    for role in (QPalette.ColorRole.Text, QPalette.ColorRole.ButtonText,
                 QPalette.ColorRole.WindowText):
        p.setColor(QPalette.ColorGroup.Disabled, role, QColor(160, 164, 170))
    return p


def apply_theme(app: QApplication, name: str) -> str:
    """Apply a theme by name; unknown names fall back to 'system'. Returns the one used."""
    global _system_style
    if _system_style is None:
        _system_style = app.style().name()
    if name not in THEMES:
        name = "system"
    if name == "system":
        app.setStyle(QStyleFactory.create(_system_style) or app.style())
        app.setPalette(app.style().standardPalette())
        app.setStyleSheet(_sheet("common"))
    else:
        app.setStyle(QStyleFactory.create("Fusion"))
        app.setPalette(_dark_palette() if name == "dark" else _light_palette())
        app.setStyleSheet(_sheet("common") + "\n" + _sheet(name))
    return name
