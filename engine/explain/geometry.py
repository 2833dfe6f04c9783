"""Where each model-input pixel came from in the original image.

The geometry is read from the processor's own settings (do_resize/size,
do_center_crop/crop_size, do_pad/pad_size, ConvNeXt's crop_pct), replaying the rules
of transformers' image processors, so a map computed on the model input lands on the
right pixels of the original image. Every step is a scale or a shift, so the whole
chain is one affine map, applied with a single resampling.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from engine.explain.maps import TokenLayout
from engine.media.size_rules import aspect_size, shortest_edge_size


@dataclass(frozen=True)
class Geometry:
    """original (W, H) --resize--> resized (h, w) --crop/pad--> model input (h, w)."""

    original_size: tuple[int, int]  # (width, height)
    resized_size: tuple[int, int]  # (height, width) after resizing
    crop_offset: tuple[int, int] = (0, 0)  # (top, left) of the model input in resized pixels; negative = padding
    input_size: tuple[int, int] = (0, 0)  # (height, width) of the model input

    def input_to_original(self) -> np.ndarray:
        """2×3 affine: model-input pixel (x, y) -> original pixel (x, y), pixel centres."""
        sx = self.original_size[0] / self.resized_size[1]
        sy = self.original_size[1] / self.resized_size[0]
        top, left = self.crop_offset
        # resized = input + offset; original = (resized + 0.5) * s - 0.5
        return np.array(
            [[sx, 0.0, (left + 0.5) * sx - 0.5], [0.0, sy, (top + 0.5) * sy - 0.5]], dtype=np.float64
        )

    def original_to_input(self, x: float, y: float) -> tuple[float, float]:
        """Original pixel (x, y) -> model-input pixel (x, y)."""
        m = self.input_to_original()
        return (x - m[0, 2]) / m[0, 0], (y - m[1, 2]) / m[1, 1]

    def valid_mask(self) -> np.ndarray:
        """bool (H, W): original pixels that ended up inside the model input."""
        w, h = self.original_size
        m = self.input_to_original()
        xi = (np.arange(w, dtype=np.float64) - m[0, 2]) / m[0, 0]
        yi = (np.arange(h, dtype=np.float64) - m[1, 2]) / m[1, 1]
        col_ok = (xi > -0.5) & (xi < self.input_size[1] - 0.5)
        row_ok = (yi > -0.5) & (yi < self.input_size[0] - 0.5)
        return row_ok[:, None] & col_ok[None, :]

    def describe(self) -> str:
        w, h = self.original_size
        return (
            f"{w}×{h} → resize {self.resized_size[1]}×{self.resized_size[0]} → "
            f"crop/pad at (top {self.crop_offset[0]}, left {self.crop_offset[1]}) → "
            f"input {self.input_size[1]}×{self.input_size[0]}"
        )


def _get(obj: Any, name: str, default: Any = None) -> Any:
    if isinstance(obj, dict):
        return obj.get(name, default)
    return getattr(obj, name, default)


def _size_field(size: Any, name: str) -> int | None:
    if size is None:
        return None
    if isinstance(size, int):
        return size if name in ("height", "width") else None
    value = _get(size, name)
    return int(value) if value else None


def _processor_part(processor: Any) -> Any:
    return getattr(processor, "image_processor", None) or processor


def geometry_from_processor(processor: Any, original_size: tuple[int, int]) -> Geometry:
    """Replay the processor's resize / center-crop / pad on an image of (width, height)."""
    proc = _processor_part(processor)
    width, height = original_size
    h, w = height, width
    size = _get(proc, "size")
    crop_pct = _get(proc, "crop_pct")
    top = left = 0
    if _get(proc, "do_resize", True) and size is not None:
        shortest = _size_field(size, "shortest_edge")
        longest = _size_field(size, "longest_edge")
        if crop_pct is not None and shortest is not None:  # ConvNeXt's resize
            if shortest < 384:
                h, w = shortest_edge_size(h, w, int(shortest / crop_pct))
                top, left = (h - shortest) // 2, (w - shortest) // 2
                return Geometry((width, height), (h, w), (top, left), (shortest, shortest))
            h, w = shortest, shortest
        elif shortest and longest:
            h, w = aspect_size(h, w, shortest, longest)
        elif shortest:
            h, w = shortest_edge_size(h, w, shortest)
        elif _size_field(size, "max_height") and _size_field(size, "max_width"):
            mh, mw = _size_field(size, "max_height"), _size_field(size, "max_width")
            scale = min(mh / h, mw / w)
            h, w = int(h * scale), int(w * scale)
        elif _size_field(size, "height") and _size_field(size, "width"):
            h, w = _size_field(size, "height"), _size_field(size, "width")
    resized = (h, w)
    out_h, out_w = h, w
    if _get(proc, "do_center_crop", False):
        crop = _get(proc, "crop_size")
        ch, cw = _size_field(crop, "height"), _size_field(crop, "width")
        if ch and cw:
            # larger-than-image crops pad symmetrically first (left/top get the floor half)
            pad_top = (ch - h) // 2 if ch > h else 0
            pad_left = (cw - w) // 2 if cw > w else 0
            padded_h, padded_w = max(h, ch), max(w, cw)
            top = int((padded_h - ch) / 2.0) - pad_top
            left = int((padded_w - cw) / 2.0) - pad_left
            out_h, out_w = ch, cw
    if _get(proc, "do_pad", False):
        pad_size = _get(proc, "pad_size")
        ph, pw = _size_field(pad_size, "height"), _size_field(pad_size, "width")
        divisor = _get(proc, "size_divisor")
        if ph and pw:  # bottom/right padding keeps the offset
            out_h, out_w = max(out_h, ph), max(out_w, pw)
        elif divisor:  # Swin2SR: always pads bottom/right to the next multiple
            out_h, out_w = (out_h // divisor + 1) * divisor, (out_w // divisor + 1) * divisor
    return Geometry((width, height), resized, (top, left), (out_h, out_w))


def stretch_geometry(original_size: tuple[int, int], input_size: tuple[int, int]) -> Geometry:
    """Plain resize to the model input (ONNX models without a processor)."""
    return Geometry(original_size, tuple(input_size), (0, 0), tuple(input_size))


def pixel_inputs(processor: Any, image: Any, notes: list[str]) -> tuple[Any, Any]:
    """(pixel_values tensor, Geometry) through the model's own processor.

    Here, next to the geometry it replays, so that engine.explain.api and the method
    modules it dispatches to (captioner, detr, gradcam, windowed, onnx_attention) all
    import it from below instead of from each other."""
    image_processor = getattr(processor, "image_processor", None) or processor
    pixel_values = image_processor(images=image, return_tensors="pt")["pixel_values"]
    geometry = geometry_from_processor(image_processor, image.size)
    actual = tuple(int(v) for v in pixel_values.shape[-2:])
    if geometry.input_size != actual:
        notes.append(
            f"could not replay this processor's geometry ({geometry.describe()}, but it produced "
            f"{actual[1]}×{actual[0]}): the map is stretched over the whole image and may be misaligned"
        )
        geometry = stretch_geometry(image.size, actual)
    return pixel_values, geometry


def _linear_taps(coords: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sample positions -> (lower index, upper index, upper weight), edges replicated."""
    lower = np.floor(coords)
    frac = coords - lower
    lower = lower.astype(np.int64)
    return np.clip(lower, 0, n - 1), np.clip(lower + 1, 0, n - 1), frac


def _bilinear_separable(values: np.ndarray, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
    """values (rows, cols) sampled at every (ys[i], xs[j]), bilinear with edge replication
    (as OpenCV's INTER_LINEAR + BORDER_REPLICATE, but with exact weights where OpenCV
    rounds them to 1/32): float32 (len(ys), len(xs))."""
    values = np.asarray(values, dtype=np.float64)
    y0, y1, fy = _linear_taps(ys, values.shape[0])
    x0, x1, fx = _linear_taps(xs, values.shape[1])
    rows = (values[y0] * (1 - fy)[:, None] + values[y1] * fy[:, None]).astype(np.float32)  # (len(ys), cols)
    out = rows[:, x0]  # the full-size passes in float32: a 48 MP image needs two 192 MB arrays, not six
    out *= (1 - fx).astype(np.float32)
    out += rows[:, x1] * fx.astype(np.float32)
    return out


def grid_to_image(grid_map: np.ndarray, layout: TokenLayout, geometry: Geometry) -> np.ndarray:
    """(rows, cols) map -> float32 (H, W) on the original image, bilinear, one resampling.

    Grid cell (i, j) covers model-input pixels [i*ph, (i+1)*ph) × [j*pw, (j+1)*pw);
    pixels outside the model input (cropped away) get 0 (see Geometry.valid_mask).
    """
    grid_map = np.asarray(grid_map, dtype=np.float32)
    ph, pw = layout.patch_size
    m_in = geometry.input_to_original()  # input -> original
    # original -> input
    a = np.array([[1 / m_in[0, 0], 0, -m_in[0, 2] / m_in[0, 0]], [0, 1 / m_in[1, 1], -m_in[1, 2] / m_in[1, 1]]])
    # input -> grid coordinates (cell centres at integer positions)
    g = np.array([[1 / pw, 0, 0.5 / pw - 0.5], [0, 1 / ph, 0.5 / ph - 0.5]])
    full = np.vstack([a, [0, 0, 1]])
    original_to_grid = (np.vstack([g, [0, 0, 1]]) @ full)[:2]
    w, h = (int(v) for v in geometry.original_size)
    if original_to_grid[0, 1] != 0 or original_to_grid[1, 0] != 0:
        raise ValueError("grid_to_image: the geometry has rotation or shear; only scale + offset per axis")
    # grid coordinate of every original column / row (cell centres at integers)
    gx = original_to_grid[0, 0] * np.arange(w) + original_to_grid[0, 2]
    gy = original_to_grid[1, 1] * np.arange(h) + original_to_grid[1, 2]
    out = _bilinear_separable(grid_map, gy, gx)
    # outside the grid's pixel extent (crop, pad, patch remainder) the model saw nothing
    cols = (gx > -0.5 - 1e-6) & (gx < layout.grid[1] - 0.5 + 1e-6)
    rows = (gy > -0.5 - 1e-6) & (gy < layout.grid[0] - 0.5 + 1e-6)
    out[~(rows[:, None] & cols[None, :])] = 0.0
    return out


def original_to_cell(x: float, y: float, layout: TokenLayout, geometry: Geometry) -> tuple[int, int]:
    """Original-image pixel (x, y) -> (row, col) of the patch that covers it."""
    xi, yi = geometry.original_to_input(x, y)
    row = int(np.clip(np.floor((yi + 0.5) / layout.patch_size[0]), 0, layout.grid[0] - 1))
    col = int(np.clip(np.floor((xi + 0.5) / layout.patch_size[1]), 0, layout.grid[1] - 1))
    return row, col
