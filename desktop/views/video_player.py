"""The video result view: a transport bar that plays a processed video in the viewer.

It drives the workspace's ImageViewer, so the overlay toggles, zoom, opacity and the
before/after split work on video exactly as on images. Each frame shown is the SOURCE
frame (engine.media.frame_reader: frame-accurate by number), with that frame's results
from frames.jsonl (engine.jobs.video_result) drawn live as overlays: boxes with track
ids, masks, the caption. For a restoration the restored video's frame is the "after"
side of the split over the source frame.

Playback is a QTimer at the video's frame rate reading the next frame from the
decoder already running (no seek); the scrubber seeks (keyframe before, then decode
forward), and a drag is coalesced so only the latest position is decoded.

Keys (while the image or this bar has the focus): Space play/pause; ←/→ one frame;
J/K/L back / pause / forward as in video editors, J or L again = faster (2×, 4×, 8×).
"""
from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any

from PySide6.QtCore import QEvent, QObject, Qt, QTimer, Signal
from PySide6.QtWidgets import QHBoxLayout, QLabel, QSlider, QStyle, QToolButton, QWidget

if TYPE_CHECKING:
    from desktop.views.viewer import ImageViewer
    from engine.jobs.video_result import FrameRecords, VideoResult
    from engine.media.frame_reader import VideoFrameReader

SPEEDS = (1, 2, 4, 8)  # J/L shuttle steps (frames advanced per tick)
# the player's keys (while a video result is shown): key -> (method, argument, what it does);
# the player dispatches on it and Help > Keyboard shortcuts lists it (one table)
TRANSPORT: dict[Qt.Key, tuple[str, tuple, str]] = {
    Qt.Key.Key_Space: ("toggle_play", (), "Video: play / pause"),
    Qt.Key.Key_Left: ("step", (-1,), "Video: previous frame"),
    Qt.Key.Key_Right: ("step", (1,), "Video: next frame"),
    Qt.Key.Key_J: ("shuttle", (-1,), "Video: play backwards (again: faster)"),
    Qt.Key.Key_K: ("pause", (), "Video: pause"),
    Qt.Key.Key_L: ("shuttle", (1,), "Video: play forwards (again: faster)"),
}
TRANSPORT_KEYS = frozenset(TRANSPORT)


def transport_help() -> list[tuple[str, str]]:
    """(what it does, key) rows for the Help dialog."""
    from PySide6.QtGui import QKeySequence

    return [(text, QKeySequence(key).toString(QKeySequence.SequenceFormat.NativeText))
            for key, (_, _, text) in TRANSPORT.items()]


def audio_note(result: VideoResult) -> str:
    """Whether the exported file kept the source's audio, read from the files (PyAV)."""
    from engine.media.frame_reader import audio_codecs

    source = audio_codecs(result.source)
    if not source:
        return "no audio in source"
    if result.video is None:
        return "no video exported (audio stays in the source)"
    kept = audio_codecs(result.video)
    if not kept:
        return "audio NOT kept in the export"
    return f"audio kept ({', '.join(kept)})"


class VideoPlayer(QWidget):
    """Transport bar under the viewer; `open(VideoResult)` shows it, `close_video()` hides
    it and releases the files."""

    frameShown = Signal(int)  # the frame now on screen
    playingChanged = Signal(bool)

    def __init__(self, viewer: ImageViewer, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("videoPlayer")
        self.viewer = viewer
        self.result: VideoResult | None = None
        self.source: VideoFrameReader | None = None
        self.after: VideoFrameReader | None = None  # the restored video
        self.records: FrameRecords | None = None
        self.index = -1
        self.frame_count = 0
        self.direction = 0  # 1 forward, -1 backward, 0 paused
        self.speed = 1
        self.audio_note = ""
        self._pending_seek: int | None = None

        style = self.style()
        self.play_button = QToolButton(self)
        self.play_button.setObjectName("videoPlay")
        self.play_button.setIcon(style.standardIcon(QStyle.StandardPixmap.SP_MediaPlay))
        self.play_button.setToolTip(self.tr("Play / pause (Space); J / K / L: back, pause, "
                                            "forward (again: faster); ← / →: one frame"))
        self.play_button.clicked.connect(self.toggle_play)
        self.scrubber = QSlider(Qt.Orientation.Horizontal, self)
        self.scrubber.setObjectName("videoScrubber")
        self.scrubber.valueChanged.connect(self._on_scrub)
        self.position_label = QLabel(self)
        self.position_label.setObjectName("videoPosition")
        self.speed_label = QLabel(self)
        self.speed_label.setObjectName("videoSpeed")
        self.audio_label = QLabel(self)
        self.audio_label.setObjectName("videoAudio")
        for widget in (self.play_button, self.scrubber):
            widget.setFocusPolicy(Qt.FocusPolicy.NoFocus)  # keys stay with the image
        row = QHBoxLayout(self)
        row.setContentsMargins(6, 2, 6, 2)
        row.addWidget(self.play_button)
        row.addWidget(self.scrubber, 1)
        row.addWidget(self.position_label)
        row.addWidget(self.speed_label)
        row.addWidget(self.audio_label)

        self.timer = QTimer(self)
        self.timer.setTimerType(Qt.TimerType.PreciseTimer)
        self.timer.timeout.connect(self._tick)
        self._seek_timer = QTimer(self)  # coalesces a scrubber drag into one decode
        self._seek_timer.setSingleShot(True)
        self._seek_timer.setInterval(0)
        self._seek_timer.timeout.connect(self._seek_pending)
        self.setFocusPolicy(Qt.FocusPolicy.StrongFocus)
        self.installEventFilter(self)
        viewer.canvas.installEventFilter(self)
        self.setVisible(False)

    # -- opening -----------------------------------------------------------------------
    def open(self, result: VideoResult) -> None:
        """Show a processed video from its first frame (paused)."""
        from engine.jobs.video_result import FrameRecords
        from engine.media.frame_reader import VideoFrameReader

        self.close_video()
        self.source = VideoFrameReader(result.source, start_s=result.start_s,
                                       end_s=result.end_s)
        if result.task == "restore" and result.video is not None and result.video.exists():
            self.after = VideoFrameReader(result.video)
        if result.frames_jsonl is not None and result.frames_jsonl.exists():
            self.records = FrameRecords(result.frames_jsonl)
        self.result = result
        self.frame_count = len(self.source)
        if self.after is not None:
            self.frame_count = min(self.frame_count, len(self.after))
        self.scrubber.blockSignals(True)
        self.scrubber.setRange(0, max(0, self.frame_count - 1))
        self.scrubber.setValue(0)
        self.scrubber.blockSignals(False)
        self.audio_note = audio_note(result)
        self.audio_label.setText(self.tr("· {}").format(self.audio_note))
        self.setVisible(True)
        self.index = -1
        self.seek(0)
        self.viewer.canvas.setFocus(Qt.FocusReason.OtherFocusReason)

    @property
    def is_open(self) -> bool:
        return self.result is not None

    def close_video(self) -> None:
        self.pause()
        for reader in (self.source, self.after, self.records):
            if reader is not None:
                reader.close()
        self.source = self.after = self.records = None
        self.result = None
        self.index = -1
        self.setVisible(False)

    # -- position ----------------------------------------------------------------------
    def seek(self, index: int) -> None:
        """Show frame `index` exactly (clamped to the video)."""
        if self.source is None or not self.frame_count:
            return
        from engine.errors import OculaError

        index = max(0, min(self.frame_count - 1, index))
        try:
            self.viewer.set_frame(self.source.frame(index))
            self._draw_results(index)
        except OculaError as exc:  # a frame that does not decode: say so, stop there
            self.pause()
            self.viewer.flash(str(exc), 6000)
            return
        self.index = index
        if self.scrubber.value() != index:
            self.scrubber.blockSignals(True)
            self.scrubber.setValue(index)
            self.scrubber.blockSignals(False)
        time_s = self.source.time_s(index) - self.source.time_s(0)
        self.position_label.setText(f"{index + 1} / {self.frame_count} · {time_s:.2f} s")
        self.frameShown.emit(index)

    def step(self, frames: int) -> None:
        self.pause()
        self.seek(self.index + frames)

    def _on_scrub(self, value: int) -> None:
        self._pending_seek = value
        self._seek_timer.start()

    def _seek_pending(self) -> None:
        if self._pending_seek is not None:
            target, self._pending_seek = self._pending_seek, None
            self.seek(target)

    # -- results of a frame ------------------------------------------------------------
    def _draw_results(self, index: int) -> None:
        from engine.jobs.video_result import typed_result

        viewer, result = self.viewer, self.result
        assert result is not None
        if self.after is not None:
            from engine.results import RestoredImage

            picture = self.after.frame(index)
            w, h = self.source.size if self.source is not None else (0, 0)
            scale = max(1, round(picture.shape[1] / w)) if w else 1
            viewer.set_restored(RestoredImage(picture, scale, (w, h)))
        record = self.records.for_frame(index, hold=result.hold) if self.records else None
        typed = typed_result(record)
        kind = type(typed).__name__
        if kind == "Detections":
            viewer.set_detections(_with_track_ids(typed))
        else:
            viewer.remove_overlay("boxes")
        if kind == "Segmentation":
            viewer.set_segmentation(typed)
        else:
            viewer.remove_overlay("masks")
        caption = typed.text if kind == "Caption" else ""
        if caption != viewer.caption_text:
            viewer.set_caption(caption)

    def current_result(self) -> Any:
        """The typed result drawn on the frame now shown (None when it has none)."""
        from engine.jobs.video_result import typed_result

        if self.records is None or self.result is None or self.index < 0:
            return None
        return typed_result(self.records.for_frame(self.index, hold=self.result.hold))

    # -- playing -----------------------------------------------------------------------
    @property
    def playing(self) -> bool:
        return self.direction != 0

    def play(self, direction: int = 1, speed: int = 1) -> None:
        if self.source is None:
            return
        if direction > 0 and self.index >= self.frame_count - 1:
            self.seek(0)  # play again from the start
        self.direction, self.speed = direction, speed
        fps = (self.result.fps if self.result is not None else 0) or self.source.fps or 25.0
        self.timer.start(max(1, round(1000 / fps)))
        self._update_transport()

    def pause(self) -> None:
        was = self.playing
        self.direction, self.speed = 0, 1
        self.timer.stop()
        self._update_transport(changed=was)

    def toggle_play(self) -> None:
        if self.playing:
            self.pause()
        else:
            self.play(1, 1)

    def shuttle(self, direction: int) -> None:
        """J (-1) / L (+1): play that way; pressed again while playing that way: faster."""
        if self.direction == direction:
            faster = SPEEDS[min(len(SPEEDS) - 1, SPEEDS.index(self.speed) + 1)]
            self.play(direction, faster)
        else:
            self.play(direction, 1)

    def _tick(self) -> None:
        target = self.index + self.direction * self.speed
        last = self.frame_count - 1
        if target < 0 or target > last:  # the end (or the start, going back)
            clamped = max(0, min(last, target))
            if clamped != self.index:
                self.seek(clamped)
            self.pause()
            return
        self.seek(target)

    def _update_transport(self, changed: bool = True) -> None:
        pixmap = (QStyle.StandardPixmap.SP_MediaPause if self.playing
                  else QStyle.StandardPixmap.SP_MediaPlay)
        self.play_button.setIcon(self.style().standardIcon(pixmap))
        self.speed_label.setText(
            "" if not self.playing or (self.direction, self.speed) == (1, 1)
            else f"{'◀' if self.direction < 0 else '▶'} {self.speed}×")
        if changed:
            self.playingChanged.emit(self.playing)

    # -- keys --------------------------------------------------------------------------
    def eventFilter(self, watched: QObject, event: QEvent) -> bool:  # noqa: N802
        kind = event.type()
        if self.result is None or kind not in (QEvent.Type.ShortcutOverride,
                                               QEvent.Type.KeyPress):
            return False
        if event.key() not in TRANSPORT_KEYS or event.modifiers() & ~(
                Qt.KeyboardModifier.KeypadModifier):  # Ctrl+→ etc. are the window's
            return False
        if kind == QEvent.Type.ShortcutOverride:
            event.accept()  # K is the viewer's Compare toggle elsewhere: here it pauses
            return True
        self._key(event.key())
        event.accept()
        return True

    def _key(self, key: Qt.Key) -> None:
        method, args, _ = TRANSPORT[Qt.Key(key)]
        getattr(self, method)(*args)


def _with_track_ids(detections: Any) -> Any:
    """Tracked boxes labelled "#id label" and coloured per track, as in the exported video."""
    from engine.results import Detections

    boxes = [replace(b, label=f"#{b.track_id} {b.label}", label_id=b.track_id)
             if b.track_id is not None else b for b in detections.boxes]
    return Detections(boxes, detections.image_size, detections.labels)
