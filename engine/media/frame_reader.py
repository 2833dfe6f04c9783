"""Frame-accurate random access to a video: frame n, exactly, by number.

Frame numbers are those of the video pipeline (engine.media.video.decode_frames): the
n-th frame in presentation order, counted from the start of the time range if one is
given. The table of frame timestamps is built once from the packets (demuxing only, no
decoding). Reading frame n:

- right after frame n-1 (playback, one step forward): the next frame of the decoder
  already running, no seek;
- anywhere else (scrubbing, a step back out of the cache): seek to the keyframe at or
  before n, decode forward, keep the last `cache_frames` decoded frames (so stepping
  back a few frames is a cache hit) and return frame n.

Frames are raw decoded pixels, RGB uint8, in the stream's stored orientation: the
coordinates of the results in frames.jsonl.
"""
from __future__ import annotations

import os
from bisect import bisect_left
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from engine.errors import InputError
from engine.media.video import _ffmpeg_reason, _open, _video_stream

DEFAULT_CACHE_FRAMES = 12
FORWARD_DECODE_LIMIT = 48  # frames a reader decodes forward instead of seeking


class VideoFrameReader:
    """Frames of one video by number (see the module doc). Not thread-safe: one owner."""

    def __init__(self, path: str | os.PathLike, *, start_s: float | None = None,
                 end_s: float | None = None, cache_frames: int = DEFAULT_CACHE_FRAMES) -> None:
        self.path = Path(path)
        self.cache_frames = max(1, cache_frames)
        self._container = _open(self.path)
        try:
            self._stream = _video_stream(self._container, self.path)
            self._stream.thread_type = "AUTO"
            self.time_base = self._stream.time_base
            self.pts = self._frame_table(start_s, end_s)
        except BaseException:
            self._container.close()
            raise
        if not self.pts:
            self._container.close()
            raise InputError(f"{self.path}: no video frames"
                             + (" in the chosen time range." if start_s or end_s else "."))
        self._index_of = {p: i for i, p in enumerate(self.pts)}
        rate = self._stream.average_rate or self._stream.guessed_rate
        self.fps = float(rate) if rate else 0.0
        self._cache: OrderedDict[int, np.ndarray] = OrderedDict()
        self._decoder: Iterator[Any] | None = None
        self._last_decoded = -2  # index of the last frame the running decoder gave
        self.seeks = 0  # how many reads needed a seek (tests and benchmarks read it)

    # -- the frame table -------------------------------------------------------------------
    def _frame_table(self, start_s: float | None, end_s: float | None) -> list[int]:
        tb = self.time_base
        pts: list[int] = []
        try:
            for packet in self._container.demux(self._stream):
                if packet.pts is not None and packet.size:
                    pts.append(int(packet.pts))
        except Exception as exc:  # the readable part still plays
            if not pts:
                raise InputError(f"{self.path}: the video cannot be read "
                                 f"({_ffmpeg_reason(exc)}).") from exc
        pts.sort()
        if start_s is not None:
            pts = [p for p in pts if float(p * tb) >= start_s - 1e-9]
        if end_s is not None:
            pts = [p for p in pts if float(p * tb) < end_s - 1e-9]
        return pts

    def __len__(self) -> int:
        return len(self.pts)

    @property
    def size(self) -> tuple[int, int]:
        ctx = self._stream.codec_context
        return int(ctx.width), int(ctx.height)

    def time_s(self, index: int) -> float:
        return float(self.pts[index] * self.time_base)

    def index_at(self, time_s: float) -> int:
        """The frame shown at `time_s` (the last one starting at or before it)."""
        target = time_s / float(self.time_base)
        at = bisect_left(self.pts, target + 1e-6)
        return max(0, min(len(self.pts) - 1, at - 1))

    # -- reading ---------------------------------------------------------------------------
    def frame(self, index: int) -> np.ndarray:
        """Frame `index` as (H, W, 3) uint8 RGB."""
        if not 0 <= index < len(self.pts):
            raise InputError(f"{self.path}: no frame {index} (the video has "
                             f"{len(self.pts)} frames).")
        cached = self._cache.get(index)
        if cached is not None:
            self._cache.move_to_end(index)
            return cached
        ahead = index - self._last_decoded
        if self._decoder is None or not 0 < ahead <= FORWARD_DECODE_LIMIT:
            self._seek_to(self.pts[index])
            self.seeks += 1
        return self._decode_until(index)

    def _seek_to(self, pts: int) -> None:
        # backward=True: the keyframe at or before `pts`; PyAV flushes the decoder.
        self._container.seek(pts, stream=self._stream, backward=True, any_frame=False)
        self._decoder = self._decode()
        self._last_decoded = -2

    def _decode(self) -> Iterator[Any]:
        for packet in self._container.demux(self._stream):
            yield from packet.decode()

    def _decode_until(self, index: int) -> np.ndarray:
        target = self.pts[index]
        assert self._decoder is not None
        for frame in self._decoder:
            if frame.pts is None:
                continue
            at = self._index_of.get(int(frame.pts))
            if at is None:
                if frame.pts > target:
                    break
                continue  # before the range, or a timestamp the table does not hold
            self._last_decoded = at
            if at < index - self.cache_frames:
                continue  # far before the target: not worth converting
            array = frame.to_ndarray(format="rgb24")
            self._remember(at, array)
            if at >= index:
                if at == index:
                    return array
                break
        self._decoder = None  # ran past the end or past the target: seek next time
        if index in self._cache:
            return self._cache[index]
        raise InputError(f"{self.path}: frame {index} (pts {target}) does not decode.")

    def _remember(self, index: int, array: np.ndarray) -> None:
        self._cache[index] = array
        self._cache.move_to_end(index)
        while len(self._cache) > self.cache_frames:
            self._cache.popitem(last=False)

    def close(self) -> None:
        self._decoder = None
        self._container.close()

    def __enter__(self) -> VideoFrameReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def audio_codecs(path: str | os.PathLike) -> list[str]:
    """Codec names of a media file's audio streams (empty: no audio)."""
    with _open(Path(path)) as container:
        return [s.codec_context.name if s.codec_context else "?"
                for s in container.streams.audio]
