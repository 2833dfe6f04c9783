"""Image tasks on video: frames, timing, audio, subtitles, rotation, overlays, tracks,
frame selection, captions as WebVTT, codecs, broken inputs and resume."""
from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from engine.errors import Cancelled
from engine.jobs import JobSpec, resume_job, run_job
from engine.jobs.video_job import _draw_tracked
from engine.media.video import probe, video_encoders
from engine.results import Box, Detections
from tests.fixtures.media import make_audio_only, make_video, truncate_copy


def decoded(path: Path) -> tuple[list[int], list[np.ndarray], Fraction]:
    with av.open(str(path)) as c:
        stream = c.streams.video[0]
        frames = list(c.decode(stream))
        return [f.pts for f in frames], [f.to_ndarray(format="rgb24") for f in frames], \
            stream.time_base


def packets(path: Path, kind: str) -> list[bytes]:
    with av.open(str(path)) as c:
        streams = [s for s in c.streams if s.type == kind]
        return [bytes(p) for p in c.demux(streams) if p.size] if streams else []


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return 99.0 if mse == 0 else 10 * np.log10(255.0 ** 2 / mse)


def jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_detection_on_video_keeps_timing_audio_subtitles_and_tracks(tmp_path, store,
                                                                   test_handlers):
    video = make_video(tmp_path / "clip.mp4")
    assert video.subtitles == ["hello", "world"]  # this FFmpeg build writes mov_text
    summary = run_job(JobSpec("detect", "square", [str(video.path)], str(tmp_path / "out"),
                              options={"segment_seconds": 0.7}), store=store)
    assert (summary.done, summary.failed) == (1, 0)
    out_video = tmp_path / "out" / "clip.overlay.mp4"
    in_pts, in_frames, in_tb = decoded(video.path)
    out_pts, out_frames, out_tb = decoded(out_video)
    # Same frames at the same instants (so the same duration, to the tick).
    assert len(out_frames) == video.frames
    assert [p * out_tb for p in out_pts] == [p * in_tb for p in in_pts]
    with av.open(str(video.path)) as a, av.open(str(out_video)) as b:
        assert abs(b.duration - a.duration) <= 1_000_000 / 25
        assert b.streams.video[0].codec_context.name == "h264"
    # Audio and subtitles: stream copy, byte for byte.
    assert packets(out_video, "audio") == packets(video.path, "audio") != []
    assert packets(out_video, "subtitle") == packets(video.path, "subtitle") != []

    rows = jsonl(tmp_path / "out" / "clip.frames.jsonl")
    assert [r["frame"] for r in rows] == list(range(video.frames))
    assert [r["pts"] for r in rows] == in_pts
    for row, truth in zip(rows, video.boxes):
        (b,) = row["result"]["boxes"]
        found = (b["x0"], b["y0"], b["x1"], b["y1"])
        assert np.abs(np.subtract(found, truth)).max() <= 1  # the square (±1 px of codec blur)
        assert b["track_id"] == 1  # one identity all the way through
    # The overlay is the rendering of those tracked boxes over the input frame.
    for i in (0, 17, 49):
        (b,) = rows[i]["result"]["boxes"]
        det = Detections([Box(b["x0"], b["y0"], b["x1"], b["y1"], "square", b["score"], 0,
                              track_id=1)], (320, 240))
        expected = _draw_tracked(in_frames[i], det)
        assert psnr(out_frames[i], expected) > 30
        x0, y0, x1, y1 = video.boxes[i]
        edge = (slice(y0 + 8, y1 - 8), slice(x0, x0 + 2))  # the box's left outline
        assert np.abs(out_frames[i][edge].astype(int) - in_frames[i][edge]).mean() > 40
    item = next(iter(store.job_items(summary.job_id)))
    assert item.info["tracks"] == 1 and item.info["copied_streams"] == [
        "audio:aac", "subtitle:mov_text"]


def test_restoration_on_video_with_vfr_rotation_and_aspect_ratio(tmp_path, store,
                                                                 test_handlers):
    video = make_video(tmp_path / "phone.mp4", vfr=True, rotation=90, sar=Fraction(4, 3),
                       subtitles=False)
    info_in = probe(video.path)
    summary = run_job(JobSpec("restore", "invert", [str(video.path)], str(tmp_path / "out"),
                              options={"segment_seconds": 0.5, "batch_size": 3}), store=store)
    assert summary.done == 1, summary.failures
    out_video = tmp_path / "out" / "phone.restored.mp4"
    info_out = probe(out_video)
    in_pts, in_frames, in_tb = decoded(video.path)
    out_pts, out_frames, out_tb = decoded(out_video)
    intervals = {b - a for a, b in zip(in_pts, in_pts[1:])}
    assert len(intervals) > 1  # the input really is variable frame rate
    assert [p * out_tb for p in out_pts] == [p * in_tb for p in in_pts]
    assert info_out.rotation == info_in.rotation == 90
    assert info_out.display_matrix == info_in.display_matrix
    assert info_out.sample_aspect_ratio == info_in.sample_aspect_ratio == Fraction(4, 3)
    assert packets(out_video, "audio") == packets(video.path, "audio")
    for got, original in zip(out_frames, in_frames):
        assert psnr(got, 255 - original) > 32


def test_matroska_keeps_ass_subtitles(tmp_path, store, test_handlers):
    video = make_video(tmp_path / "film.mkv", seconds=1.0)
    assert video.subtitles
    run_job(JobSpec("restore", "invert", [str(video.path)], str(tmp_path / "out")), store=store)
    out_video = tmp_path / "out" / "film.restored.mkv"
    assert packets(out_video, "subtitle") == packets(video.path, "subtitle") != []
    assert packets(out_video, "audio") == packets(video.path, "audio")
    assert len(decoded(out_video)[0]) == video.frames


def test_every_nth_frame_and_time_range(tmp_path, store, test_handlers):
    video = make_video(tmp_path / "clip.mp4", subtitles=False)
    summary = run_job(JobSpec("detect", "square", [str(video.path)], str(tmp_path / "out"),
                              options={"every_nth_frame": 3, "time_range": [0.4, 1.2]}),
                      store=store)
    assert summary.done == 1, summary.failures
    rows = jsonl(tmp_path / "out" / "clip.frames.jsonl")
    in_range = [i for i, t in enumerate(video.times)
                if Fraction(2, 5) <= t < Fraction(6, 5)]  # frames 10..29
    assert [r["frame"] for r in rows] == list(range(0, len(in_range), 3))
    assert [r["pts"] for r in rows] == [video.pts[in_range[k]] for k in range(0, 20, 3)]
    out_video = tmp_path / "out" / "clip.overlay.mp4"
    out_pts, out_frames, out_tb = decoded(out_video)
    assert len(out_frames) == len(in_range)
    assert out_pts[0] == 0  # the clip starts at the range's start
    first_t = video.times[in_range[0]]
    assert [p * out_tb + first_t for p in out_pts] == [video.times[i] for i in in_range]
    # Audio: only the packets inside the range, unchanged.
    with av.open(str(video.path)) as c:
        stream = c.streams.audio[0]
        inside = [bytes(p) for p in c.demux(stream)
                  if p.size and 0.4 <= float(p.pts * stream.time_base) < 1.2]
    assert packets(out_video, "audio") == inside
    # A skipped frame shows the last detection (held) rather than nothing.
    _, in_frames, _ = decoded(video.path)
    skipped = in_range[1]
    assert np.abs(out_frames[1].astype(int) - in_frames[skipped]).mean() > 0.5


def test_captions_of_scenes_become_webvtt(tmp_path, store, test_handlers):
    video = make_video(tmp_path / "scenes.mp4", seconds=1.8, subtitles=False, audio=False,
                       background=[(220, 30, 30), (30, 200, 40), (30, 40, 210)])
    summary = run_job(JobSpec("caption", "colour", [str(video.path)], str(tmp_path / "out")),
                      store=store)
    assert summary.done == 1, summary.failures
    out = tmp_path / "out"
    assert not (out / "scenes.overlay.mp4").exists()  # captions: no video by default
    rows = jsonl(out / "scenes.frames.jsonl")
    assert [r["result"]["text"] for r in rows] == ["red", "green", "blue"]  # one per scene
    assert [r["frame"] for r in rows] == [0, 15, 30]
    with av.open(str(out / "scenes.vtt")) as c:
        stream = c.streams.subtitles[0]
        cues = [(round(float(p.pts * p.time_base), 2), bytes(p).decode()) for p in c.demux(stream)
                if p.size]
    assert cues == [(0.0, "red"), (0.6, "green"), (1.2, "blue")]


@pytest.mark.parametrize("codec", ["h265", "vp9", "ffv1"])
def test_other_codecs_when_the_build_has_them(tmp_path, store, test_handlers, codec):
    if codec not in video_encoders():
        pytest.skip(f"this FFmpeg build has no {codec} encoder")
    video = make_video(tmp_path / "c.mp4", seconds=0.4, subtitles=False)
    summary = run_job(JobSpec("restore", "invert", [str(video.path)], str(tmp_path / "out"),
                              options={"video_codec": codec}), store=store)
    assert summary.done == 1, summary.failures
    (target,) = (tmp_path / "out").glob("c.restored.*")
    with av.open(str(target)) as c:
        assert c.streams.video[0].codec_context.name == {"h265": "hevc"}.get(codec, codec)
    pts, frames, tb = decoded(target)
    in_pts, in_frames, in_tb = decoded(video.path)
    times, in_times = [p * tb for p in pts], [p * in_tb for p in in_pts]
    if target.suffix == ".mkv":
        # Matroska has no negative timestamps: the muxer moves every stream later by the
        # AAC priming delay (23 ms) alike, so compare timing relative to the first frame.
        assert times[0] - in_times[0] == Fraction(23, 1000)
        times = [t - times[0] for t in times]
    assert times == in_times
    assert psnr(frames[5], 255 - in_frames[5]) > 30


def test_broken_videos_are_clear_per_input_errors(tmp_path, store, test_handlers):
    good = make_video(tmp_path / "good.mp4", seconds=0.4, subtitles=False)
    fast = make_video(tmp_path / "fast.mp4", seconds=1.0, subtitles=False, faststart=True)
    bad = tmp_path / "bad"
    bad.mkdir()
    truncate_copy(fast.path, bad / "cut_faststart.mp4", 0.5)  # index intact, data cut
    truncate_copy(good.path, bad / "cut_index.mp4", 0.5)  # the index (moov) is at the end
    make_audio_only(bad / "audio_only.mp4")
    (bad / "empty.mkv").write_bytes(b"")
    (bad / "words.mov").write_text("not a movie")
    summary = run_job(JobSpec("detect", "square", [str(bad), str(good.path)],
                              str(tmp_path / "out")), store=store)
    assert (summary.done, summary.failed) == (1, 5)
    reasons = {Path(f.path).name: f.reason for f in summary.failures}
    assert "truncated or corrupt video: only" in reasons["cut_faststart.mp4"]
    assert "of 25 frames decode" in reasons["cut_faststart.mp4"]
    assert "not a video FFmpeg can read" in reasons["cut_index.mp4"]
    assert "has no video stream (found: audio)" in reasons["audio_only.mp4"]
    assert "empty file (0 bytes)" in reasons["empty.mkv"]
    assert "not a video FFmpeg can read" in reasons["words.mov"]
    produced = sorted(p.name for p in (tmp_path / "out").rglob("*") if p.is_file())
    assert produced == ["good.frames.jsonl", "good.overlay.mp4", "ocula-report.html",
                        "ocula-report.json"]  # nothing partial from the broken ones


def test_cancelled_render_resumes_from_its_last_segment(tmp_path, store, test_handlers):
    video = make_video(tmp_path / "clip.mp4", seconds=2.0, subtitles=False)
    from engine.events import CancelToken

    cancel = CancelToken()
    spec = JobSpec("detect", "square", [str(video.path)], str(tmp_path / "out"),
                   options={"segment_seconds": 0.4, "test_delay_s": 0.005})

    def on_event(event):
        job_segments = store.segments(event.job_id, 0) if event.kind == "progress" else []
        if len(job_segments) >= 2:
            cancel.cancel()

    summary = run_job(spec, on_event=on_event, cancel=cancel, store=store, job_id="v1")
    assert summary.cancelled
    kept = store.segments("v1", 0)
    assert len(kept) >= 2 and all(Path(s.path).exists() for s in kept)
    assert not (tmp_path / "out" / "clip.overlay.mp4").exists()
    resumed = resume_job("v1", store=store)
    assert resumed.done == 1
    (item,) = list(store.job_items("v1"))
    assert item.info["resumed_from_frame"] == kept[-1].next_frame > 0
    rows = jsonl(tmp_path / "out" / "clip.frames.jsonl")
    assert [r["frame"] for r in rows] == list(range(video.frames))
    assert {b["track_id"] for r in rows for b in r["result"]["boxes"]} == {1}  # state resumed
    pts, frames, _ = decoded(tmp_path / "out" / "clip.overlay.mp4")
    assert pts == video.pts


def test_probe_reports_stream_facts(tmp_path):
    video = make_video(tmp_path / "p.mp4", seconds=0.4, rotation=-90, sar=Fraction(2, 1))
    info = probe(video.path)
    assert (info.width, info.height, info.frames, info.fps) == (320, 240, 10, 25)
    assert info.rotation == -90 and info.sample_aspect_ratio == 2
    assert info.audio == ["aac"] and info.subtitles == ["mov_text"]
    with pytest.raises(Cancelled):
        from engine.events import CancelToken
        from engine.media.video import check_cancel

        token = CancelToken()
        token.cancel()
        check_cancel(token)
