"""Overlays for people: boxes with labels and scores, translucent masks with a legend.

Colours are fixed per label id (so "person" is the same colour in every image of a
batch) and label text is black or white, whichever reads better on its colour.
Drawn with Pillow; sizes scale with the image so labels stay legible on large photos.
"""

from __future__ import annotations

import colorsys
import os
import zlib
from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from engine.media import morphology
from engine.media.image import ensure_not_input, write_image
from engine.results import Detections, Segmentation

GOLDEN = 0.618033988749895


def label_colour(label_id: int) -> tuple[int, int, int]:
    """Distinct, saturated colour per id (golden-ratio hue steps; stable across runs)."""
    hue = (0.07 + max(label_id, 0) * GOLDEN) % 1.0
    light = 0.5 if label_id % 2 == 0 else 0.42
    r, g, b = colorsys.hls_to_rgb(hue, light, 0.85)
    return int(r * 255), int(g * 255), int(b * 255)


def text_colour(background: tuple[int, int, int]) -> tuple[int, int, int]:
    """Black on light colours, white on dark ones (WCAG relative luminance)."""

    def channel(c: int) -> float:
        v = c / 255
        return v / 12.92 if v <= 0.03928 else ((v + 0.055) / 1.055) ** 2.4

    r, g, b = (channel(c) for c in background)
    luminance = 0.2126 * r + 0.7152 * g + 0.0722 * b
    return (0, 0, 0) if luminance > 0.179 else (255, 255, 255)


@lru_cache(maxsize=16)
def label_font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """Pillow's scalable default font at `size` px (the bitmap font without FreeType)."""
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow without FreeType: the small bitmap font
        return ImageFont.load_default()


def _as_rgb(image: Image.Image | np.ndarray) -> Image.Image:
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    arr = np.asarray(image)
    if arr.dtype == np.uint16:
        arr = (arr.astype(np.uint32) * 255 // 65535).astype(np.uint8)
    return Image.fromarray(np.ascontiguousarray(arr[..., :3]), "RGB")


def _sizes(image: Image.Image) -> tuple[int, int]:
    side = min(image.size)
    return max(2, round(side / 300)), max(11, round(side / 45))  # line width, font size


def _label_tag(
    draw: ImageDraw.ImageDraw,
    xy: tuple[float, float],
    text: str,
    colour: tuple[int, int, int],
    font,
    bounds: tuple[int, int],
) -> None:
    """A filled tag above (or, at the top edge, inside) the box's top-left corner."""
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    tw, th = right - left, bottom - top
    pad = max(2, th // 5)
    x, y = xy
    y_tag = y - th - 2 * pad if y - th - 2 * pad >= 0 else y
    x = min(max(0, x), max(0, bounds[0] - tw - 2 * pad))
    draw.rectangle([x, y_tag, x + tw + 2 * pad, y_tag + th + 2 * pad], fill=colour)
    draw.text((x + pad - left, y_tag + pad - top), text, fill=text_colour(colour), font=font)


def draw_detections(
    image: Image.Image | np.ndarray, det: Detections, *, show_scores: bool = True
) -> Image.Image:
    """A copy of the image with each box outlined and tagged `label score`."""
    canvas = _as_rgb(image).copy()
    draw = ImageDraw.Draw(canvas)
    line, font_size = _sizes(canvas)
    font = label_font(font_size)
    for box in sorted(det.boxes, key=lambda b: b.score):  # best boxes drawn on top
        # labels without an id (open-vocabulary phrases): a colour from the text itself, stable
        # across runs (str hash() is salted per process)
        key = box.label_id if box.label_id >= 0 else zlib.crc32(box.label.encode()) % 997
        colour = label_colour(key)
        draw.rectangle([box.x0, box.y0, box.x1, box.y1], outline=colour, width=line)
        text = f"{box.label} {box.score:.2f}" if show_scores else box.label
        _label_tag(draw, (box.x0, box.y0), text, colour, font, canvas.size)
    return canvas


def draw_segmentation(
    image: Image.Image | np.ndarray, seg: Segmentation, *, opacity: float = 0.5, legend: bool = True
) -> Image.Image:
    """Masks blended over the image, coloured by class, with a legend of the classes shown.

    Instances are outlined so touching objects of one class stay apart. A matte result
    is shown as the subject over a dark background.
    """
    base = _as_rgb(image)
    arr = np.asarray(base).astype(np.float32)
    if seg.alpha is not None:
        a = np.asarray(seg.alpha, dtype=np.float32)[..., None]
        out = arr * a + np.float32(40) * (1 - a)
        return Image.fromarray(np.clip(out, 0, 255).astype(np.uint8), "RGB")
    colour_layer = arr.copy()
    covered = np.zeros(arr.shape[:2], dtype=bool)
    edges = np.zeros(arr.shape[:2], dtype=bool)
    present: dict[int, str] = {}
    line, _ = _sizes(base)
    if seg.instances:
        for inst in sorted(seg.instances, key=lambda i: i.score):  # best painted last
            colour_layer[inst.mask] = label_colour(inst.label_id)
            covered |= inst.mask
            if seg.kind != "semantic":
                edges |= inst.mask & ~morphology.erode(inst.mask, max(1, line // 2))
            present.setdefault(inst.label_id, inst.label)
    elif seg.label_map is not None:
        for label_id in np.unique(seg.label_map):
            if label_id < 0:
                continue
            mask = seg.label_map == label_id
            colour_layer[mask] = label_colour(int(label_id))
            covered |= mask
            present[int(label_id)] = seg.labels.get(int(label_id), str(int(label_id)))
    blended = np.where(covered[..., None], arr * (1 - opacity) + colour_layer * opacity, arr)
    blended[edges] = 255
    canvas = Image.fromarray(np.clip(blended, 0, 255).astype(np.uint8), "RGB")
    if legend and present:
        canvas = _with_legend(canvas, present)
    return canvas


def _with_legend(canvas: Image.Image, present: dict[int, str]) -> Image.Image:
    """A legend column to the right: colour swatch and class name per label shown."""
    _, font_size = _sizes(canvas)
    font = label_font(font_size)
    probe = ImageDraw.Draw(canvas)
    rows = sorted(present.items())
    text_w = max(probe.textbbox((0, 0), name, font=font)[2] for _, name in rows)
    row_h = int(font_size * 1.5)
    swatch = font_size
    width = swatch + text_w + 3 * font_size // 2 + 8
    height = max(canvas.height, row_h * len(rows) + 8)
    out = Image.new("RGB", (canvas.width + width, height), (255, 255, 255))
    out.paste(canvas, (0, 0))
    draw = ImageDraw.Draw(out)
    for i, (label_id, name) in enumerate(rows):
        x, y = canvas.width + 6, 4 + i * row_h
        draw.rectangle(
            [x, y, x + swatch, y + swatch], fill=label_colour(label_id), outline=(0, 0, 0)
        )
        draw.text((x + swatch + font_size // 2, y), name, fill=(0, 0, 0), font=font)
    return out


def write_overlay(
    path: str | os.PathLike,
    image: Image.Image | np.ndarray,
    result: Detections | Segmentation,
    *,
    inputs: Iterable[Path] = (),
    quality: int | None = 92,
) -> Path:
    """Draw the result over the image and write it atomically (never over an input)."""
    path = Path(path)
    ensure_not_input(path, inputs)
    if isinstance(result, Detections):
        drawn = draw_detections(image, result)
    else:
        drawn = draw_segmentation(image, result)
    return write_image(path, drawn, quality=quality)
