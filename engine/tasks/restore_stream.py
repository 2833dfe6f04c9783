"""Restoration of images too large for memory: read in rows, written band by band.

`restore_to_file(runner, large_image, path)` runs the same tiles, blend and encoding as
`restore()` (one `TileScheduler`, so the output is bit-for-bit the in-memory one) but
takes each tile row's input from a lazily decoded file (`engine.media.large_image`) and
hands each finished band of output rows to a streaming writer. Peak memory is one tile's
activations, one band of output rows and the rows of vertical overlap, full width: for
a 20000² ×2 restore, hundreds of megabytes instead of the 6 GB an in-memory run needs.
The tile edge is capped so one band of output rows stays within STREAM_BAND_BYTES.

Alpha is resized with the same Lanczos as `restore()`, band by band with 4 rows of
context either side (Lanczos-4's reach), which gives the whole-plane result exactly.
"""
from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from engine.events import CancelToken, ProgressCallback
from engine.media.tiling import TileScheduler
from engine.tasks.restore import DEFAULT_OVERLAP, _info, _setup, resize_alpha

if TYPE_CHECKING:
    from engine.media.large_image import LargeImage
    from engine.runtimes.base import Runner

STREAM_BAND_BYTES = 256 * 2**20  # one band of encoded output rows, at most
LANCZOS_REACH = 4  # input rows either side that one Lanczos-4 output row reads


@dataclass(frozen=True)
class RestoredFile:
    """A restoration written straight to a file (the image is never in memory whole)."""

    path: Path
    scale: int
    source_size: tuple[int, int]  # (width, height) of the input
    size: tuple[int, int]  # (width, height) of the output
    tile_size: int
    info: dict[str, Any] = field(default_factory=dict)


def stream_tile_cap(width: int, scale: int, channels: int, itemsize: int,
                    overlap: int) -> int:
    """The largest tile edge whose band of output rows fits STREAM_BAND_BYTES."""
    row_bytes = width * scale * channels * itemsize * scale
    return max(64, STREAM_BAND_BYTES // max(1, row_bytes) + overlap)


def restore_to_file(runner: Runner, image: LargeImage, path: str | Path, *,
                    tile_size: int | None = None, tile_overlap: int = DEFAULT_OVERLAP,
                    precision: str | None = None, quality: int | None = None,
                    progress: ProgressCallback | None = None,
                    cancel: CancelToken | None = None) -> RestoredFile:
    """Restore `image` into `path` (PNG/TIFF/JPEG/WebP by suffix), streaming both ways."""
    from engine.media.large_image import write_bands

    width, height = image.size
    setup = _setup(runner, height, width, tile_size=tile_size, precision=precision)
    spec, s = setup.spec, setup.spec.scale
    dtype = image.dtype
    channels = 4 if image.has_alpha else 3
    cap = stream_tile_cap(width, s, channels, np.dtype(dtype).itemsize, tile_overlap)
    tile = min(setup.tile_size, cap)
    if tile < setup.tile_size:
        setup.notes.append(f"tiles capped at {tile} px so one band of output rows stays "
                           f"under {STREAM_BAND_BYTES // 2**20} MB")
    tiler = TileScheduler(setup.caller, scale=s, channels_out=3, requirement=spec.requirement,
                          tile_size=tile, overlap=tile_overlap, progress=progress,
                          cancel=cancel, item=image.name)
    max_value = 65535.0 if dtype == np.uint16 else 255.0
    requirement = spec.requirement

    def region(y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        return image.region(y0, y1, x0, x1, requirement.border, requirement.border_mode)

    current: list[np.ndarray] = []

    def rows_of(y0: int, y1: int) -> np.ndarray:
        current[:] = [np.empty((y1 - y0, width * s, channels), dtype)]
        return current[0][..., :3]

    def bands() -> Iterator[np.ndarray]:
        for y0, y1 in tiler.bands(region, height, width, max_value=max_value,
                                  rows_of=rows_of):
            band = current[0]
            if image.has_alpha:
                band[..., 3] = _alpha_band(image, y0, y1, s)
            yield band

    written = write_bands(path, bands(), width=width * s, height=height * s,
                          channels=channels, dtype=dtype, quality=quality)
    info = _info(runner, setup, tiler, tile_overlap, image.bit_depth)
    info["streamed"] = True
    return RestoredFile(path=written, scale=s, source_size=(width, height),
                        size=(width * s, height * s), tile_size=tiler.stats.tile_size,
                        info=info)


def _alpha_band(image: LargeImage, y0: int, y1: int, scale: int) -> np.ndarray:
    """Output rows [y0, y1) of the alpha plane resized ×scale, as `resize_alpha` of the
    whole plane gives them: the band is resized with LANCZOS_REACH rows of context."""
    top = max(0, y0 // scale - LANCZOS_REACH)
    bottom = min(image.height, math.ceil(y1 / scale) + LANCZOS_REACH)
    rows = image.alpha_rows(top, bottom)
    resized = resize_alpha(rows, (image.width * scale, (bottom - top) * scale))
    return resized[y0 - top * scale:y1 - top * scale]
