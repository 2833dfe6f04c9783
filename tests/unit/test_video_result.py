"""The headless half of the video result view: frame-accurate random access to a video
(checked against a plain PyAV decode of every frame) and frames.jsonl read back into the
engine's result types (checked against the results that were written)."""
from __future__ import annotations

import json
from pathlib import Path

import av
import numpy as np
import pytest

from engine.errors import InputError
from engine.exporters.reports import result_to_dict
from engine.jobs.video_result import (
    FrameRecords,
    VideoResult,
    mask_records,
    typed_result,
    video_result_of,
)
from engine.media.frame_reader import VideoFrameReader, audio_codecs
from engine.results import Box, Caption, Detections, Segmentation, SegmentInstance
from tests.fixtures.media import make_video


def _gop_video(path: Path, frames: int = 40, gop: int = 8) -> list[np.ndarray]:
    """A video with a keyframe every `gop` frames and B-frames; returns its frames as
    PyAV decodes them front to back (the oracle)."""
    rng = np.random.default_rng(3)
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=25)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        stream.gop_size = gop
        stream.options = {"bf": "2", "crf": "20", "sc_threshold": "0"}
        for i in range(frames):
            picture = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
            picture[:, : 2 * i % 64] = 255 - i
            frame = av.VideoFrame.from_ndarray(picture, format="rgb24")
            frame.pts = i
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    with av.open(str(path)) as container:
        return [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]


def test_any_frame_by_number_equals_a_full_decode(tmp_path):
    reference = _gop_video(tmp_path / "gop.mp4")
    with VideoFrameReader(tmp_path / "gop.mp4", cache_frames=4) as reader:
        assert len(reader) == len(reference) == 40
        order = [0, 1, 2, 39, 38, 37, 12, 8, 7, 23, 24, 25, 26, 3, 33, 0, 20, 19, 18, 17]
        for index in order:
            np.testing.assert_array_equal(reader.frame(index), reference[index],
                                          err_msg=f"frame {index}")
        seeks = reader.seeks
        assert seeks >= 4  # the jumps back and far ahead went through keyframe seeks
        for index in range(20, 30):  # playback: the running decoder, no seek
            np.testing.assert_array_equal(reader.frame(index), reference[index])
        assert reader.seeks == seeks
        with pytest.raises(InputError, match="no frame 40"):
            reader.frame(40)


def test_time_range_numbers_frames_from_its_start(tmp_path):
    reference = _gop_video(tmp_path / "gop.mp4")
    with VideoFrameReader(tmp_path / "gop.mp4", start_s=0.4, end_s=1.2) as reader:
        assert len(reader) == 20  # frames 10..29 at 25 fps
        np.testing.assert_array_equal(reader.frame(0), reference[10])
        np.testing.assert_array_equal(reader.frame(19), reference[29])
        assert reader.index_at(0.4) == 0


def test_audio_streams_are_read_from_the_file(tmp_path):
    loud = make_video(tmp_path / "a.mp4", seconds=0.4, size=(64, 48), subtitles=False)
    silent = make_video(tmp_path / "b.mp4", seconds=0.4, size=(64, 48), audio=False,
                        subtitles=False)
    assert audio_codecs(loud.path) == ["aac"] and audio_codecs(silent.path) == []


def _line(frame: int, result, **extra) -> str:
    record = {"frame": frame, "pts": frame, "time_s": frame / 25, "keyframe": frame == 0,
              "result": result_to_dict(result), "info": {}, **extra}
    return json.dumps(record)


def test_frames_jsonl_read_back_as_results(tmp_path):
    det = Detections([Box(1.5, 2, 30, 40, "cat", 0.9, 0, track_id=3)], (64, 48), {0: "cat"})
    mask = np.zeros((48, 64), bool)
    mask[5:20, 10:30] = True
    seg = Segmentation("instance", (64, 48), instances=[SegmentInstance(mask, "dog", 1, 0.8, 7)])
    label_map = np.full((48, 64), -1, np.int32)
    label_map[:, :16] = 2
    semantic = Segmentation("semantic", (64, 48), label_map=label_map, labels={2: "sky"})
    path = tmp_path / "clip.frames.jsonl"
    lines = [_line(0, det), _line(4, Caption("a red bar", tokens=["a", "red", "bar"])),
             _line(5, seg, masks=mask_records(seg)),
             json.dumps({"pts": 9, "frame": 9, "result": result_to_dict(semantic),
                         "masks": mask_records(semantic)})]  # "frame" not first: still found
    path.write_text("\n".join(lines) + "\n")
    records = FrameRecords(path)
    assert records.frames == [0, 4, 5, 9] and len(records) == 4
    assert typed_result(records.record(0)) == det
    assert records.record(2) is None and records.for_frame(2, hold=False) is None
    assert records.for_frame(2, hold=True)["frame"] == 0  # held: the last result before
    caption = typed_result(records.record(4))
    assert (caption.text, caption.tokens) == ("a red bar", ["a", "red", "bar"])
    back = typed_result(records.record(5))
    assert back.kind == "instance" and len(back.instances) == 1
    inst = back.instances[0]
    assert (inst.label, inst.label_id, inst.segment_id, inst.score) == ("dog", 1, 7, 0.8)
    np.testing.assert_array_equal(inst.mask, mask)
    sky = typed_result(records.record(9)).instances
    assert [(i.label, i.label_id) for i in sky] == [("sky", 2)]
    np.testing.assert_array_equal(sky[0].mask, label_map == 2)
    records.close()


def test_a_broken_frames_jsonl_names_the_file(tmp_path):
    path = tmp_path / "bad.frames.jsonl"
    path.write_text('{"frame": 0, "result": null}\n{"no frame": 1}\n')
    with pytest.raises(InputError, match="bad.frames.jsonl"):
        FrameRecords(path)


def test_video_result_survives_the_worker_pipe_as_info(tmp_path):
    from engine.jobs.handler_protocol import ItemResult

    video = VideoResult("detect", tmp_path / "clip.mp4", tmp_path / "clip.overlay.mp4",
                        tmp_path / "clip.frames.jsonl", 25.0, 50, 320, 240,
                        source_audio=["aac"], copied_streams=["audio:aac"])
    piped = ItemResult(written=[], info=json.loads(json.dumps({"video": video.to_dict()})))
    assert video_result_of(piped) == video and video.audio_kept
    assert video_result_of(ItemResult(result=video)) is video
    assert video_result_of(ItemResult()) is None
