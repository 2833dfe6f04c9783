"""One video through a task: decode, inference and encode on three threads.

    decode thread ──(bounded queue)──▶ inference (this thread) ──(bounded queue)──▶ encode thread

Queues are small and fixed, so memory stays flat however long the video is.
Frames are batched for the handler; detections are tracked (stable track ids)
before overlays are drawn. The encode thread writes the render as segment files
(every `segment_seconds`, default 20) plus the per-frame annotations of each
segment, and records each finished segment in the job store with the tracker
state at its end: an interrupted render resumes after the last finished segment.
At the end the segments are joined by stream copy, with the input's audio and
subtitle packets copied unchanged (engine.media.video.assemble_video).

Options read here (JobSpec.options, engine.options.JobOptions): every_nth_frame, time_range, frames
(all | keyframes | scenes), scene_threshold, batch_size, segment_seconds,
video_output, video_codec, crf, video_preset, track, track_high, track_low,
track_iou, hold_results, annotations, allow_partial_video.
"""
from __future__ import annotations

import dataclasses
import json
import os
import queue
import shutil
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
from PIL import Image

from engine.errors import Cancelled, InputError
from engine.jobs.handler_protocol import ItemResult, batch_of
from engine.jobs.outputs import FrameInfo, FrameOutput, OutputPlan
from engine.jobs.store import SegmentRecord
from engine.jobs.video_result import VideoResult, mask_records
from engine.jobs.video_threads import lower_thread_priority, thread_nice
from engine.media import resize
from engine.media.image import LoadedImage, atomic_write_bytes
from engine.media.video import (
    DecodedFrame,
    DecodeStats,
    EncodeSettings,
    encoder_frame,
    SegmentWriter,
    VideoInfo,
    assemble_video,
    choose_output,
    decode_frames,
    even_size,
    probe,
    resize_rgb,
)
from engine.results import Detections, RestoredImage, Segmentation

if TYPE_CHECKING:
    from engine.events import CancelToken, Progress
    from engine.jobs.spec import JobSpec
    from engine.jobs.store import ItemRecord, JobStore

_END = object()
DEFAULT_SEGMENT_S = 20.0


class VideoRunContext(Protocol):
    """What a video item needs from the job run that drives it (engine.jobs.job_loop's run
    provides it). A protocol here, so that this module, which run.py imports, never
    imports run.py back."""

    store: JobStore
    job_id: str
    spec: JobSpec
    output_dir: Path
    handler: Any
    cancel: CancelToken
    paused_s: float  # seconds spent paused so far

    def wait_if_paused(self) -> None: ...

    def progress(self, item: str, done: float, total: float | None, rate: float,
                 eta_s: float | None, message: str, force: bool = False) -> None: ...

    def handler_progress(self, p: Progress) -> None: ...


def run_video_item(run: VideoRunContext, item: ItemRecord, out: OutputPlan) -> ItemResult:
    handler = run.handler
    if hasattr(handler, "process_video"):
        # A handler that wants the whole video (e.g. a video-native model).
        res = handler.process_video(Path(item.path), out, run.handler_progress, run.cancel)
        return res if isinstance(res, ItemResult) else ItemResult(result=res)
    info = probe(item.path)
    return VideoPipeline(run, item, out, info).run()


@dataclass
class _Frame:
    decoded: DecodedFrame
    selected: bool
    starts_segment: bool = False
    result: ItemResult | None = None
    plan: FrameOutput | None = None


@dataclass
class _Encoded:
    """What the encode thread receives for one frame."""

    index: int
    pts: int | None
    time_s: float
    picture: Any  # the encoder's frame (media.video.encoder_frame); None: no video written
    annotation: str | None  # one JSON line, or None for frames not processed
    starts_segment: bool
    state_before: dict[str, Any] = field(default_factory=dict)  # tracker etc. at the cut


class VideoPipeline:
    def __init__(self, run: VideoRunContext, item: ItemRecord, out: OutputPlan,
                 info: VideoInfo) -> None:
        self.job = run
        self.item = item
        self.out = out
        self.info = info
        opts = run.spec.options
        self.opts = opts
        task = run.spec.task
        self.every_nth = opts.every_nth_frame
        tr = opts.time_range
        self.start_s: float | None = float(tr[0]) if tr else None
        self.end_s: float | None = float(tr[1]) if tr and len(tr) > 1 else None
        self.select_mode = opts.frames or ("scenes" if task == "caption" else "all")
        self.scene_threshold = opts.scene_threshold
        self.batch_size = int(opts.batch_size or getattr(run.handler, "batch_size", 1) or 1)
        self.segment_s = opts.segment_seconds
        self.video_output = opts.video_output if opts.video_output is not None \
            else task != "caption"
        self.annotations = opts.annotations
        self.hold = opts.hold_results
        self.tracker = None
        track = getattr(opts, "track", None)  # DetectOptions: on unless switched off
        if track or (track is None and task == "detect"):
            from engine.tracking import ByteTracker, TrackerConfig

            self.tracker = ByteTracker(TrackerConfig(
                high_score=opts.track_high, low_score=opts.track_low,
                new_track_score=max(opts.track_high, 0.0), match_iou=opts.track_iou))
        self.work_dir = (run.output_dir / ".ocula-work" / f"{run.job_id}-{item.seq}")
        self.settings: EncodeSettings | None = None
        self.suffix = ""
        if self.video_output:
            codec, encoder, self.suffix = choose_output(info, opts.video_codec)
            self.settings = EncodeSettings(
                codec=codec, encoder=encoder, width=0, height=0, time_base=info.time_base,
                fps=info.fps, sample_aspect_ratio=info.sample_aspect_ratio, colour=info.colour,
                crf=opts.crf, preset=opts.video_preset)
        self.out_size: tuple[int, int] | None = None
        self.last_result: Any = None
        self.prev_thumb: np.ndarray | None = None
        self.stats = DecodeStats()
        self.frames_seen = 0
        self.frames_processed = 0
        self.track_ids: set[int] = set()
        self.error: BaseException | None = None
        self._stop = threading.Event()

    # -- resume ------------------------------------------------------------------------
    def _finished_segments(self) -> list[SegmentRecord]:
        store, job_id, seq = self.job.store, self.job.job_id, self.item.seq
        segs = store.segments(job_id, seq)
        valid: list[SegmentRecord] = []
        for seg in segs:
            files = [Path(seg.path)] + ([Path(seg.path).with_suffix(".jsonl")]
                                        if self.video_output else [])
            if not all(f.exists() for f in files):
                break
            valid.append(seg)
        if len(valid) != len(segs):
            store.clear_segments(job_id, seq)
            for seg in valid:
                store.add_segment(job_id, seq, seg)
        keep = {Path(s.path).stem for s in valid}
        if self.work_dir.exists():
            for f in self.work_dir.iterdir():  # partial files of an interrupted segment
                if f.name.split(".")[0] not in keep:
                    f.unlink(missing_ok=True)
        return valid

    # -- the run -----------------------------------------------------------------------
    def run(self) -> ItemResult:
        self.work_dir.mkdir(parents=True, exist_ok=True)
        done_segments = self._finished_segments()
        after_pts = None
        first_index = 0
        next_idx = 0
        skip_below = 0
        if done_segments:
            last = done_segments[-1]
            next_idx = last.idx + 1
            after_pts = last.end_pts
            if after_pts is None:
                skip_below = last.next_frame  # no timestamps: count frames from the start
            else:
                first_index = last.next_frame
            self._load_state(last.state)
        self.resumed_from = last.next_frame if done_segments else 0
        self._calibrate_threads()
        q_in: queue.Queue = queue.Queue(maxsize=2 * self.batch_size + 4)
        q_out: queue.Queue = queue.Queue(maxsize=8)
        decoder = threading.Thread(
            target=self._decode, name="ocula-video-decode", daemon=True,
            args=(q_in, after_pts, first_index))
        encoder = threading.Thread(target=self._encode, name="ocula-video-encode", daemon=True,
                                   args=(q_out, next_idx))
        decoder.start()
        encoder.start()
        self.began = time.monotonic()
        self.paused_before = self.job.paused_s
        try:
            self._run_model_thread(q_in, q_out, skip_below)
            _put(q_out, _END, self._stop)
            encoder.join()
            if self.error is not None:
                raise self.error
        except BaseException:
            self._stop.set()
            _drain(q_in)
            _drain(q_out)
            encoder.join(timeout=30)
            raise
        finally:
            self._stop.set()
            _drain(q_in)
            decoder.join(timeout=30)
            self.model_threads.restore()
        return self._finalise()

    def _load_state(self, state: dict[str, Any]) -> None:
        if self.tracker is not None and state.get("tracker"):
            self.tracker.load_state_dict(state["tracker"])
        if state.get("out_size"):
            self.out_size = tuple(state["out_size"])  # type: ignore[assignment]
        self.frames_processed = int(state.get("processed", 0))
        self.track_ids = set(state.get("track_ids", []))

    def _state(self) -> dict[str, Any]:
        return {"tracker": self.tracker.state_dict() if self.tracker else None,
                "out_size": list(self.out_size) if self.out_size else None,
                "processed": self.frames_processed, "track_ids": sorted(self.track_ids)}

    # -- threads per stage (engine.jobs.video_threads) -----------------------------------
    def _calibrate_threads(self) -> None:
        """Decode and encode cost on the first frames, before the stage threads start; the
        model runs its first group single-threaded so that its cost can be read too."""
        from engine.jobs.video_threads import (
            CHEAP_KNOBS,
            ModelThreads,
            StageCosts,
            measure_decode_ms,
            measure_encode_ms,
            plan_threads,
        )
        from engine.runtimes.session_tuning import physical_cores

        self.cores = physical_cores()
        try:
            decode_ms, arrays = measure_decode_ms(self.item.path, start_s=self.start_s)
            encode_ms = 0.0
            if self.video_output and self.settings is not None:
                encode_ms = measure_encode_ms(arrays, self.settings,
                                              self.work_dir / "calibrate-encoder.mov")
        except Exception:  # noqa: BLE001 — the decode thread reports a broken input properly
            decode_ms, encode_ms, arrays = 0.0, 0.0, []
        self.calibration_size = (arrays[0].shape[1], arrays[0].shape[0]) if arrays else None
        self.costs = StageCosts(decode_ms=decode_ms, encode_ms=encode_ms)
        self.thread_plan = plan_threads(self.cores, self.costs)  # decode's; the rest follows
        self.model_threads = ModelThreads(self.job.handler)
        self.model_threads.set(1, CHEAP_KNOBS)
        self.model_s = 0.0
        self.threads_planned = False
        self.threads_applied: dict[str, Any] = {}
        self.lowered: dict[str, int | None] = {}  # stage -> its thread's nice, once lowered

    def _plan_threads(self, group_frames: int, picture: np.ndarray | None) -> None:
        """After the first group: the model's cost is known, and the output size (a ×4
        restoration encodes 16× the pixels it decodes)."""
        from engine.jobs.video_threads import plan_threads

        costs = self.costs
        costs.model_ms = (1000 * self.model_s / max(1, group_frames)
                          * self.model_threads.single_thread_scale())
        if picture is not None and self.calibration_size:
            scale = (picture.shape[0] * picture.shape[1]
                     / (self.calibration_size[0] * self.calibration_size[1]))
            costs.encode_ms *= scale
        decode = self.thread_plan.decode  # the decoder is already open with its count
        self.thread_plan = plan_threads(self.cores, costs)
        self.thread_plan.decode = decode
        self.model_threads.set(self.thread_plan.model)
        plan = self.thread_plan
        self.threads_applied.update(
            decode=self.stats.threads, model=self.model_threads.current(),
            planned={"decode": plan.decode, "model": plan.model, "encode": plan.encode},
            costs_ms={k: round(v, 3) for k, v in dataclasses.asdict(costs).items()})
        self.threads_planned = True

    # -- decode thread ------------------------------------------------------------------
    def _decode(self, q_in: queue.Queue, after_pts: int | None, first_index: int) -> None:
        try:
            for frame in decode_frames(self.item.path, start_s=self.start_s, end_s=self.end_s,
                                       after_pts=after_pts, first_index=first_index,
                                       stats=self.stats, threads=self.thread_plan.decode):
                self._yield_if_cheaper("decode")
                if not _put(q_in, frame, self._stop):
                    return
            _put(q_in, _END, self._stop)
        except BaseException as exc:  # noqa: BLE001 — handed to the inference thread
            if isinstance(exc, InputError):
                _put(q_in, exc, self._stop)
            else:
                _put(q_in, InputError(f"{self.item.path}: decoding failed "
                                      f"({getattr(exc, 'strerror', None) or exc}).") , self._stop)

    # -- inference (its own thread) -----------------------------------------------------------
    def _run_model_thread(self, q_in: queue.Queue, q_out: queue.Queue, skip_below: int) -> None:
        """`_infer` on a thread of its own, so that it may drop its priority (a thread can
        lower its own but not raise it back; the caller's thread must keep its priority)."""
        failure: list[BaseException] = []

        def work() -> None:
            try:
                self._infer(q_in, q_out, skip_below)
            except BaseException as exc:  # noqa: BLE001 — re-raised on the caller's thread
                failure.append(exc)

        model = threading.Thread(target=work, name="ocula-video-model", daemon=True)
        model.start()
        try:
            model.join()
        except BaseException:  # e.g. Ctrl-C on the caller's thread: stop the model too
            self._stop.set()
            model.join(timeout=30)
            raise
        if failure:
            raise failure[0]

    def _yield_if_cheaper(self, stage: str) -> None:
        """Once the plan shows `stage` is cheaper than the slowest stage, run its thread
        below the job's priority: on a busy CPU the slowest stage (usually the encoder,
        whose frame threads wait on its calling thread) then gets the cores first, and the
        cheaper stages fill the time it leaves (video_threads.lower_thread_priority)."""
        if stage in self.lowered or not self.thread_plan.yields(stage):
            return
        self.lowered[stage] = lower_thread_priority()

    def _infer(self, q_in: queue.Queue, q_out: queue.Queue, skip_below: int) -> None:
        pending: list[_Frame] = []
        selected_count = 0
        first = True
        current_bucket: int | None = None
        range_start = self.start_s or 0.0
        group_limit = max(2 * self.batch_size, 16)  # bounds memory when frames are skipped
        while True:
            entry = self._get(q_in)
            if entry is _END:
                break
            frame: DecodedFrame = entry
            if frame.index < skip_below:
                continue
            self.frames_seen += 1
            bucket = int((frame.time_s - range_start) // self.segment_s)
            starts = first or bucket != current_bucket
            current_bucket, first = bucket, False
            selected = self._select(frame)
            pending.append(_Frame(frame, selected, starts))
            selected_count += selected
            if selected_count >= self.batch_size or len(pending) >= group_limit:
                self._process_group(pending, q_out)
                pending, selected_count = [], 0
        self._process_group(pending, q_out)

    def _get(self, q_in: queue.Queue) -> Any:
        while True:
            try:
                entry = q_in.get(timeout=0.1)
            except queue.Empty:
                self.job.cancel.raise_if_cancelled()
                if self.error is not None:
                    raise self.error
                continue
            if isinstance(entry, BaseException):
                raise entry
            return entry

    def _select(self, frame: DecodedFrame) -> bool:
        if frame.index % self.every_nth:
            return False
        if self.select_mode == "keyframes":
            return frame.keyframe
        if self.select_mode == "scenes":
            thumb = _thumbnail(frame.array)
            changed = (self.prev_thumb is None
                       or float(np.abs(thumb - self.prev_thumb).mean()) > self.scene_threshold)
            self.prev_thumb = thumb
            return changed
        return True

    def _process_group(self, group: list[_Frame], q_out: queue.Queue) -> None:
        if not group:
            return
        self.job.wait_if_paused()
        self.job.cancel.raise_if_cancelled()
        chosen = [f for f in group if f.selected]
        if chosen:
            images, plans = [], []
            for f in chosen:
                d = f.decoded
                info = FrameInfo(d.index, d.pts, d.time_s, d.keyframe)
                f.plan = FrameOutput(self.job.output_dir, self.item.out_key,
                                     Path(self.item.path), info)
                images.append(_loaded(d, self.item.path))
                plans.append(f.plan)
            began = time.perf_counter()
            results = batch_of(self.job.handler, images, plans)
            self.model_s += time.perf_counter() - began
            for f, res in zip(chosen, results):
                f.result = res
        for f in group:
            state_before = self._state() if f.starts_segment else {}
            picture, line = self._render(f)
            if not self.threads_planned:
                self._plan_threads(len(group), picture)
                self._yield_if_cheaper("model")
            self.frames_processed += f.selected
            if picture is not None and self.settings is not None:
                # converted here, not on the encoder's thread: the encoder is usually the
                # slowest stage, and the RGB -> YUV conversion would lengthen its turn
                picture = encoder_frame(picture, self.settings)
            _put(q_out, _Encoded(f.decoded.index, f.decoded.pts, f.decoded.time_s, picture,
                                 line, f.starts_segment, state_before), self._stop)
            if self.error is not None:
                raise self.error
        self._report_progress()

    def _render(self, f: _Frame) -> tuple[np.ndarray | None, str | None]:
        d = f.decoded
        line = None
        picture = None
        if f.selected and f.result is not None:
            res = f.result
            result = res.result
            if self.tracker is not None and isinstance(result, Detections):
                result = self.tracker.update_detections(result)
                res.result = result
                self.track_ids.update(b.track_id for b in result.boxes if b.track_id)
            self.last_result = result
            if self.video_output:
                picture = self._picture(d, res, f.plan)
            if self.annotations:
                from engine.exporters.reports import result_to_dict

                record = {"frame": d.index, "pts": d.pts, "time_s": round(d.time_s, 6),
                          "keyframe": d.keyframe, "result": result_to_dict(result),
                          "info": res.info}
                if isinstance(result, Segmentation):  # arrays: kept as RLE for players
                    record["masks"] = mask_records(result)
                line = json.dumps(record, default=str)
        elif self.video_output:
            held = self.last_result if self.hold else None
            if isinstance(held, Detections):
                picture = _draw_tracked(d.array, held)
            elif isinstance(held, Segmentation) and held.image_size == (d.array.shape[1],
                                                                          d.array.shape[0]):
                from engine.exporters.overlay import draw_segmentation

                picture = np.asarray(draw_segmentation(d.array, held))
            else:
                picture = d.array
        if picture is not None:
            picture = _as_rgb8(picture)
            if self.out_size is None:
                picture = even_size(picture)
                self.out_size = (picture.shape[1], picture.shape[0])
            elif (picture.shape[1], picture.shape[0]) != self.out_size:
                picture = resize_rgb(picture, self.out_size)
        return picture, line

    def _picture(self, d: DecodedFrame, res: ItemResult, plan: FrameOutput | None) -> np.ndarray:
        handler = self.job.handler
        result = res.result
        if hasattr(handler, "render_frame"):
            return np.asarray(handler.render_frame(_loaded(d, self.item.path), result))
        if res.frame is not None:
            return np.asarray(res.frame)
        if isinstance(result, Detections):
            return _draw_tracked(d.array, result)
        if isinstance(result, RestoredImage):
            return result.image
        captured = plan.frame_image() if plan is not None else None
        if captured is not None:
            return captured
        if isinstance(result, Segmentation):
            from engine.exporters.overlay import draw_segmentation

            return np.asarray(draw_segmentation(d.array, result))
        return d.array

    def _report_progress(self) -> None:
        active = max(1e-9, time.monotonic() - self.began - (self.job.paused_s - self.paused_before))
        fps = self.frames_seen / active
        total = self.info.estimated_frames
        if self.end_s is not None or self.start_s:
            span = (self.end_s or self.info.duration_s or 0) - (self.start_s or 0)
            total = int(span * float(self.info.fps or 0)) if self.info.fps else total
        eta = (max(0, total - self.frames_seen) / fps) if fps > 0 and total else None
        self.job.progress(self.item.path, self.frames_seen, total, fps, eta,
                          f"video frames ({fps:.1f} frames/s)")

    # -- encode thread ---------------------------------------------------------------------------
    def _encode(self, q_out: queue.Queue, next_idx: int) -> None:
        writer: SegmentWriter | None = None
        lines: list[str] = []
        seg: dict[str, Any] = {}
        idx = next_idx - 1
        try:
            while True:
                try:
                    entry = q_out.get(timeout=0.1)
                except queue.Empty:
                    if self._stop.is_set():
                        break
                    continue
                self._yield_if_cheaper("encode")
                if entry is _END:
                    if seg:
                        self._close_segment(writer, lines, seg, idx, self._state())
                    writer, seg = None, {}
                    return
                if entry.starts_segment or not seg:
                    if seg:
                        self._close_segment(writer, lines, seg, idx, entry.state_before)
                    idx += 1
                    seg = {"first": entry.index}
                    lines = []
                    writer = self._open_writer(idx, entry.picture)
                if writer is not None and entry.picture is not None:
                    writer.write(entry.picture, entry.pts)
                if entry.annotation is not None:
                    lines.append(entry.annotation)
                seg["next"] = entry.index + 1
                seg["end_pts"] = entry.pts
                seg["frames"] = seg.get("frames", 0) + 1
        except BaseException as exc:  # noqa: BLE001 — reported to the inference thread
            self.error = exc if isinstance(exc, (InputError, Cancelled)) else InputError(
                f"{self.item.path}: encoding failed ({exc}).")
            self._stop.set()
        finally:
            if writer is not None and seg:
                writer.abort()  # an unfinished segment is redone on resume

    def _open_writer(self, idx: int, picture: Any) -> SegmentWriter | None:
        if not self.video_output or self.settings is None:
            return None
        h, w = ((picture.height, picture.width) if picture is not None
                else (self.info.height, self.info.width))
        self.settings.width, self.settings.height = w, h
        self.settings.threads = self.thread_plan.encode
        writer = SegmentWriter(self._segment_path(idx), self.settings)
        self.threads_applied["encode"] = writer.stream.codec_context.thread_count
        return writer

    def _segment_path(self, idx: int) -> Path:
        ext = ".mov" if self.video_output else ".jsonl"
        return self.work_dir / f"seg-{idx:06d}{ext}"

    def _close_segment(self, writer: SegmentWriter | None, lines: list[str],
                       seg: dict[str, Any], idx: int, state: dict[str, Any]) -> None:
        path = self._segment_path(idx)
        jsonl = path.with_suffix(".jsonl")
        atomic_write_bytes(jsonl, ("".join(line + "\n" for line in lines)).encode("utf-8"))
        if writer is not None:
            writer.close()
        self.job.store.add_segment(self.job.job_id, self.item.seq, SegmentRecord(
            idx=idx, path=str(path), first_frame=seg["first"], next_frame=seg["next"],
            end_pts=seg.get("end_pts"), frames=seg["frames"], state=state))

    # -- the end -------------------------------------------------------------------------------------
    def _finalise(self) -> ItemResult:
        segments = self.job.store.segments(self.job.job_id, self.item.seq)
        if not segments:
            raise InputError(f"{self.item.path}: no frames to process"
                             + (" in the chosen time range." if self.start_s or self.end_s
                                else " (no decodable frames)."))
        decoded_total = segments[-1].next_frame
        expected = self.info.frames if self.start_s is None and self.end_s is None else 0
        if expected and decoded_total < expected and not self.opts.allow_partial_video:
            self._discard()
            raise InputError(
                f"{self.item.path}: truncated or corrupt video: only {decoded_total} of "
                f"{expected} frames decode. Set allow_partial_video to keep what decodes.")
        written: list[Path] = []
        info: dict[str, Any] = {"frames": decoded_total, "processed_frames": self.frames_processed,
                                "threads": dict(self.threads_applied,
                                                plan=self.thread_plan.describe(),
                                                nice=dict(self.lowered, job=thread_nice())),
                                "resumed_from_frame": self.resumed_from,
                                "bad_packets": self.stats.bad_packets}
        if self.video_output:
            name = ".restored" if self.job.spec.task == "restore" else ".overlay"
            target = self.out.path(name + self.suffix, kind="video")
            report = assemble_video([Path(s.path) for s in segments], Path(self.item.path),
                                    target, display=self.info.display_matrix,
                                    start_s=self.start_s, end_s=self.end_s,
                                    cancel=self.job.cancel)
            self.out._record(target, "video")
            written.append(target)
            info.update(copied_streams=report.copied, dropped_streams=report.dropped,
                        video_codec=self.settings.codec if self.settings else None)
        captions: list[tuple[float, str]] = []
        if self.annotations:
            target = self.out.path(".frames.jsonl", kind="annotations")
            part = target.with_name("." + target.name + ".part")
            try:
                with open(part, "w", encoding="utf-8") as fh:
                    for s in segments:
                        with open(Path(s.path).with_suffix(".jsonl"), encoding="utf-8") as src:
                            for line in src:
                                fh.write(line)
                                if '"type": "Caption"' in line:
                                    row = json.loads(line)
                                    captions.append((row["time_s"], row["result"]["text"]))
                os.replace(part, target)
            except BaseException:  # a full disk, a cancel: no half file stays behind
                part.unlink(missing_ok=True)
                raise
            self.out._record(target, "annotations")
            written.append(target)
        if captions:
            from engine.exporters.webvtt import cues_from_times, write_webvtt

            end = self.end_s or self.info.duration_s or (captions[-1][0] + 1.0)
            if self.start_s:
                captions = [(t - self.start_s, text) for t, text in captions]
                end -= self.start_s
            target = self.out.path(".vtt", kind="captions")
            write_webvtt(target, cues_from_times(captions, end))
            self.out._record(target, "captions")
            written.append(target)
        if self.tracker is not None:
            info["tracks"] = len(self.track_ids)
        self._discard()
        video = self._video_result(written, info)
        info["video"] = video.to_dict()  # the same, as data (crosses the worker pipe)
        return ItemResult(result=video, written=written, info=info)

    def _video_result(self, written: list[Path], info: dict[str, Any]) -> VideoResult:
        """What a front end opens to play this video with its results."""
        exported = [p for p in written if p.suffix.lower() not in (".jsonl", ".vtt")]
        jsonl = [p for p in written if p.name.endswith(".frames.jsonl")]
        return VideoResult(
            task=self.job.spec.task, source=Path(self.item.path),
            video=exported[0] if exported else None, frames_jsonl=jsonl[0] if jsonl else None,
            fps=float(self.info.fps or 0.0), frames=int(info["frames"]),
            width=self.info.width, height=self.info.height, start_s=self.start_s,
            end_s=self.end_s, hold=bool(self.hold), source_audio=list(self.info.audio),
            copied_streams=list(info.get("copied_streams", [])))

    def _discard(self) -> None:
        shutil.rmtree(self.work_dir, ignore_errors=True)
        try:
            self.work_dir.parent.rmdir()  # .ocula-work, when no other video uses it
        except OSError:
            pass
        self.job.store.clear_segments(self.job.job_id, self.item.seq)


def _loaded(d: DecodedFrame, path: str) -> LoadedImage:
    return LoadedImage(rgb=Image.fromarray(d.array, "RGB"), array=d.array, path=Path(path),
                       notes=[f"video frame {d.index} at {d.time_s:.3f} s"])


def _thumbnail(array: np.ndarray) -> np.ndarray:
    """64x36 grey (ITU-R 601 luma, area-averaged) in [0, 1]: what scene changes compare."""
    gray = np.asarray(Image.fromarray(np.ascontiguousarray(array)).convert("L"))
    return resize.filtered(gray, (64, 36), "area").astype(np.float32) / 255.0


def _as_rgb8(picture: Any) -> np.ndarray:
    arr = np.asarray(picture.convert("RGB") if isinstance(picture, Image.Image) else picture)
    if arr.dtype == np.uint16:
        arr = (arr.astype(np.uint32) * 255 // 65535).astype(np.uint8)
    elif arr.dtype != np.uint8:
        arr = np.clip(arr, 0, 255).astype(np.uint8)
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=2)
    return np.ascontiguousarray(arr[..., :3])


def _draw_tracked(array: np.ndarray, det: Detections) -> np.ndarray:
    """Boxes tagged `#id label score`, coloured per track so an object keeps its colour."""
    from engine.exporters.overlay import draw_detections

    boxes = [replace(b, label=f"#{b.track_id} {b.label}", label_id=b.track_id)
             if b.track_id is not None else b for b in det.boxes]
    drawn = draw_detections(array, Detections(boxes, det.image_size, det.labels))
    return np.asarray(drawn)


def _put(q: queue.Queue, entry: Any, stop: threading.Event) -> bool:
    while True:
        try:
            q.put(entry, timeout=0.1)
            return True
        except queue.Full:
            if stop.is_set():
                return False


def _drain(q: queue.Queue) -> None:
    while True:
        try:
            q.get_nowait()
        except queue.Empty:
            return
