"""numpy <-> Qt image conversions, colour maps and label colours for overlays.

numpy is imported inside the functions: nothing here runs before the first image
is shown, and the window opens faster without it.
"""
from __future__ import annotations

import colorsys
from typing import TYPE_CHECKING

from PySide6.QtGui import QColor, QImage, QPixmap

if TYPE_CHECKING:
    import numpy as np


def array_to_qimage(array: np.ndarray) -> QImage:
    """(H, W), (H, W, 3) or (H, W, 4) uint8/uint16 -> an owning QImage."""
    import numpy as np

    arr = np.asarray(array)
    if arr.dtype == np.uint16:
        arr = (arr >> 8).astype(np.uint8)
    elif arr.dtype != np.uint8:
        arr = np.clip(arr, 0, 255).astype(np.uint8)
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    arr = np.ascontiguousarray(arr)
    height, width, channels = arr.shape
    fmt = {3: QImage.Format.Format_RGB888, 4: QImage.Format.Format_RGBA8888}[channels]
    image = QImage(arr.data, width, height, arr.strides[0], fmt)
    return image.copy()  # own the pixels: the numpy buffer may be freed


def array_to_pixmap(array: np.ndarray) -> QPixmap:
    return QPixmap.fromImage(array_to_qimage(array))


def qimage_to_array(image: QImage) -> np.ndarray:
    """QImage -> (H, W, 4) uint8 RGBA copy (tests and exports read pixels with it)."""
    import numpy as np

    rgba = image.convertToFormat(QImage.Format.Format_RGBA8888)
    ptr = rgba.constBits()
    arr = np.frombuffer(ptr, np.uint8, count=rgba.sizeInBytes())
    return arr.reshape(rgba.height(), rgba.bytesPerLine())[:, : rgba.width() * 4] \
        .reshape(rgba.height(), rgba.width(), 4).copy()


def turbo(values: np.ndarray) -> np.ndarray:
    """Google's Turbo colour map (polynomial fit) of values in [0, 1] -> uint8 RGB."""
    import numpy as np

    x = np.clip(np.asarray(values, dtype=np.float32), 0.0, 1.0)
    r = 0.13572138 + x * (4.61539260 + x * (-42.66032258 + x * (132.13108234 + x * (
        -152.94239396 + x * 59.28637943))))
    g = 0.09140261 + x * (2.19418839 + x * (4.84296658 + x * (-14.18503333 + x * (
        4.27729857 + x * 2.82956604))))
    b = 0.10667330 + x * (12.64194608 + x * (-60.58204836 + x * (110.36276771 + x * (
        -89.90310912 + x * 27.34824973))))
    rgb = np.stack([r, g, b], axis=-1)
    return (np.clip(rgb, 0.0, 1.0) * 255 + 0.5).astype(np.uint8)


def normalise(values: np.ndarray) -> np.ndarray:
    """Scale a map to [0, 1] (a constant map becomes zeros, not NaNs)."""
    import numpy as np

    arr = np.asarray(values, dtype=np.float32)
    finite = np.isfinite(arr)
    if not finite.any():
        return np.zeros_like(arr)
    lo, hi = float(arr[finite].min()), float(arr[finite].max())
    if hi - lo < 1e-12:
        return np.zeros_like(arr)
    return np.where(finite, (arr - lo) / (hi - lo), 0.0).astype(np.float32)


def heatmap_rgba(values: np.ndarray, alpha: float = 0.6) -> np.ndarray:
    """A map -> (H, W, 4) RGBA with the colour map, low values more transparent."""
    import numpy as np

    norm = normalise(values)
    rgba = np.empty(norm.shape + (4,), np.uint8)
    rgba[..., :3] = turbo(norm)
    rgba[..., 3] = (255 * alpha * (0.35 + 0.65 * norm)).astype(np.uint8)
    return rgba


def label_color(index: int) -> QColor:
    """Distinct, stable colour for a label id (golden-ratio hue steps)."""
    hue = (index * 0.618033988749895 + 0.11) % 1.0
    r, g, b = colorsys.hsv_to_rgb(hue, 0.72, 0.95)
    return QColor(int(r * 255), int(g * 255), int(b * 255))


def label_palette(count: int) -> np.ndarray:
    """(count, 3) uint8 colours matching `label_color`."""
    import numpy as np

    out = np.zeros((max(count, 0), 3), np.uint8)
    for i in range(count):
        c = label_color(i)
        out[i] = (c.red(), c.green(), c.blue())
    return out
