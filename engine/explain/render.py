"""Pictures of attention maps: colormap overlays, contact sheets, and saving them.

Everything is RGB uint8 numpy, drawn with numpy and Pillow (no OpenCV: the colormaps
are OpenCV's tables, stored in engine.explain.colormaps).
Files are written atomically (temporary file in the same folder + os.replace), so a
crash never leaves half a PNG where the GUI or a batch expects a whole one.
"""
from __future__ import annotations

import io
import json
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from engine.explain.maps import AttentionMaps
from engine.exporters.overlay import label_font
from engine.media import morphology
from engine.results import Detections

COLORMAPS = ("jet", "inferno", "viridis", "magma", "turbo", "hot", "gray")


def colorize(values: np.ndarray, colormap: str = "jet") -> np.ndarray:
    """float map in [0, 1] (H, W) -> RGB uint8 (H, W, 3)."""
    from engine.explain.colormaps import table

    scaled = np.clip(np.nan_to_num(np.asarray(values, dtype=np.float32)), 0.0, 1.0)
    gray = np.round(scaled * 255).astype(np.uint8)
    if colormap == "gray":
        return np.repeat(gray[..., None], 3, axis=-1)
    if colormap not in COLORMAPS:
        raise ValueError(f"unknown colormap '{colormap}'; choose one of {', '.join(COLORMAPS)}")
    return table(colormap)[gray]


def _rgb_array(image: Any) -> np.ndarray:
    if hasattr(image, "convert"):  # PIL
        return np.asarray(image.convert("RGB"), dtype=np.uint8)
    array = np.asarray(image)
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=-1)
    if array.dtype == np.uint16:
        array = (array >> 8).astype(np.uint8)
    return array[..., :3].astype(np.uint8)


def overlay(image: Any, heatmap: np.ndarray, *, opacity: float = 0.5, colormap: str = "jet",
            valid: np.ndarray | None = None, mask: np.ndarray | None = None) -> np.ndarray:
    """Blend a colormapped heatmap over the image: RGB uint8 at the image's size.

    Pixels the model never saw (`valid` False) keep the plain image; a `mask` draws its
    outline in white.
    """
    if not 0.0 <= opacity <= 1.0:
        raise ValueError("opacity must be in [0, 1]")
    base = _rgb_array(image)
    if base.shape[:2] != heatmap.shape:
        raise ValueError(f"heatmap {heatmap.shape} does not match image {base.shape[:2]}")
    color = colorize(heatmap, colormap).astype(np.float32)
    blended = base.astype(np.float32) * (1 - opacity) + color * opacity
    if valid is not None:
        blended[~valid] = base[~valid]
    out = np.clip(np.round(blended), 0, 255).astype(np.uint8)
    if mask is not None and mask.any():
        if mask.shape != out.shape[:2]:
            raise ValueError(f"mask {mask.shape} does not match image {out.shape[:2]}")
        thickness = max(1, round(min(out.shape[:2]) / 250))
        out[morphology.outline(mask, thickness)] = 255
    return out


def contact_sheet(head_maps: np.ndarray, *, tile: int = 96, gap: int = 4, colormap: str = "jet",
                  labels: bool = True) -> np.ndarray:
    """All layers × heads as one RGB image: rows = layers, columns = heads.

    Each tile is normalised on its own (heads differ in scale by orders of magnitude);
    tiles keep the grid's aspect ratio.
    """
    from engine.explain.methods import normalize01

    layers, heads, rows, cols = head_maps.shape
    tile_h = tile if rows >= cols else max(1, round(tile * rows / cols))
    tile_w = tile if cols >= rows else max(1, round(tile * cols / rows))
    label_w = 34 if labels else 0
    label_h = 16 if labels else 0
    height = label_h + layers * tile_h + (layers + 1) * gap
    width = label_w + heads * tile_w + (heads + 1) * gap
    sheet = np.full((height, width, 3), 24, dtype=np.uint8)
    # nearest neighbour exactly as OpenCV's INTER_NEAREST: source floor(dst * (1 / (dst_size / src_size)))
    pick_rows = np.minimum(np.floor(np.arange(tile_h) * (1.0 / (tile_h / rows))).astype(np.intp), rows - 1)
    pick_cols = np.minimum(np.floor(np.arange(tile_w) * (1.0 / (tile_w / cols))).astype(np.intp), cols - 1)
    texts: list[tuple[tuple[int, int], str]] = []  # (left, baseline), text
    for layer in range(layers):
        y = label_h + gap + layer * (tile_h + gap)
        if labels:
            texts.append(((2, y + tile_h // 2 + 4), f"L{layer}"))
        for head in range(heads):
            x = label_w + gap + head * (tile_w + gap)
            values = normalize01(head_maps[layer, head])
            sheet[y:y + tile_h, x:x + tile_w] = colorize(values, colormap)[np.ix_(pick_rows, pick_cols)]
            if labels and layer == 0:
                texts.append(((x + 2, 12), f"h{head}"))
    if texts:  # the labels sit in the margins, never on a tile: drawn once all tiles are in
        sheet = _draw_texts(sheet, texts)
    return sheet


def _draw_texts(picture: np.ndarray, texts: list[tuple[tuple[int, int], str]],
                colour: tuple[int, int, int] = (220, 220, 220)) -> np.ndarray:
    """Small antialiased labels, each placed by its left end on the baseline (as OpenCV's putText)."""
    from PIL import Image, ImageDraw, ImageFont

    canvas = Image.fromarray(picture)
    draw = ImageDraw.Draw(canvas)
    font = label_font(10)
    scalable = isinstance(font, ImageFont.FreeTypeFont)
    for (x, baseline), text in texts:
        if scalable:
            draw.text((x, baseline), text, fill=colour, font=font, anchor="ls")
        else:  # the bitmap fallback font places by its top-left corner
            draw.text((x, baseline - 8), text, fill=colour, font=font)
    return np.array(canvas)


def _draw_shapes(picture: np.ndarray, rectangles: Sequence[tuple[Any, ...]] = (),
                 circles: Sequence[tuple[Any, ...]] = (), thick: int = 1) -> np.ndarray:
    """Outlined rectangles (x0, y0, x1, y1, colour) and circles (x, y, radius, colour), `thick`
    pixels wide, on a copy of an RGB uint8 picture."""
    from PIL import Image, ImageDraw

    canvas = Image.fromarray(np.ascontiguousarray(picture, dtype=np.uint8))
    draw = ImageDraw.Draw(canvas)
    out = thick // 2  # Pillow strokes grow inwards; OpenCV's straddle the edge: move out by half
    for x0, y0, x1, y1, colour in rectangles:
        box = (min(x0, x1) - out, min(y0, y1) - out, max(x0, x1) + out, max(y0, y1) + out)
        draw.rectangle(box, outline=colour, width=thick)
    for x, y, radius, colour in circles:
        r = radius + out
        draw.ellipse((x - r, y - r, x + r, y + r), outline=colour, width=thick)
    return np.array(canvas)


def _atomic_write(path: Path, data: bytes) -> None:
    from engine.media.image import atomic_write_bytes

    atomic_write_bytes(path, data)


def _png_bytes(rgb: np.ndarray) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="PNG")
    return buffer.getvalue()


def _npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "-", text.strip()).strip("-")[:24] or "tok"


def mark_map(picture: np.ndarray, maps: AttentionMaps) -> np.ndarray:
    """Draw the discovered box (white) and the artifact tokens (magenta rings) on an overlay."""
    points = maps.params.get("artifact_points") or []
    if maps.box is None and not points:
        return picture
    thick = max(1, min(picture.shape[:2]) // 250)
    rectangles, circles = [], []
    if maps.box is not None:
        x0, y0, x1, y1 = (round(v) for v in maps.box)
        rectangles.append((x0, y0, x1, y1, (255, 255, 255)))
    if points and maps.layout is not None:
        radius = max(3, int(min(maps.image_size) / max(maps.layout.grid) / 2))
        circles = [(round(x), round(y), radius, (255, 0, 255)) for x, y in points]
    return _draw_shapes(picture, rectangles, circles, thick)


def mask_record(maps: AttentionMaps) -> dict[str, Any]:
    """The mask as a COCO RLE annotation record: {"segmentation", "area", "bbox", "method", …}."""
    from engine.exporters.masks import mask_bbox, rle_area, rle_encode

    rle = rle_encode(maps.mask)
    return {"method": maps.method, "segmentation": rle, "area": rle_area(rle), "bbox": mask_bbox(maps.mask),
            "params": {k: v for k, v in maps.params.items() if isinstance(v, (int, float, str, bool, list, tuple))}}


def save_mask(maps: AttentionMaps, path: str | os.PathLike) -> list[Path]:
    """`maps.mask` as a 0/255 PNG at `path` and its COCO RLE record next to it (`.rle.json`)."""
    if maps.mask is None:
        raise ValueError(f"{maps.method}: this map has no mask to export")
    png = Path(path)
    if png.suffix.lower() != ".png":
        png = png.with_name(png.name + ".png")
    rle = png.with_name(png.name[:-4] + ".rle.json")
    _atomic_write(png, _png_bytes(np.repeat((maps.mask.astype(np.uint8) * 255)[..., None], 3, axis=2)))
    _atomic_write(rle, json.dumps(mask_record(maps)).encode())
    return [png, rle]


def discovered_detections(maps: AttentionMaps) -> Detections:
    """The discovered box as engine.results.Detections (one 'object' box, or none)."""
    from engine.results import Box

    boxes = []
    if maps.box is not None:
        x0, y0, x1, y1 = maps.box
        boxes.append(Box(x0, y0, x1, y1, label="object", score=1.0, label_id=1))
    return Detections(boxes=boxes, image_size=tuple(maps.image_size), labels={1: "object"})


def write_discovery_coco(path: str | os.PathLike, results: list[AttentionMaps], image_names: list[str],
                         *, inputs: Any = ()) -> Path:
    """One COCO file for a batch of discovered boxes (engine.exporters.detections.write_coco)."""
    from engine.exporters.detections import write_coco

    return write_coco(path, [discovered_detections(m) for m in results], image_names, inputs=inputs)


def save_maps(maps: AttentionMaps, image: Any, out_dir: str | os.PathLike, stem: str, *,
              opacity: float = 0.5, colormap: str = "jet") -> list[Path]:
    """Write overlay PNG, raw .npy arrays, contact sheet and per-token overlays.

    Files (all in out_dir, each written atomically):
      {stem}.{method}.png            heatmap over the image
      {stem}.{method}.heatmap.npy    float32 (H, W) at original resolution
      {stem}.{method}.grid.npy       float32 (rows, cols) on the patch grid
      {stem}.attentions.npy          float32 (layers, heads, N, N), when captured
      {stem}.{method}.sheet.png      layers × heads contact sheet, when there are head maps
      {stem}.{method}.tok{i}-{text}.png   one overlay per generated token / detected object
      {stem}.{method}.mask.png       the thresholded segment (0/255), when the method has one
      {stem}.{method}.mask.rle.json  the same mask as COCO RLE
      {stem}.{method}.coco.json / .xml   the discovered object's box (discover), COCO and VOC
    """
    out = Path(out_dir)
    written: list[Path] = []

    def put(name: str, data: bytes) -> None:
        path = out / name
        _atomic_write(path, data)
        written.append(path)

    base = f"{stem}.{maps.method}"
    picture = overlay(image, maps.heatmap, opacity=opacity, colormap=colormap, valid=maps.valid, mask=maps.mask)
    picture = mark_map(picture, maps)
    put(f"{base}.png", _png_bytes(picture))
    if maps.mask is not None:
        put(f"{base}.mask.png", _png_bytes(np.repeat((maps.mask.astype(np.uint8) * 255)[..., None], 3, axis=2)))
        put(f"{base}.mask.rle.json", json.dumps(mask_record(maps)).encode())
    if maps.box is not None:
        from engine.exporters.detections import coco_dict, voc_xml

        det = discovered_detections(maps)
        put(f"{base}.coco.json", json.dumps(coco_dict([det], [stem]), indent=1).encode())
        put(f"{base}.xml", voc_xml(det, stem).encode("utf-8"))
    put(f"{base}.heatmap.npy", _npy_bytes(maps.heatmap.astype(np.float32)))
    put(f"{base}.grid.npy", _npy_bytes(np.asarray(maps.grid_map, dtype=np.float32)))
    if maps.attentions is not None:
        put(f"{stem}.attentions.npy", _npy_bytes(maps.attentions.astype(np.float32)))
    if maps.head_maps is not None and maps.head_maps.size:
        put(f"{base}.sheet.png", _png_bytes(contact_sheet(maps.head_maps, colormap=colormap)))
    for index, token in enumerate(maps.per_token):
        picture = overlay(image, token.heatmap, opacity=opacity, colormap=colormap, valid=maps.valid)
        if token.box is not None:
            x0, y0, x1, y1 = (round(v) for v in token.box)
            picture = _draw_shapes(picture, [(x0, y0, x1, y1, (255, 255, 255))],
                                   thick=max(1, min(picture.shape[:2]) // 250))
        put(f"{base}.tok{index:02d}-{_slug(token.label)}.png", _png_bytes(picture))
    return written
