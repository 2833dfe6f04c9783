"""Images too large to hold in memory: read in rows from a lazily decoded file, written
band by band (the optional `large` extra: pyvips, which bundles libvips, and tifffile).

`open_large_image(path)` reads only the header. libvips decodes PNG, TIFF, JPEG and WebP
on demand, top to bottom (`access="sequential"`), so `LargeImage.region` and
`LargeImage.alpha_rows` keep just a window of decoded rows: the rows asked for, plus a
few behind them for a tile's border context. Requests must move down the image.

`write_bands(path, bands, ...)` writes rows as they come: to a strip TIFF (tifffile takes
an iterator of strips), which libvips then re-encodes, still streaming, to PNG, JPEG or
WebP. Both files are temporaries in the output folder, renamed into place only when
complete (the `.<stem>.` prefix is what `engine.jobs.outputs.cleanup_partial` removes
after a crash).

The pixel limit guards against decompression bombs: images whose decoding would fill
memory. A streamed image never is decoded whole, so `stream_pixel_limit` lets the default
limit grow to `STREAM_PIXEL_LIMIT`; a limit the user lowered on purpose is kept.
"""
from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from engine.errors import InputError, MissingPackageError
from engine.media.image import DEFAULT_PIXEL_LIMIT, _bomb_message, check_readable_file
from engine.media.tiling import _border_indices
from engine.paths import make_temp_file

STREAM_MIN_PIXELS = 6000 * 6000  # at and above this, restoration streams (when pyvips is here)
STREAM_PIXEL_LIMIT = 2**30  # 32768²: the default limit for streamed images
ROWS_KEPT_BEHIND = 8  # decoded rows kept above the last request (border context, Lanczos taps)
STRIP_ROWS = 64  # rows per TIFF strip of the intermediate file
INSTALL_HINT = "pip install 'ocula[large]'"
_STREAM_FORMATS = {".png": "png", ".tif": "tiff", ".tiff": "tiff", ".jpg": "jpeg",
                   ".jpeg": "jpeg", ".webp": "webp"}


def pyvips_available() -> bool:
    try:
        import pyvips  # noqa: F401
    except (ImportError, OSError):  # OSError: the package is there but libvips is not
        return False
    return True


def _pyvips() -> Any:
    try:
        import pyvips
    except (ImportError, OSError) as exc:
        raise MissingPackageError(
            f"streaming very large images needs pyvips and its libvips build "
            f"({INSTALL_HINT}).") from exc
    return pyvips


def stream_pixel_limit(limit: int | None) -> int:
    """The pixel limit for an image that is streamed: the default grows to
    STREAM_PIXEL_LIMIT (memory stays bounded by a band); a lowered or raised limit is kept."""
    if limit is None or limit == DEFAULT_PIXEL_LIMIT:
        return STREAM_PIXEL_LIMIT
    return limit


def image_pixels(path: Path) -> int:
    """Width × height from the file's header (Pillow; nothing is decoded), 0 if unknown."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            return int(img.size[0]) * int(img.size[1])
    except Exception:  # noqa: BLE001 - unreadable files get their message from the reader
        return 0


@dataclass
class LargeImage:
    """A lazily decoded image: RGB rows at native depth (uint8/uint16) and its alpha."""

    path: Path
    width: int
    height: int
    bit_depth: int
    has_alpha: bool
    _vips: Any = field(repr=False)
    _bands: int = 3
    _vips_module: Any = field(default=None, repr=False)
    _region: Any = field(default=None, repr=False)
    _rows: np.ndarray | None = field(default=None, repr=False)  # decoded window
    _rows_y0: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def size(self) -> tuple[int, int]:
        return self.width, self.height

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def label(self) -> str:
        """How results and messages name it (LoadedImage's field: streamed images are
        always local files)."""
        return str(self.path)

    @property
    def dtype(self) -> type:
        return np.uint16 if self.bit_depth == 16 else np.uint8

    def region(self, y0: int, y1: int, x0: int, x1: int, border: int = 0,
               mode: str = "edge") -> np.ndarray:
        """RGB pixels [y0-border, y1+border) × [x0-border, x1+border), extended past the
        image's edges like `engine.media.tiling.border_region` (the same pixels)."""
        rows = _border_indices(y0 - border, y1 + border, self.height, mode)
        cols = _border_indices(x0 - border, x1 + border, self.width, mode)
        window = self._window(int(rows.min()), int(rows.max()) + 1)
        picked = window[rows - self._rows_y0][:, cols]
        return _rgb(picked, self._bands)

    def alpha_rows(self, y0: int, y1: int) -> np.ndarray:
        """The alpha plane's rows [y0, y1) (clipped to the image), full width."""
        y0, y1 = max(0, y0), min(self.height, y1)
        window = self._window(y0, y1, drop=False)
        return np.ascontiguousarray(window[y0 - self._rows_y0:y1 - self._rows_y0, :, -1])

    def _window(self, y0: int, y1: int, *, drop: bool = True) -> np.ndarray:
        """Decoded rows covering [y0, y1); reads only rows below those already decoded.

        A tile's request (`drop`) lets go of rows more than ROWS_KEPT_BEHIND above it:
        the next tile row starts lower, and alpha bands reach LANCZOS taps behind it."""
        have = self._rows
        have_end = self._rows_y0 + (0 if have is None else have.shape[0])
        if have is not None and y0 < self._rows_y0:
            raise RuntimeError(f"{self.path}: row {y0} asked for after row {self._rows_y0} "
                               f"was dropped; a streamed image is read top to bottom")
        if have is None or y1 > have_end:
            start = have_end if have is not None else y0
            fresh = self._decode(start, y1)
            have = fresh if have is None else np.concatenate([have, fresh], axis=0)
        keep_from = max(self._rows_y0, y0 - ROWS_KEPT_BEHIND) if drop else self._rows_y0
        self._rows = have[keep_from - self._rows_y0:]
        self._rows_y0 = keep_from
        return self._rows

    def _decode(self, y0: int, y1: int) -> np.ndarray:
        try:
            if self._region is None:  # one region: the loader sees one reader, in order
                self._region = self._vips_module.Region.new(self._vips)
            data = self._region.fetch(0, y0, self.width, y1 - y0)
        except Exception as exc:  # pyvips.Error: truncated or corrupt data
            raise InputError(f"{self.path}: corrupt or truncated image at row {y0} "
                             f"({str(exc).strip().splitlines()[-1]}).") from exc
        return np.frombuffer(data, self.dtype).reshape(y1 - y0, self.width, self._bands)


def _rgb(pixels: np.ndarray, bands: int) -> np.ndarray:
    """(h, w, bands) → (h, w, 3): grey is repeated, alpha dropped (as the in-memory reader)."""
    if bands <= 2:
        return np.repeat(pixels[..., :1], 3, axis=2)
    return pixels[..., :3] if bands == 4 else pixels


def open_large_image(path: str | os.PathLike, *, pixel_limit: int | None = None) -> LargeImage:
    """Open an image for streaming: header only; an InputError naming the file otherwise."""
    path = Path(path)
    if check_readable_file(path, what="an image") == 0:
        raise InputError(f"{path}: empty file (0 bytes).")
    pyvips = _pyvips()
    try:
        image = pyvips.Image.new_from_file(str(path), access="sequential")
    except pyvips.Error as exc:
        raise InputError(f"{path}: not an image Ocula can read (unknown or corrupt "
                         f"format).") from exc
    limit = stream_pixel_limit(pixel_limit)
    if image.width * image.height > limit:
        raise InputError(_bomb_message(path, (image.width, image.height), limit))
    formats = {"uchar": 8, "ushort": 16}
    if image.format not in formats or image.bands not in (1, 2, 3, 4) or \
            image.interpretation in ("cmyk", "lab", "labs", "lch", "xyz", "fourier"):
        raise InputError(
            f"{path}: a streamed restore reads 8- or 16-bit RGB or grey images (with or "
            f"without alpha); this one is {image.bands}-band {image.format} "
            f"{image.interpretation}. Convert it to RGB first.")
    orientation = image.get("orientation") if image.get_typeof("orientation") else 1
    if int(orientation) not in (0, 1):
        raise InputError(
            f"{path}: its EXIF orientation ({orientation}) turns or mirrors the picture, which "
            f"a streamed restore (images of {STREAM_MIN_PIXELS:,} pixels and more) cannot "
            f"apply while reading top to bottom. Save an upright copy first (an editor's "
            f"'rotate as EXIF says'), then restore that.")
    return LargeImage(path=path, width=image.width, height=image.height,
                      bit_depth=formats[image.format], has_alpha=image.bands in (2, 4),
                      _vips=image, _bands=image.bands, _vips_module=pyvips)


# -- writing ----------------------------------------------------------------------------


def streamable_suffix(suffix: str) -> bool:
    return suffix.lower() in _STREAM_FORMATS


def write_bands(path: str | os.PathLike, bands: Iterable[np.ndarray], *, width: int,
                height: int, channels: int, dtype: Any, quality: int | None = None) -> Path:
    """Write (rows, width, channels) arrays, top to bottom, as one image at `path`.

    Atomic: temporary files in the same folder, renamed when complete; removed on any
    error. 16-bit is kept in PNG and TIFF (JPEG and WebP are 8-bit formats: refused).
    """
    try:
        import tifffile
    except ImportError as exc:
        raise MissingPackageError(f"writing a streamed image needs tifffile "
                                  f"({INSTALL_HINT}).") from exc

    path = Path(path)
    fmt = _STREAM_FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise InputError(f"{path}: a streamed image is written as PNG, TIFF, JPEG or WebP, "
                         f"not '{path.suffix}'.")
    dtype = np.dtype(dtype)
    if dtype.itemsize == 2 and fmt in ("jpeg", "webp"):
        raise InputError(f"{path}: {fmt.upper()} holds 8 bits per channel; write a 16-bit "
                         f"image as PNG or TIFF.")
    path.parent.mkdir(parents=True, exist_ok=True)
    temps: list[str] = []
    try:
        fd, strip_tiff = make_temp_file(path.parent, prefix=f".{path.stem}.",
                                        suffix=".strips.tif")
        os.close(fd)
        temps.append(strip_tiff)
        raw_bytes = width * height * channels * dtype.itemsize
        tifffile.imwrite(strip_tiff, data=_strips(bands, width, channels, dtype),
                         shape=(height, width, channels), dtype=dtype,
                         photometric="rgb" if channels >= 3 else "minisblack",
                         extrasamples=("unassalpha",) if channels in (2, 4) else None,
                         planarconfig="contig", rowsperstrip=STRIP_ROWS,
                         bigtiff=raw_bytes > 2**32 - 2**25)
        if fmt == "tiff":
            os.replace(strip_tiff, path)
            return path
        fd, encoded = make_temp_file(path.parent, prefix=f".{path.stem}.", suffix=path.suffix)
        os.close(fd)
        temps.append(encoded)
        _encode(strip_tiff, encoded, fmt, quality)
        os.replace(encoded, path)
        return path
    finally:
        for temp in temps:
            Path(temp).unlink(missing_ok=True)


def _strips(bands: Iterable[np.ndarray], width: int, channels: int,
            dtype: np.dtype) -> Iterator[np.ndarray]:
    """Re-cut bands of any height into STRIP_ROWS-row strips (the last one shorter)."""
    pending: list[np.ndarray] = []
    count = 0
    for band in bands:
        if band.shape[1:] != (width, channels):
            raise ValueError(f"band of shape {band.shape}; expected (rows, {width}, {channels})")
        pending.append(band.astype(dtype, copy=False))
        count += band.shape[0]
        while count >= STRIP_ROWS:
            joined = np.concatenate(pending, axis=0) if len(pending) > 1 else pending[0]
            yield np.ascontiguousarray(joined[:STRIP_ROWS])
            rest = joined[STRIP_ROWS:]
            pending, count = ([rest] if rest.shape[0] else []), rest.shape[0]
    if count:
        yield np.ascontiguousarray(np.concatenate(pending, axis=0))


def _encode(source: str, target: str, fmt: str, quality: int | None) -> None:
    """Re-encode the strip TIFF with libvips, top to bottom (nothing held whole)."""
    pyvips = _pyvips()
    options: dict[str, Any] = {}
    if fmt == "png" and quality is not None:  # the same mapping as engine.media.image
        options["compression"] = max(0, min(9, 9 - int(quality) // 11))
    elif fmt in ("jpeg", "webp") and quality is not None:
        options["Q"] = int(quality)
    try:
        image = pyvips.Image.new_from_file(source, access="sequential")
        image.write_to_file(target, **options)
    except pyvips.Error as exc:
        detail = str(exc).strip().splitlines()[-1]
        raise InputError(f"{target}: libvips could not write the {fmt.upper()} image "
                         f"({detail}). WebP holds at most 16383 pixels a side, JPEG 65535; "
                         f"choose PNG or TIFF for larger outputs.") from exc
