"""Video decode and encode on PyAV (FFmpeg): probe, frames, segment files, final mux.

What the output keeps from the input, and how:
- audio and subtitle streams: stream copy (packets muxed unchanged, byte for byte);
- timing: every output frame reuses its input frame's pts in the input's time base,
  so variable frame rate survives (MP4/MOV keep the exact time base; Matroska
  stores milliseconds);
- rotation: the input's display matrix is written to the output stream;
- pixel aspect ratio and colour description (matrix, range, primaries, transfer).

Frames are decoded as they are stored (rotation is metadata, not applied), so
overlays line up with the pixels and the player rotates both alike.
Rendering is written as segment files (a fresh encoder each, starting on a
keyframe) that `assemble_video` concatenates by stream copy: an interrupted render
resumes after its last finished segment.
"""
from __future__ import annotations

import heapq
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from fractions import Fraction
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from engine.errors import Cancelled, InputError
from engine.media import resize
from engine.media.image import check_readable_file

# Our codec names → FFmpeg encoders to try, best first.
ENCODERS = {
    "h264": ("libx264", "h264", "libopenh264"),
    "h265": ("libx265", "hevc"),
    "vp9": ("libvpx-vp9", "vp9"),
    "ffv1": ("ffv1",),
}
PIX_FMT = {"h264": "yuv420p", "h265": "yuv420p", "vp9": "yuv420p", "ffv1": "yuv444p"}
DEFAULT_CRF = {"h264": 18, "h265": 22, "vp9": 30}
_CONTAINER_FORMATS = {".mp4": "mp4", ".m4v": "mp4", ".mov": "mov", ".mkv": "matroska",
                      ".webm": "webm"}


@dataclass
class VideoInfo:
    path: Path
    container: str
    codec: str
    width: int
    height: int
    time_base: Fraction
    fps: Fraction | None
    duration_s: float | None
    frames: int  # from the container's index; 0 when unknown
    pix_fmt: str | None
    sample_aspect_ratio: Fraction | None
    display_matrix: tuple[int, ...] | None
    rotation: int  # degrees counter-clockwise, from the display matrix
    colour: dict[str, int] = field(default_factory=dict)  # colorspace, color_range…
    start_pts: int | None = None
    audio: list[str] = field(default_factory=list)  # codec names of audio streams
    subtitles: list[str] = field(default_factory=list)

    @property
    def estimated_frames(self) -> int:
        if self.frames:
            return self.frames
        if self.duration_s and self.fps:
            return int(round(self.duration_s * float(self.fps)))
        return 0


def _open(path: Path):
    import av

    size = check_readable_file(path, what="a video")
    if size == 0:
        raise InputError(f"{path}: empty file (0 bytes).")
    try:
        return av.open(str(path), metadata_errors="ignore")
    except PermissionError as exc:
        raise InputError(f"{path}: permission denied; check the file's permissions.") from exc
    except (av.error.FFmpegError, OSError, UnicodeDecodeError, ValueError) as exc:
        raise InputError(f"{path}: not a video FFmpeg can read (corrupt, truncated or "
                         f"unknown format: {_ffmpeg_reason(exc)}).") from exc


def _ffmpeg_reason(exc: BaseException) -> str:
    return getattr(exc, "strerror", None) or str(exc) or type(exc).__name__


def _video_stream(container, path: Path):
    if not container.streams.video:
        kinds = sorted({s.type for s in container.streams}) or ["no streams"]
        raise InputError(f"{path}: has no video stream (found: {', '.join(kinds)}).")
    return container.streams.video[0]


def probe(path: str | os.PathLike) -> VideoInfo:
    """Describe a video and check that its first frame decodes (InputError if not)."""
    path = Path(path)
    with _open(path) as container:
        stream = _video_stream(container, path)
        ctx = stream.codec_context
        first = None
        try:
            for packet in container.demux(stream):
                for frame in _decode_packet(packet):
                    first = frame
                    break
                if first is not None:
                    break
            if first is None:
                for frame in _flush_decoder(stream):
                    first = frame
                    break
        except Exception as exc:
            raise InputError(f"{path}: the video stream cannot be decoded "
                             f"({_ffmpeg_reason(exc)}).") from exc
        if first is None:
            raise InputError(f"{path}: the video stream has no decodable frames (corrupt or "
                             f"truncated).")
        duration = None
        if stream.duration is not None and stream.time_base:
            duration = float(stream.duration * stream.time_base)
        elif container.duration:
            duration = container.duration / 1_000_000
        return VideoInfo(
            path=path, container=container.format.name, codec=ctx.name,
            width=first.width, height=first.height, time_base=stream.time_base,
            fps=stream.average_rate or stream.guessed_rate, duration_s=duration,
            frames=int(stream.frames or 0), pix_fmt=ctx.pix_fmt,
            sample_aspect_ratio=stream.sample_aspect_ratio or None,
            display_matrix=display_matrix(first), rotation=int(first.rotation or 0),
            colour={"colorspace": int(first.colorspace), "color_range": int(first.color_range),
                    "color_primaries": int(first.color_primaries),
                    "color_trc": int(first.color_trc)},
            start_pts=stream.start_time,
            audio=[s.codec_context.name for s in container.streams.audio],
            subtitles=[s.codec_context.name if s.codec_context else "?"
                       for s in container.streams.subtitles])


def display_matrix(frame) -> tuple[int, ...] | None:
    for side in frame.side_data:
        if side.type.name == "DISPLAYMATRIX":
            raw = bytes(side)
            if len(raw) >= 36:
                return struct.unpack("<9i", raw[:36])
    return None


def _decode_packet(packet):
    return packet.decode()


def _flush_decoder(stream):
    try:
        return stream.codec_context.decode(None)
    except Exception:  # noqa: BLE001 — a failing flush just means no more frames
        return []


@lru_cache(maxsize=1)
def video_encoders() -> dict[str, str]:
    """Our codec names → the FFmpeg encoder this PyAV build has for each."""
    import av

    found: dict[str, str] = {}
    for family, names in ENCODERS.items():
        for name in names:
            try:
                av.codec.Codec(name, "w")
            except Exception:  # noqa: BLE001 — not built in
                continue
            found[family] = name
            break
    return found


def output_format_for(suffix: str) -> str:
    return _CONTAINER_FORMATS.get(suffix.lower(), "matroska")


def choose_output(info: VideoInfo, codec: str | None) -> tuple[str, str, str]:
    """(codec family, encoder, container suffix) for rendering this input.

    The input's own container is kept where it can hold the codec (so its audio and
    subtitle streams can be stream-copied); otherwise Matroska, which holds all.
    """
    encoders = video_encoders()
    suffix = info.path.suffix.lower()
    if codec is None:
        codec = "vp9" if suffix == ".webm" else "h264"
    if codec not in encoders:
        have = ", ".join(sorted(encoders)) or "none"
        raise InputError(f"video codec '{codec}' is not available in this FFmpeg build "
                         f"(available: {have}). Choose another video_codec.")
    if (suffix not in _CONTAINER_FORMATS or codec == "ffv1"  # FFV1 lives in Matroska
            or not _format_holds(output_format_for(suffix), codec)):
        suffix = ".mkv"
    return codec, encoders[codec], suffix


@lru_cache(maxsize=64)
def _format_holds(fmt: str, codec: str) -> bool:
    import av

    names = {"h264": "h264", "h265": "hevc", "vp9": "vp9", "ffv1": "ffv1"}
    try:
        with av.open(os.devnull, "w", format=fmt) as probe_out:
            return names[codec] in probe_out.supported_codecs
    except Exception:  # noqa: BLE001
        return False


# -- decoding -------------------------------------------------------------------------------


@dataclass
class DecodedFrame:
    index: int  # in presentation order from the start of the range (or of the video)
    pts: int | None
    time_s: float
    keyframe: bool
    array: np.ndarray  # (H, W, 3) uint8 RGB


@dataclass
class DecodeStats:
    frames: int = 0
    bad_packets: int = 0
    last_error: str = ""
    threads: int = 0  # the decoder's thread count, read back from its codec context


def decode_frames(path: str | os.PathLike, *, start_s: float | None = None,
                  end_s: float | None = None, after_pts: int | None = None,
                  first_index: int = 0, stats: DecodeStats | None = None,
                  cancel: Any = None, threads: int = 0) -> Iterator[DecodedFrame]:
    """Decoded RGB frames in presentation order.

    `start_s`/`end_s` limit the range; `after_pts` resumes after that frame (seeking to
    the keyframe before it and dropping what was already done); `first_index` is the
    index given to the first frame yielded. Packets that fail to decode are counted in
    `stats` and skipped.
    """
    path = Path(path)
    stats = stats if stats is not None else DecodeStats()
    with _open(path) as container:
        stream = _video_stream(container, path)
        stream.thread_type = "AUTO"  # frame + slice threads inside FFmpeg
        if threads:
            stream.thread_count = threads
        stats.threads = stream.codec_context.thread_count
        tb = stream.time_base
        seek_s = None
        if after_pts is not None:
            seek_s = float(after_pts * tb)
        elif start_s:
            seek_s = start_s
        if seek_s:
            try:
                container.seek(int(seek_s / tb), stream=stream, backward=True)
            except Exception:  # noqa: BLE001 — unseekable input: decode from the start
                pass
        index = first_index
        for frame in _frames(container, stream, stats):
            if cancel is not None:
                cancel.raise_if_cancelled()
            time_s = float(frame.pts * tb) if frame.pts is not None else float(frame.time or 0)
            if after_pts is not None and frame.pts is not None and frame.pts <= after_pts:
                continue
            if start_s is not None and time_s < start_s - 1e-9:
                continue
            if end_s is not None and time_s >= end_s - 1e-9:
                break
            array = frame.to_ndarray(format="rgb24")
            stats.frames += 1
            yield DecodedFrame(index, frame.pts, time_s, bool(frame.key_frame), array)
            index += 1


def _frames(container, stream, stats: DecodeStats):
    import av

    for packet in container.demux(stream):
        try:
            frames = packet.decode()
        except av.error.FFmpegError as exc:
            stats.bad_packets += 1
            stats.last_error = _ffmpeg_reason(exc)
            continue
        yield from frames
    yield from _flush_decoder(stream)


# -- encoding ---------------------------------------------------------------------------------


@dataclass
class EncodeSettings:
    codec: str  # h264 | h265 | vp9 | ffv1
    encoder: str  # the FFmpeg encoder
    width: int
    height: int
    time_base: Fraction  # the input's; frame pts are reused unchanged
    fps: Fraction | None
    sample_aspect_ratio: Fraction | None = None
    colour: dict[str, int] = field(default_factory=dict)
    crf: int | None = None
    preset: str | None = None
    threads: int = 0

    @property
    def pix_fmt(self) -> str:
        return PIX_FMT[self.codec]


def segment_time_base(tb: Fraction) -> Fraction:
    # MOV/MP4 timescales are "ticks per second": 1/den holds any num/den exactly.
    return Fraction(1, tb.denominator)


def encoder_frame(array: np.ndarray, settings: EncodeSettings) -> Any:
    """An RGB array as the encoder's input frame (`settings.pix_fmt`, the source's colour
    space and range): the conversion `SegmentWriter.write` would do, for any thread."""
    import av

    frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(array), format="rgb24")
    colour = settings.colour
    space = colour.get("colorspace")
    return frame.reformat(format=settings.pix_fmt,
                          dst_colorspace=space if space not in (None, 2) else None,
                          dst_color_range=colour.get("color_range") or None)


class SegmentWriter:
    """Encode frames into one segment file (MP4: exact time base, holds all our codecs).

    Written to `<name>.part` and renamed by `close`, so a finished segment on disk
    is always complete.
    """

    def __init__(self, path: Path, settings: EncodeSettings) -> None:
        import av

        self.path = Path(path)
        self.part = self.path.with_name(self.path.name + ".part")
        self.settings = settings
        self.frames = 0
        self.last_pts: int | None = None
        tb = segment_time_base(settings.time_base)
        self._scale = settings.time_base / tb  # an integer: input ticks → segment ticks
        self.container = av.open(str(self.part), "w", format="mp4",
                                 options={"video_track_timescale": str(tb.denominator)})
        stream = self.container.add_stream(settings.encoder, rate=settings.fps or 25)
        stream.width, stream.height = settings.width, settings.height
        stream.pix_fmt = settings.pix_fmt
        stream.time_base = tb
        ctx = stream.codec_context
        ctx.time_base = tb
        if settings.sample_aspect_ratio:
            ctx.sample_aspect_ratio = settings.sample_aspect_ratio
        for key in ("colorspace", "color_range", "color_primaries", "color_trc"):
            value = settings.colour.get(key)
            if value not in (None, 0, 2):  # 0/2 = unspecified for range/space
                try:
                    setattr(ctx, key, value)
                except (AttributeError, ValueError, TypeError):
                    pass
        if settings.threads:
            ctx.thread_count = settings.threads
        stream.options = _encoder_options(settings)
        self.stream = stream

    def write(self, picture: Any, pts: int | None) -> None:
        """Encode one frame: an RGB array, or a frame from `encoder_frame` (converted
        beforehand, e.g. on another thread, so the encoder's thread only encodes)."""
        frame = picture if not isinstance(picture, np.ndarray) else encoder_frame(
            picture, self.settings)
        out_pts = pts * self._scale if pts is not None else None
        if out_pts is not None and self.last_pts is not None and out_pts <= self.last_pts:
            out_pts = self.last_pts + 1  # a repeated timestamp must still move forward
        frame.pts = out_pts
        frame.time_base = self.stream.time_base
        self.last_pts = out_pts
        for packet in self.stream.encode(frame):
            self.container.mux(packet)
        self.frames += 1

    def close(self) -> int:
        for packet in self.stream.encode(None):
            self.container.mux(packet)
        self.container.close()
        os.replace(self.part, self.path)
        return self.frames

    def abort(self) -> None:
        try:
            self.container.close()
        except Exception:  # noqa: BLE001 — it is being thrown away
            pass
        self.part.unlink(missing_ok=True)


def _encoder_options(settings: EncodeSettings) -> dict[str, str]:
    opts: dict[str, str] = {}
    if settings.codec in ("h264", "h265"):
        opts["crf"] = str(settings.crf if settings.crf is not None else DEFAULT_CRF[settings.codec])
        opts["preset"] = settings.preset or "medium"
        if settings.encoder == "libx265":
            opts["x265-params"] = "log-level=error"
    elif settings.codec == "vp9":
        opts["crf"] = str(settings.crf if settings.crf is not None else DEFAULT_CRF["vp9"])
        opts["b"] = "0"  # constant quality
        opts["row-mt"] = "1"
        opts["deadline"] = settings.preset or "good"
        opts["cpu-used"] = "4"
    elif settings.codec == "ffv1":
        opts["level"] = "3"
        opts["slicecrc"] = "1"
    return opts


# -- final mux ----------------------------------------------------------------------------------


@dataclass
class AssembleReport:
    frames: int = 0
    copied: list[str] = field(default_factory=list)  # "audio:aac", "subtitle:mov_text"
    dropped: list[str] = field(default_factory=list)  # streams the container cannot hold


def assemble_video(segments: list[Path], source: Path, output: Path, *,
                   display: tuple[int, ...] | None, start_s: float | None = None,
                   end_s: float | None = None, copy_streams: bool = True,
                   cancel: Any = None) -> AssembleReport:
    """Concatenate the segments' video by stream copy and copy the source's audio and
    subtitle packets unchanged into `output` (written to a temporary name, renamed).

    With a time range, only packets inside it are copied and every stream is shifted
    so the output starts at zero.
    """
    import av

    report = AssembleReport()
    fmt = output_format_for(output.suffix)
    part = output.with_name("." + output.name + ".part")
    with av.open(str(segments[0])) as first_seg:
        template = first_seg.streams.video[0]
        seg_tb = template.time_base
        options = {}
        if fmt in ("mp4", "mov"):
            options["video_track_timescale"] = str(seg_tb.denominator)
        out = av.open(str(part), "w", format=fmt, options=options)
        try:
            vout = out.add_stream_from_template(template)
            vout.time_base = seg_tb
            if display:
                vout.set_display_matrix(list(display))
            copies: dict[int, Any] = {}
            src = av.open(str(source), metadata_errors="ignore")
            try:
                if copy_streams:
                    for s in src.streams:
                        if s.type not in ("audio", "subtitle"):
                            continue
                        name = f"{s.type}:{s.codec_context.name if s.codec_context else '?'}"
                        try:
                            copies[s.index] = out.add_stream_from_template(s)
                        except (ValueError, av.error.FFmpegError):
                            report.dropped.append(name)
                            continue
                        if s.language:
                            copies[s.index].metadata["language"] = s.language
                        report.copied.append(name)
                shift_s = Fraction(start_s).limit_denominator(10**9) if start_s else Fraction(0)
                merged = heapq.merge(_segment_packets(segments, shift_s),
                                     _source_packets(src, list(copies), start_s, end_s, shift_s),
                                     key=lambda t: (t[0], t[1]))
                for n, (_, _, packet) in enumerate(merged):
                    if cancel is not None and n % 256 == 0:
                        cancel.raise_if_cancelled()
                    if packet.stream.type == "video" and packet.stream.container is not src:
                        report.frames += 1
                        packet.stream = vout
                    else:
                        packet.stream = copies[packet.stream.index]
                    out.mux(packet)
            finally:
                src.close()
            out.close()
        except BaseException:
            try:
                out.close()
            except Exception:  # noqa: BLE001
                pass
            part.unlink(missing_ok=True)
            raise
    os.replace(part, output)
    return report


def _shift_ticks(shift_s: Fraction, tb: Fraction) -> int:
    return int(round(shift_s / tb)) if shift_s else 0


def _segment_packets(segments: list[Path], shift_s: Fraction):
    """Video packets of every segment in order, decode timestamps kept increasing
    across the joins (each segment's encoder starts its dts before its first pts)."""
    import av

    last_dts: int | None = None
    for seg in segments:
        with av.open(str(seg)) as container:
            stream = container.streams.video[0]
            shift = _shift_ticks(shift_s, stream.time_base)
            for packet in container.demux(stream):
                if packet.size == 0:
                    continue  # the demuxer's end-of-stream marker
                if packet.pts is not None:
                    packet.pts -= shift
                if packet.dts is not None:
                    packet.dts -= shift
                    if last_dts is not None and packet.dts <= last_dts:
                        packet.dts = last_dts + 1
                    if packet.pts is not None and packet.dts > packet.pts:
                        packet.dts = packet.pts
                    last_dts = packet.dts
                when = packet.dts if packet.dts is not None else packet.pts or 0
                yield (float(when * stream.time_base), 0, packet)


def _source_packets(src, indices: list[int], start_s: float | None, end_s: float | None,
                    shift_s: Fraction):
    if not indices:
        return
    streams = [src.streams[i] for i in indices]
    for packet in src.demux(streams):
        if packet.size == 0 and packet.pts is None:
            continue
        tb = packet.stream.time_base
        stamp = packet.pts if packet.pts is not None else packet.dts
        t = float(stamp * tb) if stamp is not None else 0.0
        if start_s is not None and t < start_s - 1e-9:
            continue
        if end_s is not None and t >= end_s - 1e-9:
            continue
        shift = _shift_ticks(shift_s, tb)
        if shift:
            if packet.pts is not None:
                packet.pts -= shift
            if packet.dts is not None:
                packet.dts -= shift
        when = packet.dts if packet.dts is not None else (packet.pts or 0)
        yield (float(when * tb), 1, packet)


def resize_rgb(array: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize (W, H) with area/cubic interpolation; used for frames passed through
    unprocessed when the task changes the frame size (e.g. a ×4 restoration)."""
    h, w = array.shape[:2]
    if (w, h) == size:
        return array
    return resize.filtered(array, size, "area" if size[0] < w else "bicubic")


def even_size(array: np.ndarray) -> np.ndarray:
    """Pad to even width and height by repeating the edge (4:2:0 needs even sizes)."""
    h, w = array.shape[:2]
    if h % 2 == 0 and w % 2 == 0:
        return array
    return np.pad(array, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")


def check_cancel(cancel: Any) -> None:
    if cancel is not None and getattr(cancel, "cancelled", False):
        raise Cancelled("Cancelled by the user.")
