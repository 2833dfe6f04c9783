"""The video result view: a real video job run from the window, then played in it.

The video is generated here (PyAV: bars with a moving white square, an AAC tone); the
job is the engine's video pipeline with the test detector / restorer of
tests/fixtures/media.py (they threshold and invert real pixels). The oracles are files:
frames decoded by PyAV straight from the video, and frames.jsonl as the job wrote it.
"""
from __future__ import annotations

import json
from pathlib import Path

import av
import numpy as np
import pytest
from PySide6.QtCore import QRectF, Qt
from PySide6.QtGui import QImage, QPainter
from PySide6.QtTest import QTest

from desktop.main_window import MainWindow
from desktop.views.imaging import label_color, qimage_to_array
from engine.jobs import JobSpec, JobStore
from tests.fixtures.media import make_video

W, H, FPS, FRAMES = 160, 120, 12, 24
MODEL = {"detect": "yolos-tiny-onnx", "restore": "swin2sr-x2-onnx"}  # catalog ids (cards
# only: the test handlers replace the task handlers, so no weights are needed)


def decoded(path: Path) -> list[np.ndarray]:
    with av.open(str(path)) as container:
        return [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]


def shown(win: MainWindow) -> np.ndarray:
    """The picture on the canvas (the source frame), as RGB."""
    return qimage_to_array(win.viewer.canvas.image_item.pixmap().toImage())[..., :3]


def scene_pixels(win: MainWindow) -> np.ndarray:
    """Picture + visible overlays at one scene unit per pixel, as RGB."""
    image = QImage(W, H, QImage.Format.Format_RGBA8888)
    image.fill(Qt.GlobalColor.transparent)
    painter = QPainter(image)
    win.viewer.canvas.scene().render(painter, QRectF(0, 0, W, H), QRectF(0, 0, W, H))
    painter.end()
    return qimage_to_array(image)[..., :3]


@pytest.fixture
def window(qtbot, qsettings, settings_path, tmp_path, monkeypatch, test_handlers):
    monkeypatch.setenv("OCULA_HOME", str(tmp_path / "home"))
    win = MainWindow(qsettings=qsettings, settings_path=settings_path,
                     job_store=JobStore(tmp_path / "jobs.sqlite"))
    qtbot.addWidget(win)
    win.resize(1200, 800)
    win.show()
    qtbot.waitExposed(win)
    yield win
    win.close()


def run_in_window(win: MainWindow, qtbot, task: str, videos: list[Path], out: Path):
    win.task_combo.setCurrentIndex(win.task_combo.findData(task))
    win.workspace.add_paths(videos)
    qtbot.waitUntil(lambda: win.workspace.shown_path is not None, timeout=10_000)
    spec = JobSpec(task, MODEL[task], [str(v) for v in videos], str(out))
    with qtbot.waitSignal(win.jobFinished, timeout=120_000) as finished:
        op = win.start_job(spec)
    assert finished.args[0] is op and op.outcome == "succeeded", \
        op.failure and op.failure.details
    assert (op.result.done, op.result.failed) == (len(videos), 0)
    return op


def open_result(win, qtbot, tmp_path, task: str):
    """(the generated clip with audio, the player once the job's result is open)."""
    video = make_video(tmp_path / "clip.mp4", seconds=FRAMES / FPS, size=(W, H), fps=FPS,
                       audio=True, subtitles=False)
    run_in_window(win, qtbot, task, [video.path], tmp_path / "out")
    player = win.workspace.video
    qtbot.waitUntil(lambda: player.is_open, timeout=10_000)
    return video, player


def test_detect_video_plays_with_live_overlays_seek_keys_and_audio(window, qtbot, tmp_path):
    win = window
    video, player = open_result(win, qtbot, tmp_path, "detect")
    assert player.isVisible() and player.frame_count == FRAMES
    assert player.scrubber.maximum() == FRAMES - 1
    assert win.results_panel.table.rowCount() >= 5  # frames, fps, size, files, audio
    frames = decoded(video.path)
    records = [json.loads(line) for line in
               (tmp_path / "out" / "clip.frames.jsonl").read_text().splitlines()]
    assert [r["frame"] for r in records] == list(range(FRAMES))

    # seeking (the scrubber, as a user drags it) shows exactly frame k, with k's boxes
    for k in (17, 3, 4, 22, 0):
        player.scrubber.setValue(k)
        qtbot.waitUntil(lambda k=k: player.index == k, timeout=5_000)
        np.testing.assert_array_equal(shown(win), frames[k])
        boxes = records[k]["result"]["boxes"]
        assert len(boxes) == 1 and boxes[0]["track_id"] is not None
        items = win.viewer.boxes.box_items
        assert [tuple(i.mapRectToScene(i.rect()).getCoords()) for i in items] == \
            [(b["x0"], b["y0"], b["x1"], b["y1"]) for b in boxes]
        assert items[0].box.label == f"#{boxes[0]['track_id']} square"
        pixels = scene_pixels(win)
        box = boxes[0]
        x0, y_mid = int(box["x0"]), int((box["y0"] + box["y1"]) / 2)
        pen = label_color(box["track_id"])
        # the box's left edge, drawn over the frame: the track's colour, on the line only
        np.testing.assert_array_equal(pixels[y_mid, x0], (pen.red(), pen.green(), pen.blue()))
        np.testing.assert_array_equal(pixels[y_mid, x0 - 6], frames[k][y_mid, x0 - 6])
        assert abs(box["x0"] - video.boxes[k][0]) <= 1  # and it is frame k's square

    # keys: → and ← step one frame (the focus is on the image), K pauses, Space plays
    canvas = win.viewer.canvas
    win.activateWindow()
    canvas.setFocus()
    qtbot.waitUntil(canvas.hasFocus, timeout=5_000)
    player.seek(10)
    QTest.keyClick(canvas, Qt.Key.Key_Right)
    assert player.index == 11
    np.testing.assert_array_equal(shown(win), frames[11])
    QTest.keyClick(canvas, Qt.Key.Key_Left)
    QTest.keyClick(canvas, Qt.Key.Key_Left)
    assert player.index == 9
    np.testing.assert_array_equal(shown(win), frames[9])
    compare_was = win.viewer.visible["compare"]
    QTest.keyClick(canvas, Qt.Key.Key_L)
    assert player.playing and (player.direction, player.speed) == (1, 1)
    QTest.keyClick(canvas, Qt.Key.Key_L)  # L again: faster
    assert player.speed == 2
    QTest.keyClick(canvas, Qt.Key.Key_K)
    assert not player.playing
    assert win.viewer.visible["compare"] == compare_was  # K paused, it did not toggle
    QTest.keyClick(canvas, Qt.Key.Key_J)
    assert player.direction == -1
    QTest.keyClick(canvas, Qt.Key.Key_Space)
    assert not player.playing

    # play advances frame by frame at the video's rate, to the end, then stops
    player.seek(0)
    seen: list[int] = []
    player.frameShown.connect(seen.append)
    QTest.keyClick(canvas, Qt.Key.Key_Space)
    assert player.playing and player.timer.interval() == round(1000 / FPS)
    qtbot.waitUntil(lambda: not player.playing, timeout=10_000)
    assert seen == list(range(1, FRAMES))
    np.testing.assert_array_equal(shown(win), frames[FRAMES - 1])

    # the exported file keeps the source's audio: read from the file
    with av.open(str(tmp_path / "out" / "clip.overlay.mp4")) as exported:
        assert [s.codec_context.name for s in exported.streams.audio] == ["aac"]
    assert player.audio_note == "audio kept (aac)"
    assert "audio kept" in player.audio_label.text()


def test_video_without_audio_says_so_and_inputs_switch(window, qtbot, tmp_path):
    win = window
    silent = make_video(tmp_path / "silent.mp4", seconds=1.0, size=(W, H), fps=FPS,
                        audio=False, subtitles=False)
    loud = make_video(tmp_path / "loud.mp4", seconds=1.0, size=(W, H), fps=FPS,
                      audio=True, subtitles=False)
    run_in_window(win, qtbot, "detect", [silent.path, loud.path], tmp_path / "out")
    player = win.workspace.video
    for index, (clip, note) in enumerate(((silent, "no audio in source"),
                                          (loud, "audio kept (aac)"))):
        win.workspace.set_current(index)
        qtbot.waitUntil(lambda c=clip: player.is_open and player.result.source == c.path,
                        timeout=10_000)
        assert player.audio_note == note
        np.testing.assert_array_equal(shown(win), decoded(clip.path)[0])
    win.task_combo.setCurrentIndex(win.task_combo.findData("segment"))  # no result there
    assert not player.is_open and not player.isVisible()


def test_restored_video_is_compared_with_its_source(window, qtbot, tmp_path):
    win = window
    video, player = open_result(win, qtbot, tmp_path, "restore")
    source, restored = decoded(video.path), decoded(tmp_path / "out" / "clip.restored.mp4")
    assert len(restored) == FRAMES
    viewer = win.viewer
    assert viewer.compare is not None and viewer.split_row.isVisible()
    for k in (5, 19, 6):
        player.seek(k)
        np.testing.assert_array_equal(shown(win), source[k])  # "before": the source frame
        after = qimage_to_array(viewer.compare.restored.toImage())[..., :3]
        np.testing.assert_array_equal(after, restored[k])  # "after": the restored frame
        viewer.split_slider.setValue(500)
        pixels = scene_pixels(win)
        np.testing.assert_array_equal(pixels[60, 20], source[k][60, 20])  # left of the line
        np.testing.assert_array_equal(pixels[60, 140], restored[k][60, 140])  # right of it
    assert player.audio_note == "audio kept (aac)"


def test_masks_and_captions_of_each_frame_are_drawn_live(window, qtbot, tmp_path):
    """A segmentation + caption frames.jsonl (as the pipeline writes it: masks as RLE) over
    a real video: frame k shows k's mask; frames without a record hold the last caption."""
    from engine.exporters.reports import result_to_dict
    from engine.jobs.video_result import VideoResult, mask_records
    from engine.results import Caption, Segmentation, SegmentInstance

    win = window
    video = make_video(tmp_path / "clip.mp4", seconds=FRAMES / FPS, size=(W, H), fps=FPS,
                       audio=False, subtitles=False)
    lines = []
    for k, (x0, y0, x1, y1) in enumerate(video.boxes):
        mask = np.zeros((H, W), bool)
        mask[y0:y1, x0:x1] = True
        seg = Segmentation("instance", (W, H), instances=[SegmentInstance(mask, "square", 4)])
        lines.append(json.dumps({"frame": k, "result": result_to_dict(seg),
                                 "masks": mask_records(seg)}))
    jsonl = tmp_path / "clip.frames.jsonl"
    jsonl.write_text("\n".join(lines) + "\n")
    win.workspace.add_paths([video.path])
    qtbot.waitUntil(lambda: win.workspace.shown_path is not None, timeout=10_000)
    win.workspace.show_video(VideoResult("segment", video.path, None, jsonl, FPS, FRAMES, W, H))
    player, frames = win.workspace.video, decoded(video.path)
    assert player.audio_note == "no audio in source"
    colour = label_color(4)
    for k in (2, 15):
        player.seek(k)
        x0, y0, x1, y1 = video.boxes[k]
        pixels = scene_pixels(win)
        inside = pixels[(y0 + y1) // 2, (x0 + x1) // 2].astype(int)
        expected = 0.5 * np.array([colour.red(), colour.green(), colour.blue()]) + 0.5 * 255
        assert np.abs(inside - expected).max() <= 2  # the mask at 50 % over the white square
        np.testing.assert_array_equal(pixels[y0 - 4, x0 + 4], frames[k][y0 - 4, x0 + 4])
        assert win.viewer.legend()[0].label == "square #0"  # instance kind: with its id

    captions = tmp_path / "captions.frames.jsonl"
    captions.write_text("".join(json.dumps({"frame": k, "result": result_to_dict(
        Caption(text))}) + "\n" for k, text in ((0, "bars"), (12, "a square"))))
    win.workspace.show_video(VideoResult("caption", video.path, None, captions, FPS, FRAMES,
                                         W, H))
    for k, text in ((0, "bars"), (5, "bars"), (12, "a square"), (20, "a square")):
        player.seek(k)
        assert win.viewer.caption_text == text and win.viewer.caption_label.isVisible()
