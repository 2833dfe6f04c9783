"""Render the app icon (resources/icons/ocula.svg) into the formats installers need.

    .venv/bin/python packaging/make_icons.py

Writes next to the SVG: ocula.png (256 px: Linux .desktop entries, the tarball),
ocula.ico (16-256 px: Windows executable and installer) and ocula.icns (16-1024 px:
the macOS .app). The SVG is the one source; Qt's SVG renderer draws it (offscreen, no
display needed) and Pillow writes the multi-size containers.
"""

from __future__ import annotations

import io
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ICONS = ROOT / "resources" / "icons"
SVG = ICONS / "ocula.svg"
ICO_SIZES = [(16, 16), (24, 24), (32, 32), (48, 48), (64, 64), (128, 128), (256, 256)]


def render_png(svg: Path, size: int) -> bytes:
    os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")
    from PySide6.QtCore import QBuffer, QByteArray, QIODevice, Qt
    from PySide6.QtGui import QGuiApplication, QImage, QPainter
    from PySide6.QtSvg import QSvgRenderer

    _app = QGuiApplication.instance() or QGuiApplication([])
    renderer = QSvgRenderer(str(svg))
    if not renderer.isValid():
        raise SystemExit(f"{svg}: Qt cannot read this SVG.")
    image = QImage(size, size, QImage.Format.Format_ARGB32)
    image.fill(Qt.GlobalColor.transparent)
    painter = QPainter(image)
    painter.setRenderHint(QPainter.RenderHint.Antialiasing)
    renderer.render(painter)
    painter.end()
    data = QByteArray()
    buffer = QBuffer(data)
    buffer.open(QIODevice.OpenModeFlag.WriteOnly)
    image.save(buffer, "PNG")
    return bytes(data.data())


def main() -> int:
    from PIL import Image

    big = Image.open(io.BytesIO(render_png(SVG, 1024))).convert("RGBA")
    png256 = Image.open(io.BytesIO(render_png(SVG, 256))).convert("RGBA")
    png256.save(ICONS / "ocula.png", optimize=True)
    png256.save(ICONS / "ocula.ico", sizes=ICO_SIZES)
    big.save(ICONS / "ocula.icns")
    for name in ("ocula.png", "ocula.ico", "ocula.icns"):
        print(f"{ICONS / name}: {(ICONS / name).stat().st_size / 1e3:.1f} kB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
