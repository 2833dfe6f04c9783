"""Binary morphology on numpy masks (bool arrays), vectorised: erosion and dilation by a
square, 4-connected flood fill, and a mask's outer outline as drawn on overlays.

OpenCV did these before (erode, connectedComponents, findContours + drawContours); the
tests compare with it where it is installed (tests/unit/test_explain_drawing.py).
"""
from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view


def erode(mask: np.ndarray, steps: int) -> np.ndarray:
    """Binary erosion by a (2*steps+1)-square, as OpenCV's erode with its default border: outside
    the image counts as inside the mask. A separable sliding minimum, rows then columns."""
    out = np.asarray(mask, dtype=bool)
    if steps <= 0:
        return out.copy()
    side = 2 * steps + 1
    for axis in (0, 1):
        width = [(0, 0), (0, 0)]
        width[axis] = (steps, steps)
        padded = np.pad(out, width, constant_values=True)
        out = sliding_window_view(padded, side, axis=axis).all(axis=-1)
    return out


def _spread_along_rows(reach: np.ndarray, free: np.ndarray) -> np.ndarray:
    """Each horizontal run of `free` pixels that holds a `reach` pixel becomes wholly reached."""
    h, w = free.shape
    padded = np.zeros((h, w + 1), bool)  # a blocked column ends every run at its row's end
    padded[:, :w] = free
    flat = padded.ravel()
    starts = flat.copy()
    starts[1:] &= ~flat[:-1]
    run = np.cumsum(starts, dtype=np.int32 if flat.size < 2**31 else np.int64)  # run id 1, 2, ... of each pixel
    seeded = np.zeros((h, w + 1), bool)
    seeded[:, :w] = reach & free
    reached = np.zeros(int(run[-1]) + 1, bool)
    reached[run[seeded.ravel()]] = True
    reached[0] = False  # the blocked pixels before the first run
    return (flat & reached[run]).reshape(h, w + 1)[:, :w]


def flood_fill(free: np.ndarray, seeds: np.ndarray) -> np.ndarray:
    """The `free` pixels 4-connected (within `free`) to a `seeds` pixel: bool (H, W).

    Alternates whole-run spreading along rows and along columns (vectorised, each pass
    O(H*W)) until nothing changes: as many passes as a path needs turns, not its length.
    """
    free = np.asarray(free, dtype=bool)
    reach = free & np.asarray(seeds, dtype=bool)
    count = np.count_nonzero(reach)
    while count:
        reach = _spread_along_rows(reach, free)
        reach = _spread_along_rows(reach.T, free.T).T
        grown = np.count_nonzero(reach)  # spreading only adds pixels: same count, same set
        if grown == count:
            break
        count = grown
    return reach


def _window_any(mask: np.ndarray, side: int, anchor: int) -> np.ndarray:
    """out[i] = any(mask[i - anchor : i - anchor + side]) along axis 0, False beyond the ends;
    by doubling windows (log2(side) passes, not side)."""
    f = np.pad(mask, [(anchor, side - 1 - anchor)] + [(0, 0)] * (mask.ndim - 1))
    length = 1
    while 2 * length <= side:  # f[i] = any(padded[i : i + 2 * length])
        f = f[:-length] | f[length:]
        length *= 2
    rest = side - length
    if rest:
        f = f[:-rest] | f[rest:]
    return f


def _dilate_square(mask: np.ndarray, side: int) -> np.ndarray:
    """Binary dilation with a side×side square anchored at its centre (side // 2), as OpenCV's."""
    if side <= 1:
        return mask
    return _window_any(_window_any(mask, side, side // 2).T, side, side // 2).T


def outline(mask: np.ndarray, thickness: int = 1) -> np.ndarray:
    """The mask's outer boundary as OpenCV's findContours(RETR_EXTERNAL) + drawContours would
    paint it with a line `thickness` wide: bool (H, W).

    Holes are filled first (background not 4-connected to the image's border, as OpenCV's
    8-connected contours see them); the boundary is then the mask pixels with a 4-neighbour
    outside the mask or the image, the same pixels as OpenCV's 1-pixel contours, dilated by
    a square about as wide as OpenCV's thick line (thickness + 1, odd).
    """
    mask = np.asarray(mask, dtype=bool)
    result = np.zeros(mask.shape, dtype=bool)
    rows, cols = np.nonzero(mask.any(axis=1))[0], np.nonzero(mask.any(axis=0))[0]
    if rows.size == 0:
        return result
    side = 1 if thickness <= 1 else (int(thickness) + 1) | 1
    h, w = mask.shape
    y0, y1 = max(0, rows[0] - side), min(h, rows[-1] + 1 + side)  # all holes and paint lie in here
    x0, x1 = max(0, cols[0] - side), min(w, cols[-1] + 1 + side)
    framed = np.zeros((y1 - y0 + 2, x1 - x0 + 2), bool)  # a background frame stands for outside
    framed[1:-1, 1:-1] = mask[y0:y1, x0:x1]
    frame = np.ones_like(framed)
    frame[1:-1, 1:-1] = False
    filled = ~flood_fill(~framed, frame)
    inner = filled[1:-1, 1:-1] & filled[:-2, 1:-1] & filled[2:, 1:-1] & filled[1:-1, :-2] & filled[1:-1, 2:]
    result[y0:y1, x0:x1] = _dilate_square(filled[1:-1, 1:-1] & ~inner, side)
    return result
