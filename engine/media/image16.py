"""16-bit RGB(A) PNG and TIFF at full depth, through FFmpeg's image codecs (PyAV).

Pillow has no 16-bit colour mode: it opens a 48-bit PNG as 8-bit RGB and cannot write
one. FFmpeg's png and tiff codecs decode and encode rgb48/rgba64 losslessly, and PyAV is
already the engine's video library, so no image library is added for this.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
TIFF_MAGICS = (b"II*\x00", b"MM\x00*")
# FFmpeg's encoders take these layouts: PNG is big-endian on disk, TIFF little-endian
_ENCODE_FORMAT = {("png", 3): "rgb48be", ("png", 4): "rgba64be",
                  ("tiff", 3): "rgb48le", ("tiff", 4): "rgba64le"}
# smaller files than FFmpeg's defaults (no PNG filter, PackBits TIFF), as image editors write
_ENCODE_OPTIONS = {"png": {"pred": "mixed"}, "tiff": {"compression_algo": "deflate"}}


def codec_of(data: bytes) -> str | None:
    """"png", "tiff" or None, from the file's first bytes."""
    if data[:8] == PNG_MAGIC:
        return "png"
    if data[:4] in TIFF_MAGICS:
        return "tiff"
    return None


def decode(data: bytes) -> np.ndarray | None:
    """(H, W, 3|4) uint16 RGB(A) of a 16-bit colour PNG/TIFF's first image, or None when
    FFmpeg cannot decode it (the caller falls back to an 8-bit read and says so)."""
    import av

    codec = codec_of(data)
    if codec is None:
        return None
    try:
        frames = av.CodecContext.create(codec, "r").decode(av.Packet(data))
    except (av.error.FFmpegError, ValueError, MemoryError):
        return None
    if not frames:
        return None
    frame = frames[0]
    channels = 4 if len(frame.format.components) == 4 else 3
    try:
        return frame.to_ndarray(format="rgba64le" if channels == 4 else "rgb48le")
    except (av.error.FFmpegError, ValueError):
        return None


def decode_tiled_tiff(data: bytes) -> np.ndarray | None:
    """(H, W, 3|4) uint16 of a tiled 16-bit TIFF's first page through tifffile (the
    optional `large` extra), which FFmpeg's tiff decoder mis-assembles; None without
    tifffile or when it cannot read the file."""
    import io

    try:
        import tifffile
    except ImportError:
        return None
    try:
        arr = tifffile.imread(io.BytesIO(data), key=0)
    except Exception:  # noqa: BLE001 - any unreadable file falls back to 8 bits
        return None
    if arr.dtype != np.uint16 or arr.ndim != 3 or arr.shape[2] not in (3, 4):
        return None
    return np.ascontiguousarray(arr)


def encode(array: np.ndarray, suffix: str) -> bytes:
    """A (H, W, 3|4) uint16 array as the bytes of a 16-bit PNG (suffix .png) or TIFF."""
    import av

    codec = "png" if suffix.lower() == ".png" else "tiff"
    arr = np.ascontiguousarray(array, dtype=np.uint16)
    if arr.ndim != 3 or arr.shape[2] not in (3, 4):
        raise ValueError(f"16-bit colour needs (H, W, 3|4) samples, not {arr.shape}")
    pix_fmt = _ENCODE_FORMAT[(codec, arr.shape[2])]
    frame = av.VideoFrame.from_ndarray(arr, format=pix_fmt[:-2] + "le")
    if pix_fmt.endswith("be"):
        frame = frame.reformat(format=pix_fmt)
    ctx = av.CodecContext.create(codec, "w")
    ctx.width, ctx.height, ctx.pix_fmt = arr.shape[1], arr.shape[0], pix_fmt
    ctx.options = dict(_ENCODE_OPTIONS[codec])
    packets = ctx.encode(frame) + ctx.encode(None)
    return b"".join(bytes(packet) for packet in packets)


def write(path: Path | str, array: np.ndarray) -> None:
    """Encode to `path` (a temporary file the caller renames into place)."""
    Path(path).write_bytes(encode(array, Path(path).suffix))
