"""Image input and output on Pillow (and OpenCV for 16-bit colour, which Pillow lacks).

Reading normalises what models need (8-bit RGB, EXIF orientation applied) while
keeping what outputs need (native 16-bit depth, alpha). Every failure is an
`InputError` naming the file, so a batch can record it and move on.
Writing is atomic (temporary file + rename) and never replaces an input.
"""
from __future__ import annotations

import errno
import os
import stat
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from engine.errors import InputError
from engine.media import image16
from engine.paths import make_temp_file

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".tif", ".tiff", ".bmp", ".gif"}
DEFAULT_PIXEL_LIMIT = 178_956_970  # Pillow's own default; settable by the user


@dataclass
class LoadedImage:
    rgb: Image.Image  # 8-bit RGB, EXIF orientation applied: what models consume
    array: np.ndarray  # (H, W, 3) at native depth (uint8 or uint16), same orientation
    alpha: np.ndarray | None = None  # (H, W) uint8/uint16, or None
    path: Path | None = None
    bit_depth: int = 8
    source_mode: str = "RGB"  # Pillow mode of the file as stored
    exif_transposed: bool = False
    notes: list[str] = field(default_factory=list)  # e.g. "animated GIF: first frame used"
    source: str | None = None  # the input as named when it is not a local file (a URL)

    @property
    def label(self) -> str:
        """The input's identity for records and messages: its URL, else its path."""
        return self.source or (str(self.path) if self.path else "")

    @property
    def size(self) -> tuple[int, int]:
        return self.rgb.size

    @property
    def name(self) -> str:
        return self.path.name if self.path else "<image>"


def is_image_path(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES


def read_image(path: str | os.PathLike, *, pixel_limit: int | None = None) -> LoadedImage:
    """Read an image file; raise InputError with a clear message on any failure."""
    path = Path(path)
    size = check_readable_file(path, what="an image")
    if size == 0:
        raise InputError(f"{path}: empty file (0 bytes).")
    return _decode(path, path, pixel_limit)


def read_image_bytes(data: bytes, *, name: str, pixel_limit: int | None = None) -> LoadedImage:
    """An image held in memory (an object-store download): the same decoding, limits and
    messages as `read_image`, which name `name`; the result's `source` is `name`."""
    if not data:
        raise InputError(f"{name}: empty file (0 bytes).")
    import io

    loaded = _decode(io.BytesIO(data), name, pixel_limit, raw=data)
    loaded.source = name
    return loaded


def _decode(source: Any, path: Any, pixel_limit: int | None, raw: bytes | None = None
            ) -> LoadedImage:
    """Decode `source` (a path or a file object); `path` names it in messages and, when it
    is a local Path, in the result."""
    limit = pixel_limit or DEFAULT_PIXEL_LIMIT
    local = path if isinstance(path, Path) else None
    try:
        with _open_header(source) as img:
            _check_pixels(path, img.size, limit)  # from the header, before any decoding
            if _is_16bit_colour(img):
                loaded = _read_16bit_colour(raw if raw is not None else path, img, limit, path)
            else:
                loaded = from_pil(img, path=local, pixel_limit=limit)
    except InputError:
        raise
    except PermissionError as exc:
        raise InputError(f"{path}: permission denied; check the file's permissions.") from exc
    except UnidentifiedImageError as exc:
        raise InputError(f"{path}: not an image Ocula can read (unknown or corrupt format).") from exc
    except Image.DecompressionBombError as exc:
        raise InputError(_bomb_message(path, None, limit)) from exc
    except OSError as exc:
        if exc.errno is not None:  # the system refused the read (I/O error, ...), not the decoder
            raise InputError(f"{path}: cannot be read ({exc.strerror or exc}).") from exc
        raise InputError(f"{path}: corrupt or truncated image ({exc}).") from exc
    except (SyntaxError, ValueError) as exc:
        raise InputError(f"{path}: corrupt or truncated image ({exc}).") from exc
    return loaded


def check_readable_file(path: Path, *, what: str) -> int:
    """The size of `path`, or an InputError saying exactly why it cannot be read: not
    there, a dangling symlink, a symlink loop, a folder, permission denied."""
    try:
        st = path.stat()
    except FileNotFoundError as exc:
        if path.is_symlink():
            try:
                target = os.readlink(path)
            except OSError:
                target = "?"
            raise InputError(f"{path}: is a symbolic link to {target}, which does not "
                             f"exist.") from exc
        raise InputError(f"{path}: file not found.") from exc
    except PermissionError as exc:
        raise InputError(f"{path}: permission denied (a folder on its path cannot be "
                         f"entered); check the permissions.") from exc
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise InputError(f"{path}: symbolic link loop (the link points back to itself, "
                             f"directly or through other links).") from exc
        raise InputError(f"{path}: cannot be read ({exc.strerror or exc}).") from exc
    if stat.S_ISDIR(st.st_mode):
        raise InputError(f"{path}: is a folder, not {what}.")
    return st.st_size


_PIL_LIMIT_LOCK = threading.Lock()


def _open_header(path: Path) -> Image.Image:
    """Image.open without Pillow's own bomb check, so OUR limit (which the user may raise
    above Pillow's) applies, and the message can say the image's size. Only the header is
    read here; `_check_pixels` runs before anything is decoded."""
    with _PIL_LIMIT_LOCK:
        saved = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = None
        try:
            return Image.open(path)
        finally:
            Image.MAX_IMAGE_PIXELS = saved


def from_pil(img: Image.Image, *, path: Path | None = None,
             pixel_limit: int | None = None) -> LoadedImage:
    """Normalise an open Pillow image (also used for in-memory images and video frames)."""
    notes: list[str] = []
    if getattr(img, "is_animated", False):
        img.seek(0)
        notes.append(f"animated image with {getattr(img, 'n_frames', '?')} frames: first frame used")
    source_mode = img.mode
    img.load()  # decode now so truncation errors surface here
    transposed = _has_rotation(img)
    img = ImageOps.exif_transpose(img)
    _check_pixels(path, img.size, pixel_limit or DEFAULT_PIXEL_LIMIT)

    array, alpha, depth = _to_arrays(img)
    rgb8 = array if depth == 8 else (array.astype(np.uint32) * 255 // 65535).astype(np.uint8)
    return LoadedImage(
        rgb=Image.fromarray(np.ascontiguousarray(rgb8), "RGB"),
        array=array,
        alpha=alpha,
        path=path,
        bit_depth=depth,
        source_mode=source_mode,
        exif_transposed=transposed,
        notes=notes,
    )


def _is_16bit_colour(img: Image.Image) -> bool:
    """A 16-bit-per-channel RGB(A) PNG or TIFF: Pillow opens it as 8-bit "RGB"/"RGBA"
    (its decoder's raw mode says ";16"), so decoding it with Pillow loses the depth."""
    if img.mode not in ("RGB", "RGBA") or getattr(img, "is_animated", False):
        return False
    for tile in getattr(img, "tile", None) or ():
        args = tile[3] if len(tile) > 3 else None
        raw = args[0] if isinstance(args, tuple) and args else args
        if isinstance(raw, str) and ";16" in raw:
            return True
    return False


TIFF_TILE_WIDTH = 322  # the tag of a tiled (not stripped) TIFF

# EXIF orientation -> the same transform as ImageOps.exif_transpose, on a numpy array
_ORIENT = {
    2: lambda a: a[:, ::-1],
    3: lambda a: a[::-1, ::-1],
    4: lambda a: a[::-1],
    5: lambda a: a.swapaxes(0, 1),
    6: lambda a: np.rot90(a, -1),
    7: lambda a: np.rot90(a, 2).swapaxes(0, 1),
    8: lambda a: np.rot90(a, 1),
}


def _read_16bit_colour(raw: Path | bytes, img: Image.Image, limit: int,
                       label: Any = None) -> LoadedImage:
    """Decode a 16-bit RGB(A) PNG/TIFF at full depth with FFmpeg's codecs (Pillow has no
    16-bit colour mode); the EXIF orientation is read by Pillow and applied to the array.
    `raw`: the file, or its bytes (`label` names it then)."""
    path = raw if isinstance(raw, Path) else None
    label = label if label is not None else path
    tiled = img.format == "TIFF" and TIFF_TILE_WIDTH in getattr(img, "tag_v2", {})
    data = bytes(raw) if isinstance(raw, (bytes, bytearray)) else raw.read_bytes()
    arr = image16.decode_tiled_tiff(data) if tiled else image16.decode(data)
    if arr is None or arr.shape[:2] != (img.size[1], img.size[0]):
        loaded = from_pil(img, path=path, pixel_limit=limit)
        why = ("a tiled TIFF: FFmpeg's decoder mis-assembles tiles, and tifffile (pip "
               "install 'ocula[large]') is not installed or could not read it") if tiled \
            else "FFmpeg could not decode it"
        loaded.notes.append(f"16-bit colour image read at 8 bits ({why})")
        return loaded
    alpha = np.ascontiguousarray(arr[..., 3]) if arr.shape[2] == 4 else None
    rgb = arr[..., :3]
    orientation = _orientation(img)
    turn = _ORIENT.get(orientation)
    if turn is not None:
        rgb = turn(rgb)
        alpha = np.ascontiguousarray(turn(alpha)) if alpha is not None else None
    rgb = np.ascontiguousarray(rgb)
    _check_pixels(label, (rgb.shape[1], rgb.shape[0]), limit)
    rgb8 = (rgb.astype(np.uint32) * 255 // 65535).astype(np.uint8)
    return LoadedImage(rgb=Image.fromarray(rgb8, "RGB"), array=rgb, alpha=alpha, path=path,
                       bit_depth=16, source_mode=f"{img.mode};16",
                       exif_transposed=turn is not None)


def _orientation(img: Image.Image) -> int:
    try:
        value = img.getexif().get(0x0112, 1)
        return int(value) if value is not None else 1
    except Exception:  # noqa: BLE001 - broken EXIF blocks must not stop a read
        return 1


def _has_rotation(img: Image.Image) -> bool:
    return _orientation(img) != 1


def _check_pixels(path: Path | None, size: tuple[int, int], limit: int) -> None:
    w, h = size
    if w < 1 or h < 1:
        raise InputError(f"{path or '<image>'}: image has no pixels ({w}×{h}).")
    if w * h > limit:
        raise InputError(_bomb_message(path, size, limit))


def _bomb_message(path: Path | None, size: tuple[int, int] | None, limit: int) -> str:
    dims = f" ({size[0]}×{size[1]} = {size[0] * size[1]:,} pixels)" if size else ""
    return (f"{path or '<image>'}: image is larger than the pixel limit{dims}; limit is "
            f"{limit:,} pixels. Raise it in Settings ▸ Images (or `ocula run --pixel-limit N`) "
            f"if you trust this file.")


def _to_arrays(img: Image.Image) -> tuple[np.ndarray, np.ndarray | None, int]:
    """Return (RGB array at native depth, alpha or None, bit depth)."""
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        gray = np.asarray(img)
        if mode == "I" and gray.max(initial=0) <= 255:
            g8 = gray.astype(np.uint8)
            return np.repeat(g8[..., None], 3, axis=2), None, 8
        g16 = np.clip(gray, 0, 65535).astype(np.uint16)
        return np.repeat(g16[..., None], 3, axis=2), None, 16
    if mode in ("RGB;16", "RGBA;16", "RGB;16B", "RGBA;16B"):  # rare raw 16-bit colour modes
        arr = np.asarray(img).astype(np.uint16)
        return arr[..., :3], (arr[..., 3] if arr.shape[-1] == 4 else None), 16
    if mode == "F":
        arr = np.asarray(img, dtype=np.float32)
        arr = np.clip(arr, 0, 1) * 255 if arr.max(initial=0) <= 1.0 else np.clip(arr, 0, 255)
        g8 = arr.astype(np.uint8)
        return np.repeat(g8[..., None], 3, axis=2), None, 8
    has_alpha = mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in img.info)
    if has_alpha:
        rgba = img.convert("RGBA")
        arr = np.asarray(rgba)
        return np.ascontiguousarray(arr[..., :3]), np.ascontiguousarray(arr[..., 3]), 8
    # CMYK, YCbCr, L, 1, P, LAB… → Pillow's own conversion to RGB
    return np.asarray(img.convert("RGB")), None, 8


# -- writing --------------------------------------------------------------------------

_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP",
            ".tif": "TIFF", ".tiff": "TIFF", ".bmp": "BMP"}


def ensure_not_input(path: Path, inputs: Iterable[Path]) -> None:
    """Refuse to write over any input file (inputs are never overwritten)."""
    target = Path(path).resolve()
    for src in inputs:
        if src is not None and Path(src).resolve() == target:
            raise InputError(f"{path}: refusing to overwrite an input file; choose another "
                             f"output folder or name.")


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = make_temp_file(path.parent, prefix=f".{path.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_image(path: str | os.PathLike, image: np.ndarray | Image.Image, *,
                quality: int | None = None, alpha: np.ndarray | None = None) -> Path:
    """Write atomically; format from the suffix; 16-bit kept where the format allows.

    `image` is (H, W, C) uint8/uint16 (C = 1, 3 or 4) or a Pillow image; `alpha`
    (H, W) is merged in when given.
    """
    path = Path(path)
    fmt = _FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise InputError(f"{path}: unsupported output format '{path.suffix}'. "
                         f"Use one of {', '.join(sorted(_FORMATS))}.")
    pil = image if isinstance(image, Image.Image) else _array_to_pil(image, alpha, fmt)
    if isinstance(image, Image.Image) and alpha is not None:
        pil = pil.convert("RGB")
        pil.putalpha(Image.fromarray(_to8(alpha)))
    if fmt == "JPEG" and pil.mode not in ("RGB", "L"):
        pil = pil.convert("RGB")  # JPEG has no alpha
    params: dict = {}
    if quality is not None and fmt in ("JPEG", "WEBP"):
        params["quality"] = int(quality)
    if fmt == "PNG" and quality is not None:
        params["compress_level"] = max(0, min(9, 9 - int(quality) // 11))
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = make_temp_file(path.parent, prefix=f".{path.stem}.", suffix=path.suffix)
    os.close(fd)
    try:
        if isinstance(pil, _Png16):
            pil.save(tmp)
        else:
            pil.save(tmp, format=fmt, **params)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _to8(arr: np.ndarray) -> np.ndarray:
    return arr if arr.dtype == np.uint8 else (arr.astype(np.uint32) * 255 // 65535).astype(np.uint8)


class _Png16:
    """16-bit RGB(A) PNG/TIFF through FFmpeg's codecs: Pillow cannot write 16-bit colour."""

    def __init__(self, array: np.ndarray) -> None:
        self.array = array
        self.mode = "RGB;16"

    def save(self, target: str) -> None:
        try:
            image16.write(target, self.array)
        except Exception as exc:  # noqa: BLE001 - FFmpeg's errors vary by version
            raise InputError(f"{target}: could not encode a 16-bit image ({exc}).") from exc


def _array_to_pil(array: np.ndarray, alpha: np.ndarray | None, fmt: str):
    arr = np.asarray(array)
    if arr.ndim == 2:
        arr = arr[..., None]
    if alpha is not None:
        if arr.dtype == np.uint16:
            a = alpha.astype(np.uint16) * 257 if alpha.dtype == np.uint8 else alpha.astype(np.uint16)
        else:
            a = _to8(alpha)
        arr = np.concatenate([arr[..., :3], a[..., None]], axis=2)
    if arr.dtype == np.uint16:
        if fmt in ("PNG", "TIFF"):
            if arr.shape[2] == 1:
                return Image.fromarray(np.ascontiguousarray(arr[..., 0]))  # mode I;16
            return _Png16(np.ascontiguousarray(arr))
        arr = _to8(arr)  # JPEG/WebP/BMP are 8-bit formats
    arr = arr.astype(np.uint8, copy=False)
    channels = arr.shape[2]
    mode = {1: "L", 3: "RGB", 4: "RGBA"}.get(channels)
    if mode is None:
        raise InputError(f"cannot write an image with {channels} channels.")
    return Image.fromarray(np.ascontiguousarray(arr if channels > 1 else arr[..., 0]), mode)
