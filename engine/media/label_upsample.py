"""The label map of bilinearly upsampled class logits, without the upsampled stack.

`post_process_semantic_segmentation` (SegFormer, BEiT, DPT…) upsamples the model's
(C, h, w) logits to the photo's size and takes the argmax over classes. Done literally,
that is C full-size float planes: 150 × 512² = 157 MB and ~80 ms for a 512² image on two
cores, 7.2 GB for a 12-megapixel photo. Most of that work is wasted:

    every upsampled pixel is a convex combination (weights ≥ 0, summing to 1) of the
    logits at its four source corners. Where all four corners have the same argmax k,
    the combination's argmax is k too (each other class is ≤ at every corner, and
    strictly < for the classes before k, which argmax prefers on ties).

So `upsampled_argmax` labels those pixels from the low-resolution argmax and blends
logits only where corners disagree (class boundaries: a few percent of a real model's
output). The blend uses torch's `interpolate(mode="bilinear", align_corners=False)`
source indices and weights (half-pixel centres, clamped at the border), and memory
stays bounded by a block of rows. Where the corners disagree almost everywhere (random
logits of an untrained model), pixels are blended densely in numpy, in cache-sized
blocks of rows spread over the CPU's cores (150 classes, 128² -> 512² on two Zen 3
cores: 64 ms, where one whole-image pass took 254 ms and OpenCV's resize 67-73 ms), a
group of classes at a time so that memory stays bounded there too.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np

from engine.cpu import onnx_cpu_threads
from engine.media.resize import source_index

BLOCK_VALUES = 1 << 22  # floats per temporary (16 MB): bounds memory for any photo size
DENSE_FRACTION = 0.25  # above this share of undecided pixels, blend densely
DENSE_VALUES = 1 << 25  # floats (128 MB) resized at once by a dense blend
DENSE_BLOCK_VALUES = 1 << 20  # blended floats per dense block of rows (4 MB: stays in cache)
CLASS_GROUP = 256  # classes blended together (ADE20K's 150 at once: 25 % faster than 128 + 22)


def upsampled_argmax(logits: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """argmax over classes of `logits` (C, H, W) bilinearly resized to `size` (h, w):
    an (h, w) int64 label map, equal to interpolate-then-argmax up to float rounding
    (only pixels whose top two blended logits tie to the last bits can differ)."""
    classes, height, width = logits.shape
    h, w = int(size[0]), int(size[1])
    logits = np.asarray(logits, dtype=np.float32)
    if (height, width) == (h, w):
        return logits.argmax(axis=0)
    low = logits.argmax(axis=0)
    hwc = np.ascontiguousarray(logits.transpose(1, 2, 0))  # (H, W, C): a class vector a pixel
    ys, xs = source_index(h, height), source_index(w, width)
    if _boundary_share(low) > DENSE_FRACTION:
        # labels change almost everywhere (an untrained model): every pixel is blended
        return _dense_argmax(hwc, (h, w), ys, xs)
    y0, y1 = ys[0], ys[1]
    x0, x1 = xs[0], xs[1]
    out = np.empty((h, w), dtype=np.int64)
    rows = max(1, BLOCK_VALUES // max(1, w * classes))
    for start in range(0, h, rows):
        stop = min(h, start + rows)
        top, bottom = low[y0[start:stop]], low[y1[start:stop]]
        label = top[:, x0]
        decided = (label == top[:, x1]) & (label == bottom[:, x0]) & (label == bottom[:, x1])
        undecided = ~decided
        if undecided.mean() > DENSE_FRACTION:
            label = _resized_argmax(_resize_rows(hwc, ys, start, stop), (stop - start, w),
                                    None, xs)
        elif undecided.any():
            _blend_pixels(hwc, label, np.nonzero(undecided), start, ys, xs)
        out[start:stop] = label
    return out


def _boundary_share(low: np.ndarray) -> float:
    """Share of low-resolution pixels whose label differs from the next one right or down."""
    if min(low.shape) < 2:
        return 1.0
    core = low[:-1, :-1]
    return float(((core != low[1:, :-1]) | (core != low[:-1, 1:])).mean())


def _blend_pixels(hwc: np.ndarray, label: np.ndarray, where: tuple[np.ndarray, np.ndarray],
                  start: int, ys: tuple, xs: tuple) -> None:
    """Blend the four corners' logits of the pixels `where` (block rows, columns) and write
    their argmax into `label`, a chunk of pixels at a time."""
    y0, y1, wy0, wy1 = ys
    x0, x1, wx0, wx1 = xs
    rows, cols = where
    chunk = max(1, BLOCK_VALUES // max(1, hwc.shape[2]))
    for i in range(0, len(rows), chunk):
        r, c = rows[i:i + chunk], cols[i:i + chunk]
        gy0, gy1, gx0, gx1 = y0[r + start], y1[r + start], x0[c], x1[c]
        fx0, fx1 = wx0[c][:, None], wx1[c][:, None]
        upper = fx0 * hwc[gy0, gx0] + fx1 * hwc[gy0, gx1]
        lower = fx0 * hwc[gy1, gx0] + fx1 * hwc[gy1, gx1]
        blend = wy0[r + start][:, None] * upper + wy1[r + start][:, None] * lower
        label[r, c] = blend.argmax(axis=1)


def _dense_argmax(hwc: np.ndarray, size: tuple[int, int], ys: tuple, xs: tuple) -> np.ndarray:
    """Every pixel blended: blocks of output rows small enough to stay in cache, on up to
    one thread per core (numpy's gathers and arithmetic release the GIL)."""
    h, w = size
    rows = max(1, DENSE_BLOCK_VALUES // max(1, w * min(hwc.shape[2], CLASS_GROUP)))
    starts = list(range(0, h, rows))

    def block(start: int) -> np.ndarray:
        stop = min(h, start + rows)
        return _resized_argmax(_resize_rows(hwc, ys, start, stop), (stop - start, w), None, xs)

    threads = min(onnx_cpu_threads(), len(starts))
    if threads <= 1:
        return np.concatenate([block(start) for start in starts])
    with ThreadPoolExecutor(threads, thread_name_prefix="ocula-labels") as pool:
        return np.concatenate(list(pool.map(block, starts)))


def _resize_rows(hwc: np.ndarray, ys: tuple, start: int, stop: int) -> np.ndarray:
    """Output rows [start, stop), blended vertically from their two source rows:
    (rows, W, C) at the logits' width."""
    y0, y1, wy0, wy1 = ys
    return (wy0[start:stop, None, None] * hwc[y0[start:stop]]
            + wy1[start:stop, None, None] * hwc[y1[start:stop]])


def _resized_argmax(hwc: np.ndarray, size: tuple[int, int], ys: tuple | None,
                    xs: tuple) -> np.ndarray:
    """argmax over classes of the (H, W, C) stack resized to `size` (h, w), a group of
    classes at a time (at most DENSE_VALUES floats resized at once), keeping the first
    class on ties as argmax does. `ys` None: the rows are already at their output rows."""
    h, w = size
    step = int(min(CLASS_GROUP, max(1, DENSE_VALUES // max(1, h * w))))
    best = best_value = None
    for a in range(0, hwc.shape[2], step):
        part = _resize(hwc[:, :, a:a + step], size, ys, xs)
        index = part.argmax(axis=2)
        if a == 0 and step >= hwc.shape[2]:
            return index  # one group: no running best to keep
        value = np.take_along_axis(part, index[..., None], axis=2)[..., 0]
        if best is None:
            best, best_value = index + a, value
        else:
            better = value > best_value  # strictly: an earlier class keeps a tie
            best[better] = index[better] + a
            best_value[better] = value[better]
    return best


def _resize(hwc: np.ndarray, size: tuple[int, int], ys: tuple | None, xs: tuple) -> np.ndarray:
    """Bilinear resize of a (H, W, c) stack to `size` (h, w) with the half-pixel source
    indices and weights `ys`, `xs` (`ys` None: the rows are already at their output rows)."""
    h, _ = size
    rows = hwc if ys is None else _resize_rows(hwc, ys, 0, h)
    x0, x1, wx0, wx1 = xs
    return wx0[None, :, None] * rows[:, x0] + wx1[None, :, None] * rows[:, x1]
