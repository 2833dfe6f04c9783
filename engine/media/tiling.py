"""Tiled image-to-image inference with feathered seams and bounded memory.

Any image size runs through a model by cutting it into overlapping tiles, running
each tile (padded to the model's size requirement, then cropped back) and blending
the outputs with linear ramps across the overlaps. Memory stays bounded: the output
is accumulated one band of tile rows at a time in float32 and each finished band is
converted straight into the preallocated output array (uint8/uint16), so the float
accumulators never exceed one band.

Seam exactness. Inside an overlap of `overlap` input pixels, each tile's weight is
zero over the outer quarter next to its own edge (where zero padding inside the
model corrupts it), ramps linearly over the middle half and is one beyond. So when
the model's receptive-field radius is at most `overlap // 4` input pixels, the
tiled output equals the whole-image output up to float rounding. Image borders get
no ramp: there the tile edge *is* the image edge, exactly as in one whole pass.

Unpadded ("valid") convolutions. A model whose convolutions have no padding (the
waifu2x family) loses `border` input pixels on each side: its output is
scale·(H − 2·border) × scale·(W − 2·border). Each tile is then cut from the image with
`border` extra pixels of real context on every side; only where that context falls
outside the image is it made up, by replicating (`border_mode = "edge"`) or mirroring
(`"reflect"`) the image's edge pixels — the same pixels `np.pad(image, border, mode)`
would give a whole-image pass. Every tile's output is then exactly the whole-image
output over that tile (the model never sees padding inside the image), so seams are
exact whatever the overlap (up to float rounding in the blend).

Out of memory: a tile that fails with an out-of-memory error is split into
sub-tiles of half the size (recursively), and every later tile uses the smaller
size, like chaiNNer — the run degrades instead of failing.

Pure numpy; torch is imported only to recognise its out-of-memory error.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np

from engine.events import CancelToken, Progress, ProgressCallback

MIN_TILE = 16  # below this, a model sees too little context to be useful


BORDER_MODES = ("edge", "reflect")  # how the image is extended for a model's border


@dataclass(frozen=True)
class SizeRequirement:
    """What input sizes a model accepts (spandrel's SizeRequirements, plus fixed shapes).

    `border`: input pixels the model loses on each side (unpadded convolutions), so
    output = scale·(input − 2·border). Tile sizes here never include it: a tile of
    h×w is fed as (h + 2·border)×(w + 2·border), and `multiple_of`, `minimum`,
    `square` and `fixed` apply to that model input.
    """

    multiple_of: int = 1
    minimum: int = 0
    square: bool = False
    fixed: tuple[int, int] | None = None  # (height, width) of a fixed-shape export's input
    border: int = 0
    border_mode: str = "edge"  # one of BORDER_MODES

    def __post_init__(self) -> None:
        if self.border < 0:
            raise ValueError(f"border is {self.border}; expected >= 0 pixels")
        if self.border_mode not in BORDER_MODES:
            raise ValueError(f"border_mode is {self.border_mode!r}; expected one of "
                             f"{', '.join(BORDER_MODES)}")
        if self.fixed is not None and min(self.fixed) <= 2 * self.border:
            raise ValueError(f"a fixed {self.fixed[1]}×{self.fixed[0]} input leaves nothing "
                             f"inside a border of {self.border} pixels")

    def padded_size(self, height: int, width: int) -> tuple[int, int]:
        """The smallest accepted tile (height, width) that contains (height, width).

        Border excluded on both sides: the model input is the result + 2·border.
        """
        b2 = 2 * self.border
        if self.fixed is not None:
            fh, fw = self.fixed[0] - b2, self.fixed[1] - b2
            if height > fh or width > fw:
                raise ValueError(f"a {width}×{height} tile does not fit the model's fixed "
                                 f"{fw}×{fh} input" + (f" (less its border of {self.border} "
                                                       f"pixels per side)" if b2 else ""))
            return fh, fw
        m = max(1, self.multiple_of)
        h = _ceil_to(max(height + b2, self.minimum), m)
        w = _ceil_to(max(width + b2, self.minimum), m)
        if self.square:
            h = w = max(h, w)
        return h - b2, w - b2

    def fit_tile(self, tile_size: int) -> int:
        """Largest tile edge <= tile_size that needs no padding (at least one multiple)."""
        b2 = 2 * self.border
        if self.fixed is not None:
            return min(self.fixed) - b2
        m = max(1, self.multiple_of)
        fit = max(self.minimum, tile_size + b2) // m * m
        if fit <= b2:  # the smallest accepted input that leaves a tile inside the border
            fit = _ceil_to(max(self.minimum, b2 + 1), m)
        return fit - b2


def _ceil_to(x: int, m: int) -> int:
    return -(-x // m) * m


def pad_tile(tile: np.ndarray, requirement: SizeRequirement) -> np.ndarray:
    """Pad a (C, H, W) tile at the bottom/right to the requirement: reflect, then edge.

    Reflect padding keeps local statistics (no dark border for the model to
    "restore"); numpy's reflect cannot exceed size-1, the rest is edge-replicated
    (the same rule spandrel uses). With a border, `tile` already carries its
    2·border context pixels: the padding goes after them, and only affects output
    beyond the tile, which is cropped away.
    """
    _, h, w = tile.shape
    b2 = 2 * requirement.border
    ph, pw = requirement.padded_size(h - b2, w - b2)
    ph, pw = ph + b2, pw + b2
    pad_h, pad_w = ph - h, pw - w
    if not pad_h and not pad_w:
        return tile
    rh, rw = min(pad_h, h - 1), min(pad_w, w - 1)
    if rh or rw:
        tile = np.pad(tile, ((0, 0), (0, rh), (0, rw)), mode="reflect")
    if pad_h - rh or pad_w - rw:
        tile = np.pad(tile, ((0, 0), (0, pad_h - rh), (0, pad_w - rw)), mode="edge")
    return tile


def _border_indices(start: int, stop: int, length: int, mode: str) -> np.ndarray:
    """Source indices for positions [start, stop) of an axis of `length`, extended past
    its ends like np.pad(mode): "edge" repeats the end pixel, "reflect" mirrors about it
    (periodically, as np.pad does when the pad exceeds the length)."""
    idx = np.arange(start, stop)
    if mode == "reflect" and length > 1:
        period = 2 * (length - 1)
        idx = np.mod(idx, period)
        return np.where(idx >= length, period - idx, idx)
    return np.clip(idx, 0, length - 1)


def border_region(image: np.ndarray, y0: int, y1: int, x0: int, x1: int, border: int,
                  mode: str = "edge") -> np.ndarray:
    """image[y0-border:y1+border, x0-border:x1+border] (H, W, ...), extended past the
    image's edges with `mode`; pixels inside the image are always the real ones."""
    h, w = image.shape[:2]
    if border == 0:
        return image[y0:y1, x0:x1]
    ys, xs = y0 - border, x0 - border
    ye, xe = y1 + border, x1 + border
    if ys >= 0 and xs >= 0 and ye <= h and xe <= w:  # all real context: a plain slice
        return image[ys:ye, xs:xe]
    rows = _border_indices(ys, ye, h, mode)
    cols = _border_indices(xs, xe, w, mode)
    return image[rows[:, None], cols[None, :]]


# -- planning -------------------------------------------------------------------------


def axis_starts(length: int, tile: int, overlap: int, align: int = 1) -> list[int]:
    """Start offsets of tiles of edge `tile` covering [0, length) with >= `overlap` overlap.

    Tiles are spread evenly (the last one ends at `length`), which wastes less
    than a fixed stride with a clamped last tile. Starts are aligned to `align`
    (window grids of Swin-like models) when the overlap still holds.
    """
    if tile >= length:
        return [0]
    overlap = min(overlap, tile - 1)
    count = max(2, math.ceil((length - overlap) / (tile - overlap)))
    span = length - tile
    even = [round(i * span / (count - 1)) for i in range(count)]
    if align > 1:
        # one extra tile is a fair price for window-aligned tiles (no shifted-window drift)
        for n in (count, count + 1):
            aligned = [round(i * span / (n - 1)) // align * align for i in range(n - 1)] + [span]
            if all(b - a <= tile - overlap for a, b in zip(aligned, aligned[1:])):
                return aligned
    return even


def even_tile_size(length: int, tile: int, overlap: int, multiple_of: int = 1) -> int:
    """Shrink `tile` to the smallest size giving the same tile count (less wasted overlap)."""
    if tile >= length:
        return _ceil_to(length, multiple_of)
    count = math.ceil((length - overlap) / (tile - overlap))
    even = math.ceil((length + (count - 1) * overlap) / count)
    # never below 2 × overlap: the seam ramps (and their exactness guard) need that room
    return min(tile, _ceil_to(max(even, 2 * overlap), multiple_of))


@dataclass(frozen=True)
class TilePlan:
    height: int
    width: int
    tile_h: int
    tile_w: int
    overlap: int
    ys: tuple[int, ...]
    xs: tuple[int, ...]

    @property
    def count(self) -> int:
        return len(self.ys) * len(self.xs)


def plan_tiles(height: int, width: int, tile_size: int, overlap: int,
               requirement: SizeRequirement = SizeRequirement()) -> TilePlan:
    tile = requirement.fit_tile(tile_size)
    m = 1 if requirement.fixed else max(1, requirement.multiple_of)
    overlap = max(0, min(overlap, tile // 2))
    # square models get square-padded tiles in pad_tile; the plan itself may be oblong
    th = min(even_tile_size(height, tile, overlap, m), height)
    tw = min(even_tile_size(width, tile, overlap, m), width)
    overlap = max(0, min(overlap, th // 2 if th < height else overlap,
                         tw // 2 if tw < width else overlap))
    ys = axis_starts(height, th, overlap, m)
    xs = axis_starts(width, tw, overlap, m)
    return TilePlan(height, width, th, tw, overlap, tuple(ys), tuple(xs))


def ramp(length: int, start_edge: bool, end_edge: bool, overlap: int, scale: int) -> np.ndarray:
    """1-D blending weights over one tile axis (in output pixels).

    `start_edge`/`end_edge` say whether that side touches a neighbouring tile
    (True) or the image border (False: full weight up to the border).
    """
    n = length * scale
    weights = np.ones(n, dtype=np.float32)
    if overlap <= 0:
        return weights
    guard = overlap // 4 * scale
    width = max(1, overlap * scale - 2 * guard)
    # pixel centres: distance from the edge in output pixels, +0.5
    dist = np.arange(n, dtype=np.float32) + 0.5
    up = np.clip((dist - guard) / width, 0.0, 1.0)
    if start_edge:
        weights = np.minimum(weights, up)
    if end_edge:
        weights = np.minimum(weights, up[::-1])
    return weights


# -- running --------------------------------------------------------------------------


TileFn = Callable[[np.ndarray], np.ndarray]  # (C, h, w) float32 -> (C, h*s, w*s) float32
# (y0, y1, x0, x1) -> the (y1 - y0 + 2·border, x1 - x0 + 2·border, C) input of one tile
RegionFn = Callable[[int, int, int, int], np.ndarray]


def is_out_of_memory(exc: BaseException) -> bool:
    """True for torch/CUDA/onnxruntime/numpy allocation failures."""
    if isinstance(exc, MemoryError):
        return True
    try:
        import torch

        if isinstance(exc, torch.OutOfMemoryError):
            return True
    except ImportError:  # pragma: no cover - torch is a dependency
        pass
    text = str(exc).lower()
    return any(marker in text for marker in (
        "out of memory", "failed to allocate", "bad_alloc", "bad allocation",
        "cudaerrormemoryallocation", "cudnn_status_alloc_failed", "allocation failed",
    ))


def _free_cached_memory() -> None:
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except Exception:  # best effort only
        pass


@dataclass
class TileStats:
    tile_size: int  # the largest tile edge that has worked (after any halving)
    halvings: int = 0
    tiles_run: int = 0
    planned: int = 0
    history: list[int] = field(default_factory=list)  # tile sizes tried, in order


class TileScheduler:
    """Runs `tile_fn` over an image tile by tile; see the module docstring."""

    def __init__(self, tile_fn: TileFn, *, scale: int, channels_out: int,
                 requirement: SizeRequirement = SizeRequirement(), tile_size: int,
                 overlap: int = 32, min_tile: int = MIN_TILE,
                 progress: ProgressCallback | None = None, cancel: CancelToken | None = None,
                 item: str = "") -> None:
        self.tile_fn = tile_fn
        self.scale = scale
        self.channels_out = channels_out
        self.requirement = requirement
        self.overlap = overlap
        self.min_tile = max(min_tile, requirement.fit_tile(min_tile))
        self.progress = progress
        self.cancel = cancel
        self.item = item
        self.stats = TileStats(tile_size=requirement.fit_tile(tile_size))
        self.stats.history.append(self.stats.tile_size)

    # -- public --------------------------------------------------------------------
    def run(self, image: np.ndarray, out: np.ndarray, *, max_value: float) -> np.ndarray:
        """Restore `image` (H, W, C) uint8/uint16/float into `out` (H*s, W*s, C_out).

        `max_value` is the input's white level (255, 65535 or 1.0); `out`'s dtype
        decides the output encoding (integers are rounded from [0, 1]).
        """
        h, w = image.shape[:2]
        border, mode = self.requirement.border, self.requirement.border_mode

        def region(y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
            return border_region(image, y0, y1, x0, x1, border, mode)

        for _ in self.bands(region, h, w, max_value=max_value,
                            rows_of=lambda y0, y1: out[y0:y1]):
            pass
        return out

    def bands(self, region: RegionFn, height: int, width: int, *, max_value: float,
              rows_of: Callable[[int, int], np.ndarray]) -> Iterator[tuple[int, int]]:
        """Run the tiles row by row; yield (y0, y1) each time output rows [y0, y1) are final.

        `region(y0, y1, x0, x1)` gives the input pixels of one tile with its border
        context (requested top to bottom, so it may be read from a file lazily);
        `rows_of(y0, y1)` gives the (y1 - y0, W·s, C_out) array the finished rows are
        encoded into (a slice of a whole output, or a band that is written out).
        Float memory is one tile plus the rows a tile row hands to the next one (the
        vertical overlap), full width: columns are encoded as soon as no later tile
        of the row reaches them. Every pixel sums its tiles in the same order as a
        whole-band accumulator would, so the output does not depend on this layout.
        """
        plan = plan_tiles(height, width, self.stats.tile_size, self.overlap, self.requirement)
        self.stats.planned = plan.count
        s, channels = self.scale, self.channels_out
        out_w = width * s
        tile_rows, done = plan.tile_h * s, 0
        # rows [carry_y0, carry_y0 + carry rows) of the output, summed over earlier tile rows
        carry = np.zeros((channels, 0, out_w), np.float32)
        carry_w = np.zeros((0, out_w), np.float32)
        for row, y0 in enumerate(plan.ys):
            top = y0 * s  # rows above `top` are all written
            final_end = (plan.ys[row + 1] if row + 1 < len(plan.ys) else height) * s
            final_rows, carried = final_end - top, carry.shape[1]
            target = rows_of(top, final_end)
            next_carry = np.zeros((channels, tile_rows - final_rows, out_w), np.float32)
            next_carry_w = np.zeros((tile_rows - final_rows, out_w), np.float32)
            wy = ramp(plan.tile_h, row > 0, row < len(plan.ys) - 1, plan.overlap, s)
            # the window: output columns [win_x0, win_x1) of this tile row, not yet encoded
            win = np.zeros((channels, tile_rows, 0), np.float32)
            win_w = np.zeros((tile_rows, 0), np.float32)
            win_x0 = win_x1 = 0
            for col, x0 in enumerate(plan.xs):
                if self.cancel is not None:
                    self.cancel.raise_if_cancelled()
                x1 = x0 + plan.tile_w
                tile_x0, tile_x1 = x0 * s, x1 * s
                if tile_x1 > win_x1:  # new columns enter the window, with what earlier rows gave
                    grown = np.zeros((channels, tile_rows, tile_x1 - win_x0), np.float32)
                    grown_w = np.zeros((tile_rows, tile_x1 - win_x0), np.float32)
                    grown[:, :, :win_x1 - win_x0] = win
                    grown_w[:, :win_x1 - win_x0] = win_w
                    grown[:, :carried, win_x1 - win_x0:] = carry[:, :, win_x1:tile_x1]
                    grown_w[:carried, win_x1 - win_x0:] = carry_w[:, win_x1:tile_x1]
                    win, win_w, win_x1 = grown, grown_w, tile_x1
                result = self._process(_to_float_chw(region(y0, y0 + plan.tile_h, x0, x1),
                                                     max_value))
                wx = ramp(plan.tile_w, col > 0, col < len(plan.xs) - 1, plan.overlap, s)
                weight = wy[:, None] * wx[None, :]
                if result.flags.writeable:
                    result *= weight
                else:
                    result = result * weight
                win[:, :, tile_x0 - win_x0:tile_x1 - win_x0] += result
                win_w[:, tile_x0 - win_x0:tile_x1 - win_x0] += weight
                done += 1
                if self.progress is not None:
                    self.progress(Progress("infer", done, plan.count, unit="tiles", item=self.item))
                # columns left of the next tile get nothing more from this row: settle them
                settled = (plan.xs[col + 1] * s if col + 1 < len(plan.xs) else out_w) - win_x0
                if settled > 0:
                    _finalise(win[:, :final_rows, :settled], win_w[:final_rows, :settled],
                              target[:, win_x0:win_x0 + settled])
                    next_carry[:, :, win_x0:win_x0 + settled] = win[:, final_rows:, :settled]
                    next_carry_w[:, win_x0:win_x0 + settled] = win_w[final_rows:, :settled]
                    win, win_w = win[:, :, settled:], win_w[:, settled:]
                    win_x0 += settled
            carry, carry_w = next_carry, next_carry_w
            yield top, final_end

    # -- internals -------------------------------------------------------------------
    def _process(self, tile: np.ndarray) -> np.ndarray:
        """Run one (C, h + 2·border, w + 2·border) tile, splitting it on out-of-memory errors.

        Returns the (C, h·s, w·s) output of the h×w tile inside the border.
        """
        b2 = 2 * self.requirement.border
        h, w = tile.shape[1] - b2, tile.shape[2] - b2
        if max(h, w) > self.stats.tile_size:
            return self._split(tile)
        try:
            out = self._call(tile)
        except Exception as exc:
            if not is_out_of_memory(exc):
                raise
            _free_cached_memory()
            # halve the tile size in force (not the evenly-shrunk edge of this tile), so
            # tiles stay >= 2 × overlap as long as possible and seams stay exact
            smaller = self.requirement.fit_tile(self.stats.tile_size // 2)
            while smaller >= max(h, w) and smaller > self.min_tile:
                smaller = self.requirement.fit_tile(smaller // 2)
            if smaller < self.min_tile or smaller >= max(h, w) or self.requirement.fixed:
                raise MemoryError(
                    f"out of memory even with {max(h, w)}-pixel tiles ({exc}). Close other "
                    f"programs using the GPU, or run on the CPU.") from exc
            self.stats.tile_size = smaller
            self.stats.halvings += 1
            self.stats.history.append(smaller)
            return self._split(tile)
        return out

    def _split(self, tile: np.ndarray) -> np.ndarray:
        """Tile a too-large tile with the current (smaller) tile size; region-sized buffers.

        Sub-tiles take their border context from `tile`'s own (real or extended) pixels.
        """
        b2 = 2 * self.requirement.border
        h, w = tile.shape[1] - b2, tile.shape[2] - b2
        s = self.scale
        plan = plan_tiles(h, w, self.stats.tile_size, self.overlap, self.requirement)
        acc = np.zeros((self.channels_out, h * s, w * s), np.float32)
        wsum = np.zeros((h * s, w * s), np.float32)
        for row, y0 in enumerate(plan.ys):
            wy = ramp(plan.tile_h, row > 0, row < len(plan.ys) - 1, plan.overlap, s)
            for col, x0 in enumerate(plan.xs):
                if self.cancel is not None:
                    self.cancel.raise_if_cancelled()
                sub = tile[:, y0:y0 + plan.tile_h + b2, x0:x0 + plan.tile_w + b2]
                result = self._process(sub)
                wx = ramp(plan.tile_w, col > 0, col < len(plan.xs) - 1, plan.overlap, s)
                weight = wy[:, None] * wx[None, :]
                ys, xs = slice(y0 * s, (y0 + plan.tile_h) * s), slice(x0 * s, (x0 + plan.tile_w) * s)
                acc[:, ys, xs] += result * weight
                wsum[ys, xs] += weight
        return acc / wsum

    def _call(self, tile: np.ndarray) -> np.ndarray:
        border, s = self.requirement.border, self.scale
        h, w = tile.shape[1] - 2 * border, tile.shape[2] - 2 * border
        padded = pad_tile(tile, self.requirement)
        out = np.asarray(self.tile_fn(padded), dtype=np.float32)
        self.stats.tiles_run += 1
        in_hw = (padded.shape[1], padded.shape[2])
        expected = ((in_hw[0] - 2 * border) * s, (in_hw[1] - 2 * border) * s)
        if out.shape[1:] != expected:
            raise ValueError(_shape_mismatch(in_hw, tuple(out.shape[1:3]), expected, s, border))
        return out[:, : h * s, : w * s]


def _shape_mismatch(in_hw: tuple[int, int], out_hw: tuple[int, ...], expected: tuple[int, int],
                    scale: int, border: int) -> str:
    """The error for a model output of the wrong size, with the sidecar fix when one fits."""
    lost = f" less a border of {border} pixels per side" if border else ""
    text = (f"the model returned a {out_hw[1]}×{out_hw[0]} tile for a {in_hw[1]}×{in_hw[0]} "
            f"input; expected scale ×{scale}{lost} ({expected[1]}×{expected[0]}).")
    from engine.catalog.sidecar import fitting_border  # light: no numpy, no torch

    fits = fitting_border(in_hw, out_hw[:2], scale)
    if fits is not None and fits != border:
        return (f"{text} The output is what a model of unpadded convolutions losing {fits} "
                f"pixels per side gives: {out_hw[0]} = {scale} × ({in_hw[0]} − 2×{fits}). "
                f"Set border = {fits} in the model's sidecar.")
    return f"{text} Check the model's scale and border in its sidecar."


def _to_float_chw(region: np.ndarray, max_value: float) -> np.ndarray:
    arr = np.asarray(region, dtype=np.float32)
    if max_value != 1.0:
        arr = arr * np.float32(1.0 / max_value)
    return np.ascontiguousarray(arr.transpose(2, 0, 1))


def _finalise(acc: np.ndarray, wsum: np.ndarray, out: np.ndarray) -> None:
    """Normalise blended (C, rows, W) values and encode them into `out` (rows, W, C).

    Works in place on `acc` (those rows are finished) to avoid band-sized temporaries.
    """
    if acc.shape[1] == 0:
        return
    np.divide(acc, wsum[None], out=acc)
    np.clip(acc, 0.0, 1.0, out=acc)
    if out.dtype == np.uint8 or out.dtype == np.uint16:
        np.multiply(acc, 255.0 if out.dtype == np.uint8 else 65535.0, out=acc)
        np.rint(acc, out=acc)
    out[...] = acc.transpose(1, 2, 0)
