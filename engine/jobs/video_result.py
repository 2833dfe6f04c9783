"""What a finished video item gives a front end, and its `frames.jsonl` read back.

`VideoResult` names the files of one video (the source, the exported overlay or
restored video, the per-frame annotations) with the facts a player needs (fps,
frame count, size, the audio streams). It travels as `ItemResult.result` and, as a
dict, in `ItemResult.info["video"]`, so it also survives the worker pipe.

`FrameRecords` indexes a `frames.jsonl` by frame number once (byte offsets, read in
one pass) and parses a line only when its frame is asked for, keeping the last few
parsed: a player asks for the record of frame n 25 times a second without
re-reading the file. `typed_result` turns a record back into the engine's result
types (Detections, Caption, Segmentation) so the front end draws it with the same
code it uses for images.

Segmentation masks are arrays, which `result_to_dict` reduces to their shape, so the
video pipeline adds them to each line as COCO RLE (`mask_records`, under "masks").
"""
from __future__ import annotations

import json
import re
from bisect import bisect_right
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from engine.errors import InputError
from engine.results import Box, Caption, Detections, Segmentation, SegmentInstance

_FRAME_PREFIX = re.compile(rb'^\{"frame":\s*(\d+)')
PARSED_CACHE = 32  # parsed records kept (a few seconds of scrubbing back and forth)


@dataclass
class VideoResult:
    """One processed video: its files and what a player needs to show them."""

    task: str
    source: Path
    video: Path | None  # the exported overlay / restored video; None when none was written
    frames_jsonl: Path | None  # per-frame annotations; None when switched off
    fps: float
    frames: int  # frames decoded from the source (in the time range, if one was given)
    width: int  # source frame size (the annotations' coordinates)
    height: int
    start_s: float | None = None  # the job's time range, if any
    end_s: float | None = None
    hold: bool = True  # frames without a result show the last result (hold_results)
    source_audio: list[str] = field(default_factory=list)  # codec names in the source
    copied_streams: list[str] = field(default_factory=list)  # "audio:aac", … in the export

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for key in ("source", "video", "frames_jsonl"):
            data[key] = str(data[key]) if data[key] is not None else None
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> VideoResult:
        values = dict(data)
        for key in ("source", "video", "frames_jsonl"):
            values[key] = Path(values[key]) if values.get(key) else None
        return cls(**values)

    @property
    def audio_kept(self) -> bool:
        return any(s.startswith("audio:") for s in self.copied_streams)


def video_result_of(item_result: Any) -> VideoResult | None:
    """The VideoResult of an ItemResult: its `result`, or the dict in `info["video"]`
    (what arrives from a worker process)."""
    result = getattr(item_result, "result", item_result)
    if isinstance(result, VideoResult):
        return result
    info = getattr(item_result, "info", None) or {}
    return VideoResult.from_dict(info["video"]) if isinstance(info.get("video"), dict) else None


class FrameRecords:
    """A frames.jsonl, indexed by frame number in one pass; records parsed on demand."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._offsets: dict[int, int] = {}
        try:
            with open(self.path, "rb") as fh:
                offset = 0
                for line in fh:
                    frame = _frame_number(line, self.path)
                    if frame is not None:
                        self._offsets[frame] = offset
                    offset += len(line)
        except OSError as exc:
            raise InputError(f"{self.path}: cannot read the per-frame results "
                             f"({exc.strerror or exc}).") from exc
        self.frames: list[int] = sorted(self._offsets)
        self._parsed: OrderedDict[int, dict[str, Any]] = OrderedDict()
        self._fh = open(self.path, "rb")  # noqa: SIM115 — kept open for random reads

    def __len__(self) -> int:
        return len(self.frames)

    def __contains__(self, frame: int) -> bool:
        return frame in self._offsets

    def record(self, frame: int) -> dict[str, Any] | None:
        """The record of exactly this frame (None if the frame was not processed)."""
        if frame in self._parsed:
            self._parsed.move_to_end(frame)
            return self._parsed[frame]
        offset = self._offsets.get(frame)
        if offset is None:
            return None
        self._fh.seek(offset)
        record = json.loads(self._fh.readline())
        self._parsed[frame] = record
        if len(self._parsed) > PARSED_CACHE:
            self._parsed.popitem(last=False)
        return record

    def latest(self, frame: int) -> dict[str, Any] | None:
        """The record of this frame or of the last processed frame before it."""
        at = bisect_right(self.frames, frame)
        return self.record(self.frames[at - 1]) if at else None

    def for_frame(self, frame: int, *, hold: bool) -> dict[str, Any] | None:
        return self.latest(frame) if hold else self.record(frame)

    def close(self) -> None:
        self._fh.close()


def _frame_number(line: bytes, path: Path) -> int | None:
    if not line.strip():
        return None
    match = _FRAME_PREFIX.match(line)  # the pipeline writes "frame" first: no JSON parse
    if match:
        return int(match.group(1))
    try:
        return int(json.loads(line)["frame"])
    except (ValueError, KeyError, TypeError) as exc:
        raise InputError(f"{path}: not a frames.jsonl line (no frame number): "
                         f"{line[:80]!r}") from exc


# -- records back to typed results -------------------------------------------------------------


def _detections(data: dict[str, Any], record: dict[str, Any]) -> Detections:
    names = {f for f in Box.__dataclass_fields__}
    boxes = [Box(**{k: v for k, v in b.items() if k in names}) for b in data.get("boxes", [])]
    labels = {int(k): v for k, v in (data.get("labels") or {}).items()}
    return Detections(boxes, tuple(data.get("image_size", (0, 0))), labels)


def _caption(data: dict[str, Any], record: dict[str, Any]) -> Caption:
    return Caption(text=data.get("text", ""), tokens=list(data.get("tokens", [])),
                   image_size=tuple(data.get("image_size", (0, 0))))


def _segmentation(data: dict[str, Any], record: dict[str, Any]) -> Segmentation:
    from engine.exporters.masks import rle_decode

    instances = [SegmentInstance(rle_decode(m["rle"]), m["label"], int(m["label_id"]),
                                 float(m.get("score", 1.0)), int(m.get("segment_id", 0)))
                 for m in record.get("masks", [])]
    labels = {int(k): v for k, v in (data.get("labels") or {}).items()}
    return Segmentation(data.get("kind", "instance"), tuple(data.get("image_size", (0, 0))),
                        instances=instances, labels=labels)


RESULT_READERS: dict[str, Callable[[dict[str, Any], dict[str, Any]], Any]] = {
    "Detections": _detections, "Caption": _caption, "Segmentation": _segmentation}


def typed_result(record: dict[str, Any] | None) -> Any:
    """Detections | Caption | Segmentation of one record; None for a missing record or a
    result type that has nothing to draw (a restored frame is in the restored video)."""
    if not record:
        return None
    data = record.get("result") or {}
    reader = RESULT_READERS.get(data.get("type", "")) if isinstance(data, dict) else None
    return reader(data, record) if reader is not None else None


def mask_records(seg: Segmentation) -> list[dict[str, Any]]:
    """A Segmentation's masks as COCO RLE, one entry per instance (or per label of a label
    map): what `typed_result` reads back. Matting alpha is not kept (it is not a mask)."""
    from engine.exporters.masks import rle_encode

    if seg.instances:
        return [{"label": inst.label, "label_id": int(inst.label_id), "score": float(inst.score),
                 "segment_id": int(inst.segment_id), "rle": rle_encode(np.asarray(inst.mask, bool))}
                for inst in seg.instances]
    if seg.label_map is None:
        return []
    label_map = np.asarray(seg.label_map)
    return [{"label": seg.labels.get(int(i), str(int(i))), "label_id": int(i), "score": 1.0,
             "segment_id": 0, "rle": rle_encode(label_map == i)}
            for i in np.unique(label_map[label_map >= 0]).tolist()]
