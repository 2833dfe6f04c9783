"""Resizing numpy images without OpenCV: the two rules the engine needs.

- `linear`: 2-tap bilinear with half-pixel centres, clamped at the border — the rule of
  torch's `interpolate(mode="bilinear", align_corners=False)` and OpenCV's INTER_LINEAR,
  which models are trained and post-processed with (no antialiasing when shrinking).
  Any dtype and channel count; integers are rounded and clipped back to their dtype.
- `filtered`: Pillow's convolution resampling (Lanczos, bicubic, box/area, nearest) for
  pictures people look at — uint8 planes/RGB/RGBA, uint16 and float32 planes directly,
  other stacks a plane at a time. Pillow antialiases when shrinking.
"""
from __future__ import annotations

import numpy as np
from PIL import Image

FILTERS = {"lanczos": Image.Resampling.LANCZOS, "bicubic": Image.Resampling.BICUBIC,
           "area": Image.Resampling.BOX, "bilinear": Image.Resampling.BILINEAR,
           "nearest": Image.Resampling.NEAREST}
_PIL_MODES = {(np.dtype(np.uint8), 1): "L", (np.dtype(np.uint8), 3): "RGB",
              (np.dtype(np.uint8), 4): "RGBA", (np.dtype(np.uint16), 1): "I;16",
              (np.dtype(np.float32), 1): "F"}


def source_index(out_size: int, in_size: int
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(i0, i1, w0, w1) per output index: the two source indices and their weights, as
    torch's upsample_bilinear2d (align_corners=False) computes them, in float32."""
    scale = np.float32(in_size) / np.float32(out_size)
    real = (np.arange(out_size, dtype=np.float32) + np.float32(0.5)) * scale - np.float32(0.5)
    real = np.maximum(real, np.float32(0.0))
    i0 = np.minimum(real.astype(np.int64), in_size - 1)
    i1 = np.minimum(i0 + 1, in_size - 1)
    w1 = (real - i0.astype(np.float32)).astype(np.float32)
    return i0, i1, (np.float32(1.0) - w1).astype(np.float32), w1


def linear(array: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(H, W[, C]) -> (h, w[, C]) for `size` = (w, h), bilinear by the half-pixel rule
    (see the module docstring); a same-size axis is copied exactly."""
    arr = np.asarray(array)
    w, h = int(size[0]), int(size[1])
    height, width = arr.shape[:2]
    if (width, height) == (w, h):
        return arr.copy()
    # gathers read the source dtype (uint8: a quarter of the bytes); blends give float32
    work = arr if np.issubdtype(arr.dtype, np.integer) else arr.astype(np.float32, copy=False)
    if height != h:
        y0, y1, wy0, wy1 = source_index(h, height)
        shape = (h,) + (1,) * (arr.ndim - 1)
        work = wy0.reshape(shape) * work[y0] + wy1.reshape(shape) * work[y1]
    if width != w:
        x0, x1, wx0, wx1 = source_index(w, width)
        shape = (1, w) + (1,) * (arr.ndim - 2)
        work = wx0.reshape(shape) * work[:, x0] + wx1.reshape(shape) * work[:, x1]
    return _cast(np.asarray(work, dtype=np.float32), arr.dtype)


def filtered(array: np.ndarray, size: tuple[int, int], method: str = "lanczos") -> np.ndarray:
    """(H, W[, C]) -> (h, w[, C]) for `size` = (w, h) with Pillow's `method` filter
    (lanczos, bicubic, area, bilinear, nearest); the dtype is kept."""
    arr = np.asarray(array)
    w, h = int(size[0]), int(size[1])
    if arr.shape[1::-1] == (w, h):
        return arr.copy()
    resample = FILTERS[method]
    channels = 1 if arr.ndim == 2 else arr.shape[2]
    if (arr.dtype, channels) in _PIL_MODES:  # Pillow infers that mode from the array
        plane = arr if arr.ndim == 2 or channels > 1 else arr[..., 0]
        out = np.asarray(Image.fromarray(np.ascontiguousarray(plane)).resize((w, h), resample))
        return out.reshape((h, w) + arr.shape[2:])
    planes = arr[..., None] if arr.ndim == 2 else arr
    work = planes.astype(np.float32)
    out = np.stack([np.asarray(Image.fromarray(np.ascontiguousarray(work[..., c]))
                               .resize((w, h), resample)) for c in range(planes.shape[2])], axis=2)
    return _cast(out, arr.dtype).reshape((h, w) + arr.shape[2:])


def _cast(values: np.ndarray, dtype: np.dtype) -> np.ndarray:
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        return np.clip(np.rint(values), info.min, info.max).astype(dtype)
    return values.astype(dtype, copy=False)
